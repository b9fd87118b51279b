"""Exercise mode works: the markers, the workspace, reset, hints, and the checks run on a workspace.

The reference lessons passing every check is the rest of this suite. Here:
a fresh workspace fails lesson 01 with its TODO's hint (and no crash of the
harness); with lesson 01's solution filled in, lesson 01 passes and lesson 02
fails with its hint; a second `workspace` never destroys work; `reset`
restores one lesson only; the markers never reach what runs or the guide.

Workspaces are made in workspace-test-*/ at the repository root (git ignores
it), so that their run.sh find the workshop two levels up, as in workspace/.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from workshop import exercises, nginx
from workshop.lessons import LESSONS, REFERENCE, ROOT

MARKED = [p for lesson in LESSONS if (REFERENCE / lesson).is_dir()
          for p in sorted((REFERENCE / lesson).rglob("*"))
          if p.is_file() and "__pycache__" not in p.parts
          and exercises.ANY_MARKER.search(p.read_text(errors="replace"))]


def cli(*args: str) -> subprocess.CompletedProcess:
    """./workshop.sh workspace|reset|hint, as the learner runs them."""
    env = {k: v for k, v in os.environ.items() if k != "WORKSHOP_LESSONS"}
    return subprocess.run([str(ROOT / "workshop.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def checks(workspace: Path, *files: str) -> str:
    """A check run against a workspace, as `pytest checks/...` with WORKSHOP_LESSONS set; its output."""
    env = dict(os.environ, WORKSHOP_LESSONS=str(workspace))
    out = subprocess.run([sys.executable, "-m", "pytest", *files, "-p", "no:cacheprovider"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=220)
    text = out.stdout + out.stderr
    assert "INTERNALERROR" not in text, f"the harness crashed on a workspace:\n{text[-4000:]}"
    assert out.returncode in (0, 1), f"pytest exited with {out.returncode}:\n{text[-4000:]}"
    return text


def progress(output: str) -> str:
    assert "workshop progress" in output, output[-3000:]
    return output[output.index("workshop progress"):]


@pytest.fixture
def workspace():
    """A fresh workspace made by ./workshop.sh workspace, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="workspace-test-", dir=ROOT))
    try:
        made = cli("workspace", "--lessons", str(path))
        assert made.returncode == 0, made.stdout + made.stderr
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------ the markers

def test_every_lesson_marks_one_to_three_exercises():
    written = [lesson for lesson in LESSONS if any((REFERENCE / lesson).glob("*"))]
    assert written[:5] == LESSONS[:5], f"lessons 01-05 should all be there, found {written}"
    for lesson in written:
        found = exercises.exercises(REFERENCE, lesson)
        assert 1 <= len(found) <= 3, f"{lesson} marks {len(found)} exercises; a lesson has 1 to 3"
        ids = [ex.id for ex in found]
        assert ids == [f"{lesson[:2]}.{k}" for k in range(1, len(found) + 1)], \
            f"{lesson}: exercise ids {ids} should be {lesson[:2]}.1, {lesson[:2]}.2, ..."
        for ex in found:
            assert ex.title and ex.hint, f"{ex.path}:{ex.line}: EXERCISE {ex.id} needs a title and a hint"


def test_marker_syntax_errors_are_caught():
    for bad in ["# EXERCISE 01.1: x — hint: y\ncode\n",                       # no END
                "# END EXERCISE\n",                                            # END alone
                "# EXERCISE 01.1: x — hint: y\n# EXERCISE 01.2: x — hint: y\n",  # nested
                "# EXERCISE 01.1: no hint here\ncode\n# END EXERCISE\n"]:      # no hint
        with pytest.raises(exercises.MarkerError):
            exercises.parse(bad, "sample.py")


@pytest.mark.parametrize("path", MARKED, ids=lambda p: p.relative_to(REFERENCE).as_posix())
def test_markers_are_comments_that_change_nothing(path):
    text = path.read_text()
    clean = exercises.strip_markers(text)
    assert not exercises.ANY_MARKER.search(clean)
    if path.suffix == ".py":
        # The same program with and without the marker lines: they are comments.
        assert ast.dump(ast.parse(text)) == ast.dump(ast.parse(clean))
    elif path.suffix in (".yaml", ".yml"):
        assert yaml.safe_load(text) == yaml.safe_load(clean)
    else:
        code = [line for line in text.splitlines() if not line.lstrip().startswith(("#", ";"))]
        assert code == [line for line in clean.splitlines() if not line.lstrip().startswith(("#", ";"))]


def test_rendered_nginx_configs_carry_no_markers(tmp_path):
    lesson04, lesson05 = REFERENCE / "04_nginx", REFERENCE / "05_multi_upstream"
    production = (lesson04 / "production" / "inference.conf").read_text()
    assert not exercises.ANY_MARKER.search(production), "markers leaked into production/inference.conf"
    site = nginx.render((lesson04 / "inference.conf.template").read_text(),
                        {"LISTEN": "80", "SERVER_NAME": "x", "UPSTREAM": "u", "LOG_DIR": "/tmp"})
    pool = nginx.render((lesson05 / "upstream.conf.template").read_text(),
                        {"UDS_UPSTREAM": "unix:/a.sock", "TCP_UPSTREAM": "127.0.0.1:1"})
    assert not exercises.ANY_MARKER.search(site + pool)


def test_todo_versions_stay_runnable_and_name_their_todo(tmp_path):
    for path in MARKED:
        rel = path.relative_to(REFERENCE).as_posix()
        todo = exercises.todo_version(path.read_text(), rel)
        assert not exercises.ANY_MARKER.search(todo), f"{rel}: a marker survived in the workspace version"
        ids = {ex.id for ex, *_ in exercises.parse(path.read_text(), rel)}
        assert ids <= set(re.findall(r"TODO (\d\d\.\d+): ", todo)), f"{rel}: TODO lines missing for {ids}"
        if path.suffix == ".py":
            ast.parse(todo)  # still valid Python: it raises NotImplementedError where the work goes
        if path.suffix in (".yaml", ".yml"):
            assert isinstance(yaml.safe_load(todo), dict), f"{rel}: the workspace version is not YAML"
    if not shutil.which("nginx", path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", "")):
        pytest.skip("nginx is not installed: run ./workshop.sh setup")
    template = tmp_path / "inference.conf.template"
    template.write_text(exercises.todo_version((REFERENCE / "04_nginx/inference.conf.template").read_text(),
                                               "04_nginx/inference.conf.template"))
    main = nginx.write_local(tmp_path / "nginx", [template],
                             {"LISTEN": "127.0.0.1:1", "SERVER_NAME": "localhost", "UPSTREAM": "unix:/x.sock"})
    result = nginx.test_config(main)
    assert result.returncode == 0, f"nginx -t rejects lesson 04's workspace template:\n{result.stderr}"


# ------------------------------------------------------------ the workspace

def test_fresh_workspace_fails_lesson_01_with_its_hint(workspace):
    assert (workspace / exercises.STAMP).exists()
    assert exercises.todos(workspace, "01_echo"), "the fresh workspace has no TODO in lesson 01"
    out = checks(workspace, "checks/test_01_echo.py")
    summary = progress(out)
    assert "3 failed, 2 passed" in out, out[-3000:]
    assert "the server failed with NotImplementedError: TODO 01.1" in out, \
        "the failing check should say which TODO made the server fail"
    assert re.search(r"✗  01_echo +2/5 checks pass +not started \(1 TODO\)", summary), summary
    assert "next: lesson 01_echo. First failing check says:\n      TODO 01.1: answer POST /infer" in summary, summary
    assert "(01_echo/inference.py:" in summary


def test_solved_lesson_01_passes_and_lesson_02_fails_with_its_hint(workspace):
    shutil.copy(REFERENCE / "01_echo/inference.py", workspace / "01_echo/inference.py")
    out = checks(workspace, "checks/test_01_echo.py", "checks/test_02_segmentation.py")
    summary = progress(out)
    assert re.search(r"✓  01_echo +5/5 checks pass +no TODOs left", summary), summary
    assert re.search(r"✗  02_segmentation +\d+/\d+ checks pass +not started \(3 TODOs\)", summary), summary
    assert "next: lesson 02_segmentation. First failing check says:\n      TODO 02.1: build the model once" \
        in summary, summary
    # A server that cannot start is a failing check with the reason, not a crash.
    assert re.search(r"ServerDidNotStart: 02_segmentation (exited|stopped).*: NotImplementedError: TODO 02\.1", out), \
        out[-3000:]

    hint = cli("hint", "--lessons", str(workspace))
    assert hint.returncode == 0, hint.stderr
    assert "Lesson 02_segmentation: 3 TODOs left (not started)" in hint.stdout, hint.stdout
    for todo in ("TODO 02.1", "TODO 02.2", "TODO 02.3", "hint: call `segmentation.load_model()`",
                 "diff -r lessons/02_segmentation"):
        assert todo in hint.stdout, hint.stdout


def test_creating_the_workspace_twice_destroys_nothing(workspace):
    mine = workspace / "03_uwsgi" / "workers.ini"
    mine.write_text(mine.read_text().replace("; TODO 03.2:", "processes = 2\n; TODO 03.2:"))
    before = {p: p.read_bytes() for p in workspace.rglob("*") if p.is_file()}
    again = cli("workspace", "--lessons", str(workspace))
    assert again.returncode != 0, "a second `workspace` must refuse"
    assert "already exists" in again.stderr and "reset" in again.stderr, again.stderr
    assert {p: p.read_bytes() for p in workspace.rglob("*") if p.is_file()} == before, "work was changed"
    assert not list(ROOT.glob(f".{workspace.name}-*")), "a half-built workspace was left behind"


def test_reset_restores_one_lesson_only(workspace):
    fresh03 = (workspace / "03_uwsgi" / "workers.ini").read_text()
    (workspace / "03_uwsgi" / "workers.ini").write_text("; my lesson 03\n")
    (workspace / "03_uwsgi" / "notes.txt").write_text("mine")
    (workspace / "01_echo" / "inference.py").write_text("# my lesson 01\n")
    done = cli("reset", "03", "--lessons", str(workspace))
    assert done.returncode == 0, done.stderr
    assert (workspace / "03_uwsgi" / "workers.ini").read_text() == fresh03
    assert not (workspace / "03_uwsgi" / "notes.txt").exists()
    assert (workspace / "01_echo" / "inference.py").read_text() == "# my lesson 01\n", "reset touched lesson 01"
    backups = list((workspace / exercises.BACKUPS).glob("03_uwsgi-*"))
    assert len(backups) == 1 and (backups[0] / "notes.txt").read_text() == "mine", \
        "reset should keep the old lesson in .backup/"
    assert exercises.not_started(workspace, "03_uwsgi")

    refused = cli("reset", "03", "--lessons", str(REFERENCE))
    assert refused.returncode != 0 and "no workspace" in refused.stderr, "reset must never touch lessons/"


# ------------------------------------------------------------ the guide

def test_guide_reads_lesson_files_without_markers():
    spec = importlib.util.spec_from_file_location("guide_hooks", ROOT / "scripts/docs/hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    for path in MARKED:
        shown = hooks.strip_markers(path.read_text().split("\n"))
        assert not exercises.ANY_MARKER.search("\n".join(shown)), path
    # A quote by content counts lines in the file as shown, markers left out.
    target = hooks._line_range("lessons/02_segmentation/segmentation.py", "@torch.inference_mode()",
                               "return mask", "test")
    _, first, last = target.rsplit(":", 2)
    shown = exercises.strip_markers((ROOT / "lessons/02_segmentation/segmentation.py").read_text()).splitlines()
    assert shown[int(first) - 1].startswith("@torch.inference_mode()") and "return mask" in shown[int(last) - 1]
    for lesson in [ex.lesson for ex in exercises.exercises() if ex.id.endswith(".1")]:
        page = next((ROOT / "docs/lessons").glob(f"{lesson[:2]}-*.md")).read_text()
        assert f"<!-- exercises: {lesson} -->" in page, f"the page of {lesson} should list its exercises"
