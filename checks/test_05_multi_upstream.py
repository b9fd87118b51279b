"""Lesson 05: nginx spreads requests over two uWSGI servers, and survives losing one."""

import collections
import os
import re
import signal
import time

import pytest
import requests

from workshop import images, nginx
from workshop.harness import LoadRun, lesson_server, started, stop
from workshop.procs import descendants, wait_for

from checks.utils import mask_of, segment, upstream_kind

LESSON = "05_multi_upstream"


@pytest.fixture(scope="module")
def stack(lessons):
    with lesson_server(lessons, LESSON) as server:
        yield server


def test_both_upstreams_answer(stack):
    kinds = {upstream_kind(segment(stack)) for _ in range(4)}
    assert kinds == {"unix", "tcp"}, \
        f"answers came from {kinds}: the upstream block needs the unix socket and the TCP server"


def test_requests_one_at_a_time_alternate_evenly(stack):
    # /readyz goes through the same upstream block as /infer: the same balancing, no model work.
    # One at a time, both servers have none in flight, and least_conn goes round-robin among equals.
    counts = collections.Counter(upstream_kind(requests.get(stack.url + "/readyz", timeout=30)) for _ in range(100))
    assert set(counts) == {"unix", "tcp"}, f"only {dict(counts)} answered"
    assert all(45 <= n <= 55 for n in counts.values()), \
        f"each upstream should get 50 ± 5 of 100 sequential requests, got {dict(counts)}"


@pytest.mark.parametrize("width, height", [(1024, 768), (4000, 3000)])
def test_real_photos_cross_the_tls_socket(stack, width, height):
    # A phone's photo is hundreds of KB: many TLS records, not one (16 KB).
    photo = images.encode(images.photo_at(width, height))
    assert len(photo) > 64_000
    for _ in range(2):  # one to each upstream
        r = requests.post(stack.url + "/infer", data=photo, params={"format": "png"}, timeout=60)
        assert r.status_code == 200, f"a {len(photo) // 1000} KB photo got {r.status_code} via " \
            f"{r.headers.get('X-Upstream')}: {r.text[:200]}"
        assert mask_of(r).shape == (height, width)


def test_each_upstream_is_its_own_uwsgi(stack):
    pids = {}
    for _ in range(6):
        r = requests.get(stack.url + "/readyz", timeout=10)
        pids.setdefault(upstream_kind(r), set()).add(r.json()["pid"])
    assert pids.get("unix") and pids.get("tcp") and pids["unix"].isdisjoint(pids["tcp"])


def test_failover_loses_no_request_and_the_upstream_comes_back(stack):
    run_dir = stack.run_dir
    master = int((run_dir / "uwsgi2.pid").read_text())
    victims = [master, *descendants(master)]
    with LoadRun(lambda: segment(stack).status_code, count=10_000, at_once=6, max_seconds=150) as load:
        wait_for(lambda: load.done() >= 40, timeout=60, what="the load to start")
        for pid in victims:  # the TCP upstream dies hard, mid-load, like a crashed machine
            os.kill(pid, signal.SIGKILL)
        # nginx skips the dead upstream for fail_timeout, then sends it one request
        # again (refused: retried on the unix socket). The load runs past that.
        time.sleep(fail_timeout(stack) + 3)
        load.deadline = time.monotonic()   # the load's threads stop after their current request
    assert load.done() > 40 and not load.unfinished(), \
        f"{load.unfinished()} requests of the load never finished ({load.done()} did)"
    failed = collections.Counter(o for o in load.outcomes if o != 200)
    assert not failed, f"{sum(failed.values())} requests failed while an upstream died: {dict(failed)}. " \
        "Is `uwsgi_next_upstream error timeout non_idempotent;` set?"

    # Bring it back, the way run.sh started it; nginx tries it again after fail_timeout.
    again = started("uwsgi2-again", ["uwsgi", "--ini", "inference2.ini"], run_dir=run_dir,
                    env=stack.env, cwd=stack.lesson_dir)
    try:
        wait_for(lambda: upstream_kind(segment(stack)) == "tcp", timeout=60, interval=0.5,
                 what=f"the restarted TCP upstream to take traffic again (fail_timeout={fail_timeout(stack)}s)")
    finally:
        stop(again)


def fail_timeout(stack) -> int:
    """The seconds nginx skips a failed upstream: upstream.conf.template's fail_timeout, or nginx's 10 s."""
    found = re.search(r"fail_timeout=(\d+)s", (stack.lesson_dir / "upstream.conf.template").read_text())
    return int(found[1]) if found else 10


def test_round_robin_variant_is_valid(stack, tmp_path):
    # The lesson tells you to compare with round-robin: make sure commenting least_conn out gives a valid config.
    prefix = stack.run_dir / "nginx"
    site = (prefix / "conf.d" / "upstream.conf").read_text()
    assert "    least_conn;" in site
    (prefix / "conf.d" / "upstream.conf").write_text(site.replace("    least_conn;", "    # least_conn;"))
    try:
        result = nginx.test_config(prefix / "nginx.conf")
        assert result.returncode == 0, result.stderr
    finally:
        (prefix / "conf.d" / "upstream.conf").write_text(site)
