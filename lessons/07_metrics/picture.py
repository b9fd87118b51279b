"""Lesson 07's picture: a load run through the stack, as Prometheus recorded it.

    .venv/bin/python lessons/07_metrics/picture.py                # writes out/07-load-run.png
    .venv/bin/python lessons/07_metrics/picture.py --seconds 30 --out /tmp/run.png

It starts this lesson's run.sh on free ports (a stack of its own, stopped at
the end: your own run.sh may keep running), and sends POST /infer through
nginx from 2 threads. After a quarter of --seconds it kills upstream 2
(master and workers, SIGKILL, like a crashed machine); it stays dead for half
of --seconds, long enough for its rate to fall to nothing and stay there; then
it starts it again; once Prometheus sees it back, the load goes on for a last
quarter.
Then it asks Prometheus' HTTP API for what it recorded and draws:

    requests/s per upstream     the recording rule upstream:seg_requests:rate5s
    latency per upstream        upstream:seg_request_duration_seconds:p50, p95, p99
    requests in flight          seg_requests_in_flight, per upstream

The PNG carries the series it drew, as JSON in its "series" text chunk
(PIL: Image.open(path).text["series"]), so a program can check what it shows.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))   # the workshop's machinery: workshop/
from workshop.harness import LoadRun, lesson_server, started, stop  # noqa: E402
from workshop.images import photo_bytes  # noqa: E402
from workshop.procs import descendants, wait_for  # noqa: E402

UPSTREAMS = ("uwsgi1", "uwsgi2")
QUERIES = {   # what each panel draws: PromQL, one series per upstream
    "requests_per_s": "upstream:seg_requests:rate5s",
    "p50_s": "upstream:seg_request_duration_seconds:p50",
    "p95_s": "upstream:seg_request_duration_seconds:p95",
    "p99_s": "upstream:seg_request_duration_seconds:p99",
    "in_flight": "sum by (upstream) (seg_requests_in_flight)",
    "at_nginx": 'sum(nginx_connections_writing) - 1',   # minus the exporter's own request
    "served": 'sum by (upstream) (seg_requests_total{route="/infer"})',
    "up": 'up{job="app"}',
}


def query_range(prometheus: str, promql: str, start: float, end: float) -> dict[str, list]:
    """{upstream: [[t, value], ...]} from Prometheus' /api/v1/query_range, one point a second."""
    r = requests.get(f"{prometheus}/api/v1/query_range", timeout=10,
                     params={"query": promql, "start": start, "end": end, "step": 1})
    r.raise_for_status()
    return {s["metric"].get("upstream", "all"): [[float(t), float(v)] for t, v in s["values"]]
            for s in r.json()["data"]["result"]}


def now(prometheus: str, promql: str) -> dict[str, float]:
    """{upstream: value} of an instant query."""
    r = requests.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    return {s["metric"].get("upstream", ""): float(s["value"][1]) for s in r.json()["data"]["result"]}


def run(seconds: float, at_once: int = 2) -> dict:
    """Start the stack, load it, kill and restart upstream 2; return what Prometheus recorded."""
    # Two at a time: one per upstream while both run, one waiting while one is
    # left. Many more would wait past nginx's 5 s uwsgi_connect_timeout, which
    # over TLS includes the wait for a free worker (lesson 05).
    image = photo_bytes()
    print(f"[picture] starting {HERE.name}/run.sh on free ports ...", flush=True)
    with lesson_server(HERE.parent, HERE.name) as stack:
        prometheus = f"http://127.0.0.1:{stack.env['PROMETHEUS_PORT']}"
        wait_for(lambda: now(prometheus, QUERIES["up"]) == dict.fromkeys(UPSTREAMS, 1.0), timeout=60,
                 what="Prometheus to see both upstreams up")
        print(f"[picture] Prometheus at {prometheus}: both upstreams up; load from "
              f"{at_once} threads", flush=True)

        def infer():
            return requests.post(stack.url + "/infer", data=image, params={"format": "png"},
                                 timeout=60).status_code

        quarter, again = seconds / 4, None
        events = {"start": time.time()}
        try:
            with LoadRun(infer, count=20_000, at_once=at_once, max_seconds=seconds + 210) as load:
                # A quarter of the time with both serving, counted from when Prometheus
                # has a rate for both (two scrapes after their first answers).
                wait_for(lambda: all(now(prometheus, QUERIES["requests_per_s"]).get(u, 0) > 0
                                     for u in UPSTREAMS), timeout=60, interval=0.5,
                         what="a request rate for both upstreams")
                time.sleep(quarter)
                master = int((stack.run_dir / "uwsgi2.pid").read_text())
                for pid in [master, *descendants(master)]:
                    os.kill(pid, signal.SIGKILL)
                events["killed"] = time.time()
                print("[picture] upstream 2 killed (SIGKILL)", flush=True)
                time.sleep(2 * quarter)
                # As run.sh started it (TCP_HOST is run.sh's default, 127.0.0.1).
                again = started("uwsgi2-again", ["uwsgi", "--ini", "inference2.ini"],
                                run_dir=stack.run_dir, env={**stack.env, "TCP_HOST": "127.0.0.1"},
                                cwd=stack.lesson_dir)
                events["restarted"] = time.time()
                print("[picture] upstream 2 started again", flush=True)
                # Back is not yet serving: nginx tries a failed server again only
                # after fail_timeout (5 s), and the restart must load the app first.
                wait_for(lambda: now(prometheus, QUERIES["served"]).get("uwsgi2", 0) > 0,
                         timeout=120, interval=0.5, what="upstream 2 to take traffic again")
                events["serving"] = time.time()
                print("[picture] upstream 2 takes traffic again", flush=True)
                time.sleep(quarter)
                load.deadline = time.monotonic()   # stop the load now
            events["end"] = time.time()
            time.sleep(3)   # the last scrapes and rule evaluations
            start, end = events["start"] - 5, events["end"] + 2
            series = {name: query_range(prometheus, promql, start, end) for name, promql in QUERIES.items()}
        finally:
            if again is not None:
                stop(again)
    outcomes = collections.Counter(str(o) for o in load.outcomes)
    print(f"[picture] {len(load.outcomes)} requests: {dict(outcomes)}", flush=True)
    return {"t0": events["start"], "events": events, "outcomes": dict(outcomes), "series": series}


def line(points: list, t0: float) -> tuple[list, list]:
    """x and y to plot, with a break (NaN) wherever Prometheus has no point: nothing to draw there."""
    xs, ys = [], []
    for t, v in points:
        if xs and t - t0 - xs[-1] > 1.5:
            xs.append(xs[-1] + 1)
            ys.append(float("nan"))
        xs.append(t - t0)
        ys.append(v)
    return xs, ys


def draw(data: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")   # no display needed
    import matplotlib.pyplot as plt

    t0, events, series = data["t0"], data["events"], data["series"]
    colour = {"uwsgi1": "tab:blue", "uwsgi2": "tab:orange", "all": "black"}
    width = {"uwsgi1": 3.0, "uwsgi2": 1.5, "all": 1.0}   # where two lines meet, both stay visible
    panels = [  # title, [(series, line style, label)], steps?
        ("requests/s into POST /infer, per upstream", [("requests_per_s", "-", "")], False),
        ("latency (s) per upstream: p50 dotted, p95 dashed, p99 solid",
         [("p50_s", ":", " p50"), ("p95_s", "--", " p95"), ("p99_s", "-", " p99")], False),
        ("requests in progress: in each upstream's worker, and at nginx (black)",
         [("in_flight", "-", ""), ("at_nginx", "--", "nginx")], True),
    ]
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for ax, (title, lines, steps) in zip(axes, panels):
        for name, style, label in lines:
            for who, points in sorted(series[name].items()):
                xs, ys = line(points, t0)
                ax.plot(xs, ys, style, color=colour[who], lw=width[who], alpha=0.8,
                        label=label if who == "all" else who + label,
                        drawstyle="steps-post" if steps else "default")
        ax.axvspan(events["killed"] - t0, events["serving"] - t0, color="grey", alpha=0.15)
        ax.axvline(events["killed"] - t0, color="red", lw=1)
        ax.axvline(events["restarted"] - t0, color="green", lw=1)
        ax.set_title(title, loc="left", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8, ncol=4)
    axes[1].set_yscale("log")
    axes[-1].set_xlabel("seconds since the load started. Red: upstream 2 killed; green: started "
                        "again; grey: until it served again")
    failed = sum(n for o, n in data["outcomes"].items() if o != "200")
    fig.suptitle(f"Lesson 07: {sum(data['outcomes'].values())} requests through nginx, {failed} failed, "
                 "while upstream 2 was killed and started again")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    # The data drawn goes into the PNG itself (a text chunk), for whoever checks it.
    fig.savefig(out, dpi=90, metadata={"series": json.dumps(data, separators=(",", ":"))})
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="load before, while and after "
                        "upstream 2 is down: a quarter, a half, a quarter (plus the time it takes to come back)")
    parser.add_argument("--out", default=str(HERE.parent.parent / "out" / "07-load-run.png"))
    args = parser.parse_args()
    # Stopped from outside (SIGTERM): leave through the finally blocks, which stop the stack.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    data = run(args.seconds)
    draw(data, Path(args.out))
    print(f"[picture] written to {args.out}; everything it started has stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
