"""What measuring costs: images/s through lesson 05's stack (no metrics) and lesson 07's
(the same stack with metrics, both exporters and Prometheus scraping every second).

    python -m bench.metrics_overhead [--quick] [--out DIR]    # writes DIR/metrics_overhead.json

Both stacks run one after the other, never together, alternating (off, on,
off, on, ...) so that a machine busy with something else for a while does
not favour one of them. Each run: a few requests to warm up, then the same
closed-loop load through nginx (each of AT_ONCE threads sends its next photo
as soon as the last is answered). The median run of each stack counts.
With metrics on, Prometheus' own scrape_duration_seconds says what one
scrape of an upstream took.

run(out_dir, quick=False) -> dict is what the benchmark calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import requests

from workshop.harness import concurrently, lesson_server
from workshop.images import photo_bytes
from workshop.lessons import REFERENCE, ROOT

AT_ONCE = 4   # two upstreams of one worker each: enough to keep both busy
STACKS = {"off": "05_multi_upstream", "on": "07_metrics"}


def _load(url: str, image: bytes, count: int) -> dict:
    def one():
        started = time.perf_counter()
        r = requests.post(url + "/infer", data=image, params={"format": "png"}, timeout=60)
        return r.status_code, time.perf_counter() - started

    concurrently(one, times=2 * AT_ONCE, at_once=AT_ONCE)   # warm-up, not counted
    started = time.perf_counter()
    answers = concurrently(one, times=count, at_once=AT_ONCE)
    elapsed = time.perf_counter() - started
    failed = sum(status != 200 for status, _ in answers)
    return {"images_per_s": round(count / elapsed, 2), "seconds": round(elapsed, 2), "failed": failed,
            "p50_ms": round(1000 * statistics.median(s for _, s in answers), 1)}


def _scrape_ms(stack) -> float | None:
    """Mean time Prometheus took to scrape an upstream's /metrics over the last minute."""
    prometheus = f"http://127.0.0.1:{stack.env['PROMETHEUS_PORT']}"
    r = requests.get(prometheus + "/api/v1/query", timeout=10,
                     params={"query": 'avg(avg_over_time(scrape_duration_seconds{job="app"}[1m]))'})
    result = r.json()["data"]["result"]
    return round(1000 * float(result[0]["value"][1]), 2) if result else None


def run(out_dir: Path, quick: bool = False) -> dict:
    count, rounds = (40, 1) if quick else (150, 2)
    image = photo_bytes()
    runs: dict[str, list] = {"off": [], "on": []}
    scrape: list[float] = []
    for _ in range(rounds):
        for metrics, lesson in STACKS.items():
            with lesson_server(REFERENCE, lesson, timeout=150) as stack:
                if metrics == "on":   # Prometheus scrapes from the start: give it its first scrapes
                    time.sleep(3)
                runs[metrics].append(_load(stack.url, image, count))
                if metrics == "on" and (ms := _scrape_ms(stack)) is not None:
                    scrape.append(ms)
            print(f"[metrics_overhead] metrics {metrics}: {runs[metrics][-1]}", flush=True)
    off, on = (statistics.median(r["images_per_s"] for r in runs[k]) for k in ("off", "on"))
    result = {
        "requests_per_run": count, "at_once": AT_ONCE, "rounds": rounds,
        "off": {"lesson": STACKS["off"], "images_per_s": off, "runs": runs["off"]},
        "on": {"lesson": STACKS["on"], "images_per_s": on, "runs": runs["on"],
               "scrape_ms": statistics.median(scrape) if scrape else None},
        "overhead_pct": round(100 * (off - on) / off, 1),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short run of each stack")
    parser.add_argument("--out", default=str(ROOT / "out"), help="folder for metrics_overhead.json")
    args = parser.parse_args()
    result = run(Path(args.out), quick=args.quick)
    print(f"[metrics_overhead] off {result['off']['images_per_s']} images/s, on "
          f"{result['on']['images_per_s']} images/s: {result['overhead_pct']}% slower with metrics; "
          f"a scrape of an upstream took {result['on']['scrape_ms']} ms "
          f"({Path(args.out) / 'metrics_overhead.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
