"""results.json -> results.md (tables for the guide's Benchmarks page) and chart.png.

    python -m bench.report bench/results     re-render from an existing results.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def _f(x, nd=1):
    if x is None:
        return "–"
    if isinstance(x, (int, float)):
        return f"{x:,.{nd}f}"
    return str(x)


def _failed(r):
    f = r["failed"]
    txt = f"{f['total']}" if f["total"] == 0 else f"**{f['total']}**"
    idle = r.get("idle_connections")
    if idle:
        txt += f" ({idle} of {r['connections']} conn. never answered)"
    return txt


def _mem(r, key="rss_mb_per_worker"):
    m = r.get("memory") or {}
    return _f(m.get(key), 0)


def _other(r):
    cpu = r.get("cpu") or {}
    return _f(cpu.get("other_pct"), 0)


def _target(text: str) -> str:
    """A target as a sentence: "lesson 05 stack >= 0.9 x the limit" -> "lesson 05's stack ≥ 0.9× the limit"."""
    text = re.sub(r"^lesson (\d\d) stack\b", r"lesson \1's stack reaches", text)
    text = text.replace(">=", "≥").replace("<=", "≤")
    return re.sub(r"(\d) ?x\b", r"\1×", text)


def _rows(stage):
    return stage if isinstance(stage, list) else []


def _ok(stage):
    return isinstance(stage, (list, dict)) and not (isinstance(stage, dict) and ("error" in stage or "skipped" in stage))


def headline_rows(res: dict) -> list[dict]:
    """One line per stage for the main table (the best row of each)."""
    st = res["stages"]
    rows = []
    lim = st.get("limit")
    if isinstance(lim, dict) and "layouts" in lim:
        for lay in lim["layouts"]:
            rows.append({"stage": "1. limit: model in-process, no HTTP", "config": lay["label"],
                         "short": f"limit: {lay['processes']} proc x {lay['torch_threads']} thr"
                                  + (" (again)" if lay.get("repeat") else ""),
                         "rps": lay["images_per_s"], "lat": lay["latency_ms"], "failed": "–",
                         "rss": "–", "other": _f(lay["cpu"]["other_pct"], 0)})
    for r in _rows(st.get("naive")):
        rows.append({"stage": "2. tutorial's naive server",
                     "short": "naive: " + r["weights"].replace("weights file, resized to 520", "w. file, 520 px"),
                     "config": f"{r['weights']}, JSON list, "
                     f"{r['torch_threads']} torch threads", "rps": r["rps"], "lat": r["latency_ms"],
                     "failed": _failed(r), "rss": _mem(r), "other": _other(r)})
    for r in _rows(st.get("lesson02")):
        rows.append({"stage": "3. lesson 02: Flask dev server",
                     "short": f"02 Flask, {r['torch_threads']} thr", "config": f"model built once, "
                     f"{r['torch_threads']} torch thread(s)", "rps": r["rps"], "lat": r["latency_ms"],
                     "failed": _failed(r), "rss": _mem(r), "other": _other(r)})
    sweep = _rows(st.get("lesson03_sweep"))
    if sweep:
        b = max(sweep, key=lambda r: r["rps"])
        rows.append({"stage": "4. lesson 03: uWSGI http-socket (best of sweep)",
                     "short": f"03 uWSGI {b['workers']}w x {b['torch_threads']}t",
                     "config": f"{b['workers']} workers x {b['torch_threads']} thread(s), {b['mode']}",
                     "rps": b["rps"], "lat": b["latency_ms"], "failed": _failed(b), "rss": _mem(b),
                     "other": _other(b)})
    for r in _rows(st.get("lesson04")):
        rows.append({"stage": "5. lesson 04: nginx -> uWSGI",
                     "short": f"04 nginx+uWSGI {r['workers']}w x {r['torch_threads']}t",
                     "config": f"{r['workers']} workers x "
                     f"{r['torch_threads']} thread(s), {r['mode']}", "rps": r["rps"], "lat": r["latency_ms"],
                     "failed": _failed(r), "rss": _mem(r), "other": _other(r)})
    for r in _rows(st.get("lesson05")):
        rows.append({"stage": "6. lesson 05: nginx -> 2 upstreams",
                     "short": f"05 2 upstr. x {r['workers_per_upstream']}w x {r['torch_threads']}t, "
                              f"{r['connections']} conn",
                     "config": f"2 x ({r['workers_per_upstream']}w x {r['torch_threads']}t {r['mode']}), "
                     f"{r['connections']} conn.", "rps": r["rps"], "lat": r["latency_ms"],
                     "failed": _failed(r), "rss": _mem(r), "other": _other(r)})
    return rows


def markdown(res: dict) -> str:
    meta, st = res["meta"], res["stages"]
    m = meta["machine"]
    limit = st.get("limit", {}).get("images_per_s") if isinstance(st.get("limit"), dict) else None
    conn = meta["settings"]["connections"]
    out = []
    w = out.append
    w("# Benchmarks: what each serving stage costs")
    w("")
    w(f"Measured in one run on **{m['cores']} cores ({m['cpu_model']})**, {m['memory_gib']} GiB RAM, "
      f"{m['os']}, kernel {m['kernel']}; Python {m['python']}, torch {m['packages']['torch']}, "
      f"{m.get('uwsgi', 'uWSGI ?')}, {m['nginx']}, {m['wrk'].split(' Copyright')[0]}.")
    w("")
    w(f"Command: `{meta['command']}` (or `./workshop.sh bench{' --quick' if meta['quick'] else ''}`), "
      f"started {meta['started']}, took {meta['duration_s']:.0f} s"
      + (" — **quick mode: short runs, numbers are rough**" if meta["quick"] else "") + ".")
    w("")
    lb, la = meta["load_before"], meta.get("load_after", ["?"])
    others = [r["cpu"]["other_pct"] for r in _all_load_rows(res) if r.get("cpu")]
    w(f"Machine load: 1-minute load average {lb[0]} before the run, {la[0]} at its end (that one "
      f"includes the benchmark's own servers). CPU used by "
      f"processes outside the benchmark during the measured runs: median {_median(others):.0f} %, "
      f"max {max(others) if others else 0:.0f} % of one core (column *other CPU*: a large value means "
      "that row was measured on a busy machine).")
    w("")
    img = meta["image"]
    w(f"Every request posts the same photo: {img['name']}, {img['format']}, {img['bytes']:,} bytes, "
      f"and asks for a PNG mask (`?format=png`). The app resizes it to 520 px for the model, as the "
      f"weights' own transforms do. Load: `wrk` over loopback, {conn} connections (2 × cores) kept "
      f"busy for {meta['settings']['measured_seconds']:.0f} s after a {meta['settings']['warmup_seconds']:.0f} s "
      f"warm-up; latency is what wrk measured per request. Weights: seeded random ones (the pretrained "
      f"file cannot be downloaded here); the arithmetic per image is the same.")
    w("")

    w("## The stages side by side")
    w("")
    w("| stage | setting | images/s | × limit | p50 ms | p95 ms | p99 ms | failed | RSS/worker MB | other CPU % |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in headline_rows(res):
        ratio = f"{r['rps'] / limit:.2f}" if limit else "–"
        w(f"| {r['stage']} | {r['config']} | {_f(r['rps'])} | {ratio} | {_f(r['lat']['p50'])} | "
          f"{_f(r['lat']['p95'])} | {_f(r['lat']['p99'])} | {r['failed']} | {r['rss']} | {r['other']} |")
    if isinstance(st.get("lesson05"), dict) and "skipped" in st["lesson05"]:
        w(f"| 6. lesson 05 | not measured: {st['lesson05']['skipped']} | | | | | | | | |")
    w("")
    w("*failed* = answers ≥ 400 plus socket errors and timeouts (30 s). *RSS/worker*: resident memory "
      "of each serving process (uWSGI worker or the Flask process) after the run; RSS counts shared "
      "pages in full, see PSS below.")
    w("")

    tg = res.get("targets", [])
    if tg:
        w("## The workshop's targets")
        w("")
        w("What the workshop's stack should reach on this machine, and what it did in this run.")
        w("")
        w("| target | measured | met? |")
        w("|---|---|---|")
        for t in tg:
            met = {True: "yes", False: "**no**", None: "shown"}[t["met"]]
            w(f"| {_target(t['target'])} | {_target(t['value'])} | {met} |")
        w("")

    sweep = _rows(st.get("lesson03_sweep"))
    if sweep:
        w("## Lesson 03: workers × torch threads (uWSGI `http-socket`)")
        w("")
        best = max(r["rps"] for r in sweep)
        w("| workers × threads | mode | images/s | vs best | p50 ms | p99 ms | failed | RSS/worker MB | "
          "PSS total MB | other CPU % |")
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in sweep:
            over = " (over-subscribed)" if r["oversubscribed"] else ""
            w(f"| {r['workers']} × {r['torch_threads']}{over} | {r['mode']} | {_f(r['rps'])} | "
              f"{r['rps'] / best:.2f} | {_f(r['latency_ms']['p50'])} | {_f(r['latency_ms']['p99'])} | "
              f"{_failed(r)} | {_mem(r)} | {_mem(r, 'app_pss_mb_total')} | {_other(r)} |")
        w("")
        w("*PSS total* = proportional set size of the master and all workers: shared pages are split "
          "between the processes sharing them, so this is what the whole app really costs in RAM. "
          + ("Rows marked lazy-apps at more than one torch thread run that way because prefork hung "
             "there (next table)." if any(r.get("why_mode") for r in sweep) else ""))
        w("")

    fork = _rows(st.get("lesson03_fork"))
    if fork:
        w("## Lesson 03: torch and fork")
        w("")
        w(f"`lessons/03_uwsgi/run.sh --processes {fork[0]['workers']}` (+ `--lazy-apps`, or + "
          "`--wsgi-file bench/postfork_app.py`), `SEG_WEIGHTS` and `SEG_TORCH_THREADS` as in the table. "
          f"After the master forked, rounds of {fork[0]['workers']} concurrent `POST /infer` until every "
          f"worker pid has answered; a worker with no answer {fork[0]['request_timeout_s']:.0f} s after "
          "the fork is **hung** (its first forward pass, the app's post-fork warm-up, never returns). "
          "`SEG_WEIGHTS=random` runs a forward pass (batch-norm calibration) while building the model, "
          "so in prefork mode the master runs a forward pass before it forks; a weights file only "
          "builds the model and loads the state dict.")
        w("")
        w("| mode | weights | torch work in the master before fork | torch threads per worker | result | "
          "workers answered | first answer after fork, s | PSS master + workers MB | PSS per worker MB | "
          "RSS per worker MB |")
        w("|---|---|---|---:|---|---:|---|---:|---:|---:|")
        for r in fork:
            res_txt = {"ok": "ok", "hang": "**HANG**", "error": "**error**"}[r["result"]]
            mem = r.get("memory") or {}
            firsts = ", ".join(f"{x:.1f}" for x in r.get("first_answer_after_fork_s", [])) or "–"
            w(f"| {r['mode']} | {r['weights']} | {r['torch_work_in_master']} | {r['torch_threads']} | "
              f"{res_txt} | {r.get('workers_answered', 0)}/{r['workers']} | {firsts} | "
              f"{_f(mem.get('app_pss_mb_total'), 0)} | {_f(mem.get('pss_mb_per_worker'), 0)} | "
              f"{_f(mem.get('rss_mb_per_worker'), 0)} |")
        w("")

    mf = st.get("mask_formats")
    if isinstance(mf, dict) and "png_bytes" in mf:
        w("## PNG mask vs the tutorial's JSON list")
        w("")
        w(f"The same mask ({mf['image']}, mask {mf['mask_shape'][1]}×{mf['mask_shape'][0]}, "
          f"{mf['classes_in_mask']} classes, {mf['weights']} weights), encoded by "
          "`lessons/02_segmentation/voc.py`; median of "
          f"{mf['repeats']} runs.")
        w("")
        w("| format | bytes | encode ms |")
        w("|---|---:|---:|")
        w(f"| PNG (`mask_to_png`) | {mf['png_bytes']:,} | {mf['png_encode_ms']:.2f} |")
        w(f"| JSON list (`mask_to_json`) | {mf['json_bytes']:,} | {mf['json_encode_ms']:.2f} |")
        w(f"| JSON list, gzip -6 (for reference) | {mf['json_gzip_bytes']:,} | – |")
        syn = mf.get("synthetic_two_region")
        if syn:
            w(f"| *synthetic two-region mask, PNG* | {syn['png_bytes']:,} | {syn['png_encode_ms']:.2f} |")
            w(f"| *synthetic two-region mask, JSON* | {syn['json_bytes']:,} | {syn['json_encode_ms']:.2f} |")
        w("")
        w(f"For the model's mask, PNG is **{mf['size_ratio_json_over_png']}× smaller** and "
          f"**{mf['time_ratio_json_over_png']}× faster** to encode.")
        if syn:
            w(f"The untrained weights available here give a speckled mask ({mf['classes_in_mask']} classes), "
              "which PNG (zlib) compresses far less well than a trained model's few large regions. The "
              "*synthetic* rows are not a model output: background plus one cat-shaped ellipse at the same "
              f"size, standing in for what pretrained weights give on this photo; there PNG is "
              f"{syn['size_ratio_json_over_png']}× smaller and {syn['time_ratio_json_over_png']}× faster.")
        w("")

    prof = st.get("profile")
    if isinstance(prof, dict) and "profile" in prof:
        p = prof["profile"]
        w("## Where one request's time goes (in-process, 1 torch thread)")
        w("")
        w(f"{p['image']}; model input {p['model_input']}; median of repeated runs.")
        w("")
        w("| step | ms |")
        w("|---|---:|")
        for k, v in p["steps_ms"].items():
            w(f"| {k} | {v:.2f} |")
        w(f"| *sum of the steps* | *{sum(p['steps_ms'].values()):.1f}* |")
        w(f"| whole request, timed as one (app's own functions) | {p['whole_request_ms']:.1f} |")
        w("")
        w("Each step is timed in its own loop; the machine's speed drifts between loops by several %, so "
          "read the steps as shares of a request, not as exact sums.")
        w("")
        if "flask_test_client_ms" in p:
            w(f"Through lesson 02's Flask app (its test client: routing, request and response objects, "
              f"headers; no network) the same request takes {p['flask_test_client_ms']:.1f} ms, against "
              f"{p['bare_pipeline_ms']:.1f} ms for the bare functions, measured alternately: Flask's own "
              "cost is lost in the noise.")
            w("")
        alt = p.get("alternative")
        if alt:
            k = next(x for x in alt if x != "same_mask")
            w(f"`logits.argmax(0)` reduces over the first (class) axis of a 21×H×W tensor, a slow kernel "
              f"here; `logits.max(0).indices` gives {'the same' if alt['same_mask'] else 'a DIFFERENT'} "
              f"mask in {alt[k]:.1f} ms instead of {p['steps_ms']['argmax over 21 classes']:.1f} ms.")
            w("")
        w(f"Building the model: {prof['build_random_ms']:.0f} ms with random weights (includes the "
          f"calibration pass), {prof['build_from_file_ms']:.0f} ms from a weights file "
          f"({prof['weights_file_bytes'] / 1e6:.1f} MB). This is what the naive server pays on every request.")
        w("")
        overhead = []
        for name in ("lesson02", "lesson04", "lesson05"):
            for r in _rows(st.get(name)):
                u = r.get("unloaded")
                if u and u.get("in_app_ms_median") is not None:
                    overhead.append((r["label"], u))
        if overhead:
            w("Unloaded round trips (sequential requests, no other load): time inside the app "
              "(`X-Inference-Ms`: decode + model + PNG) vs the whole round trip; the difference is HTTP, "
              "Flask, uWSGI and nginx.")
            w("")
            w("| stage | round trip ms | in the app ms | outside the app ms | answered by |")
            w("|---|---:|---:|---:|---|")
            for label, u in overhead:
                who = ", ".join(f"{k}: {v}" for k, v in u["answered_by"].items())
                w(f"| {label} | {_f(u['round_trip_ms_median'])} | {_f(u['in_app_ms_median'])} | "
                  f"{_f(u['outside_app_ms_median'])} | {who} |")
            w("")

    cpu_rows = [r for name in ("lesson03_sweep", "lesson04", "lesson05") for r in _rows(st.get(name))]
    if cpu_rows:
        best_sweep = max(_rows(st.get("lesson03_sweep")), key=lambda r: r["rps"], default=None)
        show = ([best_sweep] if best_sweep else []) + _rows(st.get("lesson04")) + _rows(st.get("lesson05"))
        w("## Who used the CPU during the measured runs")
        w("")
        w(f"% of one core, averaged over the run ({m['cores']} cores = {100 * m['cores']} %). "
          "`uwsgi` = master + workers, `wrk` = the load generator, *other* = processes outside the benchmark.")
        w("")
        w("| run | images/s | uwsgi | nginx | wrk | kernel threads | other | machine busy |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in show:
            c = r["cpu"]
            by = c["ours_pct_by_process"]
            w(f"| {r['label']} | {_f(r['rps'])} | {_f(by.get('uwsgi', 0), 0)} | {_f(by.get('nginx', 0), 0)} | "
              f"{_f(by.get('wrk', 0), 0)} | {_f(c.get('kernel_threads_pct'), 0)} | {_f(c['other_pct'], 0)} | "
              f"{_f(c['machine_busy_pct'], 0)} |")
        w("")

    echo = _rows(st.get("echo"))
    if echo:
        w("## The echo app (lesson 01): what each layer costs without a model")
        w("")
        w(f"`POST /infer` with `Hi there!`, {echo[0]['connections']} connections, "
          f"{meta['settings']['echo_seconds']:.0f} s each; uWSGI with {echo[-1].get('workers', '?')} workers "
          "(bench/echo/echo.ini), nginx with lesson 04's site template. wrk runs on the same cores.")
        w("")
        w("| stage | requests/s | p50 ms | p99 ms | failed | RSS/worker MB | other CPU % |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for r in echo:
            w(f"| {r['label']} | {_f(r['rps'], 0)} | {_f(r['latency_ms']['p50'], 2)} | "
              f"{_f(r['latency_ms']['p99'], 2)} | {_failed(r)} | {_mem(r)} | {_other(r)} |")
        w("")
        w("`http-socket` closes the connection after every answer (wrk sends HTTP/1.0 there, so it "
          "expects the close); `http11-socket` keeps it open.")
        w("")

    notes_ = notes(res)
    if notes_:
        w("## What the numbers mean")
        w("")
        for n in notes_:
            w(f"- {n}")
        w("")

    errs = {k: v for k, v in st.items() if isinstance(v, dict) and "error" in v}
    if errs:
        w("## Stages that failed in this run")
        w("")
        for k, v in errs.items():
            w(f"- `{k}`: {v['error']}")
        w("")
    w("Raw numbers: `results.json` (every run, every percentile, per-process memory and CPU).")
    return "\n".join(out) + "\n"


def notes(res: dict) -> list[str]:
    """Plain-language reading of this run's numbers (every figure comes from results.json)."""
    st, out = res["stages"], []
    cores = res["meta"]["cores"]
    lim = st.get("limit") if isinstance(st.get("limit"), dict) and "layouts" in st["limit"] else None
    prof = st.get("profile", {}).get("profile") if isinstance(st.get("profile"), dict) else None
    if lim:
        lays = {(l["processes"], l["torch_threads"]): l for l in lim["layouts"] if not l.get("repeat")}
        one = lays.get((1, cores))
        many = lays.get((cores, 1))
        if one and many:
            txt = (f"**The limit.** {cores} single-thread processes side by side make "
                   f"{many['images_per_s']:.1f} images/s; one process with {cores} torch threads makes "
                   f"{one['images_per_s']:.1f}. Running whole images in parallel (what uWSGI's workers do) "
                   "beats splitting one image's math over threads, so the best layout is "
                   f"*{lim['best']}*.")
            again = [l for l in lim["layouts"] if l.get("repeat")]
            if again:
                txt += (f" Measured again just before lessons 04-05 it made {again[0]['images_per_s']:.1f} "
                        f"images/s ({lim['spread_pct']:.0f} % apart); the bar for the servers is the mean, "
                        f"{lim['images_per_s']:.1f} images/s.")
            else:
                txt += f" The bar for the servers: {lim['images_per_s']:.1f} images/s."
            out.append(txt)
    naive, l02 = _rows(st.get("naive")), _rows(st.get("lesson02"))
    if naive and l02:
        best02 = max(l02, key=lambda r: r["rps"])
        per = "; ".join(f"{r['weights']}: {r['rps']:.1f}" for r in naive)
        txt = (f"**The tutorial's server** builds the model inside every request. Images/s — {per} — "
               f"against {best02['rps']:.1f} for lesson 02, which builds it once")
        if prof:
            p = st["profile"]
            txt += (f". A build costs {p['build_from_file_ms']:.0f} ms from a weights file (the tutorial's "
                    f"pretrained weights come from such a file in torch's cache) and "
                    f"{p['build_random_ms']:.0f} ms with random weights in the app (which also calibrates); "
                    "the naive server's random build skips the calibration and the file load")
        txt += (". Without a resize (the tutorial's code) the model sees 256×256 instead of 520×520, about "
                "4× fewer pixels, which hides much of that cost")
        resized = [r for r in naive if "resized" in r["weights"]]
        if resized:
            txt += (f"; resized like the app, the naive server makes {resized[0]['rps']:.1f} images/s, "
                    f"{best02['rps'] / max(resized[0]['rps'], 0.01):.1f}× less than lesson 02")
        txt += f". Its JSON answer is ~{naive[0]['bytes_per_response'] / 1000:.0f} KB per request."
        out.append(txt)
    sweep = _rows(st.get("lesson03_sweep"))
    if sweep:
        best = max(sweep, key=lambda r: r["rps"])
        over = [r for r in sweep if r["oversubscribed"]]
        if over:
            worst = min(over, key=lambda r: r["rps"])
            by = {(r["workers"], r["torch_threads"]): r for r in sweep}
            txt = (f"**Workers × threads.** The best layout is {best['workers']} workers × "
                   f"{best['torch_threads']} torch thread(s) ({best['rps']:.1f} images/s). Over-subscribing "
                   f"with torch threads collapses throughput: {worst['workers']} × {worst['torch_threads']} "
                   f"makes {worst['rps']:.1f} images/s, {best['rps'] / max(worst['rps'], 0.01):.1f}× less")
            more_procs = by.get((2 * cores, 1))
            if more_procs:
                txt += (f", while extra single-thread workers ({2 * cores} × 1: {more_procs['rps']:.1f}) cost "
                        "little, because the OS time-slices whole requests")
            one_multi = by.get((1, cores))
            if one_multi:
                txt += (f". Even 1 × {cores} (exactly the cores) makes only {one_multi['rps']:.1f}: torch's "
                        "threads wait for each other at every layer, and any other runnable thread "
                        "(uWSGI's master, nginx, wrk, another program) stalls the whole team")
            txt += ". Rule: one torch thread per worker, one worker per core."
            out.append(txt)
        pre = [r for r in sweep if r["mode"] == "prefork" and r["workers"] == cores and r["torch_threads"] == 1]
        lazy = [r for r in sweep if r["mode"] == "lazy-apps" and r["workers"] == cores and r["torch_threads"] == 1]
        if pre and lazy:
            a, b = pre[0], lazy[0]
            diff = abs(a["rps"] - b["rps"]) / max(a["rps"], b["rps"]) * 100
            out.append(
                f"**Prefork vs lazy-apps** ({cores} workers): {a['rps']:.1f} vs {b['rps']:.1f} images/s"
                + f" ({diff:.0f} % apart: the fork mode changes what the workers share in memory, "
                  "not the arithmetic)"
                + f"; the whole app's PSS is {a['memory']['app_pss_mb_total']:.0f} MB vs "
                f"{b['memory']['app_pss_mb_total']:.0f} MB: with prefork the workers share the master's "
                "model and torch's code pages copy-on-write; with lazy-apps each worker holds its own "
                f"(RSS per worker {a['memory']['rss_mb_per_worker']:.0f} vs "
                f"{b['memory']['rss_mb_per_worker']:.0f} MB; RSS counts shared pages in every process, "
                "so only PSS adds up).")
    fork = _rows(st.get("lesson03_fork"))
    if fork:
        hung = [r for r in fork if r["result"] == "hang"]
        ok_multi = [r for r in fork if r["result"] == "ok" and r["torch_threads"] > 1]
        if hung:
            desc = "; ".join(f"{r['mode']} with {r['weights']} weights and {r['torch_threads']} torch threads"
                             for r in hung)
            out.append(
                f"**torch and fork.** Workers hung in their first forward pass (no answer "
                f"{hung[0]['request_timeout_s']:.0f} s after the fork) in: {desc}. Whether the master ran "
                "a forward pass made no difference: any torch work with more than one thread in the "
                "master (building the model, loading a state dict) starts torch's OpenMP thread pool, "
                "which does not survive fork. " + (
                    "Fine: " + "; ".join(f"{r['mode']} ({r['torch_threads']} threads, {r['weights']})"
                                         for r in ok_multi) + "." if ok_multi else ""))
        else:
            out.append("**torch and fork.** No worker hung in this run.")
    l04 = _rows(st.get("lesson04"))
    if l04 and lim:
        r = l04[0]
        out.append(f"**lesson 04 (nginx → one uWSGI, {r['workers']} workers) vs the limit:** "
                   f"{r['rps']:.1f} / {lim['images_per_s']:.1f} = {r['rps'] / lim['images_per_s']:.2f}×.")
    for name, label in (("lesson05", "lesson 05"), ("lesson04", "lesson 04")):
        rows = _rows(st.get(name))
        if rows and lim:
            best = max(rows, key=lambda r: r["rps"])
            c = best["cpu"]
            by = c["ours_pct_by_process"]
            ratio = best["rps"] / lim["images_per_s"]
            limit_cpu = next((l["cpu"] for l in lim["layouts"] if l["label"] == lim["best"]), None)
            txt = (f"**{label} vs the limit:** {best['rps']:.1f} / {lim['images_per_s']:.1f} images/s = "
                   f"{ratio:.2f}×. During that run the uWSGI processes used {by.get('uwsgi', 0):.0f} % "
                   f"of one core (of {100 * cores} %), nginx {by.get('nginx', 0):.0f} %, wrk "
                   f"{by.get('wrk', 0):.0f} %, kernel threads {c.get('kernel_threads_pct', 0):.0f} %, "
                   f"other processes {c['other_pct']:.0f} %")
            if limit_cpu:
                txt += (f"; the limit's model processes had {limit_cpu['machine_busy_pct'] - limit_cpu['other_pct']:.0f} % "
                        f"(other processes {limit_cpu['other_pct']:.0f} %)")
            txt += "."
            u = best.get("unloaded") or next((r.get("unloaded") for r in rows if r.get("unloaded")), None)
            if u and u.get("outside_app_ms_median") is not None:
                txt += (f" Unloaded, a request spends {u['in_app_ms_median']:.0f} ms in the app and "
                        f"{u['outside_app_ms_median']:.1f} ms outside it (HTTP, nginx, uwsgi protocol).")
            buffered = best.get("nginx_body_buffered_to_file")
            if buffered is not None:
                txt += (f" nginx spooled {buffered} request bodies to a temp file "
                        "(client_body_buffer_size 1m keeps the 20 KB upload in memory).")
            if prof and "flask_test_client_ms" in prof:
                txt += (f" Flask adds nothing measurable ({prof['flask_test_client_ms']:.0f} ms through its "
                        f"test client vs {prof['bare_pipeline_ms']:.0f} ms bare).")
            if ratio < 1 and u and u.get("outside_app_ms_median") is not None:
                proxy_pct = 100 * u["outside_app_ms_median"] / max(u["round_trip_ms_median"], 1e-6)
                txt += (f" So the layers in front of the app cost about {proxy_pct:.0f} % of a request; the "
                        f"rest of the {100 * (1 - ratio):.0f} % gap is the workers computing a little slower "
                        "than the bare loop, which no layer explains")
                twins = [r for r in _rows(st.get("lesson03_sweep"))
                         if r["workers"] == cores and r["torch_threads"] == 1]
                if len(twins) == 2:
                    a, b = twins
                    txt += (f"; it is of the size of this machine's run-to-run variation: the same layout "
                            f"under uWSGI ({cores} × 1, prefork and lazy-apps) made {a['rps']:.1f} and "
                            f"{b['rps']:.1f} images/s in this run")
                txt += "."
            out.append(txt)
            lat = best["latency_ms"]
            others = [r for r in rows if r is not best]
            txt = (f"**Latency at that load ({best['connections']} connections, {best['workers']} workers):** "
                   f"p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms ({lat['p99'] / lat['p50']:.2f}× p50).")
            if others:
                o = others[0]
                txt += (f" With {o['connections']} connections: {o['rps']:.1f} images/s, p50 "
                        f"{o['latency_ms']['p50']:.0f} ms, p99 {o['latency_ms']['p99']:.0f} ms "
                        f"({o['latency_ms']['p99'] / o['latency_ms']['p50']:.2f}×).")
            txt += (" Once every worker is busy, more connections add no images/s, only waiting: p50 grows "
                    "to about connections ÷ workers × the service time. p99 grows when requests pile up "
                    "unevenly: round-robin may send a request to a busy upstream while the other is free.")
            out.append(txt)
            break
    if prof:
        alt = prof.get("alternative")
        steps = prof["steps_ms"]
        if alt:
            k = next(x for x in alt if x != "same_mask")
            total = sum(steps.values())
            share = steps["argmax over 21 classes"] / max(total, 1e-6)
            out.append(
                f"**Profile.** The steps of one request add up to {total:.0f} ms on one thread: the model "
                f"takes {steps['model forward']:.0f} ms and the `argmax` over 21 classes "
                f"{steps['argmax over 21 classes']:.0f} ms ({share:.0%}); decoding, resizing and the PNG are "
                f"a few ms. `logits.max(0).indices` gives the {'same' if alt['same_mask'] else 'a different'} "
                f"mask in {alt[k]:.1f} ms.")
    echo = _rows(st.get("echo"))
    if echo:
        e = {r["label"].split(":")[1].strip().split(" (")[0]: r for r in echo}
        pieces = ", ".join(f"{k} {r['rps']:.0f}/s" for k, r in e.items())
        idle = [r for r in echo if r.get("idle_connections")]
        txt = f"**Echo (no model):** {pieces}. Each layer costs well under a millisecond per request, " \
              "a fraction of a percent of one inference."
        if idle:
            r = idle[0]
            txt += (f" With `{r['label'].split(': ')[1]}`, {r['idle_connections']} of {r['connections']} "
                    "keep-alive connections got no answer during the whole run: each worker serves one "
                    "kept-alive client until it disconnects, and the others wait. Don't put "
                    "`http11-socket` in front of many clients without nginx.")
        out.append(txt)
    mf = st.get("mask_formats")
    if isinstance(mf, dict) and "png_bytes" in mf and mf["size_ratio_json_over_png"] < 100 \
            and mf.get("weights") == "random":
        syn = mf.get("synthetic_two_region", {})
        out.append(
            f"**PNG vs JSON:** {mf['size_ratio_json_over_png']}× smaller for this run's mask, under the "
            f"100× target, because untrained weights give a speckled {mf['classes_in_mask']}-class mask "
            "that zlib cannot compress much; a two-region mask of the same size (what pretrained "
            f"weights give for the cat) is {syn.get('size_ratio_json_over_png', '?')}× smaller. "
            "When torchvision's pretrained file is in torch's cache "
            "(`~/.cache/torch/hub/checkpoints/lraspp_mobilenet_v3_large-d234d4ea.pth`), the benchmark "
            "measures the real mask with it instead.")
    return out


def _all_load_rows(res):
    for v in res["stages"].values():
        if isinstance(v, list):
            yield from (r for r in v if isinstance(r, dict))
        elif isinstance(v, dict) and "layouts" in v:
            yield from v["layouts"]


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else 0.0


def chart(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = res["stages"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    fig.suptitle(f"Serving LRASPP on {res['meta']['cores']} cores ({res['meta']['machine']['cpu_model']}), "
                 f"256×256 JPEG → PNG mask" + ("  [quick run]" if res["meta"]["quick"] else ""),
                 fontsize=12)

    # 1. images/s per stage, with p50/p99
    ax = axes[0][0]
    rows = headline_rows(res)
    labels = [r["short"] for r in rows]
    vals = [r["rps"] for r in rows]
    colors = ["#555555" if r["stage"].startswith("1.") else "#c0392b" if r["stage"].startswith("2.")
              else "#2e86c1" for r in rows]
    y = range(len(rows))
    ax.barh(list(y), vals, color=colors)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("images/s (higher is better)")
    ax.set_title("Throughput per stage (dashed: limit, dotted: 0.9 × limit)")
    for i, r in enumerate(rows):
        ax.text(vals[i], i, f" {vals[i]:.1f}/s  p50 {r['lat']['p50']:.0f} / p99 {r['lat']['p99']:.0f} ms",
                va="center", fontsize=7)
    lim = st.get("limit", {}).get("images_per_s") if isinstance(st.get("limit"), dict) else None
    if lim:
        ax.axvline(lim, color="black", ls="--", lw=1)
        ax.axvline(0.9 * lim, color="black", ls=":", lw=1)
    ax.set_xlim(0, max(vals + [1]) * 1.6)

    # 2. sweep
    ax = axes[0][1]
    sweep = _rows(st.get("lesson03_sweep"))
    if sweep:
        lab = [f"{r['workers']}×{r['torch_threads']}\n{'lazy' if r['mode'] == 'lazy-apps' else 'prefork'}" for r in sweep]
        ax.bar(range(len(sweep)), [r["rps"] for r in sweep],
               color=["#e67e22" if r["oversubscribed"] else "#2e86c1" for r in sweep])
        ax.set_xticks(range(len(sweep)), lab, fontsize=8)
        for i, r in enumerate(sweep):
            ax.text(i, r["rps"], f"{r['rps']:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("images/s")
        ax.set_title("Lesson 03 sweep: workers × torch threads\n(orange: workers × threads > cores)")
    else:
        ax.set_axis_off()

    # 3. memory: PSS prefork vs lazy (fork matrix + sweep)
    ax = axes[1][0]
    fork = [r for r in _rows(st.get("lesson03_fork"))]
    if fork:
        short = {"lazy-apps": "lazy", "prefork": "prefork", "prefork + @postfork": "prefork\n+postfork"}
        lab = [f"{short.get(r['mode'], r['mode'])}\n{r['weights']}, {r['torch_threads']}t" for r in fork]
        pss = [r["memory"]["app_pss_mb_total"] for r in fork]
        ax.bar(range(len(fork)), pss, color=["#c0392b" if r["result"] != "ok" else
                                              "#8e44ad" if r["mode"] == "lazy-apps" else "#27ae60"
                                              for r in fork])
        ax.set_xticks(range(len(fork)), lab, fontsize=7)
        for i, r in enumerate(fork):
            ax.text(i, pss[i], f"{pss[i]:.0f}\n{'HANG' if r['result'] == 'hang' else r['result']}",
                    ha="center", va="bottom", fontsize=7)
        ax.set_ylabel("PSS of master + workers, MB")
        ax.set_title(f"Lesson 03: PSS of the app, {fork[0]['workers']} workers\n(red: the workers hung in their first forward pass)")
        ax.set_ylim(0, max(pss) * 1.25)
    else:
        ax.set_axis_off()

    # 4. echo
    ax = axes[1][1]
    echo = _rows(st.get("echo"))
    if echo:
        ax.barh(range(len(echo)), [r["rps"] for r in echo], color="#16a085")
        ax.set_yticks(range(len(echo)), [r["label"].replace("echo: ", "").replace(" (", "\n(") for r in echo],
                      fontsize=8)
        ax.invert_yaxis()
        for i, r in enumerate(echo):
            starved = (f"\n {r['idle_connections']} of {r['connections']} connections never answered"
                       if r.get("idle_connections") else "")
            ax.text(r["rps"], i, f" {r['rps']:.0f}/s  p50 {r['latency_ms']['p50']:.2f} ms{starved}",
                    va="center", fontsize=7)
        ax.set_xlim(0, max(r["rps"] for r in echo) * 1.9)
        ax.set_xlabel("requests/s")
        ax.set_title("Echo app (no model): the cost of each layer")
    else:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(res: dict, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    (out_dir / "results.md").write_text(markdown(res))
    chart(res, out_dir / "chart.png")


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results")
    write(json.loads((folder / "results.json").read_text()), folder)
