"""Lesson 05: more requests than the pool can queue get a fast, clear 503, never a hang or a reset.

Each uWSGI server queues `listen` connections (lesson 03's workers.ini) and
nginx sends each at most `max_conns` (upstream.conf.template). At four
times the queue's depth in concurrent connections, every answer must be a
200 or a JSON 503 with Retry-After.
"""

import collections
import json
import re

import pytest

from workshop import nginx, traffic
from workshop.harness import lesson_server, queue_depth
from workshop.procs import wait_for

from checks.utils import PHOTO_256, segment

LESSON = "05_multi_upstream"
TIMES_THE_QUEUE = 4


@pytest.fixture(scope="module")
def stack(lessons):
    with lesson_server(lessons, LESSON) as server:
        yield server


def max_conns(server) -> list[int]:
    config = nginx.effective(server.run_dir / "nginx" / "nginx.conf", env=server.env)
    return [int(n) for n in re.findall(r"^\s*server\s+\S+[^;]*\bmax_conns=(\d+)", config, re.M)]


def test_nginx_sends_each_server_no_more_than_its_queue_holds(stack):
    queues, caps = queue_depth(stack), max_conns(stack)
    assert len(queues) == 2, f"expected both uWSGI servers to log their listen backlog, found {queues}"
    assert len(caps) == 2, \
        "every server of the pool needs max_conns (upstream.conf.template): without it nginx queues " \
        "more requests at a server than it can hold, and they wait, time out or are refused"
    assert sorted(caps) == sorted(queues), \
        f"nginx's max_conns {caps} should be each server's listen queue {queues} (workers.ini)"


def test_four_times_the_queue_gets_200s_and_fast_503s_only(stack):
    depth = sum(queue_depth(stack))
    answers = traffic.burst(stack.url + "/infer?format=png", PHOTO_256, TIMES_THE_QUEUE * depth, timeout=90)
    kinds = collections.Counter(a.status for a in answers)
    other = {k: n for k, n in kinds.items() if k not in (200, 503)}
    assert not other, \
        f"{TIMES_THE_QUEUE * depth} requests at once (4x the queues' {depth}) got {dict(kinds)}: only 200 " \
        "and 503 should come back (resets, timeouts or 502s mean nginx queued more than uWSGI holds)"
    assert kinds[200] >= 1 and kinds[503] >= 1, f"4x the queue should give both 200s and 503s: {dict(kinds)}"
    busy = [a for a in answers if a.status == 503]
    for a in busy:
        assert a.headers.get("retry-after", "").isdigit(), "a 503 should say when to come back (Retry-After)"
        assert a.headers.get("content-type", "").startswith("application/json") and json.loads(a.body)["error"]
    slowest_503 = max(a.seconds for a in busy)
    slowest_200 = max(a.seconds for a in answers if a.status == 200)
    assert slowest_503 < 10, \
        f"the slowest 503 took {slowest_503:.1f} s: nginx should refuse at once, not after a wait in a queue"
    assert slowest_503 <= slowest_200, "the 503s should come back before the queued requests are served"


def test_the_stack_serves_again_right_after(stack):
    # Refusing with max_conns marks no server as failed: the next request is served.
    wait_for(lambda: segment(stack).status_code == 200, timeout=30, interval=0.5,
             what="a normal request to succeed after the overload")
