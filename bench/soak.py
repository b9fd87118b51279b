"""A long run against lesson 05: the memory of every worker over time, with its recycles.

    python -m bench.soak              2,400 requests (several minutes on 2 cores)
    python -m bench.soak --quick      400 requests
    python -m bench.soak --out DIR    write soak.json and soak.png there (default: bench/results)
    python -m bench.soak --report     figures and chart again from bench/results/soak.json

What it runs and what counts: the guide's Benchmarks page.
"""

from __future__ import annotations

import collections
import json
import os
import statistics
import time
from pathlib import Path

import requests

from bench.measure import options
from workshop import images
from workshop.harness import LoadRun, lesson_server, uwsgi_stats
from workshop.lessons import REFERENCE

LESSON = "05_multi_upstream"
UPSTREAMS = {"unix": "stats1.sock", "tcp": "stats2.sock"}
PHOTO = images.encode(images.photo().resize((256, 256)), "JPEG")


def settings(quick: bool) -> dict:
    requests_total = 400 if quick else 2400
    return {
        "requests": requests_total,
        "at_once": 4,
        # About three recycles per worker: each of the two workers serves half.
        "max_requests": requests_total // 2 // 4,
        "sample_every_s": 0.5 if quick else 1.0,
        "max_seconds": 300 if quick else 1500,
    }


def option_of(ini: Path, name: str) -> str | None:
    """The value of `name = value` in a uWSGI .ini (None if it is not set there)."""
    for line in ini.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == name:
            return value.strip()
    return None


def sample(run_dir: Path, t: float) -> list[dict]:
    """The pid, RSS and requests of every worker of both uWSGI servers, at t seconds."""
    rows = []
    for upstream, sock in UPSTREAMS.items():
        try:
            stats = uwsgi_stats(run_dir / sock)
        except (OSError, ValueError):
            continue
        # delta_requests: this process's requests ("requests" counts the slot's, across respawns)
        rows += [{"t": t, "upstream": upstream, "worker": w["id"], "pid": w["pid"],
                  "rss_mb": round(w["rss"] / 2**20, 1), "requests": w["delta_requests"]}
                 for w in stats["workers"] if w["pid"]]
    return rows


def recycles(samples: list[dict], max_requests: int, reload_on_rss_mb: float | None) -> list[dict]:
    """Every new pid in a worker's slot, with why the old one most likely left."""
    last: dict[tuple, dict] = {}
    found = []
    for s in samples:
        slot = (s["upstream"], s["worker"])
        before = last.get(slot)
        if before and before["pid"] != s["pid"]:
            if before["requests"] >= 0.9 * max_requests:   # sampled: the last few may be missed
                why = "max-requests"
            elif reload_on_rss_mb and before["rss_mb"] >= reload_on_rss_mb * 0.95:
                why = "reload-on-rss"
            else:
                why = "other"
            found.append({"t": s["t"], "upstream": s["upstream"], "worker": s["worker"], "old_pid": before["pid"],
                          "new_pid": s["pid"], "old_requests": before["requests"], "old_rss_mb": before["rss_mb"],
                          "why": why})
        last[slot] = s
    return found


def by_process(samples: list[dict]) -> dict[int, list[dict]]:
    by_pid: dict[int, list[dict]] = collections.defaultdict(list)
    for s in samples:
        by_pid[s["pid"]].append(s)
    return by_pid


def growth(samples: list[dict]) -> list[dict]:
    """Per worker process: its RSS from its first answered request on, and the trend per 100 requests."""
    rows = []
    for pid, seen in by_process(samples).items():
        # uWSGI measures RSS after each request: 0 until the first one.
        served = [s for s in seen if s["requests"] >= 1 and s["rss_mb"] > 0]
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
    trends = [abs(g["trend_mb_per_100_requests"]) for g in rows]
    result["trend_mb_per_100_requests_max_abs"] = max(trends) if trends else None
    return result


def chart(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    colors = {"unix": "tab:blue", "tcp": "tab:orange"}
    labelled = set()
    for pid, seen in by_process(result["samples"]).items():
        upstream = seen[0]["upstream"]
        label = None if upstream in labelled else f"upstream {upstream} (one line per worker process)"
        labelled.add(upstream)
        seen = [s for s in seen if s["rss_mb"] > 0]   # 0 until the new worker has answered once
        ax.plot([s["t"] for s in seen], [s["rss_mb"] for s in seen], color=colors[upstream], lw=1.2, label=label)
    for i, r in enumerate(result["recycles"]):
        ax.axvline(r["t"], color=colors[r["upstream"]], ls=":", lw=1,
                   label="recycle (max-requests)" if i == 0 else None)
    if result["reload_on_rss_mb"]:
        ax.axhline(result["reload_on_rss_mb"], color="tab:red", ls="--", lw=1, label="reload-on-rss")
    ax.set_xlabel("seconds since the load started")
    ax.set_ylabel("worker RSS (MiB)")
    ax.set_title(f"Lesson 05, {result['requests']} requests, {result['at_once']} at a time: "
                 f"{result['failed']} failed, {len(result['recycles'])} recycles")
    ax.legend(loc="center right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out_dir: Path, quick: bool = False, lessons: Path = REFERENCE) -> dict:
    """Run the soak; write soak.json and soak.png into out_dir; return the results."""
    cfg = settings(quick)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workers_ini = Path(lessons) / "03_uwsgi" / "workers.ini"
    rss_limit = option_of(workers_ini, "reload-on-rss")
    args = ["--max-requests", str(cfg["max_requests"])]
    t0 = time.monotonic()
    with lesson_server(lessons, LESSON, args=args) as server:
        def ask():
            r = requests.post(server.url + "/infer", data=PHOTO, params={"format": "png"}, timeout=60)
            return r.status_code
        samples, started, every = [], time.monotonic(), cfg["sample_every_s"]
        with LoadRun(ask, count=cfg["requests"], at_once=cfg["at_once"], max_seconds=cfg["max_seconds"]) as load:
            while load.done() < cfg["requests"] and time.monotonic() < load.deadline:
                samples += sample(server.run_dir, round(time.monotonic() - started, 2))
                time.sleep(every)
        load_s = time.monotonic() - started
        for _ in range(2):  # the last recycle's new worker
            samples += sample(server.run_dir, round(time.monotonic() - started, 2))
            time.sleep(every)
    outcomes = collections.Counter(str(o) for o in load.outcomes)
    result = {
        "lesson": LESSON,
        "requests": cfg["requests"],
        "answered": len(load.outcomes),
        "at_once": cfg["at_once"],
        "uwsgi_args": args,
        "max_requests": cfg["max_requests"],
        "reload_on_rss_mb": float(rss_limit) if rss_limit else None,
        "max_worker_lifetime_s": option_of(workers_ini, "max-worker-lifetime"),
        "outcomes": dict(outcomes),
        "failed": sum(n for o, n in outcomes.items() if o != "200") + cfg["requests"] - len(load.outcomes),
        "load_s": round(load_s, 1),
        "requests_per_s": round(len(load.outcomes) / load_s, 2) if load_s else None,
        "samples": samples,
        "meta": {"quick": quick, "cores": os.cpu_count(), "loadavg_after": list(os.getloadavg()),
                 "duration_s": round(time.monotonic() - t0, 1),
                 "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
    return write(derived(result), out_dir)


def write(result: dict, out_dir: Path) -> dict:
    (out_dir / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    chart(result, out_dir / "soak.png")
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
