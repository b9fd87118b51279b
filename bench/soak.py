"""A long run against lesson 05: the memory of every worker over time, with its recycles.

    python -m bench.soak [--quick] [--out DIR]   2,400 requests (400) -> DIR/soak.json and soak.png
    python -m bench.soak --report                figures and chart again from bench/results/soak.json

What it runs and what counts: the guide's Benchmarks page.
"""

from __future__ import annotations

import collections
import json
import statistics
import time
from pathlib import Path

from bench import report
from bench.measure import options, post, run_meta, small_photo, uwsgi_instances, written
from workshop.harness import LoadRun, lesson_server
from workshop.lessons import REFERENCE

LESSON = "05_multi_upstream"
UPSTREAMS = {"unix": "stats1.sock", "tcp": "stats2.sock"}


def settings(quick: bool) -> dict:
    total = 400 if quick else 2400  # about three recycles per worker: each of the two workers serves half
    return {"requests": total, "at_once": 4, "max_requests": total // 2 // 4, "sample_every_s": 0.5 if quick else 1.0,
            "max_seconds": 300 if quick else 1500}


def option_of(ini: Path, name: str) -> str | None:
    """The value of `name = value` in a uWSGI .ini (None if it is not set there)."""
    return next((v.strip() for k, sep, v in (line.partition("=") for line in ini.read_text().splitlines())
                 if sep and k.strip() == name), None)


def sample(run_dir: Path, t: float) -> list[dict]:
    """The pid, RSS and requests of every worker of both uWSGI servers, at t seconds."""
    stats = uwsgi_instances(run_dir)
    # delta_requests: this process's requests ("requests" counts the slot's, across respawns)
    return [{"t": t, "upstream": upstream, "worker": w["id"], "pid": w["pid"], "rss_mb": round(w["rss"] / 2**20, 1),
             "requests": w["delta_requests"]}
            for upstream, sock in UPSTREAMS.items() for w in stats.get(sock, {}).get("workers", []) if w["pid"]]


def recycles(samples: list[dict], max_requests: int, reload_on_rss_mb: float | None) -> list[dict]:
    """Every new pid in a worker's slot, with why the old one most likely left."""
    last, found = {}, []
    for s in samples:
        before = last.get(slot := (s["upstream"], s["worker"]))
        if before and before["pid"] != s["pid"]:
            why = ("max-requests" if before["requests"] >= 0.9 * max_requests  # sampled: the last few may be missed
                   else "reload-on-rss" if reload_on_rss_mb and before["rss_mb"] >= reload_on_rss_mb * 0.95
                   else "other")
            found.append({"t": s["t"], "upstream": s["upstream"], "worker": s["worker"], "old_pid": before["pid"],
                          "new_pid": s["pid"], "old_requests": before["requests"], "old_rss_mb": before["rss_mb"],
                          "why": why})
        last[slot] = s
    return found


def growth(samples: list[dict]) -> list[dict]:
    """Per worker process: its RSS from its first answered request on, and the trend per 100 requests."""
    rows = []
    for pid, seen in report.by_process(samples).items():
        served = [s for s in seen if s["requests"] >= 1 and s["rss_mb"] > 0]  # uWSGI's RSS: 0 until a first request
        if len({s["requests"] for s in served}) < 3:
            continue
        rss = [s["rss_mb"] for s in served]
        rows.append({"upstream": served[0]["upstream"], "pid": pid,
                     "requests": served[-1]["requests"] - served[0]["requests"],
                     "rss_first_mb": rss[0], "rss_last_mb": rss[-1], "rss_min_mb": min(rss), "rss_max_mb": max(rss),
                     "trend_mb_per_100_requests": round(100 * statistics.linear_regression(  # least squares
                         [s["requests"] for s in served], rss).slope, 2)})
    return rows


def derived(result: dict) -> dict:
    """What the samples say, added to result: recycles, each process's RSS and its trend."""
    result["recycles"] = recycles(result["samples"], result["max_requests"], result["reload_on_rss_mb"])
    result["growth"] = growth(result["samples"])
    rows = [g for g in result["growth"] if g["requests"] >= 20]
    result["rss_min_mb"] = min((g["rss_min_mb"] for g in rows), default=None)
    result["rss_max_mb"] = max((g["rss_max_mb"] for g in rows), default=None)
    result["trend_mb_per_100_requests_max_abs"] = max((abs(g["trend_mb_per_100_requests"]) for g in rows), default=None)
    return result


def run(out_dir: Path, quick: bool = False, lessons: Path = REFERENCE) -> dict:
    """Run the soak; write soak.json and soak.png into out_dir; return the results."""
    cfg, t0, ini, photo = settings(quick), time.monotonic(), Path(lessons) / "03_uwsgi" / "workers.ini", small_photo()
    rss_limit, args = option_of(ini, "reload-on-rss"), ["--max-requests", str(cfg["max_requests"])]
    with lesson_server(lessons, LESSON, args=args) as server:
        samples, started, every = [], time.monotonic(), cfg["sample_every_s"]
        with LoadRun(lambda: post(server.url, photo)[0], count=cfg["requests"], at_once=cfg["at_once"],
                     max_seconds=cfg["max_seconds"]) as load:
            while load.done() < cfg["requests"] and time.monotonic() < load.deadline:
                samples += sample(server.run_dir, round(time.monotonic() - started, 2))
                time.sleep(every)
        load_s = time.monotonic() - started
        for _ in range(2):  # the last recycle's new worker
            samples += sample(server.run_dir, round(time.monotonic() - started, 2))
            time.sleep(every)
    outcomes = collections.Counter(str(o) for o in load.outcomes)
    result = {"lesson": LESSON, "requests": cfg["requests"], "answered": len(load.outcomes), "at_once": cfg["at_once"],
              "uwsgi_args": args, "max_requests": cfg["max_requests"],
              "reload_on_rss_mb": float(rss_limit) if rss_limit else None,
              "max_worker_lifetime_s": option_of(ini, "max-worker-lifetime"), "outcomes": dict(outcomes),
              "failed": sum(n for o, n in outcomes.items() if o != "200") + cfg["requests"] - len(load.outcomes),
              "load_s": round(load_s, 1), "requests_per_s": round(len(load.outcomes) / load_s, 2) if load_s else None,
              "samples": samples, "meta": run_meta(quick, t0)}
    return write(derived(result), out_dir)


def write(result: dict, out_dir: Path) -> dict:
    report.soak_chart(written(out_dir, "soak.json", result), Path(out_dir) / "soak.png")
    return result


def main(argv: list[str] | None = None) -> int:
    opts = options(__doc__, "400 requests instead of 2,400", "where soak.json and soak.png go", argv,
                   report="run nothing: derive the figures and the chart again from OUT/soak.json")
    if opts.report:
        result = write(derived(json.loads((opts.out / "soak.json").read_text())), opts.out)
    else:
        result = run(opts.out, quick=opts.quick, lessons=opts.lessons)
    print(f"{result['answered']}/{result['requests']} answered, {result['failed']} failed, "
          f"{len(result['recycles'])} recycles, worker RSS {result['rss_min_mb']}-{result['rss_max_mb']} MiB, "
          f"trend at most {result['trend_mb_per_100_requests_max_abs']} MiB per 100 requests "
          f"-> {opts.out / 'soak.json'}")
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
