"""results.json -> results.md (tables) and chart.png; soak.json -> soak.png. Numbers only: the guide's
Benchmarks page (docs/benchmarks.md) explains them.

    python -m bench.report bench/results     re-render from an existing results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.measure import percentile


def f(x, nd=1) -> str:
    return "–" if x is None else f"{x:,.{nd}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def table(title: str, head: list[str], rows: list[list]) -> list[str]:
    """A section: its heading and a table; a column whose name ends in ':' holds numbers."""
    return [f"## {title}", "", "| " + " | ".join(h.rstrip(":") for h in head) + " |",
            "|" + "|".join("---:" if h.endswith(":") else "---" for h in head) + "|",
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows), ""]


def dims(height_width: list[int]) -> str:
    return "x".join(map(str, height_width[::-1]))


def rows_of(st: dict, name: str):
    """A stage's results, or {} if it did not run or failed (its error is in the last table)."""
    v = st.get(name)
    return v if isinstance(v, (list, dict)) and not (isinstance(v, dict) and "error" in v) else {}


def served(st: dict, cores: int) -> list[tuple[str, str, dict]]:
    """(stage, setting, run) of the headline runs of lessons 03-05: the sweep's best, lesson 04's, and
    lesson 05 at one and two connections per core. The table of stages and the CPU table show these."""
    sweep, rows = rows_of(st, "lesson03_sweep"), []
    if sweep:
        b = max(sweep, key=lambda r: r["rps"])
        rows.append(("lesson 03: uWSGI http-socket", f"the sweep's best: {b['workers']} workers x {b['torch_threads']} "
                     f"torch thread(s), {b['mode']}", b))
    rows += [("lesson 04: nginx -> uWSGI", f"{r['workers']} workers x {r['torch_threads']} torch thread(s), "
              f"{r['mode']}", r) for r in rows_of(st, "lesson04")]
    return rows + [("lesson 05: nginx -> 2 upstreams", f"2 x ({r['workers_per_upstream']} worker x "
                    f"{r['torch_threads']} thread, {r['mode']}), {r['connections']} connections", r)
                   for r in rows_of(st, "lesson05").get("by_connections", []) if r["connections"] in (cores, 2 * cores)]


def failed(r) -> str:
    total = r["failed"]["total"] if isinstance(r.get("failed"), dict) else r.get("failed")
    txt = "–" if total is None else str(total) if total == 0 else f"**{total}**"
    return txt + (f" ({r['idle_connections']} connections never answered)" if r.get("idle_connections") else "")


def lat(r, *keys) -> list[str]:
    return [f((r.get("latency_ms") or {}).get(k)) for k in keys]


def mem(r, key="rss_mb_per_worker") -> str:
    return f((r.get("memory") or {}).get(key), 0)


def other(r) -> str:
    return f((r.get("cpu") or {}).get("other_pct"), 0)


def markdown(res: dict) -> str:
    meta, st, m, lim = res["meta"], res["stages"], res["meta"]["machine"], res.get("limits", {})
    others = [r["other_cpu_pct"] for r in res.get("headline", []) if r["other_cpu_pct"] is not None]
    out = ["# Benchmark results", ""] + table("The run", ["what", "value"], [
        ["machine", f"{m['cores']} cores, {m['cpu_model']}, {m['memory_gib']} GiB RAM, bf16 instructions: "
                    f"{'yes' if m['bf16_instructions'] else 'no'}"],
        ["software", f"{m['os']}, Python {m['python']}, torch {m['packages']['torch']}, "
                     f"uWSGI {m['packages']['uWSGI']}, {m['nginx']}, {m['wrk']}"],
        ["command", f"`{meta['command']}`" + (" (quick: short runs, rough numbers)" if meta["quick"] else "")],
        ["started, took", f"{meta['started']}, {meta['duration_s']:.0f} s"],
        ["1-minute load average before, after", f"{meta['load_before'][0]}, {meta.get('load_after', ['–'])[0]}"],
        ["CPU of other processes during the stages' runs", f"median {f(percentile(others, 50) or 0, 0)} %, "
                                                           f"max {f(max(others, default=0), 0)} % of one core"],
        ["photo", meta["photo"]]])
    out += table("The stages side by side", ["stage", "setting", "images/s:", "× forward:", "× pipeline:", "p50 ms:",
                                             "p95 ms:", "p99 ms:", "failed:", "RSS/worker MB:", "other CPU %:"],
                 [[r["stage"], r["setting"], f(r["images_per_s"]), f(r["x_forward"], 2), f(r["x_pipeline"], 2),
                   *lat(r, "p50", "p95", "p99"), failed(r), f(r["rss_mb_per_worker"], 0), f(r["other_cpu_pct"], 0)]
                  for r in res.get("headline", [])])
    out += table("The workshop's targets", ["target", "measured", "met?"],
                 [[t["target"], t["measured"], {True: "yes", False: "**no**", None: "shown"}[t["met"]]]
                  for t in res.get("targets", [])])
    rounds = rows_of(st, "paired").get("rounds", [])
    out += table("Lesson 05 and the limit, in turns", [
        "round:", "limit images/s:", "lesson 05 images/s:", "× forward:", "lesson 05 p50 ms:", "p99 ms:", "failed:"],
        [[i + 1, f(r["forward"]["images_per_s"]), f(r["lesson05"]["rps"]), f(r["x_forward"], 2),
          *lat(r["lesson05"], "p50", "p99"), failed(r["lesson05"])] for i, r in enumerate(rounds)]) if rounds else []
    bal = rows_of(st, "balance")
    out += table("Lesson 05: least_conn or round-robin, in turns", [
        "pair:", "least_conn images/s:", "round-robin images/s:", "least_conn ÷ round-robin:",
        "least_conn p99 ms:", "round-robin p99 ms:"],
        [[i + 1, f(a["rps"]), f(b["rps"]), f(g, 2), *lat(a, "p99"), *lat(b, "p99")] for i, (a, b, g) in enumerate(zip(
            bal["runs"]["least_conn"], bal["runs"]["round_robin"], bal["least_conn_over_round_robin"]))]
    ) if bal else []
    model = rows_of(st, "model")
    if model:
        prof = model["profile"]
        out += table("Where a request's time goes, before and after the levers",
                     ["step"] + [f"{p['photo']} {when} ms:" for p in prof for when in ("before", "after")],
                     [[s["step"]] + [f(p["steps"][i][k], 2) for p in prof for k in ("before_ms", "after_ms")]
                      for i, s in enumerate(prof[0]["steps"])] +
                     [["*decoded at → model input*"] + [f"{dims(p[a])} → {dims(p[b])}" for p in prof for a, b in (
                         ("full_size", "model_input_before"), ("decoded_at", "model_input"))]])
        out += table("The same mask? The pipeline before vs after the levers", ["weights", "photo", "pixels:",
                                                                                "differ:", "agree %:"],
                     [[r["weights"], r["photo"], f"{r['pixels']:,}", r["differ"], f(r["agree_pct"], 4)]
                      for r in model["before_vs_after"]])
        lay, pre = model["layouts"], model["precision"]
        out += table("Memory layout and precision of the forward pass (1 torch thread)",
                     ["forward pass", "input", "ms:", "× contiguous fp32:"],
                     [[name, "x".join(map(str, lay["input"])), f(ms), f(lay["contiguous_ms"] / ms, 2)] for name, ms in
                      (("contiguous, fp32", lay["contiguous_ms"]), ("channels_last, fp32", lay["channels_last_ms"]),
                       ("channels_last, bf16 autocast", pre["bf16_ms"]))])
        out += table("bf16 against fp32: the same mask?", ["weights", "photo", "pixels that agree %:", "mean IoU:",
                                                           "IoU per class"],
                     [[r["weights"], r["photo"], f(r["agree_pct"], 2), f(r["mean_iou"], 3),
                       ", ".join(f"{k} {v:.2f}" for k, v in r["iou"].items())] for r in pre["agreement"]])
        one = {r["torch_threads"]: r["ms_per_image"] for r in model["batching"] if r["batch"] == 1}
        out += table("Batching: the forward pass per image", ["batch:", "torch threads:", "ms per image:",
                                                              "× batch 1:"],
                     [[r["batch"], r["torch_threads"], f(r["ms_per_image"]),
                       f(r["ms_per_image"] / one[r["torch_threads"]], 2)] for r in model["batching"]])
    l05 = rows_of(st, "lesson05")
    if l05:
        sizes = {r["label"]: r for r in model.get("formats_by_size", [])} if model else {}
        base = l05["by_size"][0]["unloaded"].get("round_trip_ms", {}).get("p50")
        rows = []
        for r in l05["by_size"]:
            u, fm = r["unloaded"], sizes.get(r["label"], {})
            rt = u.get("round_trip_ms", {})
            rows.append([r["label"], f(r["upload_bytes"] / 1e3, 0), u["status"], f(rt.get("p50")), f(rt.get("p99")),
                         f(rt["p50"] / base if rt and base else None, 2), f(r.get("rps")), *lat(r, "p50", "p99"),
                         failed(r), mem(r), mem(r, "pss_mb_per_worker"), mem(r, "peak_rss_mb_per_worker"),
                         f(fm.get("png_bytes", 0) / 1e3), f(fm.get("png_encode_ms")),
                         f(fm.get("json_bytes", 0) / 1e6, 2), f(fm.get("json_encode_ms"), 0)])
        out += table("How cost grows with the photo's size (lesson 05)", [
            "photo", "upload kB:", "HTTP:", "unloaded p50 ms:", "unloaded p99 ms:", "× 256x256:",
            f"images/s, {meta['cores']} conn.:", "p50 ms:", "p99 ms:", "failed:", "RSS/worker MB:", "PSS/worker MB:",
            "peak RSS/worker MB:", "PNG kB:", "PNG encode ms:", "JSON MB:", "JSON encode ms:"], rows)
        out += table("How cost grows with connections (lesson 05, 256x256)", [
            "connections:", "images/s:", "× forward:", "p50 ms:", "p95 ms:", "p99 ms:", "p99 / p50:",
            "503 (busy), retried after Retry-After:", "failed:", "other CPU %:"],
            [[r["connections"], f(r["rps"]), f(r["rps"] / lim["forward_images_per_s"], 2)
              if lim.get("forward_images_per_s") else "–", *lat(r, "p50", "p95", "p99"),
              f(r["latency_ms"]["p99"] / r["latency_ms"]["p50"], 2), f(r.get("busy_503"), 0), failed(r), other(r)]
             for r in l05["by_connections"]])
    sweep = rows_of(st, "lesson03_sweep")
    if sweep:
        best = max(r["rps"] for r in sweep)
        out += table("Lesson 03: workers × torch threads", [
            "workers × threads", "mode", "images/s:", "× best:", "p50 ms:", "p99 ms:", "failed:", "RSS/worker MB:",
            "PSS total MB:", "other CPU %:"],
            [[f"{r['workers']} × {r['torch_threads']}" + (" (more than the cores)" if r["oversubscribed"] else ""),
              r["mode"], f(r["rps"]), f(r["rps"] / best, 2), *lat(r, "p50", "p99"), failed(r), mem(r),
              mem(r, "app_pss_mb_total"), other(r)] for r in sweep])
    out += table("Lesson 03: torch and fork", [
        "mode", "weights", "torch threads:", "result", "workers answered:", "first answers after the fork, s",
        "PSS master + workers MB:", "PSS/worker MB:"],
        [[r["mode"], r["weights"], r["torch_threads"], {"ok": "ok", "hang": "**HANG**"}.get(r["result"], "**error**"),
          f"{r.get('workers_answered', 0)}/{r['workers']}",
          ", ".join(f"{x:.1f}" for x in r.get("first_answer_after_fork_s", [])) or "–",
          mem(r, "app_pss_mb_total"), mem(r, "pss_mb_per_worker")] for r in rows_of(st, "lesson03_fork")])
    gpu = rows_of(st, "lesson03_gpu")
    if isinstance(gpu, dict) and "skipped" in gpu:
        out += [f"Lesson 03 on a GPU: skipped: {gpu['skipped']}.", ""]
    elif gpu:
        out += table("Lesson 03 on a GPU (SEG_DEVICE=cuda)", [
            "GPU", "workers:", "images/s:", "p50 ms:", "p99 ms:", "failed:", "GPU MB/worker (reserved):"],
            [[r["gpu"], r["workers"], f(r["rps"]), *lat(r, "p50", "p99"), failed(r),
              ", ".join(f(x, 0) for x in r["gpu_memory_mb_per_worker"])] for r in gpu])
    page = rows_of(st, "static_page")
    if page:
        out += table("Lesson 04: the page from nginx, the echo app through uWSGI", [
            "request", "requests/s:"], [["GET /page.css, from nginx's disk", f(page["static"], 0)],
                                       ["POST /infer, lesson 01's echo app through uWSGI", f(page["echo"], 0)]])
    busy = [r for _, _, r in served(st, meta["cores"])]
    out += table("Who used the CPU during the runs (% of one core)", [
        "run", "images/s:", "uwsgi:", "nginx:", "wrk:", "other:", "machine busy:"],
        [[r["label"], f(r["rps"]), *(f(r["cpu"]["ours_pct_by_process"].get(k, 0), 0)
                                     for k in ("uwsgi", "nginx", "wrk")),
          other(r), f(r["cpu"]["machine_busy_pct"], 0)] for r in busy])
    errors = [[k, v["error"]] for k, v in st.items() if isinstance(v, dict) and "error" in v]
    out += table("Stages that failed in this run", ["stage", "error"], errors) if errors else []
    return "\n".join(out).rstrip("\n") + "\n"


def figure(*grid, **size):
    """plt.subplots(*GRID, **SIZE) with matplotlib's file-only backend: (the figure, its axes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(*grid, **size)


def save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart(res: dict, path: Path) -> None:
    """Images/s per stage, then lesson 05's cost against the photo's size and against the connections."""
    fig, (ax, by_size, by_conn) = figure(1, 3, figsize=(18, 5.5))
    st, meta, lim = res["stages"], res["meta"], res.get("limits", {})
    fig.suptitle(f"LRASPP on {meta['cores']} cores ({meta['machine']['cpu_model']})" + "  [quick run]" * meta["quick"])
    rows = res.get("headline", [])
    ax.barh(range(len(rows)), [r["images_per_s"] for r in rows],
            color=["#555555" if r["stage"].startswith(("limit", "the app")) else "#2e86c1" for r in rows])
    ax.set_yticks(range(len(rows)), [f"{r['stage']}\n{r['setting'][:50]}" for r in rows], fontsize=6)
    ax.invert_yaxis()
    for i, r in enumerate(rows):
        ax.text(r["images_per_s"], i, f" {r['images_per_s']:.1f}/s, p99 {r['latency_ms']['p99']:.0f} ms", va="center",
                fontsize=7)
    for key, style in (("forward_images_per_s", "--"), ("pipeline_images_per_s", ":")):
        if lim.get(key):
            ax.axvline(lim[key], color="black", ls=style, lw=1)
    ax.set(xlim=(0, max([r["images_per_s"] for r in rows] + [1]) * 1.45), xlabel="images/s (256x256 photo)",
           title="Each stage (dashed: the forward-pass limit, dotted: the pipeline)")
    l05 = rows_of(st, "lesson05")
    served = [r for r in l05.get("by_size", []) if "latency_ms" in r]
    mp = [r["megapixels"] for r in served]
    for key, style in (("p50", "o-"), ("p99", "s--")):
        by_size.plot(mp, [r["unloaded"]["round_trip_ms"][key] for r in served], style, label=f"unloaded, {key}")
        by_size.plot(mp, [r["latency_ms"][key] for r in served], style, alpha=0.5,
                     label=f"{meta['cores']} connections, {key}")
    by_size.set(xscale="log" if mp else "linear", xlabel="photo, megapixels", ylabel="round trip, ms",
                title="Lesson 05: the photo's size")
    conns = l05.get("by_connections", [])
    xs = [r["connections"] for r in conns]
    by_conn.plot(xs, [r["rps"] for r in conns], "o-", label="images/s")
    if lim.get("forward_images_per_s"):
        by_conn.axhline(lim["forward_images_per_s"], color="black", ls="--", lw=1, label="forward-pass limit")
    if conns:
        by_conn.set_xscale("log", base=2)
    by_conn.set(xticks=xs, xticklabels=xs, xlabel="connections", ylabel="images/s",
                title="Lesson 05: the connections (256x256)")
    twin = by_conn.twinx()
    for key, style in (("p50", "^:"), ("p99", "v:")):
        twin.plot(xs, [r["latency_ms"][key] for r in conns], style, color="#c0392b", label=f"{key} ms")
    twin.set_ylabel("latency, ms", color="#c0392b")
    twin.legend(fontsize=7, loc="center right")
    for a in (ax, by_size, by_conn):
        a.title.set_fontsize(9)
        if a is not ax:
            a.legend(fontsize=7, loc="upper left")
    save(fig, path)


def by_process(samples: list[dict]) -> dict[int, list[dict]]:
    """soak.json's samples by worker process (pid), in the order they first appear."""
    by_pid: dict[int, list[dict]] = {}
    for s in samples:
        by_pid.setdefault(s["pid"], []).append(s)
    return by_pid


def soak_chart(result: dict, path: Path) -> None:
    """The RSS of every worker process over the soak, with its recycles."""
    colors, labelled = {"unix": "tab:blue", "tcp": "tab:orange"}, set()
    fig, ax = figure(figsize=(9, 4.5))
    for seen in by_process(result["samples"]).values():
        upstream = seen[0]["upstream"]
        label = None if upstream in labelled else f"upstream {upstream} (one line per worker process)"
        labelled.add(upstream)
        seen = [s for s in seen if s["rss_mb"] > 0]   # 0 until the new worker has answered once
        ax.plot([s["t"] for s in seen], [s["rss_mb"] for s in seen], color=colors[upstream], lw=1.2, label=label)
    for i, r in enumerate(result["recycles"]):
        ax.axvline(r["t"], color=colors[r["upstream"]], ls=":", lw=1, label=None if i else "recycle (max-requests)")
    if result["reload_on_rss_mb"]:
        ax.axhline(result["reload_on_rss_mb"], color="tab:red", ls="--", lw=1, label="reload-on-rss")
    ax.set(xlabel="seconds since the load started", ylabel="worker RSS (MiB)",
           title=f"Lesson 05, {result['requests']} requests, {result['at_once']} at a time: "
                 f"{result['failed']} failed, {len(result['recycles'])} recycles")
    ax.legend(loc="center right", fontsize=8)
    ax.grid(alpha=0.3)
    save(fig, path)


def write(res: dict, folder: Path) -> None:
    (Path(folder) / "results.md").write_text(markdown(res))
    chart(res, Path(folder) / "chart.png")


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results")
    write(json.loads((folder / "results.json").read_text()), folder)
