"""Lesson 05: a uwsgi socket is a door, and only nginx holds the key.

A uwsgi packet that asks for a "dynamic app" (UWSGI_FILE=exec://..., or
UWSGI_SCRIPT with UWSGI_CHDIR) makes a plain uwsgi socket run code as the
app's user. workshop/door.py knocks the way a stranger would: straight to
uWSGI, loopback only, a marker file in a temp folder as the only trace.
The lesson's sockets speak TLS and serve only nginx's client certificate;
and neither upstream loads a second app (max-apps = 1).
"""

import collections
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import threading
import time

import pytest
import requests

from workshop import certs, door
from workshop.harness import lesson_server, make_run_dir, started, stop, uwsgi_stats
from workshop.lessons import ROOT
from workshop.procs import free_port, wait_for

from checks.utils import segment, upstream_kind, uwsgi_tcp_ports

LESSON = "05_multi_upstream"
ME = pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture(scope="module")
def stack(lessons):
    # Sockets as deep as in a checkout (run/05_multi_upstream/...): uWSGI files
    # TLS sessions under the socket's name, and OpenSSL takes 32 bytes of it at
    # most: on such a path uWSGI refuses every resumed session, which is why
    # nginx resumes none (uwsgi_ssl_session_reuse off). This deep path proves it.
    top = make_run_dir()
    run_dir = top / "run" / LESSON
    run_dir.mkdir(parents=True)
    try:
        with lesson_server(lessons, LESSON, run_dir=run_dir) as server:
            yield server
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def stranger_certs(tmp_path_factory):
    """A certificate for "nginx" from a CA of the stranger's own: TLS, but not our CA's."""
    return certs.make(tmp_path_factory.mktemp("stranger"))


def assert_locked(address: str, **how) -> None:
    for k in door.knock(address, **how):
        assert not k.ran_as, f"{address} {how or 'plain'}: {k.magic} made uWSGI run code as {k.ran_as}"
        assert not k.answered, f"{address} {how or 'plain'}: the app answered a stranger: {k.answer[:80]!r}"


def assert_both_upstreams_serve(stack) -> None:
    counts = collections.Counter(upstream_kind(segment(stack)) for _ in range(4))
    assert counts == {"unix": 2, "tcp": 2}, f"after the knocks, nginx's requests went to {dict(counts)}"


def test_the_classic_plain_socket_runs_a_strangers_command(lessons, stack):
    """The demonstration: the tutorial's plain `socket =` (here on loopback) is an open door."""
    port = free_port()
    cmd = ["uwsgi", "--ini", str(lessons / "03_uwsgi" / "workers.ini"), "--processes", "1",
           "--socket", f"127.0.0.1:{port}"]
    unlocked = started("uwsgi-unlocked", cmd, run_dir=stack.run_dir)
    try:
        unlocked.wait_log("spawned uWSGI worker 1", timeout=90)
        knocks = door.knock(f"127.0.0.1:{port}")
    finally:
        stop(unlocked)
    for k in knocks:
        assert k.ran_as == ME, f"{k.magic} against a plain socket should run as {ME}: {k.describe()}"
        assert k.answered, f"the app should answer the stranger too: {k.describe()}"
    # The lesson's own TCP upstream, the same two packets: nothing.
    assert_locked(f"127.0.0.1:{stack.env['TCP_PORT']}")


def test_every_tcp_port_of_the_lesson_refuses_strangers(stack, stranger_certs):
    ports = uwsgi_tcp_ports(stack)
    assert ports == {int(stack.env["TCP_PORT"])}, \
        f"the uWSGI servers listen on TCP ports {sorted(ports)}: expected only upstream 2's"
    for port in ports:
        address = f"127.0.0.1:{port}"
        assert_locked(address)                            # plain uwsgi, as a tutorial client speaks it
        assert_locked(address, tls=True)                  # TLS, no client certificate
        assert_locked(address, cert_dir=stranger_certs)   # TLS, a certificate our CA did not sign
    assert_both_upstreams_serve(stack)


def test_the_unix_socket_is_660_and_locked_too(stack):
    sock = stack.run_dir / "inference1.sock"
    mode = stat.S_IMODE(sock.stat().st_mode)
    assert mode == 0o660, f"{sock.name} has mode {oct(mode)}: chmod-socket = 660, for nginx's group"
    assert_locked(str(sock))
    assert_locked(str(sock), tls=True)


def test_a_request_queued_behind_busy_workers_is_not_lost(stack):
    """With ssl-socket a worker does the TLS handshake once it takes the connection, so a
    request queued behind busy workers waits inside nginx's connect timeout. Past it, nginx
    tries the other upstream: the request is late, never lost."""
    site = (stack.run_dir / "nginx" / "conf.d" / "inference.conf").read_text()
    connect_timeout = int(re.search(r"uwsgi_connect_timeout (\d+)s;", site)[1])
    workers = [w["pid"] for stats in ("stats1.sock", "stats2.sock")
               for w in uwsgi_stats(stack.run_dir / stats)["workers"]]
    answers = []
    asking = [threading.Thread(target=lambda: answers.append(
        requests.get(stack.url + "/readyz", timeout=connect_timeout + 60))) for _ in range(2)]
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)   # every worker busy, longer than nginx waits to connect
    try:
        for thread in asking:
            thread.start()
        time.sleep(connect_timeout + 2)
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    for thread in asking:
        thread.join()
    seen = [(r.status_code, r.headers.get("X-Upstream")) for r in answers]
    assert len(seen) == 2 and all(status == 200 for status, _ in seen), \
        f"requests queued behind busy workers were lost: {seen}"
    # The stack recovers: both upstreams serve again once fail_timeout has passed.
    wait_for(lambda: {upstream_kind(segment(stack)) for _ in range(4)} == {"unix", "tcp"},
             timeout=60, interval=1, what="both upstreams to serve again after the pause")


def test_even_nginxs_certificate_loads_no_second_app(stack):
    # With the key (stolen, or nginx passing on a client's variables), the app
    # answers, but max-apps = 1 refuses the dynamic app before anything runs.
    for address in (f"127.0.0.1:{stack.env['TCP_PORT']}", str(stack.run_dir / "inference1.sock")):
        for k in door.knock(address, cert_dir=stack.run_dir / "tls"):
            assert k.answered, f"{address}: nginx's certificate should open it: {k.describe()}"
            assert not k.ran_as, f"{address}: {k.magic} ran as {k.ran_as}: set max-apps = 1"
    assert "cannot load more than 1 apps" in stack.log(200)
    assert_both_upstreams_serve(stack)


def test_certificates_are_made_once_private_and_never_committed(tmp_path):
    folder = certs.make(tmp_path / "tls")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for key in folder.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, f"{key.name} is readable by others"
    verify = subprocess.run(["openssl", "verify", "-CAfile", "ca.crt", "-purpose", "sslserver", "uwsgi.crt"],
                            cwd=folder, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    verify = subprocess.run(["openssl", "verify", "-CAfile", "ca.crt", "-purpose", "sslclient", "nginx.crt"],
                            cwd=folder, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    first = (folder / "ca.crt").read_bytes()
    certs.make(folder)
    assert (folder / "ca.crt").read_bytes() == first, "a second run should keep valid certificates"
    certs.make(folder, names=("uwsgi", "uwsgi-tcp"))
    assert (folder / "ca.crt").read_bytes() != first, "other names need a new set"
    tracked = subprocess.run(["git", "ls-files", "*.key", "*.crt", "*.pem"], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
    assert not tracked, f"keys or certificates are committed: {tracked}"
