"""The benchmark (bench/, ./workshop.sh bench) runs end to end in quick mode and writes its files.

A smoke check: it never asserts a speed. It asserts that every stage ran
without an error, that each row is compared with both bars (the forward-pass
limit and the pipeline), that the curves over photo sizes and connections
are there, that every target says whether it was met, and that the files exist.
"""

import json
import re
import shutil
from pathlib import Path

import pytest

from workshop.procs import run_bounded

pytestmark = pytest.mark.dev   # the benchmark is the workshop's own tool: ./workshop.sh check-dev

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["model", "mask_formats", "limit", "lesson02", "lesson03_fork", "lesson03_sweep", "paired",
          "lesson04", "lesson05", "balance"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin"):
            pytest.skip(f"{tool} is not installed: run ./workshop.sh setup")
    out = tmp_path_factory.mktemp("bench")
    proc = run_bounded([str(ROOT / "workshop.sh"), "bench", "--quick", "--out", str(out)], timeout=230, cwd=ROOT)
    assert (out / "results.json").exists(), \
        f"the benchmark wrote no results.json (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc, out, json.loads((out / "results.json").read_text())


@pytest.mark.timeout(240)
def test_quick_benchmark_runs_every_stage_and_writes_its_files(quick):
    proc, out, results = quick
    stages = results["stages"]
    missing = [s for s in STAGES if s not in stages]
    assert not missing, f"stages missing from results.json: {missing}"
    broken = {s: v["error"] for s, v in stages.items() if isinstance(v, dict) and "error" in v}
    assert not broken, f"stages that failed: {broken}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| stage |" in (out / "results.md").read_text()
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "chart.png is not a PNG"


def test_every_stage_is_compared_with_both_limits(quick):
    _, _, results = quick
    limits = results["limits"]
    assert limits["forward_images_per_s"] > 0 and limits["pipeline_images_per_s"] > 0, limits
    stages = {row["stage"] for row in results["headline"]}
    for stage in ("limit: the forward pass alone", "the app's pipeline, no HTTP", "lesson 02: Flask dev server",
                  "lesson 03: uWSGI http-socket", "lesson 04: nginx -> uWSGI", "lesson 05: nginx -> 2 upstreams"):
        assert stage in stages, f"no row for {stage!r} in the table of stages"
    for row in results["headline"]:
        assert row["x_forward"] is not None and row["x_pipeline"] is not None, \
            f"{row['stage']}: no ratio to both limits"
        assert row["x_forward"] == pytest.approx(row["images_per_s"] / limits["forward_images_per_s"], abs=0.01)


def test_the_cost_curves_cover_sizes_and_connections(quick):
    _, _, results = quick
    l05 = results["stages"]["lesson05"]
    assert [r["connections"] for r in l05["by_connections"]] == [1, 2, 4]
    sizes = [r["label"] for r in l05["by_size"]]
    assert sizes == ["256x256", "12 MP"], sizes
    for row in l05["by_size"]:
        assert row["unloaded"]["status"] == 200, f"the {row['label']} photo got {row['unloaded']}"
        assert row["memory"]["peak_rss_mb_per_worker"] > 0
    model = results["stages"]["model"]
    assert [r["label"] for r in model["formats_by_size"]] == sizes
    assert all(r["json_bytes"] > r["png_bytes"] for r in model["formats_by_size"])
    steps = [s["step"] for s in model["profile"][0]["steps"]]
    assert "forward pass (the network's layers)" in steps and "scores to the mask's size" in steps, steps
    assert steps[-1] == "whole request", steps
    assert {r["photo"] for r in model["before_vs_after"]} == {"chelsea", "astronaut", "coffee"}
    assert {r["batch"] for r in model["batching"]} == {1, 2, 4}
    assert model["precision"]["agreement"], "no bf16 vs fp32 agreement measured"


def test_lesson_05_is_measured_in_turns_with_the_limit_and_with_round_robin(quick):
    _, _, results = quick
    paired, balance = results["stages"]["paired"], results["stages"]["balance"]
    assert paired["rounds"], "no paired round of lesson 05 and the limit"
    for r in paired["rounds"]:
        assert r["forward"]["images_per_s"] > 0 and r["lesson05"]["rps"] > 0 and r["x_forward"] > 0, r
    assert {label: t["n"] > 0 for label, t in paired["round_trips_ms"].items()} == {"256x256": True, "12 MP": True}
    pairs = list(zip(balance["runs"]["least_conn"], balance["runs"]["round_robin"]))
    assert pairs and all(a["rps"] > 0 and b["rps"] > 0 for a, b in pairs), balance
    assert len(balance["least_conn_over_round_robin"]) == len(pairs)


def test_every_target_says_whether_it_was_met(quick):
    _, out, results = quick
    targets = results["targets"]
    said = " ".join(t["target"] for t in targets)
    for words in ("0.85× the forward-pass limit", "p99 ≤ 2× p50", "no failed request", "outside the forward pass",
                  "12-megapixel"):
        assert words in said, f"no target about {words!r}: {said}"
    text = (out / "results.md").read_text()
    for t in targets:
        met = {True: "yes", False: "**no**", None: "shown"}[t["met"]]
        assert f"| {t['target']} | {t['measured']} | {met} |" in text, f"results.md does not say: {t}"


def test_one_percentile_rule():
    """Every percentile but wrk's comes from bench/measure.py's percentile(): no module keeps a rule of its own."""
    own = [p.name for p in sorted((ROOT / "bench").glob("*.py"))
           if re.search(r"^def (percentile|median|quantiles?)\b", p.read_text(), re.M)]
    assert own == ["measure.py"], f"percentile or median rules outside bench/measure.py: {own}"


def test_soak_report_rederives_the_committed_soak_json(tmp_path):
    """`python -m bench.soak --report` rewrites the committed soak.json byte for byte (the figures
    derived from its samples are computed the way the committed run computed them)."""
    from bench import soak

    committed = ROOT / "bench/results/soak.json"
    shutil.copy(committed, tmp_path / "soak.json")
    assert soak.main(["--report", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "soak.json").read_bytes() == committed.read_bytes()
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
