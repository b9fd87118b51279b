"""Lesson 05: planned changes under load lose nothing: a rolling restart, and workers recycled.

A rolling restart stops one upstream at a time with SIGTERM (a deploy, a
`docker stop`), waits until it is back and taking traffic, then does the
next. A recycle replaces a worker after `max-requests` (workers.ini). Both
happen here while a load runs; no request may fail.
"""

import collections
import os
import signal
import time
from pathlib import Path

import pytest
import requests

from workshop.harness import LoadRun, lesson_server, started, stop, uwsgi_stats
from workshop.procs import STOP_MERCY, descendants, running, wait_for

from checks.utils import PHOTO_256, busy_workers, upstream_kind

LESSON = "05_multi_upstream"
# name, its pid file, its stats socket
UPSTREAMS = [("tcp", "uwsgi2.pid", "stats2.sock"), ("unix", "uwsgi1.pid", "stats1.sock")]


def ask(server, delay: float = 0.0):
    """One POST; (status, who answered, when the answer came) or the exception's name."""
    params = {"format": "png", **({"delay": delay} if delay else {})}
    r = requests.post(server.url + "/infer", data=PHOTO_256, params=params, timeout=60)
    return r.status_code, r.headers.get("X-Upstream", ""), time.monotonic()


def failures(outcomes) -> collections.Counter:
    return collections.Counter(o if isinstance(o, str) else o[0] for o in outcomes
                               if isinstance(o, str) or o[0] != 200)


def started_as(pid: int, cwd: Path) -> dict:
    """The command line and environment run.sh started a process with (in cwd): to start it again."""
    proc = Path(f"/proc/{pid}")
    cmd = proc.joinpath("cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
    env = dict(item.split("=", 1) for item in proc.joinpath("environ").read_bytes().decode().split("\0") if "=" in item)
    return {"cmd": cmd, "env": env, "cwd": cwd}


def upstream_kind_of(addr: str) -> str:
    """Which upstream gave the answer (the last one nginx tried), from X-Upstream."""
    last = addr.split(",")[-1].strip()
    return "unix" if last.startswith("unix:") else "tcp" if last else "none"


@pytest.fixture(scope="module")
def stack(lessons):
    # SEG_DEBUG_DELAY=1: the load's requests take a while, so some are in flight for sure.
    with lesson_server(lessons, LESSON, env={"SEG_DEBUG_DELAY": "1"}) as server:
        yield server


def restart(stack, load, kind: str, pidfile: str, stats: str, again: list) -> None:
    """Stop one upstream with SIGTERM while it serves, start it again, wait until it takes traffic."""
    master = int((stack.run_dir / pidfile).read_text())
    tree = [master, *descendants(master)]
    command = started_as(master, stack.lesson_dir)
    wait_for(lambda: busy_workers(stack, stats), timeout=30, what=f"the {kind} upstream to be busy")
    stopped_at = time.monotonic()
    os.kill(master, signal.SIGTERM)
    wait_for(lambda: not any(running(p) for p in tree), timeout=STOP_MERCY,
             what=f"the {kind} upstream to stop gracefully")
    finished_there = [o for o in list(load.outcomes) if not isinstance(o, str) and o[0] == 200
                      and upstream_kind_of(o[1]) == kind and "," not in o[1] and o[2] > stopped_at]
    assert finished_there, \
        f"no request in flight on the {kind} upstream was finished by it after its SIGTERM: " \
        "a stop must let the workers finish (workers.ini: hook-master-start = unix_signal:15 " \
        "gracefully_kill_them_all, not die-on-term)"
    # Start it again as run.sh did; nginx tries it again after fail_timeout (5 s).
    # Only once it takes traffic may the next one stop.
    restarted_at = time.monotonic()
    again.append(started(f"uwsgi-{kind}-again", run_dir=stack.run_dir, **command))
    wait_for(lambda: any(not isinstance(o, str) and upstream_kind_of(o[1]) == kind and o[2] > restarted_at
                         for o in list(load.outcomes)),
             timeout=90, interval=0.2, what=f"the restarted {kind} upstream to take traffic again")


def test_rolling_restart_under_load_loses_nothing(stack):
    again = []
    load = LoadRun(lambda: ask(stack, delay=0.5), count=400, at_once=4, max_seconds=200)
    try:
        with load:
            try:
                wait_for(lambda: load.done() >= 8, timeout=60, what="the load to start")
                for kind, pidfile, stats in UPSTREAMS:
                    restart(stack, load, kind, pidfile, stats, again)
            finally:
                load.deadline = time.monotonic()   # the load's threads stop after their current request
        failed = failures(load.outcomes)
        assert not failed, f"{sum(failed.values())} requests failed during a rolling restart: {dict(failed)}"
    finally:
        for server in again:
            stop(server)


def test_workers_recycled_under_load_lose_nothing(lessons):
    # max-requests low, through run.sh's extra arguments, so that every worker is
    # replaced a few times; uWSGI keeps a worker at least min-worker-lifetime
    # (10 s by default) whatever max-requests says: 1 s here, for a short run.
    args = ["--max-requests", "5", "--min-worker-lifetime", "1"]
    with lesson_server(lessons, LESSON, args=args) as server:
        def respawns() -> int:
            return sum(w["respawn_count"] - 1 for sock in ("stats1.sock", "stats2.sock")
                       for w in uwsgi_stats(server.run_dir / sock)["workers"])
        with LoadRun(lambda: ask(server), count=40, at_once=4, max_seconds=180) as load:
            pass
        assert len(load.outcomes) == 40, f"only {len(load.outcomes)} of 40 requests finished in time"
        failed = failures(load.outcomes)
        assert not failed, f"{sum(failed.values())} requests failed while workers were recycled: {dict(failed)}"
        assert respawns() >= 2, \
            f"with max-requests = 5 and 40 requests, the workers should have been recycled; " \
            f"uWSGI's stats show {respawns()} respawns"
        assert {upstream_kind(requests.get(server.url + "/readyz", timeout=10)) for _ in range(4)} == {"unix", "tcp"}
