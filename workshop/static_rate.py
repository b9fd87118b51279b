"""Requests a second: a file nginx serves from disk, next to the smallest Python answer.

From the repository root (lesson 04's page, README section "The page"):

  .venv/bin/python -m workshop.static_rate [SECONDS]

One private nginx with lesson 04's site (its template, rendered as run.sh
does) in front of lesson 01's echo app under uWSGI, two workers on a unix
socket: no model, so only the serving layers count. `wrk` asks, with 16
connections, for GET /page.css, which nginx reads from static/, then for
POST /infer, which goes through uWSGI to Flask. It prints wrk's Requests/sec
for each; nothing is written down, the numbers are this machine's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from . import nginx
from .harness import base_env, make_run_dir, started, stop
from .lessons import REFERENCE
from .procs import free_port

CONNECTIONS = 16
POST_LUA = 'wrk.method = "POST"\nwrk.body = "Hello"\n'


def requests_per_second(url: str, seconds: int, script: Path | None = None) -> float:
    cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", *(["-s", str(script)] if script else []), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors or "Requests/sec" not in out:
        raise RuntimeError(f"wrk {url}: {out.strip()}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])


def measure(seconds: int = 10, lessons: Path = REFERENCE) -> dict[str, float]:
    """{"static": requests/s of GET /page.css, "echo": of POST /infer through uWSGI}."""
    if not all(shutil.which(name, path=base_env()["PATH"]) for name in ("wrk", "nginx", "uwsgi")):
        raise SystemExit("wrk, nginx and uwsgi are needed: run ./workshop.sh setup")
    run_dir, servers = make_run_dir(), []
    try:
        sock = run_dir / "echo.sock"
        owner = ["--chown-socket=root:www-data"] if os.geteuid() == 0 else []   # as lesson 04's socket
        servers.append(started("echo-uwsgi", ["uwsgi", "--master", "--processes", "2", "--socket", str(sock),
                                              "--chmod-socket=660", *owner, "--disable-logging",
                                              # SIGTERM ends it (without this, uWSGI 2.0 reloads on it)
                                              "--die-on-term",
                                              "--wsgi-file", str(lessons / "01_echo/inference.py"),
                                              "--callable", "app"], run_dir=run_dir))
        port = free_port()
        conf = nginx.write_local(run_dir / "nginx", [lessons / "04_nginx/inference.conf.template"], {
            "LISTEN": f"127.0.0.1:{port}", "SERVER_NAME": "localhost", "UPSTREAM": f"unix:{sock}",
            "STATIC_ROOT": str(lessons / "04_nginx/static")})
        web = started("nginx", ["nginx", "-p", str(run_dir / "nginx"), "-c", str(conf)], run_dir=run_dir,
                      url=f"http://127.0.0.1:{port}")
        servers.append(web)
        web.wait_http("/healthz", timeout=60)
        lua = run_dir / "post.lua"
        lua.write_text(POST_LUA)
        return {"static": requests_per_second(web.url + "/page.css", seconds),
                "echo": requests_per_second(web.url + "/infer", seconds, lua)}
    finally:
        for server in reversed(servers):
            stop(server)
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    rates = measure(seconds)
    print(f"nginx, GET /page.css from disk:           {rates['static']:10.0f} requests/s")
    print(f"nginx -> uWSGI -> Flask, POST /infer echo: {rates['echo']:10.0f} requests/s")
    print(f"({CONNECTIONS} connections, {seconds} s each, on this machine)")
