"""Lesson 03: a stop signal is a graceful stop, and a stuck request cannot hold it up forever.

SIGTERM is how Docker, systemd and Kubernetes end a server: requests in
flight at that moment must still get their answer. The app's debug delay
(SEG_DEBUG_DELAY=1, ?delay=S) makes requests that are in flight for sure.
"""

import os
import re
import signal

from workshop.harness import LoadRun, lesson_server
from workshop.procs import STOP_MERCY, descendants, running, wait_for

from checks.utils import busy_workers, outcome

LESSON = "03_uwsgi"
DEBUG = {"SEG_DEBUG_DELAY": "1"}


def wait_gone(pids: list[int], timeout: float, what: str) -> None:
    wait_for(lambda: not any(running(pid) for pid in pids), timeout=timeout, interval=0.1, what=what)


def test_requests_in_flight_finish_when_the_master_gets_sigterm(lessons):
    with lesson_server(lessons, LESSON, args=["--processes", "2"], env=DEBUG) as server:
        master = int((server.run_dir / "uwsgi.pid").read_text())
        tree = [master, *descendants(master)]
        with LoadRun(lambda: outcome(server, delay=3), count=2, at_once=2, max_seconds=60) as flight:
            wait_for(lambda: busy_workers(server) == 2, timeout=30, what="both workers to be busy")
            os.kill(master, signal.SIGTERM)   # what `docker stop` sends
        assert flight.outcomes == [200, 200], \
            f"requests in flight when uWSGI got SIGTERM ended as {flight.outcomes}: a stop must let " \
            "them finish (workers.ini: hook-master-start = unix_signal:15 gracefully_kill_them_all, " \
            "not die-on-term, which ends the workers at once)"
        wait_gone(tree, STOP_MERCY, "uWSGI's master and workers to exit after SIGTERM")


def test_ctrl_c_lets_requests_finish_and_ends_a_stuck_one_after_the_mercy(lessons):
    # A short mercy for the check; the lesson's own is STOP_MERCY s (common.sh).
    mercy = 5
    env = {**DEBUG, "STOP_MERCY": str(mercy)}
    with lesson_server(lessons, LESSON, args=["--processes", "2"], env=env) as server:
        tree = [server.pid, *descendants(server.pid)]
        slow = LoadRun(lambda: outcome(server, delay=2), count=1, at_once=1, max_seconds=60)
        stuck = LoadRun(lambda: outcome(server, delay=600), count=1, at_once=1, max_seconds=60)
        with slow, stuck:
            wait_for(lambda: busy_workers(server) == 2, timeout=30, what="both workers to be busy")
            os.kill(server.pid, signal.SIGINT)   # Ctrl-C in run.sh's terminal
            wait_gone(tree, mercy + 15, f"run.sh to stop everything within its mercy ({mercy} s)")
        assert slow.outcomes == [200], \
            f"a request in flight when Ctrl-C was pressed ended as {slow.outcomes}: it should finish"
        assert stuck.outcomes and stuck.outcomes[0] != 200, "the stuck request was answered?"
        assert "killing it" in server.log(50), \
            "run.sh should say that it killed what was still running after the mercy"
        assert not list(server.run_dir.glob("*.sock")), "run.sh should remove the sockets when it stops"


def ini_option(path, name: str) -> str | None:
    found = re.findall(rf"^{re.escape(name)}\s*=\s*(.+?)\s*$", path.read_text(), re.M)
    return found[-1] if found else None


def test_the_mercy_is_one_number(lessons):
    # workers.ini says how long a worker may take to go, run.sh waits as long
    # before it kills, and the checks' own fallback waits longer still.
    workers = ini_option(lessons / LESSON / "workers.ini", "worker-reload-mercy")
    common = re.search(r"STOP_MERCY:-(\d+)", (lessons / "common.sh").read_text())
    assert workers and common, "workers.ini sets worker-reload-mercy and common.sh a default STOP_MERCY"
    assert int(workers) == int(common[1]) == STOP_MERCY, \
        f"worker-reload-mercy = {workers} (workers.ini), STOP_MERCY {common[1]} (common.sh) and " \
        f"{STOP_MERCY} (workshop/procs.py) should be the same mercy"
    assert int(workers) > int(ini_option(lessons / LESSON / "workers.ini", "harakiri")), \
        "the mercy must leave a request its harakiri time to finish"
