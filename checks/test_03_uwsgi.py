"""Lesson 03: uWSGI runs the lesson-02 app in several workers, and keeps them healthy."""

import os
import shutil
import signal
from pathlib import Path

import pytest
import requests

from workshop.harness import (LoadRun, concurrently, lesson_server, make_run_dir, readyz_of_every_worker, side_by_side,
                              started, stop, uwsgi_stats)
from workshop.procs import free_port, wait_for

from checks.utils import segment

LESSON = "03_uwsgi"
CORES = os.cpu_count()


@pytest.fixture(scope="module")
def uwsgi_server(lessons):
    with lesson_server(lessons, LESSON) as server:
        yield server


def worker_pids(server) -> set[int]:
    return {w["pid"] for w in uwsgi_stats(server.run_dir / "stats.sock")["workers"] if w["pid"]}


def test_served_by_uwsgi_workers(uwsgi_server):
    r = segment(uwsgi_server)
    assert r.status_code == 200
    cmdline = Path(f"/proc/{r.headers['X-Worker-Pid']}/cmdline").read_bytes().decode()
    assert "uwsgi" in cmdline, f"the answer came from {cmdline!r}, not a uWSGI worker: start it with run.sh"


def test_one_worker_per_core(uwsgi_server):
    stats = uwsgi_stats(uwsgi_server.run_dir / "stats.sock")
    assert len(stats["workers"]) == CORES, \
        f"{len(stats['workers'])} workers on a machine with {CORES} cores: one worker per core " \
        "(`processes` in workers.ini)"


def test_every_worker_shares_the_load(uwsgi_server):
    replies = concurrently(lambda: segment(uwsgi_server), times=10 * CORES, at_once=2 * CORES)
    assert all(r.status_code == 200 for r in replies)
    pids = {int(r.headers["X-Worker-Pid"]) for r in replies}
    assert pids == worker_pids(uwsgi_server), \
        f"only {sorted(pids)} of the workers {sorted(worker_pids(uwsgi_server))} answered concurrent requests"


def test_each_worker_built_the_model_once(uwsgi_server):
    for info in readyz_of_every_worker(uwsgi_server, len(worker_pids(uwsgi_server))).values():
        assert info["model_builds"] == 1, \
            f"worker {info['pid']} built the model {info['model_builds']} times: build it at import, once"


def test_big_request_headers_fit(uwsgi_server):
    # A browser with a few cookies sends more than uWSGI's default 4 KB of headers.
    try:
        r = requests.get(uwsgi_server.url + "/readyz", headers={"Cookie": "a" * 6000}, timeout=10)
        outcome = r.status_code
    except requests.ConnectionError:
        outcome = "the connection was closed"
    assert outcome == 200, \
        f"a request with 6 KB of headers got: {outcome}; uWSGI's log says " \
        f"{'invalid request block size' if 'invalid request block size' in uwsgi_server.log(20) else 'nothing'}: " \
        "give it a bigger buffer (`buffer-size`)"


@pytest.fixture(scope="module")
def refused(lessons) -> dict:
    """Lesson 03 started with each bad setting, side by side (each spends seconds importing
    torch): by name, the future of start_that_must_fail's log."""
    import torch

    settings = {"broken app": {"SEG_MAX_BYTES": "10MB"}}
    if not torch.cuda.is_available():
        settings["no gpu"] = {"SEG_DEVICE": "cuda"}
    return side_by_side(lambda env: start_that_must_fail(lessons, env), settings)


def test_a_broken_app_stops_the_start(refused):
    # A setting the app cannot read makes its import fail (ValueError). uWSGI
    # must then exit, so that a process manager sees it, not serve 500s without an app.
    log = refused["broken app"].result()
    assert "ValueError" in log, "the log should show why the app could not start"


def test_a_gpu_that_is_not_there_stops_the_start(refused):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a usable CUDA device: SEG_DEVICE=cuda serves (checks/test_03_gpu.py)")
    log = refused["no gpu"].result()
    assert "SEG_DEVICE=cuda: no CUDA device is usable" in log and "Traceback" not in log, \
        "the log should say in one line, without a traceback, why there is no GPU " \
        "(no driver, no device, a CPU-only torch)"
    assert "segmentation: device cpu" not in log, "SEG_DEVICE=cuda must never fall back to the CPU"


def test_answers_say_the_device(uwsgi_server):
    import torch

    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert segment(uwsgi_server).headers.get("X-Model-Device") == expected, \
        f"every answer should say where it ran (X-Model-Device: {expected} with SEG_DEVICE=auto here)"
    assert f"segmentation: device {expected} (SEG_DEVICE=auto" in uwsgi_server.log(400), \
        "the start log should say which device SEG_DEVICE=auto chose"


def start_that_must_fail(lessons, env: dict) -> str:
    """Start lesson 03 with `env`; assert uWSGI exits instead of serving; its log."""
    run_dir = make_run_dir()
    port = free_port()
    server = started("uwsgi-broken-app", ["bash", "run.sh"], run_dir=run_dir, cwd=lessons / LESSON,
                     env={"PORT": str(port), "RUN_DIR": str(run_dir), **env},
                     url=f"http://127.0.0.1:{port}")
    try:
        def outcome():
            if not server.alive():
                return "exited"
            try:
                return f"answered HTTP {requests.get(server.url + '/readyz', timeout=2).status_code}"
            except requests.RequestException:  # not listening yet, or still importing
                return None
        seen = wait_for(outcome, timeout=90, interval=0.2, what="uWSGI to exit (or to answer)")
        assert seen == "exited", \
            f"the app failed to import, yet uWSGI kept running and {seen} (\"no app loaded\" in its log): " \
            "a failed import must stop the start (`need-app`)"
        return server.log(100)
    finally:
        stop(server)
        shutil.rmtree(run_dir, ignore_errors=True)


def test_killed_worker_is_respawned(uwsgi_server):
    before = worker_pids(uwsgi_server)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    after = wait_for(lambda: (pids := worker_pids(uwsgi_server)) and victim not in pids
                     and len(pids) == len(before) and pids, timeout=30,
                     what="the master to respawn the killed worker (is `master = true` set?)")
    assert victim not in after
    replies = concurrently(lambda: segment(uwsgi_server), times=8, at_once=2)
    assert [r.status_code for r in replies] == [200] * 8, "requests failed after a worker was respawned"


def test_graceful_reload_under_load_loses_nothing(uwsgi_server):
    before = worker_pids(uwsgi_server)
    master = int((uwsgi_server.run_dir / "uwsgi.pid").read_text())
    # 30 requests after the reload: 4 wait in the queue while the master loads the app again.
    with LoadRun(lambda: segment(uwsgi_server).status_code, count=40, at_once=4, max_seconds=120) as load:
        wait_for(lambda: load.done() >= 10, timeout=60, what="the load to start")
        os.kill(master, signal.SIGHUP)  # what `uwsgi --reload uwsgi.pid` sends
    assert len(load.outcomes) == 40, f"only {len(load.outcomes)} of 40 requests finished"
    failed = [o for o in load.outcomes if o != 200]
    assert not failed, f"{len(failed)} requests failed during a graceful reload: {failed[:5]}"
    after = wait_for(lambda: len(pids := worker_pids(uwsgi_server)) == len(before) and pids, timeout=30,
                     what="as many workers as before")
    assert after.isdisjoint(before), "the workers were not replaced: did SIGHUP reload uWSGI?"


def test_harakiri_kills_a_stuck_request(lessons):
    # SEG_DEBUG_DELAY=1 enables ?delay=S in the app, to simulate a stuck request.
    with lesson_server(lessons, LESSON, args=["--harakiri", "3"], env={"SEG_DEBUG_DELAY": "1"}) as server:
        before = worker_pids(server)
        try:
            r = segment(server, delay=20)
            outcome = r.status_code
        except requests.ConnectionError:
            outcome = "connection closed"
        assert outcome != 200, "a request that sleeps 20 s returned 200 although harakiri is 3 s"
        wait_for(lambda: "HARAKIRI" in server.log(200), timeout=10, what="HARAKIRI in the uWSGI log")
        replies = concurrently(lambda: segment(server), times=6, at_once=2)
        assert [r.status_code for r in replies] == [200] * 6, "the server did not recover after harakiri"
        # A new worker takes the killed one's place and serves. (Stopping before it
        # has answered once can cost the whole stop mercy: uWSGI 2.0's graceful stop
        # passes over a worker forked a moment before and then waits for it.)
        answered = set(readyz_of_every_worker(server, len(before)))
        assert len(answered - before) == 1 and len(answered & before) == len(before) - 1, \
            f"workers {sorted(before)} before harakiri, {sorted(answered)} after: one should be new"


def test_without_the_debug_switch_delay_is_ignored(uwsgi_server):
    r = segment(uwsgi_server, delay=30)
    assert r.status_code == 200 and float(r.headers["X-Inference-Ms"]) < 20_000, \
        "?delay must only work when SEG_DEBUG_DELAY=1 is set"


def test_the_tutorial_command_line_form_works(lessons, tmp_path):
    # uwsgi --http ... --wsgi-file ... --callable app: the one-liner before the .ini
    port = free_port()
    app_dir = lessons / "02_segmentation"
    server = started("uwsgi-cli", ["uwsgi", "--http", f"127.0.0.1:{port}", "--wsgi-file", "inference.py",
                                   "--callable", "app", "--master", "--die-on-term"],
                     run_dir=tmp_path, cwd=app_dir, url=f"http://127.0.0.1:{port}")
    try:
        server.wait_http("/readyz", timeout=90)
        assert segment(server).status_code == 200
    finally:
        stop(server)
