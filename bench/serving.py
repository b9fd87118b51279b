"""The stages that serve over HTTP: lessons 02-05, each started with its own run.sh by
workshop.harness.lesson_server, which stops it and its process tree, also when a stage fails."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time

import requests

from bench.measure import (PNG, Context, cpu_seconds, load, log, median, memory_of, ratio, unloaded,
                           uwsgi_instances, uwsgi_workers)
from workshop.harness import concurrently, lesson_server, readyz_of_every_worker
from workshop.procs import wait_for

START = 240  # seconds a stack may take to get ready (lazy-apps on a busy machine is slow)


@contextlib.contextmanager
def stack(ctx: Context, lesson: str, processes: int, mode: str = "prefork", env: dict | None = None,
          workers: int | None = None):
    """LESSON's run.sh --processes PROCESSES (--lazy-apps too in that mode), once ready and every one of
    its WORKERS (default: PROCESSES) has loaded the app."""
    args = ["--processes", str(processes)] + ["--lazy-apps"] * (mode == "lazy-apps")

    def loaded(srv):  # lazy-apps loads the app after the fork
        ws = uwsgi_workers(srv.run_dir)
        return len(ws) >= (workers or processes) and all(w.get("apps") and w["pid"] > 0 for w in ws)
    with lesson_server(ctx.lessons, lesson, args=args, env=env, timeout=START) as srv:
        wait_for(lambda: loaded(srv), timeout=START, interval=0.2, what="every uWSGI worker to load the app")
        yield srv


def lesson02(ctx: Context) -> list[dict]:
    log("lesson 02 (Flask dev server)")
    with lesson_server(ctx.lessons, "02_segmentation", timeout=START) as srv:
        return [{**load(ctx, srv, ctx.body), "label": "lesson 02: Flask dev server", "torch_threads": 1,
                 "memory": memory_of(srv.pid), "unloaded": unloaded(srv, ctx.body, 2 if ctx.quick else 20)}]


def fork(ctx: Context) -> list[dict]:
    """Lesson 03's torch and fork: prefork (random weights run a forward pass in the master, a weights
    file does not) or lazy-apps, 1 or `cores` torch threads. Rounds of `cores` requests go out until
    every worker has answered; one silent for hang_timeout seconds after the fork is hung."""
    kinds, rows = [("prefork", "random"), ("prefork", "file"), ("lazy-apps", "random")], []
    for threads, (mode, weights) in itertools.product([1] if ctx.quick else [1, ctx.cores],
                                                      kinds[:1] if ctx.quick else kinds):
        log(f"fork: {mode}, weights {weights}, {threads} torch thread(s)")
        row = {"mode": mode, "weights": weights, "torch_threads": threads, "workers": ctx.cores,
               "request_timeout_s": ctx.hang_timeout}
        env = {"SEG_WEIGHTS": str(ctx.work / "weights.pth") if weights == "file" else "random",
               "SEG_TORCH_THREADS": str(threads)}
        try:
            with lesson_server(ctx.lessons, "03_uwsgi", args=["--processes", str(ctx.cores)] + ["--lazy-apps"] *
                               (mode == "lazy-apps"), env=env, wait=False) as srv:
                row.update(_after_fork(ctx, srv))
        except Exception as exc:  # keep the other rows
            row.update(result="error", error=f"{type(exc).__name__}: {exc}"[:2000])
        rows.append(row)
    return rows


def _after_fork(ctx: Context, srv) -> dict:
    def workers():
        if not srv.alive():
            raise RuntimeError(f"run.sh exited during start-up:\n{srv.log(30)}")
        return uwsgi_workers(srv.run_dir)
    wait_for(lambda: len(ws := workers()) >= ctx.cores and all(w["pid"] > 0 for w in ws), timeout=120,
             interval=0.2, what="uWSGI to fork its workers")
    forked_at, first, pids = time.monotonic(), {}, set()

    def one():
        try:
            r = requests.post(srv.url + PNG, data=ctx.body, timeout=ctx.hang_timeout)
            return int(r.headers.get("X-Worker-Pid", 0)) if r.ok else None
        except requests.RequestException:
            return None
    # Every worker slot must answer: a worker recycled meanwhile (a new pid) counts once. A silent
    # worker that keeps using the CPU is still starting (a busy machine): hung ones sit idle.
    working, used = True, 0.0
    while len(first) < ctx.cores and (time.monotonic() < forked_at + ctx.hang_timeout or working) \
            and time.monotonic() < forked_at + 6 * ctx.hang_timeout:
        pids = {w["pid"] for w in workers()}
        answered = [pid for pid in concurrently(one, ctx.cores, ctx.cores) if pid]
        for pid in answered:
            first.setdefault(pid, round(time.monotonic() - forked_at, 2))
        time.sleep(0 if answered else 0.5)
        used, before = cpu_seconds(pids - set(first)), used
        working = used - before > 0.1
    silent = sorted(pids - set(first)) if len(first) < ctx.cores else []
    row = {"result": "hang" if silent else "ok", "workers_answered": min(len(first), ctx.cores),
           "first_answer_after_fork_s": sorted(first.values()), "memory": memory_of(srv.pid, srv.run_dir)}
    for pid in silent + [s["pid"] for s in uwsgi_instances(srv.run_dir).values()] * bool(silent):
        with contextlib.suppress(ProcessLookupError):  # hung workers ignore SIGTERM: end this uWSGI, by pid
            os.kill(pid, signal.SIGKILL)
    return row


def sweep(ctx: Context) -> list[dict]:
    """Lesson 03: workers x torch threads; lazy-apps where prefork hung in the fork test."""
    fork_rows = ctx.results["stages"].get("lesson03_fork")
    prefork_ok = {r["torch_threads"]: r["result"] == "ok" for r in fork_rows if r["mode"] == "prefork"
                  and r["weights"] == "random"} if isinstance(fork_rows, list) else {1: True}
    layouts = [(ctx.cores, 1)] if ctx.quick else [(w, t) for w in (1, ctx.cores, 2 * ctx.cores) for t in (1, ctx.cores)]
    rows = []
    for workers, threads, lazy in [(w, t, not prefork_ok.get(t, False)) for w, t in layouts] + \
            [(ctx.cores, 1, True)] * (not ctx.quick):  # and prefork vs lazy-apps at one worker per core
        mode = "lazy-apps" if lazy else "prefork"
        log(f"lesson 03 sweep: {workers} workers x {threads} torch threads, {mode}")
        with stack(ctx, "03_uwsgi", workers, mode, {"SEG_TORCH_THREADS": str(threads)}) as srv:
            rows.append({**load(ctx, srv, ctx.body, http10=True), "workers": workers,
                         "torch_threads": threads, "mode": mode,
                         "label": f"lesson 03: uWSGI {workers}w x {threads}t {mode}",
                         "oversubscribed": workers * threads > ctx.cores, "memory": memory_of(srv.pid, srv.run_dir)})
    return rows


def static_page(ctx: Context) -> dict:
    """Lesson 04's page: requests/s of a file nginx serves from disk, next to lesson 01's echo app
    through uWSGI behind the same nginx (workshop/static_rate.py, also a command of its own)."""
    from workshop import static_rate

    log("lesson 04's page: GET /page.css from nginx, POST /infer to the echo app through uWSGI")
    rates = static_rate.measure(3 if ctx.quick else 10, ctx.lessons)
    return {**rates, "static_over_echo": round(rates["static"] / rates["echo"], 1),
            "connections": static_rate.CONNECTIONS}


def gpu(ctx: Context) -> list[dict] | dict:
    """Lesson 03 on a GPU (SEG_DEVICE=cuda): 1 and 2 workers, with what each holds on the GPU.
    Where no CUDA device is usable, one line says so instead of rows."""
    import torch  # this process forks no server (lesson_server execs run.sh): CUDA here is safe

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    rows = []
    for workers in [2] if ctx.quick else [1, 2]:
        log(f"lesson 03 on {torch.cuda.get_device_name(0)}: {workers} worker(s)")
        with stack(ctx, "03_uwsgi", workers, env={"SEG_DEVICE": "cuda"}) as srv:
            row = {**load(ctx, srv, ctx.body), "workers": workers, "device": "cuda:0",
                   "gpu": torch.cuda.get_device_name(0), "label": f"lesson 03: uWSGI {workers}w on cuda:0"}
            row["gpu_memory_mb_per_worker"] = [info["gpu"]["memory_reserved_mb"] for info in
                                               readyz_of_every_worker(srv, workers, timeout=60).values()]
            rows.append(row)
    return rows


def best_layout(ctx: Context) -> dict:
    """The sweep's fastest workers x threads, prefork if it works there (the fork mode changes memory, not speed)."""
    rows = ctx.results["stages"].get("lesson03_sweep")
    if not isinstance(rows, list) or not rows:
        return {"workers": ctx.cores, "torch_threads": 1, "mode": "prefork"}
    top = max(rows, key=lambda r: r["rps"])
    same = [r for r in rows if (r["workers"], r["torch_threads"]) == (top["workers"], top["torch_threads"])]
    return {k: next((r for r in same if r["mode"] == "prefork"), top)[k] for k in ("workers", "torch_threads", "mode")}


def lesson04(ctx: Context) -> list[dict]:
    best = best_layout(ctx)
    log(f"lesson 04: {best['workers']} workers x {best['torch_threads']} torch thread(s), {best['mode']}")
    threads = {"SEG_TORCH_THREADS": str(best["torch_threads"])}
    with stack(ctx, "04_nginx", best["workers"], best["mode"], threads) as srv:
        return [{**load(ctx, srv, ctx.body), **best, "memory": memory_of(srv.pid, srv.run_dir),
                 "label": f"lesson 04: nginx -> uWSGI {best['workers']}w x {best['torch_threads']}t {best['mode']}"}]


def lesson05(ctx: Context) -> dict:
    """The whole stack, and how its cost grows: with the connections, then with the photo's size."""
    best = best_layout(ctx)
    per = max(1, best["workers"] // 2)  # the best layout, split over the two upstreams
    setting = {"workers": 2 * per, "workers_per_upstream": per, "torch_threads": best["torch_threads"],
               "mode": best["mode"]}
    log(f"lesson 05: 2 x {per} workers x {best['torch_threads']} torch thread(s), {best['mode']}")
    with stack(ctx, "05_multi_upstream", per, best["mode"], {"SEG_TORCH_THREADS": str(best["torch_threads"])},
               workers=2 * per) as srv:
        by_connections, by_size = [], []
        for conc in (1, 2, 4) if ctx.quick else (1, 2, 4, 8, 16):
            log(f"  {conc} connections")
            headline = conc in (ctx.cores, ctx.conc)
            row = load(ctx, srv, ctx.body, conc=conc, seconds=ctx.seconds if headline else ctx.curve_seconds,
                       warmup=ctx.warmup if headline else min(1, ctx.warmup))
            by_connections.append({**row, **setting, "label": f"lesson 05: nginx -> 2 upstreams, {conc} connections"})
        for photo in ctx.photos:
            body = ctx.photo(photo["label"])
            log(f"  {photo['label']} photo ({len(body) / 1e6:.1f} MB)")
            row = {"label": photo["label"], "megapixels": photo["megapixels"], "upload_bytes": len(body),
                   "unloaded": unloaded(srv, body, 2 if ctx.quick else 10 if photo["megapixels"] < 10 else 6)}
            if row["unloaded"]["status"] == 200:
                row.update(load(ctx, srv, body, conc=ctx.cores, seconds=ctx.curve_seconds, warmup=0),
                           memory=memory_of(srv.pid, srv.run_dir))
            by_size.append(row)
        buffered = srv.log(100000).count("buffered to a temporary file")
    return {"setting": setting, "by_connections": by_connections, "by_size": by_size,
            "nginx_bodies_buffered_to_file": buffered}


def balance(ctx: Context) -> dict:
    """Lesson 05 with least_conn (its upstream.conf) and with round-robin (the same file with
    least_conn commented out, nginx reloaded), in turns on the same stack: the same workers, seconds
    apart, so that the machine's drift hits both alike."""
    pairs, seconds = (1, 2) if ctx.quick else (6, 5)
    with stack(ctx, "05_multi_upstream", 1, env={"SEG_TORCH_THREADS": "1"}, workers=2) as srv:
        site, pid = srv.run_dir / "nginx" / "conf.d" / "upstream.conf", srv.run_dir / "nginx" / "nginx.pid"
        text, runs = site.read_text(), {"least_conn": [], "round_robin": []}
        try:
            for i in range(pairs):
                for method in ("least_conn", "round_robin")[::1 if i % 2 == 0 else -1]:
                    site.write_text(text if method == "least_conn" else text.replace("    least_conn;",
                                                                                     "    # least_conn;"))
                    os.kill(int(pid.read_text()), signal.SIGHUP)  # new workers with the new file; the old ones finish
                    time.sleep(1)
                    log(f"balance: pair {i + 1} of {pairs}, {method}, {ctx.cores} connections")
                    runs[method].append(load(ctx, srv, ctx.body, conc=ctx.cores, seconds=seconds, warmup=1))
        finally:
            site.write_text(text)
    gains = [ratio(a["rps"], b["rps"]) for a, b in zip(runs["least_conn"], runs["round_robin"])]
    return {"seconds": seconds, "connections": ctx.cores, "runs": runs, "least_conn_over_round_robin": gains,
            "median_gain": median(gains)}
