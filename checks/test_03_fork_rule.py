"""Lesson 03's fork rule: uWSGI's master never starts CUDA; on a GPU each worker does, after the fork.

CUDA started before a fork (even by torch.cuda.is_available()) is inherited
broken: every worker's first CUDA call fails with "Cannot re-initialize CUDA
in forked subprocess". Without a GPU that error never shows, so these checks
start lesson 03's real uWSGI with a tripwire on PYTHONPATH
(workshop/cudaguard/sitecustomize.py): it logs every call that starts CUDA,
with its pid, and whether torch sees each forked worker as poisoned. The
last two checks plant the mistake in a copy of the lessons and make sure
the tripwire sees it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import requests

from workshop.harness import concurrently, lesson_server
from workshop.lessons import ROOT
from workshop.procs import ServerDidNotStart, wait_for

from checks.utils import segment

LESSON = "03_uwsgi"
GUARD = ROOT / "workshop" / "cudaguard"
# uWSGI forks from C, so Python's os.register_at_fork hooks (the tripwire's
# "was this worker poisoned?") run in a worker only when it is asked to.
AFTER_FORK = ["--py-call-osafterfork"]
PLANTED = "torch.cuda.is_available()  # planted by checks/test_03_fork_rule.py: CUDA in the master\n"


def guarded(log: Path, mode: str = "raise") -> dict:
    return {"PYTHONPATH": str(GUARD), "CUDA_GUARD_LOG": str(log), "CUDA_GUARD": mode}


def entries(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def master_pid(server) -> int:
    return int((server.run_dir / "uwsgi.pid").read_text())


def cuda_in_master(log: Path, master: int) -> list[dict]:
    return [e for e in entries(log) if e["event"] == "cuda" and (e["master"] or e["pid"] == master)]


def usable_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def serve_and_read(lessons: Path, log: Path, mode: str = "raise") -> tuple[int, set[str], list[dict]]:
    """Start lesson 03 with the tripwire, send it work; (master pid, X-Model-Device seen, fork entries)."""
    with lesson_server(lessons, LESSON, args=AFTER_FORK, env=guarded(log, mode)) as server:
        replies = concurrently(lambda: segment(server), times=8, at_once=4)
        assert [r.status_code for r in replies] == [200] * 8, "the workers did not serve under the tripwire"
        master = master_pid(server)
        # The workers warm up in their post-fork hook; their fork entries are written by then.
        forks = wait_for(lambda: [e for e in entries(log) if e["event"] == "fork" and e["parent"] == master],
                         timeout=30, what="the tripwire to see the workers fork")
    return master, {r.headers.get("X-Model-Device") for r in replies}, forks


def test_the_master_never_starts_cuda(lessons, tmp_path):
    log = tmp_path / "cuda-guard.jsonl"
    master, devices, forks = serve_and_read(lessons, log)
    armed = [e for e in entries(log) if e["event"] == "armed"]
    assert any(e["master"] for e in armed), \
        f"the tripwire was not armed in uWSGI's master (its log: {entries(log)}): is PYTHONPATH passed on?"
    touched = cuda_in_master(log, master)
    assert not touched, \
        f"uWSGI's master (pid {master}) started CUDA with {touched[0]['call']}() from:\n{touched[0]['stack']}" \
        "every forked worker would fail with \"Cannot re-initialize CUDA in forked subprocess\": choose the " \
        "device with NVML only (segmentation.choose_device) and move the model in each worker after the fork"
    poisoned = [e["pid"] for e in forks if e["bad_fork"]]
    assert not poisoned, f"torch sees the workers {poisoned} as forked from a process that had started CUDA"
    assert devices == {usable_device()}, f"the workers said X-Model-Device {devices}, expected {usable_device()}"
    if usable_device() != "cpu":
        in_workers = {e["pid"] for e in entries(log) if e["event"] == "cuda" and e["pid"] != master}
        assert in_workers, "on a GPU the workers should have started CUDA themselves, after the fork"


@pytest.fixture
def lessons_with_cuda_in_the_master(lessons):
    """A copy of lessons 02 and 03 whose inference.py calls torch.cuda.is_available() at import."""
    root = Path(tempfile.mkdtemp(prefix="workspace-test-", dir=ROOT))
    try:
        for lesson in ("02_segmentation", LESSON):
            shutil.copytree(lessons / lesson, root / lesson, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(lessons / "common.sh", root)
        app = root / "02_segmentation" / "inference.py"
        text = app.read_text()
        assert "\nimport torch\n" in text
        app.write_text(text.replace("\nimport torch\n", "\nimport torch\n" + PLANTED, 1))
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_tripwire_sees_cuda_in_the_master(lessons_with_cuda_in_the_master, tmp_path):
    # Recording only: the planted app still serves on the CPU here, yet it broke every worker for a GPU.
    log = tmp_path / "cuda-guard.jsonl"
    master, _, forks = serve_and_read(lessons_with_cuda_in_the_master, log, mode="record")
    touched = cuda_in_master(log, master)
    assert touched and touched[0]["call"] == "torch._C._cuda_getDeviceCount", \
        f"the planted torch.cuda.is_available() in the master went unseen: {entries(log)}"
    assert "inference.py" in touched[0]["stack"], f"the entry should say where the call came from: {touched[0]}"
    # What the fork rule is about, for real: torch marks every worker as poisoned, and its first
    # CUDA call (torch.cuda._lazy_init) would raise "Cannot re-initialize CUDA in forked subprocess".
    assert forks and all(e["bad_fork"] for e in forks), f"torch should see every worker as poisoned: {forks}"


def test_the_tripwire_stops_such_a_start(lessons_with_cuda_in_the_master, tmp_path):
    log = tmp_path / "cuda-guard.jsonl"
    with pytest.raises(ServerDidNotStart):
        with lesson_server(lessons_with_cuda_in_the_master, LESSON, env=guarded(log), timeout=60) as server:
            requests.get(server.url + "/readyz", timeout=5)
    assert any(e["event"] == "cuda" and e["master"] for e in entries(log)), \
        f"the start failed, but not because of the tripwire: {entries(log)}"
