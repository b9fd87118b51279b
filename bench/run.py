"""The workshop's benchmark: what each serving stage costs, measured side by side.

    python -m bench                 full run (about 7 minutes on 2 cores)
    python -m bench --quick         smoke run (about 1.5 minutes), same files
    python -m bench --out DIR       write results.json, results.md, chart.png to DIR

One run, one machine, loopback only. Every server is started with the
lessons' own run.sh (through workshop.harness) or, for the benchmark-only
servers (the tutorial's naive app, the echo app under uWSGI), as a process
group that is always stopped again. Load comes from wrk (bench/loadgen.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # also runs as `python bench/run.py`
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from bench import loadgen, procinfo, report  # noqa: E402
from workshop import images  # noqa: E402
from workshop import nginx as wnginx  # noqa: E402
from workshop.harness import lesson_server, make_run_dir, started, stop, uwsgi_stats  # noqa: E402
from workshop.lessons import REFERENCE  # noqa: E402
from workshop.procs import free_port, wait_for  # noqa: E402

PY = sys.executable
VENV_BIN = Path(PY).parent
STAGES = ["limit", "mask_formats", "naive", "lesson02", "lesson03_fork", "lesson03_sweep",
          "lesson04", "lesson05", "echo"]


@dataclass
class Settings:
    quick: bool
    seconds: float        # one measured wrk run (model stages)
    warmup: float         # wrk warm-up before each measured run
    echo_seconds: float
    echo_warmup: float
    limit_seconds: float
    hang_timeout: float   # a first request slower than this counts as a hang
    cores: int
    conc: int             # wrk connections for the model stages
    lessons: Path
    work: Path            # temp folder: image, weights file, wrk script


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- helpers

def stats_sockets(run_dir: Path) -> list[Path]:
    return sorted(p for p in Path(run_dir).rglob("*.sock") if "stats" in p.name)


def uwsgi_instances(run_dir: Path) -> list[dict]:
    out = []
    for sock in stats_sockets(run_dir):
        try:
            out.append(uwsgi_stats(sock))
        except OSError:
            pass
    return out


def wait_workers_ready(run_dir: Path, expected: int | None, timeout: float = 90) -> float:
    """Wait until every uWSGI worker has loaded the app (matters for lazy-apps)."""
    t0 = time.monotonic()

    def ready():
        inst = uwsgi_instances(run_dir)
        workers = [w for s in inst for w in s["workers"]]
        if not workers or (expected and len(workers) < expected):
            return False
        return all(w.get("apps") and w["pid"] > 0 for w in workers)
    wait_for(ready, timeout=timeout, interval=0.2, what="all uWSGI workers to load the app")
    return round(time.monotonic() - t0, 2)


def memory_of(root_pid: int, run_dir: Path | None) -> dict:
    """RSS and PSS of the server's processes, by role (worker, master, nginx, server)."""
    inst = uwsgi_instances(run_dir) if run_dir else []
    masters = {s["pid"] for s in inst}
    workers = {w["pid"] for s in inst for w in s["workers"] if w["pid"] > 0}
    rows = []
    for pid in procinfo.tree(root_pid):
        name = procinfo.comm(pid)
        cmd = procinfo.cmdline(pid)
        if pid in workers:
            role = "worker"
        elif pid in masters:
            role = "master"
        elif name.startswith("nginx"):
            role = "nginx"
        elif "python" in cmd.split(" ")[0] or name.startswith("python"):
            role = "server"   # a Flask dev server: one process does everything
        else:
            continue          # the run.sh shell
        mem = procinfo.memory(pid)
        if mem:
            rows.append({"pid": pid, "role": role, **mem})
    serving = [r for r in rows if r["role"] in ("worker", "server")]

    def total(key, roles):
        return round(sum(r[key] for r in rows if r["role"] in roles), 1)
    return {
        "processes": rows,
        "serving_processes": len(serving),
        "rss_mb_per_worker": round(sum(r["rss_mb"] for r in serving) / len(serving), 1) if serving else None,
        "pss_mb_per_worker": round(sum(r["pss_mb"] for r in serving) / len(serving), 1) if serving else None,
        "workers_pss_mb_total": total("pss_mb", ("worker", "server")),
        "masters_pss_mb_total": total("pss_mb", ("master",)),
        "app_pss_mb_total": total("pss_mb", ("worker", "server", "master")),
        "nginx_pss_mb_total": total("pss_mb", ("nginx",)),
    }


NOISY_PCT = 30.0        # CPU (% of one core) used by others during a run that makes it "noisy"
NOISE_BUDGET_S = 100.0  # at most this much extra time per full run: waiting for quiet + re-measuring
_noise_spent = [0.0]


def wait_quiet(s: Settings) -> float:
    """Before a measured run: wait (within the budget) until other processes leave the CPU alone."""
    if s.quick:
        return 0.0
    t0 = time.monotonic()
    while _noise_spent[0] + (time.monotonic() - t0) < NOISE_BUDGET_S:
        with procinfo.CpuWindow() as cpu:
            time.sleep(1.0)
        if cpu.result["other_pct"] <= NOISY_PCT:
            break
    waited = time.monotonic() - t0
    if waited > 1.5:
        log(f"  waited {waited:.0f} s for other processes to leave the CPU")
    _noise_spent[0] += max(0.0, waited - 1.0)
    return round(waited, 1)


def load(s: Settings, url: str, body: bytes, ctype: str, *, seconds: float | None = None,
         conc: int | None = None, http10: bool = False, warmup: float | None = None) -> dict:
    """Warm up, then one measured wrk run with the CPU of every process group recorded.

    If other processes used the CPU during the run (someone else's tests, a
    build), the run is measured once more (full mode, within a time budget);
    both the kept run and the number of attempts are recorded.
    """
    conc = conc or s.conc
    warmup = s.warmup if warmup is None else warmup
    attempts = 0
    waited = 0.0
    while True:
        attempts += 1
        waited += wait_quiet(s)
        t0 = time.monotonic()
        if warmup:
            loadgen.run(url, body, warmup, conc, ctype, http10=http10, workdir=s.work)
        with procinfo.CpuWindow() as cpu:
            result = loadgen.run(url, body, seconds or s.seconds, conc, ctype, http10=http10,
                                 workdir=s.work)
        noisy = cpu.result["other_pct"] > NOISY_PCT
        if not noisy or s.quick or attempts > 1 or _noise_spent[0] > NOISE_BUDGET_S:
            break
        log(f"  noisy run ({cpu.result['other_pct']:.0f} % of a core used by other processes): "
            "measuring again")
        _noise_spent[0] += time.monotonic() - t0
    result["cpu"] = cpu.result
    result["attempts"] = attempts
    result["waited_for_quiet_s"] = waited
    result["noisy"] = noisy
    return result


def unloaded_sample(url: str, body: bytes, n: int) -> dict:
    """n sequential requests with no other load: round trip vs the app's own X-Inference-Ms."""
    rtt, app, who = [], [], {}
    # a fresh connection each time, as wrk's HTTP/1.0 runs and most clients do
    for _ in range(n):
        t0 = time.perf_counter()
        r = requests.post(url, data=body, timeout=60)
        rtt.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
        if "X-Inference-Ms" in r.headers:
            app.append(float(r.headers["X-Inference-Ms"]))
        key = r.headers.get("X-Upstream") or f"pid {r.headers.get('X-Worker-Pid')}"
        who[key] = who.get(key, 0) + 1
    med = lambda xs: round(sorted(xs)[len(xs) // 2], 1) if xs else None  # noqa: E731
    return {"requests": n, "round_trip_ms_median": med(rtt), "in_app_ms_median": med(app),
            "outside_app_ms_median": round(med(rtt) - med(app), 1) if app else None,
            "answered_by": who}


def kill_pids(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- stages

def stage_prep(s: Settings, image: Path, weights: Path) -> dict:
    out = subprocess.run([PY, "-m", "bench.inproc", "--lessons", str(s.lessons), "prep",
                          "--threads", "1", "--image", str(image), "--weights-out", str(weights),
                          "--repeat", "7" if s.quick else "15"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"bench.inproc prep failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def stage_limit(s: Settings, image: Path, layouts: list[tuple[int, int]] | None = None) -> dict:
    layouts = layouts or [(1, s.cores), (s.cores, 1)]
    rows = []
    for procs, threads in layouts:
        label = f"{procs} process{'es' if procs > 1 else ''} x {threads} torch thread{'s' if threads > 1 else ''}"
        log(f"limit: {label}, {s.limit_seconds:.0f} s")
        for attempt in (1, 2):
            wait_quiet(s)
            t0 = time.monotonic()
            row = _limit_once(s, image, procs, threads, label)
            if s.quick or row["cpu"]["other_pct"] <= NOISY_PCT or attempt == 2 \
                    or _noise_spent[0] > NOISE_BUDGET_S:
                break
            log(f"  noisy run ({row['cpu']['other_pct']:.0f} % of a core used by other processes): "
                "measuring again")
            _noise_spent[0] += time.monotonic() - t0
        row["attempts"] = attempt
        rows.append(row)
    best = max(rows, key=lambda r: r["images_per_s"])
    return {"layouts": rows, "best": best["label"], "images_per_s": best["images_per_s"],
            "note": "decode JPEG -> app's predict() -> PNG mask, in a loop, no HTTP; "
                    "random weights (same arithmetic as pretrained)"}


def _limit_once(s: Settings, image: Path, procs: int, threads: int, label: str) -> dict:
    children = [subprocess.Popen(
        [PY, "-m", "bench.inproc", "--lessons", str(s.lessons), "limit", "--threads", str(threads),
         "--seconds", str(s.limit_seconds), "--image", str(image),
         "--warmup", "1" if s.quick else "4"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    try:
        for child in children:
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("an in-process limit run did not start")
        with procinfo.CpuWindow(exited_children=None) as cpu:
            for child in children:  # go, all together
                child.stdin.write("go\n")
                child.stdin.flush()
            results = [json.loads(c.stdout.readline()) for c in children]
        for child in children:  # now they may exit
            child.communicate(input="bye\n", timeout=30)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    samples = sorted(x for r in results for x in r["samples_ms"])
    pct = lambda q: round(samples[min(len(samples) - 1, int(round(q / 100 * (len(samples) - 1))))], 1)  # noqa: E731
    return {
        "label": label, "processes": procs, "torch_threads": threads,
        "images": sum(r["images"] for r in results),
        "images_per_s": round(sum(r["images"] / r["seconds"] for r in results), 2),
        "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99)},
        "cpu": cpu.result,
    }


def stage_naive(s: Settings, body: bytes, weights: Path) -> list[dict]:
    rows = []
    variants = [("random weights", "random", 0), ("weights file", str(weights), 0)]
    if not s.quick:  # the same work per image as the app: resized to 520
        variants.append(("weights file, resized to 520", str(weights), 520))
    for kind, value, resize in variants:
        run_dir = make_run_dir()
        port = free_port()
        log(f"naive server, {kind}")
        server = started("naive", [PY, str(ROOT / "bench" / "naive_server.py")], run_dir,
                         env={"PORT": str(port), "NAIVE_WEIGHTS": value, "NAIVE_RESIZE": str(resize)},
                         cwd=ROOT / "bench", url=f"http://127.0.0.1:{port}")
        try:
            server.wait_http("/healthz", timeout=60)
            threads = requests.get(server.url + "/healthz", timeout=5).json()["torch_threads"]
            res = load(s, server.url + "/infer", body, "image/jpeg")
            res.update(stage="naive", label=f"tutorial's naive server, {kind}",
                       server="Flask dev server (threaded), model built per request",
                       weights=kind, torch_threads=threads, response="JSON list",
                       model_input="520 px (resized)" if resize else "256x256 (no resize)",
                       memory=memory_of(server.pid, None))
            rows.append(res)
        finally:
            stop(server)
            shutil.rmtree(run_dir, ignore_errors=True)
    return rows


def stage_lesson02(s: Settings, body: bytes) -> list[dict]:
    rows = []
    for threads in [1]:  # the app's default; more torch threads per request thread over-subscribe
        log(f"lesson 02 (Flask dev server), SEG_TORCH_THREADS={threads}")
        with lesson_server(s.lessons, "02_segmentation",
                           env={"SEG_TORCH_THREADS": str(threads)}) as srv:
            url = srv.url + "/infer?format=png"
            res = load(s, url, body, "image/jpeg")
            res.update(stage="lesson02", label=f"lesson 02: Flask dev server, {threads} torch thread(s)",
                       server="Flask dev server (threaded), model built once",
                       torch_threads=threads, workers=1,
                       memory=memory_of(srv.pid, None),
                       unloaded=unloaded_sample(url, body, 3 if s.quick else 6))
            rows.append(res)
    return rows


def _first_requests(url: str, body: bytes, n: int, timeout: float) -> list[dict]:
    def one(_):
        t0 = time.perf_counter()
        try:
            r = requests.post(url, data=body, timeout=timeout)
            return {"ok": r.status_code == 200, "status": r.status_code,
                    "pid": int(r.headers.get("X-Worker-Pid", 0)),
                    "ms": round((time.perf_counter() - t0) * 1000, 1)}
        except requests.Timeout:
            return {"ok": False, "status": "timeout", "ms": round((time.perf_counter() - t0) * 1000, 1)}
        except requests.RequestException as exc:
            return {"ok": False, "status": type(exc).__name__,
                    "ms": round((time.perf_counter() - t0) * 1000, 1)}
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def fork_configs(s: Settings, weights: Path) -> list[dict]:
    thread_counts = [1] if s.quick else [1, s.cores]
    kinds = [("random", "random")] if s.quick else [("random", "random"), ("file", str(weights))]
    configs = []
    for threads in thread_counts:
        for lazy in (False, True):
            # lazy-apps: the master does no torch work at all, so the weights' kind
            # (forward pass or not) cannot matter there; measured with random only.
            for kind, value in (kinds[:1] if lazy else kinds):
                configs.append({
                    "mode": "lazy-apps" if lazy else "prefork", "weights": kind, "torch_threads": threads,
                    "args": ["--lazy-apps"] if lazy else [],
                    "env": {"SEG_WEIGHTS": value, "SEG_TORCH_THREADS": str(threads)},
                    "torch_work_in_master": (
                        "none (each worker loads the app)" if lazy else
                        f"model build + forward pass (batch-norm calibration), {threads} thread(s)"
                        if kind == "random" else
                        f"model build + load_state_dict, no forward pass, {threads} thread(s)")})
        if threads > 1:
            # The way out that keeps prefork's shared memory: one torch thread in the
            # master, the wanted count set in each worker after fork (bench/postfork_app.py).
            configs.append({
                "mode": "prefork + @postfork", "weights": "random", "torch_threads": threads,
                "args": ["--wsgi-file", str(ROOT / "bench" / "postfork_app.py")],
                "env": {"SEG_WEIGHTS": "random", "SEG_TORCH_THREADS": "1",
                        "BENCH_WORKER_THREADS": str(threads)},
                "torch_work_in_master": "model build + forward pass with 1 thread; each worker "
                                        f"sets {threads} threads in a @postfork hook"})
    return configs


@contextlib.contextmanager
def raw_lesson(s: Settings, lesson: str, args: list[str], env: dict):
    """A lesson's run.sh on a free port, NOT waited for (the fork test watches start-up itself)."""
    run_dir = make_run_dir()
    port = free_port()
    script = s.lessons / lesson / "run.sh"
    full = {"PORT": str(port), "TCP_PORT": str(free_port()), "RUN_DIR": str(run_dir), **env}
    server = started(lesson, ["bash", str(script), *args], run_dir, env=full, cwd=script.parent,
                     url=f"http://127.0.0.1:{port}")
    server.run_dir = run_dir
    try:
        yield server
    finally:
        stop(server)
        shutil.rmtree(run_dir, ignore_errors=True)


def stage_fork(s: Settings, body: bytes, weights: Path) -> list[dict]:
    """The fork choice: model loaded before fork (prefork) vs lazy-apps, with and without a
    forward pass in the master, 1 and `cores` torch threads: does every worker
    answer, or does one hang in its first forward pass? And the PSS of each choice.

    A worker's first forward pass is the app's post-fork warm-up (or, in an app
    without one, the first request): a hung worker never accepts a request. So:
    after the master has forked, POST rounds of `cores` concurrent requests
    until every worker pid has answered; a worker that has not answered within
    hang_timeout seconds counts as hung.
    """
    rows = []
    for cfg in fork_configs(s, weights):
        log(f"fork: {cfg['mode']}, SEG_WEIGHTS={cfg['weights']}, {cfg['torch_threads']} torch thread(s)")
        row = {k: cfg[k] for k in ("mode", "weights", "torch_threads", "torch_work_in_master")}
        row.update(workers=s.cores, request_timeout_s=s.hang_timeout,
                   command="lessons/03_uwsgi/run.sh " + " ".join(
                       ["--processes", str(s.cores)] + [a.replace(str(ROOT) + "/", "") for a in cfg["args"]]))
        try:
            _fork_one(s, cfg, row, body)
        except Exception as exc:  # keep the other rows
            row.update(result="error", error=f"{type(exc).__name__}: {exc}"[:2000])
            log(f"  error: {row['error'][:200]}")
        rows.append(row)
    return rows


def _fork_one(s: Settings, cfg: dict, row: dict, body: bytes) -> None:
    t0 = time.monotonic()
    with raw_lesson(s, "03_uwsgi", ["--processes", str(s.cores)] + cfg["args"], cfg["env"]) as srv:
        def forked():
            if not srv.alive():
                raise RuntimeError(f"run.sh exited during start-up:\n{srv.log(30)}")
            ws = [w for st in uwsgi_instances(srv.run_dir) for w in st["workers"]]
            return len(ws) >= s.cores and all(w["pid"] > 0 for w in ws) and ws
        wait_for(forked, timeout=120, interval=0.2, what="uWSGI to fork its workers")
        forked_at = time.monotonic()
        row["forked_after_s"] = round(forked_at - t0, 2)
        url = srv.url + "/infer?format=png"
        deadline = forked_at + s.hang_timeout
        outcomes: list[dict] = []
        first_answer: dict[int, float] = {}
        worker_pids: set[int] = set()
        while time.monotonic() < deadline:
            worker_pids = {w["pid"] for st in uwsgi_instances(srv.run_dir) for w in st["workers"]}
            if worker_pids and worker_pids <= set(first_answer):
                break
            batch = _first_requests(url, body, s.cores, max(1.0, deadline - time.monotonic()))
            outcomes += batch
            for o in batch:
                if o["ok"] and o["pid"] not in first_answer:
                    first_answer[o["pid"]] = round(time.monotonic() - forked_at, 2)
            if not any(o["ok"] for o in batch):
                time.sleep(0.2)
        silent = sorted(worker_pids - set(first_answer))
        row.update(
            result="hang" if silent else "ok",
            workers_answered=len(worker_pids & set(first_answer)),
            workers_silent=len(silent),
            first_answer_after_fork_s=sorted(first_answer.values()),
            requests_sent=len(outcomes),
            requests_failed=sum(1 for o in outcomes if not o["ok"]),
            readyz=_readyz(srv.url),
            memory=memory_of(srv.pid, srv.run_dir))
        if s.quick and row["result"] == "ok" and cfg["mode"] != "prefork + @postfork":
            # quick mode: this server doubles as the sweep's row (saves a restart)
            row["load"] = load(s, url, body, "image/jpeg", http10=True)
        if silent:
            # Hung workers ignore the stop signal: end this uWSGI at once (our own processes).
            masters = [st["pid"] for st in uwsgi_instances(srv.run_dir)]
            kill_pids(silent + masters)


def _readyz(base: str) -> dict | None:
    try:
        r = requests.get(base + "/readyz", timeout=2)
        return {"status": r.status_code, **(r.json() if r.headers.get("Content-Type", "").startswith(
            "application/json") else {})}
    except (requests.RequestException, ValueError):
        return None


def sweep_configs(s: Settings) -> list[tuple[int, int]]:
    if s.quick:
        return [(s.cores, 1)]
    return [(w, t) for w in (1, s.cores, 2 * s.cores) for t in (1, s.cores)]


def stage_sweep(s: Settings, body: bytes, fork_rows: list[dict]) -> list[dict]:
    prefork_ok = {r["torch_threads"]: r["result"] == "ok" for r in fork_rows
                  if r["mode"] == "prefork" and r["weights"] == "random"}
    if not prefork_ok:  # the fork test did not run: one torch thread is the safe prefork setting
        prefork_ok = {1: True}
    configs = [(w, t, not prefork_ok.get(t, False)) for w, t in sweep_configs(s)]
    if (s.cores, 1, True) not in configs:
        configs.append((s.cores, 1, True))  # prefork vs lazy-apps at the same layout
    rows = []
    reuse = {(r["workers"], r["torch_threads"], r["mode"] == "lazy-apps"): r for r in fork_rows
             if r["weights"] == "random" and "load" in r}
    for workers, threads, lazy in configs:
        mode = "lazy-apps" if lazy else "prefork"
        if (workers, threads, lazy) in reuse:  # quick mode: measured during the fork test
            f = reuse[(workers, threads, lazy)]
            rows.append({**f["load"], "stage": "lesson03",
                         "label": f"lesson 03: uWSGI {workers}w x {threads}t {mode}",
                         "workers": workers, "torch_threads": threads, "mode": mode,
                         "oversubscribed": workers * threads > s.cores, "why_mode": "",
                         "memory": f["memory"], "measured_in": "the fork test's server"})
            continue
        log(f"lesson 03 sweep: {workers} workers x {threads} torch threads, {mode}")
        args = ["--processes", str(workers)] + (["--lazy-apps"] if lazy else [])
        with lesson_server(s.lessons, "03_uwsgi", args=args,
                           env={"SEG_TORCH_THREADS": str(threads)}) as srv:
            wait_workers_ready(srv.run_dir, workers)
            res = load(s, srv.url + "/infer?format=png", body, "image/jpeg", http10=True)
            res.update(stage="lesson03", label=f"lesson 03: uWSGI {workers}w x {threads}t {mode}",
                       workers=workers, torch_threads=threads, mode=mode,
                       oversubscribed=workers * threads > s.cores,
                       why_mode=("prefork hung in the fork test at this thread count"
                                 if lazy and not prefork_ok.get(threads, False) else ""),
                       memory=memory_of(srv.pid, srv.run_dir))
            rows.append(res)
    return rows


def best_of(sweep: list[dict]) -> dict:
    """The fastest workers x threads layout, run the lessons' default way (prefork) when
    prefork works at that thread count: the fork mode changes memory, not speed."""
    top = max(sweep, key=lambda r: r["rps"])
    same = [r for r in sweep if (r["workers"], r["torch_threads"]) == (top["workers"], top["torch_threads"])]
    return next((r for r in same if r["mode"] == "prefork"), top)


def uwsgi_args(row: dict) -> tuple[list[str], dict]:
    args = ["--processes", str(row["workers"])]
    if row["mode"] == "lazy-apps":
        args += ["--lazy-apps"]
    return args, {"SEG_TORCH_THREADS": str(row["torch_threads"])}


def nginx_buffering(log_text: str) -> int:
    return log_text.count("buffered to a temporary file")


def stage_lesson04(s: Settings, body: bytes, best: dict) -> list[dict]:
    args, env = uwsgi_args(best)
    log(f"lesson 04 (nginx -> uWSGI): {' '.join(args)} {env}")
    with lesson_server(s.lessons, "04_nginx", args=args, env=env) as srv:
        wait_workers_ready(srv.run_dir, best["workers"])
        url = srv.url + "/infer?format=png"
        res = load(s, url, body, "image/jpeg")
        res.update(stage="lesson04", label=f"lesson 04: nginx -> uWSGI {best['workers']}w x "
                   f"{best['torch_threads']}t {best['mode']}",
                   workers=best["workers"], torch_threads=best["torch_threads"], mode=best["mode"],
                   memory=memory_of(srv.pid, srv.run_dir),
                   unloaded=unloaded_sample(url, body, 3 if s.quick else 6),
                   nginx_body_buffered_to_file=nginx_buffering(srv.log(100000)))
    return [res]


def stage_lesson05(s: Settings, body: bytes, best: dict) -> dict | list[dict]:
    script = s.lessons / "05_multi_upstream" / "run.sh"
    if not script.exists():
        return {"skipped": f"{script.relative_to(ROOT) if script.is_relative_to(ROOT) else script} "
                           "does not exist yet"}
    rows = []
    # Per upstream instance: the best total layout split over the two instances
    # (so workers x threads still fits the cores), and the lesson's own default.
    per_instance = max(1, best["workers"] // 2)
    variants = [(per_instance, best["torch_threads"], best["mode"])]
    for workers, threads, mode in variants:
        args = ["--processes", str(workers)] + (["--lazy-apps"] if mode == "lazy-apps" else [])
        env = {"SEG_TORCH_THREADS": str(threads)}
        log(f"lesson 05 (nginx -> 2 upstreams): {' '.join(args)} per upstream, {env}")
        with lesson_server(s.lessons, "05_multi_upstream", args=args, env=env) as srv:
            wait_workers_ready(srv.run_dir, 2 * workers)
            url = srv.url + "/infer?format=png"
            these = []
            for conc in ([s.conc] if s.quick else [s.conc, s.cores]):
                res = load(s, url, body, "image/jpeg", conc=conc)
                res.update(stage="lesson05",
                           label=f"lesson 05: nginx -> 2 upstreams x ({workers}w x {threads}t {mode}), "
                                 f"{conc} connections",
                           workers=2 * workers, workers_per_upstream=workers,
                           torch_threads=threads, mode=mode,
                           memory=memory_of(srv.pid, srv.run_dir))
                these.append(res)
            these[0]["unloaded"] = unloaded_sample(url, body, 4 if s.quick else 10)
            for res in these:
                res["nginx_body_buffered_to_file"] = nginx_buffering(srv.log(100000))
            rows += these
    return rows


def stage_echo(s: Settings) -> list[dict]:
    body = b"Hi there!"
    rows = []
    root_owner = os.geteuid() == 0
    log("echo: Flask dev server")
    with lesson_server(s.lessons, "01_echo", ready="/healthz") as srv:
        res = load(s, srv.url + "/infer", body, "text/plain", seconds=s.echo_seconds,
                   warmup=s.echo_warmup)
        res.update(stage="echo", label="echo: Flask dev server", memory=memory_of(srv.pid, None))
        rows.append(res)
    echo_ini = ROOT / "bench" / "echo" / "echo.ini"
    for kind in ("http-socket", "http11-socket", "nginx"):
        log(f"echo: {kind}")
        run_dir = make_run_dir()
        servers = []
        try:
            port = free_port()
            env = {"RUN_DIR": str(run_dir), "PORT": str(port)}
            cmd = [str(VENV_BIN / "uwsgi"), "--ini", str(echo_ini), "--processes", str(s.cores)]
            if kind == "nginx":
                sock = run_dir / "echo.sock"
                cmd += ["--socket", str(sock), "--chmod-socket=660"]
                if root_owner:
                    cmd += ["--chown-socket=root:www-data"]
            else:
                cmd += [f"--{kind}", f"127.0.0.1:{port}"]
            uw = started("echo-uwsgi", cmd, run_dir, env=env, cwd=ROOT,
                         url=f"http://127.0.0.1:{port}")
            servers.append(uw)
            if kind == "nginx":
                wait_for(lambda: (run_dir / "echo.sock").exists(), timeout=30, what="echo.sock")
                conf = wnginx.write_local(run_dir / "nginx",
                                          [s.lessons / "04_nginx" / "inference.conf.template"],
                                          {"LISTEN": f"127.0.0.1:{port}", "SERVER_NAME": "localhost",
                                           "UPSTREAM": f"unix:{run_dir / 'echo.sock'}"})
                check = wnginx.test_config(conf)
                if check.returncode != 0:
                    raise RuntimeError(f"nginx -t failed: {check.stderr}")
                ngx = started("echo-nginx", ["nginx", "-p", str(run_dir / "nginx"), "-c", str(conf)],
                              run_dir, env=env, url=f"http://127.0.0.1:{port}")
                servers.append(ngx)
            servers[-1].wait_http("/healthz", timeout=30)
            wait_workers_ready(run_dir, s.cores)
            res = load(s, f"http://127.0.0.1:{port}/infer", body, "text/plain",
                       seconds=s.echo_seconds, http10=(kind == "http-socket"), warmup=s.echo_warmup)
            label = {"http-socket": "echo: uWSGI http-socket",
                     "http11-socket": "echo: uWSGI http11-socket (keep-alive)",
                     "nginx": "echo: nginx -> uWSGI (unix socket, lesson 04's site)"}[kind]
            mem = memory_of(uw.pid, run_dir)
            if kind == "nginx":
                ng = memory_of(servers[-1].pid, None)
                mem["processes"] += ng["processes"]
                mem["nginx_pss_mb_total"] = ng["nginx_pss_mb_total"]
            res.update(stage="echo", label=label, workers=s.cores, memory=mem)
            rows.append(res)
        finally:
            for server in reversed(servers):
                stop(server)
            shutil.rmtree(run_dir, ignore_errors=True)
    return rows


# ---------------------------------------------------------------- targets

def evaluate(results: dict) -> list[dict]:
    st = results["stages"]
    out = []
    limit = st.get("limit", {}).get("images_per_s")
    l05 = st.get("lesson05")
    stack_rows = l05 if isinstance(l05, list) and l05 else None
    stack_name = "lesson 05"
    if stack_rows is None and isinstance(st.get("lesson04"), list):
        stack_rows, stack_name = st["lesson04"], "lesson 04 (lesson 05 missing)"
    if limit and stack_rows:
        best = max(stack_rows, key=lambda r: r["rps"])
        ratio = best["rps"] / limit
        lat = best["latency_ms"]
        out.append({"target": f"{stack_name} stack >= 0.9 x the in-process limit (images/s)",
                    "value": f"{best['rps']:.1f} / {limit:.1f} = {ratio:.2f}x ({best['label']})",
                    "met": ratio >= 0.9})
        out.append({"target": f"{stack_name}: p99 <= 2 x p50 at that load",
                    "value": f"p50 {lat['p50']} ms, p99 {lat['p99']} ms ({lat['p99'] / lat['p50']:.2f}x)",
                    "met": lat["p99"] <= 2 * lat["p50"]})
        out.append({"target": f"{stack_name}: zero failed requests",
                    "value": f"{best['failed']['total']} failed of {best['requests']}",
                    "met": best["failed"]["total"] == 0})
    mf = st.get("mask_formats")
    if isinstance(mf, dict) and "png_bytes" in mf:
        out.append({"target": "PNG mask >= 100 x smaller than the JSON list",
                    "value": f"{mf['json_bytes']} / {mf['png_bytes']} bytes = {mf['size_ratio_json_over_png']}x",
                    "met": mf["size_ratio_json_over_png"] >= 100})
        out.append({"target": "PNG faster to encode than JSON",
                    "value": f"{mf['png_encode_ms']} ms vs {mf['json_encode_ms']} ms",
                    "met": mf["png_encode_ms"] < mf["json_encode_ms"]})
    sweep = st.get("lesson03_sweep")
    if isinstance(sweep, list):
        pre = [r for r in sweep if r["mode"] == "prefork" and r["workers"] == results["meta"]["cores"]
               and r["torch_threads"] == 1]
        lazy = [r for r in sweep if r["mode"] == "lazy-apps" and r["workers"] == results["meta"]["cores"]
                and r["torch_threads"] == 1]
        if pre and lazy:
            a, b = pre[0]["memory"]["app_pss_mb_total"], lazy[0]["memory"]["app_pss_mb_total"]
            out.append({"target": "memory: total PSS, prefork vs lazy-apps (shown, no threshold)",
                        "value": f"{a:.0f} MB vs {b:.0f} MB (lazy-apps costs {b - a:+.0f} MB)",
                        "met": None})
    return out


# ---------------------------------------------------------------- main

def run_stage(results: dict, name: str, fn, *args):
    t0 = time.monotonic()
    try:
        results["stages"][name] = fn(*args)
    except Exception as exc:  # one broken stage must not lose the others' numbers
        log(f"stage {name} FAILED: {exc}")
        results["stages"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                   "traceback": traceback.format_exc()[-3000:]}
    results["timing_s"][name] = round(time.monotonic() - t0, 1)
    return results["stages"][name]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short runs, fewer settings")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where to write the results")
    parser.add_argument("--seconds", type=float, help="length of each measured wrk run (model stages)")
    parser.add_argument("--lessons", default=str(REFERENCE), help="the lessons to measure")
    parser.add_argument("--only", help="comma-separated stages to run (debugging), e.g. echo,limit")
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 1
    quick = args.quick
    work = Path(make_run_dir())
    s = Settings(quick=quick, seconds=args.seconds or (2 if quick else 10),
                 warmup=1 if quick else 3, echo_seconds=1 if quick else 5,
                 echo_warmup=0 if quick else 2,
                 limit_seconds=2 if quick else 10, hang_timeout=8 if quick else 20,
                 cores=cores, conc=2 * cores, lessons=Path(args.lessons).resolve(), work=work)
    only = set(args.only.split(",")) if args.only else None
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not loadgen.available():
        print("wrk is not installed: apt-get install wrk (./workshop.sh setup does it)", file=sys.stderr)
        return 1

    # The same photo for every stage: scikit-image's cat, 256x256 JPEG.
    image = work / "chelsea-256.jpg"
    body = images.encode(images.photo("chelsea").resize((256, 256)), "JPEG", quality=92)
    image.write_bytes(body)
    weights = work / "random-state-dict.pth"

    started_at = time.time()
    results = {
        "meta": {
            "command": "python -m bench" + (" " + " ".join(argv if argv is not None else sys.argv[1:])
                                            if (argv if argv is not None else sys.argv[1:]) else ""),
            "quick": quick, "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started_at)),
            "cores": cores, "machine": procinfo.machine(),
            "image": {"name": "scikit-image chelsea (cat), resized to 256x256",
                      "format": "JPEG quality 92", "bytes": len(body), "width": 256, "height": 256},
            "settings": {"measured_seconds": s.seconds, "warmup_seconds": s.warmup,
                         "echo_seconds": s.echo_seconds, "limit_seconds": s.limit_seconds,
                         "connections": s.conc, "hang_timeout_s": s.hang_timeout,
                         "weights": "random (seeded) everywhere except where a weights file is named",
                         "response": "?format=png (a PNG mask), except the naive server (JSON list)"},
            "load_before": procinfo.loadavg(),
        },
        "stages": {}, "timing_s": {},
    }
    want = lambda name: only is None or name in only  # noqa: E731
    try:
        if want("mask_formats") or want("naive") or want("lesson03_fork"):
            log("prep: weights file, per-step profile, PNG vs JSON")
            prep = run_stage(results, "prep", stage_prep, s, image, weights)
            if "error" not in prep:
                results["stages"]["mask_formats"] = prep.pop("mask_formats")
                results["stages"]["profile"] = prep
            else:
                results["stages"]["mask_formats"] = prep
            results["stages"].pop("prep", None)
        if want("limit"):
            run_stage(results, "limit", stage_limit, s, image)
        if want("naive"):
            run_stage(results, "naive", stage_naive, s, body, weights)
        if want("lesson02"):
            run_stage(results, "lesson02", stage_lesson02, s, body)
        fork_rows = []
        if want("lesson03_fork"):
            fork_rows = run_stage(results, "lesson03_fork", stage_fork, s, body, weights)
            fork_rows = fork_rows if isinstance(fork_rows, list) else []
        sweep = []
        if want("lesson03_sweep") or want("lesson04") or want("lesson05"):
            sweep = run_stage(results, "lesson03_sweep", stage_sweep, s, body, fork_rows)
        best = best_of(sweep) if isinstance(sweep, list) and sweep else \
            {"workers": cores, "torch_threads": 1, "mode": "prefork"}
        results["meta"]["best_layout"] = {k: best[k] for k in ("workers", "torch_threads", "mode")}
        lim = results["stages"].get("limit")
        if not s.quick and isinstance(lim, dict) and "layouts" in lim and (want("lesson04") or want("lesson05")):
            # The bar once more, right before the stacks it is compared with: this
            # VM's speed drifts by several % between runs of the same setting.
            best_lim = next(l for l in lim["layouts"] if l["label"] == lim["best"])
            again = run_stage(results, "limit_again", stage_limit, s, image,
                              [(best_lim["processes"], best_lim["torch_threads"])])
            results["stages"].pop("limit_again", None)
            if isinstance(again, dict) and "layouts" in again:
                row = again["layouts"][0]
                row["label"] += " (again, before lessons 04-05)"
                row["repeat"] = True
                lim["layouts"].append(row)
                first = best_lim["images_per_s"]
                lim["images_per_s"] = round((first + row["images_per_s"]) / 2, 2)
                lim["spread_pct"] = round(abs(first - row["images_per_s"]) / lim["images_per_s"] * 100, 1)
                lim["note"] += "; the bar is the mean of the best layout's two runs"
        if want("lesson04"):
            run_stage(results, "lesson04", stage_lesson04, s, body, best)
        if want("lesson05"):
            run_stage(results, "lesson05", stage_lesson05, s, body, best)
        if want("echo"):
            run_stage(results, "echo", stage_echo, s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["meta"]["load_after"] = procinfo.loadavg()
    results["meta"]["duration_s"] = round(time.time() - started_at, 1)
    results["targets"] = evaluate(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report.write(results, out_dir)
    log(f"done in {results['meta']['duration_s']:.0f} s: {out_dir}/results.json, results.md, chart.png")
    failed = [k for k, v in results["stages"].items() if isinstance(v, dict) and "error" in v]
    if failed:
        log(f"stages with errors: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
