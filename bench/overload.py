"""More requests at once than lesson 05 can queue: what comes back, and how fast.

    python -m bench.overload [--quick] [--out DIR]    1x, 2x and 4x the queue's depth -> DIR/overload.json

What it sends and what it reports: the guide's Benchmarks page.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

from bench.measure import PNG, options, percentile, run_meta, small_photo, uwsgi_instances, written
from workshop import traffic
from workshop.harness import lesson_server, queue_depth
from workshop.lessons import REFERENCE
from workshop.procs import wait_for

LESSON = "05_multi_upstream"
FACTORS = (1, 2, 4)
COUNTS = ("ok", "busy_503", "other", "busy_with_retry_after", "busy_as_json")
TIMES = ("p50_ok_s", "p99_ok_s", "max_ok_s", "first_503_s", "last_503_s")


def idle(server) -> bool:
    """Both servers have no request in flight (the previous round is over)."""
    return not any(s.get("listen_queue") or any(w["status"] != "idle" for w in s["workers"])
                   for s in uwsgi_instances(server.run_dir).values())


def rounded(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def tally(answers: list[traffic.Answer], connections: int, depth: int) -> dict:
    kinds = collections.Counter(str(a.status) for a in answers)
    ok, busy = [a.seconds for a in answers if a.status == 200], [a for a in answers if a.status == 503]
    return {"connections": connections, "times_the_queue": connections / depth, "outcomes": dict(kinds),
            "ok": len(ok), "busy_503": len(busy), "other": sum(n for k, n in kinds.items() if k not in ("200", "503")),
            "p50_ok_s": rounded(percentile(ok, 50)), "p99_ok_s": rounded(percentile(ok, 99)),
            "max_ok_s": rounded(max(ok, default=None)),
            "first_503_s": rounded(min((a.seconds for a in busy), default=None), 4),
            "last_503_s": rounded(max((a.seconds for a in busy), default=None), 4),
            "busy_with_retry_after": sum(a.headers.get("retry-after", "").isdigit() for a in busy),
            "busy_as_json": sum(a.headers.get("content-type", "").startswith("application/json") for a in busy)}


def merged(rounds: list[dict]) -> dict:
    """One row per factor from its rounds: counts add up, times are the rounds' worst."""
    return {"connections": rounds[0]["connections"], "times_the_queue": rounds[0]["times_the_queue"],
            "rounds": len(rounds), **{key: sum(r[key] for r in rounds) for key in COUNTS},
            "outcomes": dict(sum((collections.Counter(r["outcomes"]) for r in rounds), collections.Counter())),
            **{key: max((r[key] for r in rounds if r[key] is not None), default=None) for key in TIMES},
            "per_round": rounds}


def run(out_dir: Path, quick: bool = False, lessons: Path = REFERENCE) -> dict:
    """Measure 1x, 2x and 4x the queue's depth; write overload.json into out_dir; return the results."""
    rounds, t0, rows, photo = 1 if quick else 3, time.monotonic(), [], small_photo()
    with lesson_server(lessons, LESSON) as server:
        queues = queue_depth(server)
        depth = sum(queues)
        for factor in FACTORS:
            per_round = []
            for _ in range(rounds):
                wait_for(lambda: idle(server), timeout=120, interval=0.2, what="the queues to drain")
                answers = traffic.burst(server.url + PNG, photo, factor * depth, timeout=90)
                per_round.append(tally(answers, factor * depth, depth))
            rows.append({"factor": factor, **merged(per_round)})
    return written(out_dir, "overload.json", {
        "lesson": LESSON, "queues": queues, "queue_depth": depth, "photo": "256x256 JPEG", "by_factor": rows,
        "other_total": sum(r["other"] for r in rows), "meta": run_meta(quick, t0, rounds=rounds)})


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
