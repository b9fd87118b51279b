"""What the checks (and the demo and benchmarks) use to run a lesson for real.

    with lesson_server(root, "04_nginx", env={"SEG_WEIGHTS": "random"}) as srv:
        reply = requests.post(srv.url + "/infer", data=photo)

starts the lesson's own `run.sh` (the command the learner runs) on a free
loopback port with its sockets in a private folder, waits until it answers,
and always stops everything it started, also when the block fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from .procs import Server, ServerDidNotStart, free_port, last_error, wait_for

# Servers alive right now, and those stopped during the current test: the
# checks print their logs when a test fails.
RUNNING: list[Server] = []
STOPPED: list[tuple[str, str]] = []   # (name, last lines of its log)

# Defaults for every server a check starts: untrained weights (no download),
# one torch thread per process (these machines have 2 cores).
CHECK_ENV = {"SEG_WEIGHTS": "random", "SEG_TORCH_THREADS": "1"}
# Where lesson 07's watchers listen (Prometheus, the metrics, the exporters):
# every lesson_server gets a free port for each, as for PORT and TCP_PORT.
WATCHER_PORTS = ("PROMETHEUS_PORT", "METRICS_PORT1", "METRICS_PORT2", "STATS_EXPORTER_PORT",
                 "NGINX_STATUS_PORT", "NGINX_EXPORTER_PORT")


def base_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", ""), "/usr/sbin"])
    env.update(CHECK_ENV)
    env.update(extra or {})
    return env


def make_run_dir() -> Path:
    """A short private folder for sockets (unix socket paths max out at 107 bytes).

    Mode 755: nginx's workers (www-data when started as root) must be able to
    walk into it to reach the socket; the socket itself is 660.
    """
    path = Path(tempfile.mkdtemp(prefix="ws-", dir="/tmp"))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def lesson_server(root: Path, lesson: str, args: list[str] | None = None,
                  env: dict | None = None, ready: str = "/readyz",
                  timeout: float = 90.0, run_dir: Path | None = None, wait: bool = True):
    """Run <root>/<lesson>/run.sh on a free port; yield the Server (with .url, .run_dir).

    wait=False yields as soon as run.sh is started, for a caller that watches
    a start-up which may never get ready (the benchmark's torch/fork test).
    """
    script = Path(root) / lesson / "run.sh"
    if not script.exists():
        raise ServerDidNotStart(f"{script} does not exist: this lesson has no start command yet.")
    commands = script.read_text()
    if "nginx" in commands and not shutil.which("nginx", path=base_env()["PATH"]):
        raise ServerDidNotStart("nginx is not installed: run ./workshop.sh setup "
                                "(it installs nginx with apt-get).")
    own_dir = run_dir is None
    run_dir = run_dir or make_run_dir()
    port = free_port()
    # TCP_HOST too: a process started again outside run.sh (a check's restart)
    # must bind where run.sh's did, never an empty host (every address).
    full_env = base_env({"PORT": str(port), "TCP_HOST": "127.0.0.1", "TCP_PORT": str(free_port()),
                         **{name: str(free_port()) for name in WATCHER_PORTS},
                         "RUN_DIR": str(run_dir), **(env or {})})
    server = Server(name=lesson, cmd=["bash", str(script), *(args or [])],
                    log_path=run_dir / "server.log", cwd=script.parent,
                    env=full_env, url=f"http://127.0.0.1:{port}")
    server.run_dir = run_dir
    server.lesson_dir = script.parent
    RUNNING.append(server)
    try:
        server.start()
        if wait and "wait_ready" in commands:
            # The lesson's own notion of ready: every server up, signal handlers set.
            server.wait_log("[run] ready:", timeout=timeout, probe=ready or "")
        if wait and ready:
            server.wait_http(ready, timeout=timeout)
        yield server
    finally:
        stop(server)
        if own_dir:
            shutil.rmtree(run_dir, ignore_errors=True)


def started(name: str, cmd: list[str], run_dir: Path, env: dict | None = None,
            cwd: Path | None = None, url: str = "") -> Server:
    """Start one more process (e.g. a second uWSGI) that the caller must stop."""
    server = Server(name=name, cmd=cmd, log_path=run_dir / f"{name}.log", cwd=cwd,
                    env=base_env(env), url=url)
    RUNNING.append(server)
    return server.start()


def stop(server: Server) -> None:
    server.stop()
    if server in RUNNING:
        RUNNING.remove(server)
        STOPPED.append((server.name, server.log(40)))


def server_error(server: Server, resp: requests.Response | None = None) -> str:
    """After a 5xx (or a failed client): the error the server's log names, as a sentence, or ''."""
    if resp is not None and resp.status_code < 500:
        return ""
    error = last_error(server.log(200))
    return f"the server failed with {error} (its log is below)" if error else ""


def concurrently(fn, times: int, at_once: int) -> list:
    """Call fn() `times` times from `at_once` threads; return the results in order."""
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        return list(pool.map(lambda _: fn(), range(times)))


def side_by_side(fn, args: dict) -> dict:
    """fn(value) for each entry of args, one thread per core; by the same key, the future
    of each call: .result() gives its result or raises what it raised, in the caller."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = {key: pool.submit(fn, value) for key, value in args.items()}
    return futures   # leaving the block waited for every call


class LoadRun:
    """A bounded background load: `count` requests from `at_once` threads, stops by itself.

    Every outcome is kept (status code or exception name), so a check can say
    "zero failed" while something is being killed or reloaded behind it.
    """

    def __init__(self, fn, count: int, at_once: int, max_seconds: float = 120.0):
        self.fn, self.count, self.at_once = fn, count, at_once
        self.deadline = time.monotonic() + max_seconds
        self.outcomes: list = []
        self._lock = threading.Lock()
        self._next = 0
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(at_once)]

    def _work(self):
        while time.monotonic() < self.deadline:
            with self._lock:
                if self._next >= self.count:
                    return
                self._next += 1
            try:
                outcome = self.fn()
            except Exception as exc:  # a refused or reset connection is a failure too
                outcome = type(exc).__name__
            with self._lock:
                self.outcomes.append(outcome)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def done(self) -> int:
        return len(self.outcomes)

    def unfinished(self) -> int:
        """Requests begun whose outcome is not in (after the run: the ones still hanging)."""
        with self._lock:
            return self._next - len(self.outcomes)

    def __exit__(self, *exc):
        for t in self._threads:
            t.join(timeout=max(0.0, self.deadline - time.monotonic()) + 5)


def uwsgi_stats(stats_socket: Path) -> dict:
    """Read uWSGI's stats server (a unix socket that answers one JSON document)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(stats_socket))
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


def readyz_of_every_worker(server, workers: int, timeout: float = 30) -> dict[int, dict]:
    """/readyz asked until `workers` different workers have answered: {pid: its answer}."""
    seen = {}

    def ask():
        info = requests.get(server.url + "/readyz", timeout=10).json()
        seen[info["pid"]] = info
        return len(seen) >= workers
    wait_for(ask, timeout=timeout, interval=0, what=f"/readyz answers from {workers} workers")
    return seen


def queue_depth(server) -> list[int]:
    """The listen backlog of each uWSGI server a lesson started, as each says when it starts."""
    return [int(n) for n in re.findall(r"listen backlog is limited to (\d+) connections", server.log(5000))]
