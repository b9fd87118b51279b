"""What measuring costs: images/s through lesson 05's stack (no metrics) and lesson 07's
(the same stack with metrics, both exporters and Prometheus scraping every second).

    python -m bench.metrics_overhead [--quick] [--out DIR]    -> DIR/metrics_overhead.json (default: out/)

How the two stacks take turns, and which of its numbers to trust: the guide's Benchmarks page.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import requests

from bench.measure import child_result, median, options, post, run_meta, summary, written
from workshop.harness import concurrently, lesson_server
from workshop.images import photo_bytes
from workshop.lessons import REFERENCE, ROOT

AT_ONCE = 4   # two upstreams of one worker each: enough to keep both busy
STACKS = {"off": "05_multi_upstream", "on": "07_metrics"}


def _load(url: str, image: bytes, count: int) -> dict:
    concurrently(lambda: post(url, image), times=2 * AT_ONCE, at_once=AT_ONCE)   # warm-up, not counted
    started = time.perf_counter()
    answers = concurrently(lambda: post(url, image), times=count, at_once=AT_ONCE)
    elapsed = time.perf_counter() - started
    return {"images_per_s": round(count / elapsed, 2), "seconds": round(elapsed, 2),
            "failed": sum(status != 200 for status, _ in answers),
            "p50_ms": summary([1000 * s for _, s in answers])["p50"]}


def _scrape_ms(stack) -> float | None:
    """Mean time Prometheus took to scrape an upstream's /metrics over the last minute."""
    prometheus = f"http://127.0.0.1:{stack.env['PROMETHEUS_PORT']}"
    r = requests.get(prometheus + "/api/v1/query", timeout=10,
                     params={"query": 'avg(avg_over_time(scrape_duration_seconds{job="app"}[1m]))'})
    result = r.json()["data"]["result"]
    return round(1000 * float(result[0]["value"][1]), 2) if result else None


# Run in a process of its own (multiprocess mode is chosen when prometheus_client is
# imported, PROMETHEUS_MULTIPROC_DIR set): lesson 07's middleware and stage timer
# around a WSGI app that does nothing but call three stages, against the same app bare.
PER_REQUEST = r"""
import json, os, sys, timeit
lessons, calls = sys.argv[1], int(sys.argv[2])
sys.path[:0] = [os.path.join(lessons, "07_metrics"), os.path.join(lessons, "02_segmentation")]
import instrumented

def bare_stage():
    pass

def make_app(stage):
    def app(environ, start_response):
        stage(); stage(); stage()          # decode, model, encode
        start_response("200 OK", [])
        return [b""]
    return app

environ = {"PATH_INFO": "/infer", "CONTENT_LENGTH": "30000"}
bare = make_app(bare_stage)
measured = instrumented.measured(make_app(instrumented.timed("model", bare_stage)))
def per_call(app):
    return min(timeit.repeat(lambda: app(environ, lambda *a: None), number=calls, repeat=5)) / calls
print("RESULT " + json.dumps({"bare_us": per_call(bare) * 1e6, "measured_us": per_call(measured) * 1e6}))
"""


def _per_request_us(calls: int, lessons: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="ws-", dir="/tmp") as work:   # the child's log and metrics files
        times = child_result(Path(work), "per-request", ["-c", PER_REQUEST, str(lessons), str(calls)], timeout=300,
                             env={"PROMETHEUS_MULTIPROC_DIR": work})
    return {"added_us": round(times["measured_us"] - times["bare_us"], 1), "calls": calls}


def run(out_dir: Path, quick: bool = False, lessons: Path = REFERENCE) -> dict:
    (count, rounds), t0, image = (40, 1) if quick else (150, 2), time.monotonic(), photo_bytes()
    runs: dict[str, list] = {"off": [], "on": []}
    scrape: list[float] = []
    for round_ in range(rounds):
        order = list(STACKS.items())
        for metrics, lesson in (order if round_ % 2 == 0 else order[::-1]):
            with lesson_server(lessons, lesson, timeout=150) as stack:
                if metrics == "on":   # Prometheus scrapes from the start: give it its first scrapes
                    time.sleep(3)
                runs[metrics].append(_load(stack.url, image, count))
                if metrics == "on" and (ms := _scrape_ms(stack)) is not None:
                    scrape.append(ms)
            print(f"[metrics_overhead] metrics {metrics}: {runs[metrics][-1]}", flush=True)
    off, on = (round(median([r["images_per_s"] for r in runs[k]]), 2) for k in ("off", "on"))
    return written(out_dir, "metrics_overhead.json", {
        "requests_per_run": count, "at_once": AT_ONCE, "rounds": rounds,
        "off": {"lesson": STACKS["off"], "images_per_s": off, "runs": runs["off"]},
        "on": {"lesson": STACKS["on"], "images_per_s": on, "runs": runs["on"],
               "scrape_ms": round(median(scrape), 2) if scrape else None},
        "overhead_pct": round(100 * (off - on) / off, 1),
        "per_request": _per_request_us(2000 if quick else 20000, lessons), "meta": run_meta(quick, t0)})


def main(argv: list[str] | None = None) -> int:
    args = options(__doc__, "one short run of each stack", "folder for metrics_overhead.json", argv, ROOT / "out")
    result = run(args.out, quick=args.quick, lessons=args.lessons)
    print(f"[metrics_overhead] off {result['off']['images_per_s']} images/s, on "
          f"{result['on']['images_per_s']} images/s: {result['overhead_pct']}% slower with metrics; "
          f"a scrape of an upstream took {result['on']['scrape_ms']} ms; the instrumentation adds "
          f"{result['per_request']['added_us']} µs to a request "
          f"({args.out / 'metrics_overhead.json'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
