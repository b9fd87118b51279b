"""The workshop's benchmark: what each serving stage costs, against what the machine can do.

    python -m bench                 full run (about 11 minutes on 2 cores)
    python -m bench --quick         smoke run (about 2 minutes), same files
    python -m bench --out DIR       write results.json, results.md and chart.png to DIR
    python -m bench --only model,limit      some stages only (debugging)

One run, one machine, loopback only; every process is started through
workshop.harness and stopped again. The limit is the network's forward pass
alone, one process per core: every stage is compared with it, and with the
app's whole pipeline run the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback

from bench import report, serving
from bench.measure import (Context, CpuWindow, child, child_result, load, loadavg, log, machine, median, options,
                           post, ratio, result_of, summary, written)
from bench.report import rows_of
from workshop import images
from workshop.harness import make_run_dir, stop

# The photo sizes: scikit-image's cat, stretched. --quick measures two of them.
SIZES = [("256x256", 256, 256), ("0.5 MP", 816, 612), ("2 MP", 1632, 1224), ("12 MP", 4000, 3000),
         ("24 MP", 5656, 4242)]
QUICK_SIZES = ("256x256", "12 MP")


def inproc(ctx: Context, *args: str) -> list[str]:
    """The arguments of `python -m bench.inproc ARGS` (a child of measure.child)."""
    return ["-m", "bench.inproc", "--lessons", str(ctx.lessons), *args]


def model(ctx: Context) -> dict:
    """One process, one torch thread: the levers step by step, layouts, precision, batches, formats."""
    log("model: before/after profile, layouts, precision, batching, PNG vs JSON")
    (ctx.work / "photos.json").write_text(json.dumps(ctx.photos))
    args = ["--photos", str(ctx.work / "photos.json"), "--weights-out", str(ctx.work / "weights.pth")]
    return child_result(ctx.work, "model", inproc(ctx, "model", *args, *["--quick"] * ctx.quick), timeout=900)


class Limit:
    """`cores` processes of one torch thread, started together for each phase: images/s with no HTTP.
    run() runs their phases (bench.inproc's limit) one at a time, each for `seconds`; in between, the
    processes idle, so that a stage can measure a stack on the same cores right before and after."""

    def __init__(self, ctx: Context, phases: list[str], seconds: float):
        image = next(p["path"] for p in ctx.photos if p["label"] == "256x256")
        for old in [*ctx.work.glob("go-*"), *ctx.work.glob("done-*"), *ctx.work.glob("limit-*.log")]:
            old.unlink()
        self.ctx, self.seconds, self.children = ctx, seconds, []
        try:
            for i in range(ctx.cores):
                self.children.append(child(ctx.work, f"limit-{i}", inproc(
                    ctx, "limit", ",".join(phases), "--image", image, "--signals", str(ctx.work),
                    "--seconds", str(seconds), "--warmup", "1" if ctx.quick else "4")))
        except BaseException:
            self.close()
            raise

    def run(self, phase: str) -> dict:
        ctx = self.ctx
        log(f"limit: {phase}, {ctx.cores} processes x 1 torch thread, {self.seconds:.0f} s")
        for c in self.children:
            c.wait_log(f"READY {phase}", timeout=180)
        with CpuWindow(exited_children=None) as cpu:
            (ctx.work / f"go-{phase}").touch()
            for c in self.children:
                c.wait_log(f"RESULT {phase} ", timeout=self.seconds + 120)
        (ctx.work / f"done-{phase}").touch()  # they idled until now, for the CpuWindow to count them
        runs = [result_of(c, f"RESULT {phase} ") for c in self.children]
        samples = [x for r in runs for x in r["samples_ms"]]
        return {"processes": ctx.cores, "torch_threads": 1, "input": runs[0]["input"],
                "images_per_s": round(sum(len(r["samples_ms"]) / r["seconds"] for r in runs), 2),
                "latency_ms": summary(samples), "cpu": cpu.result}

    def close(self) -> None:
        for c in self.children:
            stop(c)


def limit(ctx: Context) -> dict:
    lim = Limit(ctx, ["forward", "pipeline"], ctx.limit_seconds)
    try:
        return {phase: lim.run(phase) for phase in ("forward", "pipeline")}
    finally:
        lim.close()


def paired(ctx: Context) -> dict:
    """Lesson 05 against the forward-pass limit, in short turns: this VM's speed drifts by tens of
    percent within a minute, so a ratio is only worth something between runs seconds apart. A round:
    the limit (every core), then lesson 05 at one connection per core, both for `seconds`."""
    n, seconds = (1, 2) if ctx.quick else (6, 5)
    lim = Limit(ctx, [f"forward.{i}" for i in range(n)], seconds)
    rounds = []
    try:
        with serving.stack(ctx, "05_multi_upstream", 1, env={"SEG_TORCH_THREADS": "1"}, workers=2) as srv:
            for i in range(n):
                forward = lim.run(f"forward.{i}")
                log(f"paired round {i + 1} of {n}: lesson 05, {ctx.cores} connections, {seconds} s")
                served = load(ctx, srv, ctx.body, conc=ctx.cores, seconds=seconds, warmup=1)
                rounds.append({"forward": forward, "lesson05": served,
                               "x_forward": ratio(served["rps"], forward["images_per_s"])})
            # And a 12-megapixel photo against the small one, unloaded: one of each in turn.
            log("paired: unloaded round trips, 256x256 and 12 MP in turns")
            trips = {label: [] for label in ("256x256", "12 MP")}
            for _ in range(3 if ctx.quick else 10):
                for label, ms in trips.items():
                    status, took = post(srv.url, ctx.photo(label))
                    if status != 200:
                        raise RuntimeError(f"the {label} photo got HTTP {status}")
                    ms.append(round(1000 * took, 2))
    finally:
        lim.close()
    return {"rounds": rounds, "seconds": seconds, "x_forward": median([r["x_forward"] for r in rounds]),
            "round_trips_ms": {label: summary(ms) for label, ms in trips.items()}}


# The stages, in order. Each is a function of the Context that returns its rows,
# kept under results["stages"][name]; a stage may read earlier ones in ctx.results.
# A new measurement plugs in as one more entry, e.g. a module with a run():
#     ("soak", lambda ctx: soak.run(ctx.out, ctx.quick, ctx.lessons)),
STAGES = [
    ("model", model),
    ("limit", limit),
    ("lesson02", serving.lesson02),
    ("lesson03_fork", serving.fork),
    ("lesson03_sweep", serving.sweep),
    ("lesson03_gpu", serving.gpu),
    ("static_page", serving.static_page),
    ("paired", paired),
    ("lesson04", serving.lesson04),
    ("lesson05", serving.lesson05),
    ("balance", serving.balance),
]


def derive(res: dict) -> None:
    """The two bars, every stage's ratio to them, and the targets: computed here, once."""
    st, cores = res["stages"], res["meta"]["cores"]
    get = lambda name: rows_of(st, name)  # noqa: E731
    rounds = get("paired").get("rounds", [])
    runs = [r["images_per_s"] for r in [get("limit").get("forward")] + [r["forward"] for r in rounds] if r]
    forward = round(sum(runs) / len(runs), 2) if runs else None
    pipeline = get("limit").get("pipeline", {}).get("images_per_s")
    res["limits"] = {"forward_images_per_s": forward, "pipeline_images_per_s": pipeline, "forward_runs": runs}
    rows = [("limit: the forward pass alone", f"{cores} processes x 1 torch thread", get("limit").get("forward")),
            ("the app's pipeline, no HTTP", f"{cores} processes x 1 torch thread", get("limit").get("pipeline"))]
    rows += [("lesson 02: Flask dev server", "model built once, 1 torch thread", r) for r in get("lesson02")]
    rows += report.served(st, cores)
    speed = lambda r: r["rps"] if "rps" in r else r["images_per_s"]  # noqa: E731  (wrk's rows, the limit's)
    res["headline"] = [{"stage": stage, "setting": setting, "images_per_s": speed(r),
                        "x_forward": ratio(speed(r), forward), "x_pipeline": ratio(speed(r), pipeline),
                        "latency_ms": r["latency_ms"], "failed": r.get("failed"),
                        "idle_connections": r.get("idle_connections"),
                        "rss_mb_per_worker": r.get("memory", {}).get("rss_mb_per_worker"),
                        "other_cpu_pct": r["cpu"]["other_pct"]} for stage, setting, r in rows if r]
    res["targets"] = targets(st, cores)


def targets(st: dict, cores: int) -> list[dict]:
    """The workshop's targets on this machine, as sentences, with what this run measured. Each is a
    comparison within seconds (the machine's speed drifts): the first three from the paired rounds
    (lesson 05 and the limit in turns; the median of the rounds counts)."""
    out, l05, rounds = [], rows_of(st, "lesson05"), rows_of(st, "paired").get("rounds", [])
    if rounds:
        x = median([r["x_forward"] for r in rounds])
        out.append((f"lesson 05's stack serves ≥ 0.85× the forward-pass limit, in images/s at {cores} connections",
                    f"{x:.2f}× (median of {len(rounds)} rounds: "
                    + ", ".join(f"{r['lesson05']['rps']:.1f} / {r['forward']['images_per_s']:.1f}" for r in rounds)
                    + " images/s)", x >= 0.85))
        tails = [r["lesson05"]["latency_ms"]["p99"] / r["lesson05"]["latency_ms"]["p50"] for r in rounds]
        tail = median(tails)
        failed = sum(r["lesson05"]["failed"]["total"] for r in rounds)
        done = sum(r["lesson05"]["requests"] for r in rounds)
        out += [("lesson 05: p99 ≤ 2× p50 at that load", f"{tail:.2f}× (median of the rounds; "
                 f"{min(tails):.2f}× to {max(tails):.2f}×)", tail <= 2),
                ("lesson 05: no failed request at that load", f"{failed} failed of {done}", failed == 0)]
    # Outside the forward pass, in two parts, each a difference within one measurement: the app's
    # own steps around it (the profile: the whole request minus the forward pass, timed in turns),
    # and the trip through nginx and uWSGI (each unloaded round trip minus its X-Inference-Ms).
    prof = next((p for p in rows_of(st, "model").get("profile", []) if p["photo"] == "256x256"), None)
    small_trip = next((r["unloaded"] for r in l05.get("by_size", []) if r["label"] == "256x256"), None)
    if prof and small_trip and "in_app_ms" in small_trip:
        ms = {s["step"]: s["after_ms"] for s in prof["steps"]}
        fwd = ms["forward pass (the network's layers)"]
        app = ms["whole request"] - fwd
        trip = small_trip["outside_app_ms_p50"]
        share = (app + trip) / (fwd + app + trip)
        out.append(("time outside the forward pass ≤ 10 % of a 256x256 request (unloaded, through lesson 05)",
                    f"{100 * share:.0f} %: {app:.1f} ms of the app's own steps + {trip:.1f} ms through nginx and "
                    f"uWSGI, against a forward pass of {fwd:.1f} ms", share <= 0.10))
    trips = rows_of(st, "paired").get("round_trips_ms", {})
    small, big = trips.get("256x256"), trips.get("12 MP")
    if small and big:
        out.append(("an unloaded 12-megapixel JPEG through lesson 05 takes ≤ 2× the round trip of the 256x256 one",
                    f"{big['p50']:.0f} ms vs {small['p50']:.0f} ms = {big['p50'] / small['p50']:.2f}× (one of each "
                    f"in turn, {small['n']} times)", big["p50"] <= 2 * small["p50"]))
    for r in [r for r in l05.get("by_size", []) if r["label"] == "24 MP"]:
        u = r["unloaded"]
        out.append(("a 24-megapixel upload is served, or refused with a clear 413", f"HTTP {u['status']}" + (
            f", {u['round_trip_ms']['p50']:.0f} ms" if u["status"] == 200 else f": {u['error'][:80]}"),
            u["status"] in (200, 413)))
    return [{"target": t, "measured": m, "met": met} for t, m, met in out]


def main(argv=None) -> int:
    args = options(__doc__, "smoke run: short runs, fewer settings", "where to write the results", argv,
                   prog="python -m bench", only="comma-separated stages to run: " + ",".join(n for n, _ in STAGES))
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk (./workshop.sh setup does it)", file=sys.stderr)
        return 1
    os.environ["SEG_PRECISION"] = "fp32"  # every server runs the default; bf16 is compared in-process
    ctx = Context(quick=args.quick, cores=os.cpu_count() or 1, lessons=args.lessons.resolve(), work=make_run_dir(),
                  photos=[], out=args.out)
    ctx.out.mkdir(parents=True, exist_ok=True)
    if ctx.quick:
        ctx.seconds, ctx.curve_seconds, ctx.limit_seconds = 2, 1, 2
        ctx.warmup, ctx.hang_timeout = 0, 8
    for label, w, h in [s for s in SIZES if not ctx.quick or s[0] in QUICK_SIZES]:
        path = ctx.work / f"photo-{w}x{h}.jpg"
        path.write_bytes(images.encode(images.photo_at(w, h), "JPEG", quality=92))
        ctx.photos.append({"label": label, "width": w, "height": h, "megapixels": round(w * h / 1e6, 2),
                           "bytes": path.stat().st_size, "path": str(path)})
    t0 = time.time()
    res = ctx.results = {"meta": {
        "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]), "quick": ctx.quick,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(t0)), "cores": ctx.cores,
        "machine": machine(), "load_before": loadavg(),
        "photo": "scikit-image's chelsea (the cat), stretched to each size, JPEG quality 92",
        "photos": [{k: v for k, v in p.items() if k != "path"} for p in ctx.photos],
        "settings": {"measured_seconds": ctx.seconds, "curve_seconds": ctx.curve_seconds, "warmup_seconds": ctx.warmup,
                     "limit_seconds": ctx.limit_seconds, "connections": ctx.conc, "hang_timeout_s": ctx.hang_timeout,
                     "weights": "random (seeded)", "response": "?format=png"}}, "stages": {}, "timing_s": {}}
    try:
        for name, fn in [s for s in STAGES if not args.only or s[0] in args.only.split(",")]:
            t1 = time.monotonic()
            try:
                res["stages"][name] = fn(ctx)
            except Exception as exc:  # one broken stage must not lose the others' numbers
                log(f"stage {name} FAILED: {exc}")
                res["stages"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                       "traceback": traceback.format_exc()[-3000:]}
            res["timing_s"][name] = round(time.monotonic() - t1, 1)
            if name == "model" and rows_of(res["stages"], "model"):
                res["stages"]["mask_formats"] = res["stages"]["model"].pop("mask_formats")
    finally:
        shutil.rmtree(ctx.work, ignore_errors=True)
    res["meta"].update(load_after=loadavg(), duration_s=round(time.time() - t0, 1))
    derive(res)
    report.write(written(ctx.out, "results.json", res), ctx.out)
    failed = [k for k, v in res["stages"].items() if isinstance(v, dict) and "error" in v]
    log(f"done in {res['meta']['duration_s']:.0f} s: {ctx.out}/results.json, results.md, chart.png"
        + (f"; stages with errors: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
