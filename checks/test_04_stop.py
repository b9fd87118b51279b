"""Lesson 04: stopping the stack loses no request that is in flight.

uWSGI stops gracefully on SIGTERM (workers.ini) and nginx on SIGQUIT
(run.sh sends each its own), so a request that is being served when the
stop begins still gets its 200 through nginx; then everything is gone
within the mercy (STOP_MERCY).
"""

import os
import re
import signal

from workshop.harness import LoadRun, lesson_server
from workshop.procs import STOP_MERCY, descendants, running, wait_for

from checks.utils import busy_workers, outcome

LESSON = "04_nginx"
DEBUG = {"SEG_DEBUG_DELAY": "1"}


def test_requests_in_flight_through_nginx_finish_when_uwsgi_gets_sigterm(lessons):
    with lesson_server(lessons, LESSON, args=["--processes", "2"], env=DEBUG) as server:
        master = int((server.run_dir / "uwsgi.pid").read_text())
        with LoadRun(lambda: outcome(server, delay=3), count=2, at_once=2, max_seconds=60) as flight:
            wait_for(lambda: busy_workers(server) == 2, timeout=30, what="both workers to be busy")
            os.kill(master, signal.SIGTERM)
        assert flight.outcomes == [200, 200], \
            f"requests in flight when uWSGI got SIGTERM ended as {flight.outcomes} through nginx " \
            "(a 502 is nginx seeing uWSGI cut them): uWSGI must stop gracefully (workers.ini)"


def test_ctrl_c_stops_nginx_and_uwsgi_without_cutting_a_request(lessons):
    with lesson_server(lessons, LESSON, args=["--processes", "2"], env=DEBUG) as server:
        tree = [server.pid, *descendants(server.pid)]
        with LoadRun(lambda: outcome(server, delay=3), count=2, at_once=2, max_seconds=60) as flight:
            wait_for(lambda: busy_workers(server) == 2, timeout=30, what="both workers to be busy")
            os.kill(server.pid, signal.SIGINT)   # Ctrl-C in run.sh's terminal
        assert flight.outcomes == [200, 200], \
            f"requests in flight when Ctrl-C was pressed ended as {flight.outcomes}: run.sh should stop " \
            "nginx with QUIT (TERM drops the requests in flight) and uWSGI with TERM"
        wait_for(lambda: not any(running(pid) for pid in tree), timeout=STOP_MERCY + 10, interval=0.2,
                 what=f"nginx, uWSGI and run.sh to be gone within the mercy ({STOP_MERCY} s)")
        assert "killing it" not in server.log(50), "nothing should have needed a SIGKILL"


def test_systemd_waits_the_mercy_and_signals_only_the_master(lessons):
    # systemd's defaults would send SIGTERM to every process of the service
    # (KillMode=control-group): each worker would end at once, cutting its
    # request. And its stop timeout must be the same mercy.
    unit = (lessons / LESSON / "production" / "uwsgi-inference.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    assert settings.get("KillMode") == "mixed", \
        "uwsgi-inference.service needs KillMode=mixed: SIGTERM to uWSGI's master only, SIGKILL to what is left"
    assert settings.get("TimeoutStopSec") == str(STOP_MERCY), \
        f"uwsgi-inference.service should wait the mercy, TimeoutStopSec={STOP_MERCY}, before it kills"
