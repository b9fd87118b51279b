"""The benchmark (bench/, ./workshop.sh bench) runs end to end in quick mode and writes its files.

A smoke check only: it never asserts a speed, only that every stage ran
without an error and that results.json, results.md and chart.png exist.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["limit", "mask_formats", "naive", "lesson02", "lesson03_fork", "lesson03_sweep",
          "lesson04", "lesson05", "echo"]


@pytest.mark.timeout(240)
def test_quick_benchmark_runs_and_writes_its_files(tmp_path):
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin"):
            pytest.skip(f"{tool} is not installed: run ./workshop.sh setup")
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=220)
    assert (tmp_path / "results.json").exists(), \
        f"the benchmark wrote no results.json (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    results = json.loads((tmp_path / "results.json").read_text())
    stages = results["stages"]
    missing = [s for s in STAGES if s not in stages]
    assert not missing, f"stages missing from results.json: {missing}"
    broken = {s: v["error"] for s, v in stages.items() if isinstance(v, dict) and "error" in v}
    assert not broken, f"stages that failed: {broken}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| stage |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
