"""Lesson 06, the host run: the compose services as processes on this machine.

The very commands, environments and nginx templates that the compose file
and the Dockerfiles give, started without a container engine: the app
files laid out as the Dockerfile's COPY lines lay them out, the named
volumes as temp folders (the `certs` service's certificates in them),
service names resolved to 127.0.0.1, each container port on a free
loopback port (workshop/hostrun.py). Proves that
the files fit together, in seconds; test_06_engine.py runs them in real
containers.
"""

from __future__ import annotations

import collections
import stat
from pathlib import Path

import pytest

from workshop import compose, door, hostrun, images

from checks.utils import assert_mask_through_nginx, segment, upstream_kind


@pytest.fixture(scope="module")
def host_run(lessons):
    with hostrun.running(compose.lesson_folder(lessons)) as run:
        yield run


def test_host_run_segments_through_nginx(host_run):
    assert_mask_through_nginx(segment(host_run.url, images.photo_bytes()))


def test_host_run_round_robin_across_both_services(host_run):
    counts = collections.Counter(upstream_kind(segment(host_run.url)) for _ in range(20))
    assert counts == {"unix": 10, "tcp": 10}, \
        f"20 requests should alternate between the unix socket and uwsgi-tcp, got {dict(counts)}"


def test_host_run_healthchecks_pass_for_both_services(host_run):
    for name in ("uwsgi-uds", "uwsgi-tcp"):
        out = host_run.healthcheck(name)
        assert out.returncode == 0 and "-> 200" in out.stdout, f"{name}: {out.stdout}{out.stderr}"


def test_host_run_socket_is_660_on_the_volume(host_run):
    sock = Path(host_run.env("uwsgi-uds", host_run.app)["HEALTHCHECK_SOCKET"])
    mode = stat.S_IMODE(sock.stat().st_mode)
    assert stat.S_ISSOCK(sock.stat().st_mode) and mode == 0o660, f"{sock}: mode {mode:o}, want 660"


def test_host_run_uwsgi_sockets_let_in_only_nginxs_certificate(host_run):
    """Both sockets speak TLS and want a certificate from the certs service's CA: a stranger's
    packet, plain or over TLS without one, gets nothing; nginx's gets an answer, and runs nothing."""
    nginx_part = host_run.tmp / "volumes" / "tls-nginx"
    for name in ("uwsgi-uds", "uwsgi-tcp"):
        address = host_run.env(name, host_run.app)["HEALTHCHECK_SOCKET"]
        for how in ({}, {"tls": True}, {"cert_dir": nginx_part}):
            # Refused at the handshake, uWSGI never reads the packet: no need to wait for a loader.
            settle = 1.0 if "cert_dir" in how else 0.2
            for k in door.knock(address, timeout=10, settle=settle, **how):
                assert not k.ran_as, f"{name} {how or 'plain'}: {k.describe()}"
                assert k.answered == ("cert_dir" in how), f"{name} {how or 'plain'}: {k.describe()}"
    assert not (nginx_part / "ca.key").exists(), "the CA's key must stay in the certs service's volume"
