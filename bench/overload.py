"""More requests at once than lesson 05 can queue: what comes back, and how fast.

    python -m bench.overload            1x, 2x and 4x the queue's depth, 3 rounds each
    python -m bench.overload --quick    1 round each
    python -m bench.overload --out DIR  write overload.json there (default: bench/results)

What it sends and what it reports: the guide's Benchmarks page.
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path

from bench.measure import options
from workshop import images, traffic
from workshop.harness import lesson_server, queue_depth, uwsgi_stats
from workshop.lessons import REFERENCE
from workshop.procs import wait_for

LESSON = "05_multi_upstream"
FACTORS = (1, 2, 4)
PHOTO = images.encode(images.photo().resize((256, 256)), "JPEG")


def percentile(values: list[float], q: float) -> float | None:
    """The round(q/100 * n)-th smallest of n values. (measure.summary, for the benchmark's stages,
    takes the one at position round(q/100 * (n - 1)) instead: on a short series the two can differ
    by one place.)"""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def idle(server) -> bool:
    """Both servers have no request in flight (the previous round is over)."""
    both = [uwsgi_stats(server.run_dir / sock) for sock in ("stats1.sock", "stats2.sock")]
    return not any(s.get("listen_queue") or any(w["status"] != "idle" for w in s["workers"]) for s in both)


def summary(answers: list[traffic.Answer], connections: int, depth: int) -> dict:
    kinds = collections.Counter(str(a.status) for a in answers)
    ok = [a.seconds for a in answers if a.status == 200]
    busy = [a for a in answers if a.status == 503]
    return {
        "connections": connections,
        "times_the_queue": connections / depth,
        "outcomes": dict(kinds),
        "ok": len(ok),
        "busy_503": len(busy),
        "other": sum(n for k, n in kinds.items() if k not in ("200", "503")),
        "p50_ok_s": round(percentile(ok, 50), 3) if ok else None,
        "p99_ok_s": round(percentile(ok, 99), 3) if ok else None,
        "max_ok_s": round(max(ok), 3) if ok else None,
        "first_503_s": round(min(a.seconds for a in busy), 4) if busy else None,
        "last_503_s": round(max(a.seconds for a in busy), 4) if busy else None,
        "busy_with_retry_after": sum(a.headers.get("retry-after", "").isdigit() for a in busy),
        "busy_as_json": sum(a.headers.get("content-type", "").startswith("application/json") for a in busy),
    }


COUNTS = ("ok", "busy_503", "other", "busy_with_retry_after", "busy_as_json")
TIMES = ("p50_ok_s", "p99_ok_s", "max_ok_s", "first_503_s", "last_503_s")


def merged(rounds: list[dict]) -> dict:
    """One row per factor from its rounds: counts add up, times are the rounds' worst."""
    out = {"connections": rounds[0]["connections"], "times_the_queue": rounds[0]["times_the_queue"],
           "rounds": len(rounds), **{key: sum(r[key] for r in rounds) for key in COUNTS},
           "outcomes": dict(sum((collections.Counter(r["outcomes"]) for r in rounds), collections.Counter()))}
    out.update({key: max((r[key] for r in rounds if r[key] is not None), default=None) for key in TIMES})
    return {**out, "per_round": rounds}


def run(out_dir: Path, quick: bool = False, lessons: Path = REFERENCE) -> dict:
    """Measure 1x, 2x and 4x the queue's depth; write overload.json into out_dir; return the results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rounds = 1 if quick else 3
    t0 = time.monotonic()
    with lesson_server(lessons, LESSON) as server:
        queues = queue_depth(server)
        depth = sum(queues)
        rows = []
        for factor in FACTORS:
            per_round = []
            for _ in range(rounds):
                wait_for(lambda: idle(server), timeout=120, interval=0.2, what="the queues to drain")
                answers = traffic.burst(server.url + "/infer?format=png", PHOTO, factor * depth, timeout=90)
                per_round.append(summary(answers, factor * depth, depth))
            rows.append({"factor": factor, **merged(per_round)})
    result = {
        "lesson": LESSON,
        "queues": queues,
        "queue_depth": depth,
        "photo": "256x256 JPEG",
        "by_factor": rows,
        "other_total": sum(r["other"] for r in rows),
        "meta": {"quick": quick, "cores": os.cpu_count(), "rounds": rounds,
                 "loadavg_after": list(os.getloadavg()), "duration_s": round(time.monotonic() - t0, 1),
                 "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
    (out_dir / "overload.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    opts = options(__doc__, "one round per multiple instead of three", "where overload.json goes", argv)
    result = run(opts.out, quick=opts.quick, lessons=opts.lessons)
    for r in result["by_factor"]:
        print(f"{r['factor']}x ({r['connections']} connections): {r['ok']} x 200, {r['busy_503']} x 503, "
              f"{r['other']} other; p99 of the 200s {r['p99_ok_s']} s, first 503 after {r['first_503_s']} s")
    print(f"-> {opts.out / 'overload.json'}")
    return 0 if result["other_total"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
