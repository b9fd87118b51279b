"""Lesson 04: nginx in front of uWSGI, over a unix socket only nginx's group can use."""

import grp
import gzip
import os
import re
import shutil
import signal
import socket
import stat
import subprocess

import numpy as np
import pytest
import requests

from workshop import images, nginx, static_rate
from workshop.harness import lesson_server
from workshop.lessons import ROOT
from workshop.procs import wait_for

from checks.utils import mask_of, segment

LESSON = "04_nginx"
PHOTO = images.photo_bytes()
PAGE_TYPES = {"index.html": "text/html", "page.js": "application/javascript",
              "page.css": "text/css", "favicon.svg": "image/svg+xml"}


@pytest.fixture(scope="module")
def stack(lessons):
    with lesson_server(lessons, LESSON) as server:
        yield server


def effective_config(server) -> str:
    prefix = server.run_dir / "nginx"
    out = subprocess.run(["nginx", "-T", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                         capture_output=True, text=True, env=server.env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_answer_through_nginx_is_the_app_answer(stack, reference):
    segmentation, model = reference
    r = segment(stack, PHOTO)
    assert r.status_code == 200, f"nginx answered {r.status_code}: {r.text[:200]}"
    assert r.headers["Server"] == "nginx", "the answer did not come through nginx"
    assert r.headers["X-Upstream"].startswith("unix:"), "nginx should pass to uWSGI over the unix socket"
    expected = segmentation.predict(model, segmentation.decode_image(PHOTO, 10**8))
    assert np.array_equal(mask_of(r), expected), "the mask through nginx differs from the app's own answer"


@pytest.mark.parametrize("directive", [
    "server_tokens off;", "client_max_body_size 10m;", "include uwsgi_params;",
    "uwsgi_read_timeout 25s;", "upstream=$upstream_addr", "upstream_time=$upstream_response_time",
])
def test_effective_config_holds_the_promised_directives(stack, directive):
    assert directive in effective_config(stack), f"`nginx -T` does not show {directive!r}"


def test_a_failed_request_is_retried_on_the_next_upstream(stack):
    # Meaning, not spelling: the flags of uwsgi_next_upstream, in any order.
    lines = [line.strip().rstrip(";").split() for line in effective_config(stack).splitlines()]
    flags = {flag for words in lines if words[:1] == ["uwsgi_next_upstream"] for flag in words[1:]}
    missing = {"error", "timeout", "non_idempotent"} - flags
    assert not missing, \
        f"uwsgi_next_upstream lacks {sorted(missing)}: without them nginx does not try the next " \
        "upstream when one fails, and never retries a POST (non_idempotent); lesson 05's failover needs it"


def test_server_name_is_a_name_not_an_address(stack):
    config = effective_config(stack)
    directives = [line.strip() for line in config.splitlines() if not line.strip().startswith("#")]
    assert "server_name 0.0.0.0;" not in directives and "server_name localhost;" in directives


def test_no_version_in_error_pages(stack):
    r = requests.get(stack.url + "/no-such-page", timeout=10)
    assert r.headers["Server"] == "nginx", "server_tokens off hides the version: 'nginx', not 'nginx/1.x'"


# ------------------------------------------------------------ the page, from disk

def test_nginx_serves_the_page_itself_with_its_headers(stack, lessons):
    static = lessons / LESSON / "static"
    assert sorted(p.name for p in static.iterdir()) == sorted(PAGE_TYPES), "static/ holds the page's files"
    for name, kind in PAGE_TYPES.items():
        r = requests.get(f"{stack.url}/{'' if name == 'index.html' else name}", timeout=10)
        assert r.status_code == 200, f"GET /{name}: {r.status_code} {r.text[:200]} (location / serves static/)"
        assert r.content == (static / name).read_bytes(), f"/{name} is not static/{name}"
        assert r.headers["Content-Type"].split(";")[0] == kind, f"/{name} is sent as {r.headers['Content-Type']}"
        assert "X-Worker-Pid" not in r.headers and "X-Upstream" not in r.headers, \
            f"/{name} went to uWSGI: nginx should read it from disk"
        assert r.headers.get("Content-Security-Policy") == "default-src 'self'", r.headers
        assert r.headers.get("X-Content-Type-Options") == "nosniff", r.headers
        assert r.headers.get("Referrer-Policy") == "no-referrer", r.headers
        assert r.headers.get("Cache-Control") == "no-cache" and r.headers.get("ETag"), \
            f"/{name}: Cache-Control no-cache and an ETag, so the browser revalidates cheaply: {r.headers}"


def test_an_unchanged_page_costs_a_304(stack):
    first = requests.get(stack.url + "/page.js", timeout=10)
    again = requests.get(stack.url + "/page.js", headers={"If-None-Match": first.headers["ETag"]}, timeout=10)
    assert again.status_code == 304 and not again.content, f"revalidation with the ETag: {again.status_code}"


@pytest.mark.parametrize("name", ["", "page.js", "page.css"])
def test_the_page_text_is_gzipped(stack, lessons, name):
    r = requests.get(f"{stack.url}/{name}", headers={"Accept-Encoding": "gzip"}, stream=True, timeout=10)
    assert r.headers.get("Content-Encoding") == "gzip", f"/{name} is not gzipped: {r.headers}"
    assert "Accept-Encoding" in r.headers.get("Vary", ""), "gzip_vary: caches must keep both versions apart"
    body = gzip.decompress(r.raw.read())
    assert body == (lessons / LESSON / "static" / (name or "index.html")).read_bytes()


def test_the_page_loads_nothing_from_elsewhere_and_nothing_inline(lessons):
    # What the CSP (default-src 'self') would refuse: fail here, not in a learner's browser.
    html = (lessons / LESSON / "static" / "index.html").read_text()
    assert not re.search(r"<style|\sstyle=|\son\w+=|<script(?![^>]*\ssrc=)", html, re.I), \
        "no inline style or script, no on...= handlers: the CSP forbids them"
    for url in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert not re.match(r"\w+:|//", url), f"index.html loads {url}: the page must work offline, from nginx alone"
    script = (lessons / LESSON / "static" / "page.js").read_text()
    assert not re.search(r"https?://|eval\(|innerHTML", script), "page.js: no other host, no eval, no innerHTML"


@pytest.mark.parametrize("path", ["/metrics", "/infer/more", "/admin", "/index.php", "/errors/404.json"])
def test_other_paths_get_nginxs_json_404_not_uwsgi(stack, path):
    r = requests.get(stack.url + path, timeout=10)
    assert r.status_code == 404 and r.headers["Content-Type"] == "application/json", \
        f"GET {path}: {r.status_code} {r.headers.get('Content-Type')}"
    assert "no such path" in r.json()["error"]
    assert "X-Worker-Pid" not in r.headers, f"{path} reached uWSGI: only /infer, /readyz and /healthz may"


@pytest.mark.parametrize("path", ["/readyz", "/healthz"])
def test_the_apps_paths_still_go_to_uwsgi(stack, path):
    r = requests.get(stack.url + path, timeout=10)
    assert r.status_code == 200 and r.headers.get("X-Upstream", "").startswith("unix:"), \
        f"GET {path}: {r.status_code} {r.headers}"
    assert "Content-Security-Policy" not in r.headers, "the page's headers belong to the page's location"


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed (./workshop.sh setup installs it)")
def test_static_rate_measures_the_page_and_the_echo_app(lessons):
    # The README's command, short: it runs, and both sides answer only 2xx (wrk's count, else it raises).
    rates = static_rate.measure(seconds=1, lessons=lessons)
    assert rates["static"] > 0 and rates["echo"] > 0, rates


def test_socket_is_shared_through_a_group_not_the_world(stack):
    sock = stack.run_dir / "inference.sock"
    mode = stat.S_IMODE(sock.stat().st_mode)
    assert mode == 0o660, f"the socket has mode {oct(mode)}: set chmod-socket = 660 (never 666)"
    if os.geteuid() == 0:
        group = grp.getgrgid(sock.stat().st_gid).gr_name
        assert group == "www-data", f"the socket's group is {group}: nginx's workers run as www-data"


def test_oversized_body_gets_413_from_nginx(stack):
    r = segment(stack, data=b"\0" * (11 * 1024 * 1024))
    assert r.status_code == 413
    assert "client_max_body_size" in r.json()["error"], "the 413 should come from nginx, as JSON"
    assert segment(stack).status_code == 200


def test_access_log_shows_upstream_and_times(stack):
    segment(stack)
    log = (stack.run_dir / "nginx" / "inference-access.log").read_text()
    last = log.strip().splitlines()[-1]
    assert "upstream=unix:" in last and "upstream_time=" in last and "request_time=" in last, last


def test_browser_at_the_uwsgi_socket_is_the_classic_mistake(stack):
    # Speak HTTP to a socket that expects the uwsgi protocol: uWSGI reads
    # "ET" of "GET" as a 16-bit packet size, 0x5445 = 21573 bytes. That fits
    # in workers.ini's buffer-size (65535), so uWSGI waits for the rest until
    # its socket timeout (4 s), then hangs up: no HTTP answer, ever.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(stack.run_dir / "inference.sock"))
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        s.settimeout(15)
        try:
            reply = s.recv(100)
        except ConnectionResetError:
            reply = b""
    assert reply == b"", f"an HTTP request on the uwsgi socket got {reply!r}: uWSGI speaks no HTTP there"
    assert segment(stack).status_code == 200


def _wrapped(site: str, tmp_path):
    """A minimal main config around a site file, as /etc/nginx/nginx.conf does."""
    shutil.copy(nginx.UWSGI_PARAMS, tmp_path / "uwsgi_params")
    (tmp_path / "site.conf").write_text(site)
    main = tmp_path / "nginx.conf"
    main.write_text(f"pid {tmp_path}/nginx.pid; error_log stderr; events {{}}\n"
                    f"http {{ include {tmp_path}/site.conf; }}\n")
    return main


def test_production_site_is_the_rendered_template(lessons, tmp_path):
    lesson = lessons / LESSON
    rendered = nginx.production(lesson / "inference.conf.template", lesson / "production.env")
    committed = (lesson / "production" / "inference.conf").read_text()
    assert committed == rendered, "production/inference.conf is not the rendering of the template: " \
        f"re-render it, from {ROOT}: .venv/bin/{nginx.RERENDER} {lesson.relative_to(ROOT) if lesson.is_relative_to(ROOT) else lesson}"
    result = nginx.test_config(_wrapped(committed, tmp_path))
    assert result.returncode == 0, f"nginx -t rejects production/inference.conf:\n{result.stderr}"


def test_local_config_passes_nginx_t(stack):
    prefix = stack.run_dir / "nginx"
    result = nginx.test_config(prefix / "nginx.conf")
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_unit_is_valid(lessons, tmp_path):
    # Point the unit at this checkout instead of /srv/inference, then let systemd check it.
    unit = (lessons / LESSON / "production" / "uwsgi-inference.service").read_text()
    local_unit = tmp_path / "uwsgi-inference.service"
    local_unit.write_text(unit.replace("/srv/inference/lessons", str(lessons))
                          .replace("/srv/inference", str(ROOT)))
    out = subprocess.run(["systemd-analyze", "verify", str(local_unit)], capture_output=True, text=True)
    problems = [line for line in out.stderr.splitlines() if "uwsgi-inference" in line]
    assert not problems, "\n".join(problems)


# Last in this file: it stops the module's uWSGI, so that no check after it may use `stack`.
def test_stopped_uwsgi_gives_502_as_json(stack):
    master = int((stack.run_dir / "uwsgi.pid").read_text())
    os.kill(master, signal.SIGTERM)
    wait_for(lambda: not (stack.run_dir / "inference.sock").exists(), timeout=30,
             what="uWSGI to stop and remove its socket")
    r = segment(stack)
    assert r.status_code == 502
    assert "uWSGI" in r.json()["error"], "the 502 should say, in JSON, that no uWSGI server answered"
