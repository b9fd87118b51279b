"""Lesson 04: slow and greedy clients cannot deny service to the others.

A thousand connections that trickle their headers or stall their body must
not keep a normal client out, and nginx must cut them after the timeouts
the template sets. One client address over its share gets a JSON 429.
Loopback only: 127.0.0.2, 127.0.0.3, ... are other clients to nginx
(127.0.0.1, this machine itself, is never limited).
"""

import collections
import json
import re
import time

import pytest

from workshop import nginx, traffic
from workshop.harness import lesson_server

from checks.utils import segment

LESSON = "04_nginx"
SLOW = 1000


@pytest.fixture(scope="module")
def stack(lessons):
    with lesson_server(lessons, LESSON) as server:
        yield server


def effective(server) -> str:
    return nginx.effective(server.run_dir / "nginx" / "nginx.conf", env=server.env)


def seconds_of(config: str, directive: str, default: int = 60) -> int:
    found = re.findall(rf"^\s*{directive}\s+(\d+)s?;", config, re.M)
    return int(found[-1]) if found else default


def port(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def test_a_thousand_slow_clients_do_not_keep_a_normal_one_out(stack):
    config = effective(stack)
    header_timeout, body_timeout = seconds_of(config, "client_header_timeout"), seconds_of(config, "client_body_timeout")
    for name, timeout in (("header", header_timeout), ("body", body_timeout)):
        assert timeout <= 20, \
            f"client_{name}_timeout is {timeout} s: a slow client may hold a connection that long " \
            "(nginx's default is 60 s); the template should set a short one"
    hold = max(header_timeout, body_timeout) + 20
    # 100 addresses with 5 + 5 connections each: within any per-client limit.
    sources = traffic.loopback_sources(100)
    headers = traffic.SlowClients(port(stack), SLOW // 2, kind="header", every=2, hold=hold, sources=sources)
    bodies = traffic.SlowClients(port(stack), SLOW // 2, kind="body", every=None, hold=hold, sources=sources)
    with headers, bodies:
        assert headers.opened + bodies.opened == SLOW, \
            f"only {headers.opened + bodies.opened} of {SLOW} slow connections could be opened"
        started = time.monotonic()
        r = segment(stack)
        took = time.monotonic() - started
        assert r.status_code == 200, \
            f"with {SLOW} slow connections open, a normal request got {r.status_code}: nginx is out of " \
            f"connections? ({'worker_connections are not enough' in stack.log(200) and 'yes, its log says so' or 'see its log'})"
        assert took < 10, f"with {SLOW} slow connections open, a normal request took {took:.1f} s"
        dropped = headers.ended() + bodies.ended()
        assert not dropped, \
            f"nginx dropped {dropped} of the {SLOW} slow connections at once" + \
            (" (its log: 'worker_connections are not enough'): give it more worker_connections"
             if "worker_connections are not enough" in stack.log(400) else "")
        headers.wait(hold + 10)
        bodies.wait(hold + 10)
    for name, clients, timeout in (("header", headers, header_timeout), ("body", bodies, body_timeout)):
        ends = collections.Counter(e.how for e in clients.outcomes)
        assert ends.get("still open", 0) == 0, \
            f"{ends['still open']} clients that trickle their {name} were still open after {hold} s: " \
            f"nginx should cut them after client_{name}_timeout ({timeout} s)"
        cut = [e.seconds for e in clients.outcomes]
        assert min(cut) >= timeout - 1, \
            f"a slow {name} was cut after {min(cut):.1f} s, before client_{name}_timeout ({timeout} s)"
        assert max(cut) <= timeout + 10, \
            f"a slow {name} was cut only after {max(cut):.1f} s (client_{name}_timeout is {timeout} s)"
    assert "worker_connections are not enough" not in stack.log(400)


def test_one_client_over_its_connections_gets_json_429(stack):
    found = re.search(r"^\s*limit_conn\s+\S+\s+(\d+);", effective(stack), re.M)
    assert found, "the template sets no limit_conn: one client may take every connection nginx has"
    limit = int(found[1])
    # The 429s come as soon as the headers are in; the others would stall until
    # client_body_timeout (the check above): 5 s tells them apart.
    with traffic.SlowClients(port(stack), limit + 5, kind="body", every=None, hold=5,
                             sources=["127.0.0.77"]) as greedy:
        greedy.wait(10)
    refused = [e.answer for e in greedy.outcomes if e.how == "answered"]
    assert len(refused) == 5, \
        f"{limit + 5} uploads at once from one address, limit_conn {limit}: expected 5 refused, " \
        f"got {collections.Counter(e.how for e in greedy.outcomes)}"
    for answer in refused:
        assert answer.status == 429, f"over limit_conn got {answer.status}: 429 Too Many Requests is the answer"
        assert answer.headers.get("retry-after", "").isdigit(), "a 429 should say when to come back (Retry-After)"
        assert json.loads(answer.body)["error"], "a 429 should be JSON, like every error"
    assert segment(stack).status_code == 200, "this machine (127.0.0.1) should not be limited"


def test_one_client_over_its_rate_gets_json_429_and_this_machine_none(stack):
    url = stack.url + "/healthz"
    fast = [traffic.one(url, source="127.0.0.88") for _ in range(60)]
    kinds = collections.Counter(a.status for a in fast)
    assert kinds.get(429), f"60 requests in a row from one address got {dict(kinds)}: limit_req should refuse some"
    assert set(kinds) == {200, 429}, f"only 200 and 429 expected: {dict(kinds)}"
    first = next(a for a in fast if a.status == 429)
    assert first.headers.get("retry-after", "").isdigit() and json.loads(first.body)["error"]
    local = collections.Counter(traffic.one(url).status for _ in range(60))
    assert local == {200: 60}, f"60 requests in a row from 127.0.0.1 got {dict(local)}: this machine is not limited"
