"""What several check files share: one photo, one way to ask for a mask, one way to read it."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
from dataclasses import dataclass

import pytest
import requests

from workshop import images
from workshop.harness import uwsgi_stats
from workshop.door import listening_ports
from workshop.lessons import REFERENCE, import_module
from workshop.procs import descendants, wait_for

# A 256x256 JPEG: small enough for load runs, big enough to be a real photo.
PHOTO_256 = images.encode(images.photo().resize((256, 256)), "JPEG")
# The reference voc.py decodes masks: a learner's unfinished one must not judge their own answers.
voc = import_module(REFERENCE, "02_segmentation", "voc", as_name="reference_voc")


def segment(server, data: bytes = PHOTO_256, **params) -> requests.Response:
    """POST a photo to /infer of a server (or a base URL); the mask comes back as PNG."""
    url = server if isinstance(server, str) else server.url
    return requests.post(url + "/infer", data=data, params={"format": "png", **params}, timeout=60)


def upstream_kind(resp: requests.Response) -> str:
    """Which of lesson 05's upstreams answered, from nginx's X-Upstream: unix, tcp or none."""
    addr = resp.headers.get("X-Upstream", "")
    return "unix" if addr.startswith("unix:") else "tcp" if addr else "none"


def assert_mask_through_nginx(resp: requests.Response, size=(451, 300)) -> None:
    """A PNG mask of the photo's size came back, and nginx passed it on."""
    assert resp.status_code == 200, f"POST /infer answered {resp.status_code}: {resp.text[:200]}"
    assert resp.headers.get("Server") == "nginx", "the answer did not come through nginx"
    height, width = mask_of(resp).shape
    assert (width, height) == size, f"the mask is {(width, height)}, the photo {size}"


def mask_of(resp: requests.Response):
    """The mask in an answer (PNG or JSON), as a numpy array of class ids."""
    assert resp.status_code == 200, f"/infer answered {resp.status_code}: {resp.text[:300]}"
    kind = resp.headers["Content-Type"]
    return voc.mask_from_png(resp.content) if kind == "image/png" else voc.mask_from_json(resp.content)


def uwsgi_tcp_ports(server) -> set[int]:
    """The TCP ports that the uWSGI processes a lesson's run.sh started listen on."""
    pids = [pid for pid in descendants(server.pid) if _comm(pid) == "uwsgi"]
    assert pids, f"{server.name} runs no uWSGI process"
    return listening_ports(pids)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def docs_hooks():
    """The guide's mkdocs hooks (scripts/docs/hooks.py), loaded as a module."""
    import importlib.util

    from workshop.lessons import ROOT

    spec = importlib.util.spec_from_file_location("guide_hooks", ROOT / "scripts/docs/hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks


@dataclass
class RawAnswer:
    """What a server said to raw_request: an HTTP status, or how it ended without one."""

    status: int | str     # 200, 400, ...; or "no answer", "reset", "timeout"
    headers: dict
    body: bytes

    def json_error(self) -> str:
        """The "error" of a JSON answer, or '' if the answer is not JSON with one."""
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            return ""
        try:
            return str(json.loads(self.body).get("error") or "")
        except (ValueError, AttributeError):
            return ""


def raw_request(url: str, data: bytes, pieces: int = 1, pause: float = 0.0,
                timeout: float = 60.0, hang_up: bool = False) -> RawAnswer:
    """Send bytes as they are to an HTTP server and read its answer.

    requests cannot send what a hostile client sends: headers of any size, a
    Content-Length that lies, a chunked body byte for byte, an upload that
    takes seconds (in `pieces`, `pause` seconds apart), a client that
    stops sending (hang_up: it closes its side, and still listens). timeout
    bounds every wait: a server that says nothing gives "timeout", never a hang.
    """
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            for i in range(pieces):
                if i:
                    time.sleep(pause)
                sock.sendall(data[len(data) * i // pieces:len(data) * (i + 1) // pieces])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (or close) before it has read everything
        if hang_up:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        answer = http.client.HTTPResponse(sock)
        try:
            answer.begin()
            return RawAnswer(answer.status, dict(answer.getheaders()), answer.read())
        except http.client.RemoteDisconnected:
            return RawAnswer("no answer", {}, b"")
        except ConnectionResetError:
            return RawAnswer("reset", {}, b"")
        except TimeoutError:
            return RawAnswer("timeout", {}, b"")


def raw_post(headers: bytes = b"", body: bytes = PHOTO_256, length: int | None = None) -> bytes:
    """The bytes of a POST /infer?format=png: headers as given, a Content-Length
    (the body's, or `length` if it should lie; none for a chunked body), the body."""
    if length is not None or b"Transfer-Encoding" not in headers:
        headers += b"Content-Length: %d\r\n" % (len(body) if length is None else length)
    return b"POST /infer?format=png HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n" + body


def chunked(body: bytes, size: int = 4096) -> bytes:
    """A body in Transfer-Encoding: chunked framing."""
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


def header_lines(total: int, line: int) -> bytes:
    """About `total` bytes of request headers, in lines of `line` bytes."""
    return b"".join(b"X-Big-%d: %s\r\n" % (i, b"a" * line) for i in range(total // line))


def uwsgi_workers(server) -> dict[int, tuple[int, int, int]]:
    """Each uWSGI worker of a lesson (by id): its pid and how often it was respawned
    or killed by harakiri, from the stats server. Equal before and after = no worker lost."""
    return {w["id"]: (w["pid"], w["respawn_count"], w["harakiri_count"])
            for w in uwsgi_stats(server.run_dir / "stats.sock")["workers"]}


def busy_workers(server, stats: str = "stats.sock") -> int:
    """How many of a uWSGI server's workers are serving a request right now (0 if it is gone)."""
    try:
        return sum(w["status"] == "busy" for w in uwsgi_stats(server.run_dir / stats)["workers"])
    except OSError:
        return 0


def outcome(server, **params) -> int | str:
    """segment()'s status code, or "connection cut" when the server closed it without an answer."""
    try:
        return segment(server, **params).status_code
    except requests.ConnectionError:
        return "connection cut"


def prometheus_api(base_url: str, path: str, **params) -> dict:
    """The `data` of Prometheus' HTTP API answer to /api/v1/<path> (a real Prometheus at base_url)."""
    r = requests.get(f"{base_url}/api/v1/{path}", params=params, timeout=10)
    assert r.status_code == 200, f"Prometheus answered /api/v1/{path} with {r.status_code}: {r.text[:300]}"
    return r.json()["data"]


def every_target_up(base_url: str, timeout: float, interval: float, explain=lambda: "") -> list[dict]:
    """Prometheus' active targets, once every one is up; else the check fails naming those down
    (and what explain() returns, e.g. the containers' logs)."""
    def all_up():
        found = prometheus_api(base_url, "targets")["activeTargets"]
        return found if found and all(t["health"] == "up" for t in found) else None

    try:
        return wait_for(all_up, timeout=timeout, interval=interval, what="every target up")
    except TimeoutError:
        found = prometheus_api(base_url, "targets")["activeTargets"]
        down = [f"{t['labels']['job']} {t['scrapeUrl']}: {t['lastError']}" for t in found if t["health"] != "up"]
        pytest.fail(f"Prometheus does not see every target up {timeout:.0f} s after start: "
                    f"{down or 'no targets'}\n{explain()}")
