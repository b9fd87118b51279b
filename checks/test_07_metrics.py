"""Lesson 07: the numbers of every worker add up, Prometheus scrapes each upstream, the alerts fire.

One stack for the whole file (lesson 07's run.sh: lesson 05's stack, the
exporters and Prometheus, all on free loopback ports). The check that kills
upstream 2 for good comes last.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from workshop.harness import LoadRun, concurrently, lesson_server, started, stop, uwsgi_stats
from workshop.procs import descendants, wait_for

from checks.utils import PHOTO_256, every_target_up, prometheus_api, segment, upstream_kind

LESSON = "07_metrics"
UPSTREAMS = {"uwsgi1": "unix", "uwsgi2": "tcp"}   # Prometheus' label -> X-Upstream's kind


@pytest.fixture(scope="module")
def stack(lessons):
    # Two workers per upstream (run.sh passes extra arguments to both uwsgi): the
    # numbers of several processes must add up. SEG_DEBUG_DELAY=1: ?delay=S keeps
    # a request busy on purpose (lesson 03's harakiri demo).
    with lesson_server(lessons, LESSON, args=["--processes", "2"], env={"SEG_DEBUG_DELAY": "1"},
                       timeout=120) as server:
        yield server


def prometheus(stack) -> str:
    return f"http://127.0.0.1:{stack.env['PROMETHEUS_PORT']}"


def api(stack, path: str, **params) -> dict:
    return prometheus_api(prometheus(stack), path, **params)


def query(stack, promql: str) -> dict[str, float]:
    """{upstream label (or ''): value} of an instant query that has one series per upstream."""
    result = api(stack, "query", query=promql)["result"]
    found = {s["metric"].get("upstream", ""): float(s["value"][1]) for s in result}
    assert len(found) == len(result), f"{promql} has several series per upstream: sum them by upstream"
    return found


def scrape(stack, upstream: str) -> list:
    """The samples one upstream's own /metrics answers (its mule, not nginx)."""
    port = stack.env["METRICS_PORT1" if upstream == "uwsgi1" else "METRICS_PORT2"]
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples: list, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


COUNTED = [  # (what, sample name, labels): what a POST /infer adds to an upstream's numbers
    ("requests answered 200", "seg_requests_total", {"route": "/infer", "status": "200"}),
    ("requests answered 400", "seg_requests_total", {"route": "/infer", "status": "400"}),
    ("request latency observations", "seg_request_duration_seconds_count", {"route": "/infer"}),
    ("decode stage observations", "seg_stage_duration_seconds_count", {"stage": "decode"}),
    ("model stage observations", "seg_stage_duration_seconds_count", {"stage": "model"}),
    ("encode stage observations", "seg_stage_duration_seconds_count", {"stage": "encode"}),
    ("image size observations", "seg_image_bytes_count", {}),
]


def counts(stack) -> dict[str, dict[str, float]]:
    """{upstream: {what: value}} for every COUNTED number."""
    found = {}
    for upstream in UPSTREAMS:
        samples = scrape(stack, upstream)
        found[upstream] = {what: total(samples, name, **labels) for what, name, labels in COUNTED}
        found[upstream]["in flight"] = total(samples, "seg_requests_in_flight")
    return found


def grown(before: dict, after: dict, upstream: str | None = None) -> dict[str, float]:
    """How much each number grew, for one upstream or summed over both."""
    names = [upstream] if upstream else list(UPSTREAMS)
    return {what: sum(after[u][what] - before[u][what] for u in names) for what, _, _ in COUNTED}


def wait_until(predicate, timeout: float, what: str):
    """wait_for that fails the check (with what it was waiting for) instead of raising TimeoutError."""
    try:
        return wait_for(predicate, timeout=timeout, interval=0.5, what=what)
    except TimeoutError as exc:
        pytest.fail(str(exc))


# ------------------------------------------------------------ Prometheus and its targets

def test_prometheus_scrapes_every_target_directly(stack):
    found = every_target_up(prometheus(stack), timeout=30, interval=0.5)
    jobs = collections.Counter(t["labels"]["job"] for t in found)
    assert jobs == {"app": 2, "uwsgi": 1, "nginx": 1, "prometheus": 1}, f"targets by job: {dict(jobs)}"
    app = {t["labels"]["upstream"]: t["scrapeUrl"] for t in found if t["labels"]["job"] == "app"}
    assert set(app) == set(UPSTREAMS), f"the app's targets should be one per upstream: {app}"
    for upstream, url in app.items():
        assert url.startswith("http://127.0.0.1:") and not url.startswith(stack.url), \
            f"{upstream} is scraped at {url}: each upstream on a loopback port of its own, never through nginx"
    assert set(query(stack, 'up{job="app"}').values()) == {1.0}


def test_rules_are_loaded_and_shown(stack):
    rules = {r["name"]: r for g in api(stack, "rules")["groups"] for r in g["rules"]}
    for quantile in ("p50", "p95", "p99"):
        assert f"upstream:seg_request_duration_seconds:{quantile}" in rules, \
            f"no recording rule for the {quantile} latency per upstream: {sorted(rules)}"
    assert "upstream:seg_requests:rate5s" in rules, f"no recording rule for the request rate: {sorted(rules)}"
    assert "UpstreamDown" in rules and rules["UpstreamDown"]["type"] == "alerting", \
        f"no alert UpstreamDown in rules.yml: {sorted(rules)}"
    assert "up" in rules["UpstreamDown"]["query"], rules["UpstreamDown"]["query"]
    assert "InferenceSlow" in rules, f"no alert InferenceSlow: {sorted(rules)}"
    page = requests.get(prometheus(stack) + "/classic/alerts", timeout=10)
    assert page.status_code == 200 and "UpstreamDown" in page.text and "InferenceSlow" in page.text, \
        "Prometheus' own alerts page does not show the two alerts"


# ------------------------------------------------------------ every count adds up

def test_counts_add_up_over_workers_and_upstreams(stack):
    before = counts(stack)
    answers = concurrently(lambda: segment(stack), times=40, at_once=4)
    bad = concurrently(lambda: segment(stack, data=b"not an image"), times=4, at_once=2)
    after = counts(stack)
    assert [r.status_code for r in answers] == [200] * 40 and [r.status_code for r in bad] == [400] * 4
    served = collections.Counter(upstream_kind(r) for r in answers)
    workers = {kind: {r.headers["X-Worker-Pid"] for r in answers if upstream_kind(r) == kind} for kind in served}
    assert all(len(pids) == 2 for pids in workers.values()), \
        f"both workers of each upstream should have answered some of 4 requests at a time: {workers}"
    expected = {"requests answered 200": 40, "requests answered 400": 4, "request latency observations": 44,
                "decode stage observations": 44, "model stage observations": 40,
                "encode stage observations": 40, "image size observations": 44}
    assert grown(before, after) == expected, \
        "after 40 good and 4 bad uploads through nginx, the numbers of both upstreams together grew by " \
        f"{grown(before, after)}, not {expected}: is every worker's number counted once (multiprocess mode)?"
    for upstream, kind in UPSTREAMS.items():
        got = grown(before, after, upstream)["requests answered 200"]
        assert got == served[kind], \
            f"{upstream}'s /metrics counts {got} answers, nginx says it answered {served[kind]} " \
            f"(X-Upstream): a scrape must reach its own upstream, not the round-robin"
        assert after[upstream]["in flight"] == 0, f"{upstream} still counts {after[upstream]['in flight']} in flight"


def test_model_built_once_per_upstream_and_named(stack):
    for upstream in UPSTREAMS:
        samples = scrape(stack, upstream)
        assert total(samples, "seg_model_builds_total") == 1, \
            f"{upstream} (two workers) reports {total(samples, 'seg_model_builds_total')} model builds: " \
            "its master builds the model once and the workers share it"
        info = [s.labels for s in samples if s.name == "seg_model_info" and s.value == 1]
        assert info == [{"weights": "random", "precision": "fp32", "device": "cpu", "torch_threads": "1"}], \
            f"{upstream}'s seg_model_info says {info}"


def test_metrics_are_not_public(stack):
    public = requests.get(stack.url + "/metrics", timeout=10)
    assert public.status_code == 404 and "seg_requests_total" not in public.text, \
        f"nginx's public listener answers /metrics with {public.status_code}: the metrics must stay on loopback ports"
    assert requests.get(stack.url + "/stub_status", timeout=10).status_code == 404
    status = requests.get(f"http://127.0.0.1:{stack.env['NGINX_STATUS_PORT']}/stub_status", timeout=10)
    assert status.status_code == 200 and "Active connections" in status.text
    site = (stack.run_dir / "nginx" / "conf.d" / "status.conf").read_text()
    assert f"listen 127.0.0.1:{stack.env['NGINX_STATUS_PORT']};" in site, "stub_status must listen on 127.0.0.1 only"
    nginx = requests.get(f"http://127.0.0.1:{stack.env['NGINX_EXPORTER_PORT']}/metrics", timeout=10).text
    assert "nginx_up 1" in nginx and "nginx_http_requests_total" in nginx, "the nginx exporter does not see nginx"


def test_a_killed_worker_loses_no_count_and_leaves_nothing_in_flight(stack):
    before = counts(stack)
    result = []
    slow = threading.Thread(target=lambda: result.append(segment(stack, delay=6).status_code))
    slow.start()   # a request that stays 6 s in its worker
    busy = wait_until(lambda: next((u for u, c in counts(stack).items() if c["in flight"] == 1), None),
                      timeout=20, what="a request in flight in one upstream")
    stats = stack.run_dir / f"stats{busy[-1]}.sock"
    respawned = f'sum by (upstream) (uwsgi_worker_respawns_total{{upstream="{busy}"}})'
    respawns = query(stack, respawned).get(busy, 0)
    worker = next(w for w in uwsgi_stats(stats)["workers"] if w["status"] == "busy")
    os.kill(worker["pid"], signal.SIGKILL)   # mid-request: nginx passes that request to the other upstream
    slow.join(timeout=60)
    assert result == [200], f"the request whose worker was killed got {result}"

    def replaced():
        w = next(w for w in uwsgi_stats(stats)["workers"] if w["id"] == worker["id"])
        return w["pid"] != worker["pid"] and w["status"] == "idle"
    wait_until(replaced, timeout=60, what="uWSGI to replace the killed worker")
    answers = concurrently(lambda: segment(stack), times=10, at_once=2)
    assert [r.status_code for r in answers] == [200] * 10
    after = counts(stack)
    assert grown(before, after)["requests answered 200"] == 11, \
        f"11 answers, one worker killed with SIGKILL: the counts grew by {grown(before, after)}. " \
        "A dead worker's counts must stay in the sum (its files stay), and be counted once."
    assert after[busy]["in flight"] == 0, \
        f"the worker killed mid-request still counts as {after[busy]['in flight']} request in flight: " \
        "the live gauges of a dead process must be dropped (multiprocess.mark_process_dead)"
    wait_until(lambda: query(stack, respawned).get(busy, 0) > respawns,
               timeout=20, what="the uWSGI exporter to count the respawn")


# ------------------------------------------------------------ the alerts

def alerts(stack, name: str) -> list[dict]:
    return [a for a in api(stack, "alerts")["alerts"] if a["labels"]["alertname"] == name]


def test_slow_answers_raise_the_latency_alert(stack):
    # The check before left one slow request in the last seconds' numbers: let them pass.
    wait_until(lambda: not alerts(stack, "InferenceSlow"), timeout=30, what="InferenceSlow to be inactive")
    with LoadRun(lambda: segment(stack, delay=2.5).status_code, count=16, at_once=2, max_seconds=90) as load:
        wait_until(lambda: any(a["state"] == "firing" for a in alerts(stack, "InferenceSlow")), timeout=60,
                   what="InferenceSlow to fire while every answer takes 2.5 s (p99 > 2 s for 10 s)")
        load.deadline = time.monotonic()   # fired: the threads stop after their current request
    assert set(load.outcomes) == {200}, collections.Counter(load.outcomes)


def test_upstream_down_alert_fires_and_resolves(stack):
    assert not alerts(stack, "UpstreamDown"), "UpstreamDown is active before anything was killed"
    master = int((stack.run_dir / "uwsgi2.pid").read_text())
    for pid in [master, *descendants(master)]:   # upstream 2 dies hard: master, worker, metrics mule
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: any(a["state"] == "firing" and a["labels"].get("upstream") == "uwsgi2"
                           for a in alerts(stack, "UpstreamDown")), timeout=30,
               what="UpstreamDown to fire for uwsgi2 (rules.yml promises 3 s, plus a scrape and an evaluation)")
    assert query(stack, 'uwsgi_up')["uwsgi2"] == 0, "the uWSGI exporter should see upstream 2's stats socket gone"
    assert all(segment(stack).status_code == 200 for _ in range(4)), "nginx should serve from upstream 1 meanwhile"

    again = started("uwsgi2-again", ["uwsgi", "--ini", "inference2.ini"], run_dir=stack.run_dir,
                    env={**stack.env, "TCP_HOST": "127.0.0.1"}, cwd=stack.lesson_dir)
    try:
        wait_until(lambda: not alerts(stack, "UpstreamDown") and query(stack, 'up{job="app"}').get("uwsgi2") == 1,
                   timeout=120, what="UpstreamDown to resolve once upstream 2 is back")
    finally:
        stop(again)
