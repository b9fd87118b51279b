"""Exercise mode works: markers, hints, the workspace, and checks that catch every unsolved TODO.

The reference lessons passing every check is the rest of this suite. Here:
the markers change nothing and never leak; every exercise has graded hints
that start with a nudge; a fresh workspace fails lesson 01 with its TODO;
solving it moves the learner on; `workspace` never destroys work; `reset`
restores one lesson; `hint` gives the next hint each time it is asked.

`-k unsolved` (part of `./workshop.sh check-dev`) proves, for every exercise, that a workspace where only that
exercise is left as shipped fails its lesson's checks, naming the exercise
(rustlings' "every exercise fails while unsolved").

Workspaces are made in workspace-test-*/ at the repository root (git ignores
it), so that their run.sh find the workshop two levels up, as in workspace/.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from workshop import exercises, markers, nginx
from workshop.lessons import LESSONS, REFERENCE, ROOT
from workshop.procs import run_bounded

from checks.utils import docs_hooks

MARKED = [p for lesson in LESSONS if (REFERENCE / lesson).is_dir()
          for p in sorted((REFERENCE / lesson).rglob("*"))
          if p.is_file() and "__pycache__" not in p.parts
          and markers.ANY_MARKER.search(p.read_text(errors="replace"))]
ALL = exercises.exercises()


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """./workshop.sh workspace|reset|hint|check, as the learner runs them."""
    env = {k: v for k, v in os.environ.items() if k != "WORKSHOP_LESSONS"}
    return subprocess.run([str(ROOT / "workshop.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def checks(workspace: Path, *args: str) -> str:
    """A check run against a workspace, as `pytest checks/...` with WORKSHOP_LESSONS set; its output."""
    env = dict(os.environ, WORKSHOP_LESSONS=str(workspace))
    out = run_bounded([sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider"],
                      timeout=220, cwd=ROOT, env=env)
    text = out.stdout + out.stderr
    assert "INTERNALERROR" not in text, f"the harness crashed on a workspace:\n{text[-4000:]}"
    assert out.returncode in (0, 1), f"pytest exited with {out.returncode}:\n{text[-4000:]}"
    return text


def progress(output: str) -> str:
    assert "workshop progress" in output, output[-3000:]
    return output[output.index("workshop progress"):]


def new_workspace(unsolved: set[str] | None = None) -> Path:
    path = Path(tempfile.mkdtemp(prefix="workspace-test-", dir=ROOT))
    path.rmdir()
    return exercises.create_workspace(path, unsolved=unsolved)


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


# ------------------------------------------------------------ markers and hints

def test_every_lesson_marks_one_to_four_exercises():
    written = [lesson for lesson in LESSONS if any((REFERENCE / lesson).glob("*"))]
    assert written[:6] == LESSONS[:6], f"lessons 01-06 should all be there, found {written}"
    for lesson in written:
        found = exercises.exercises(REFERENCE, lesson)
        assert 1 <= len(found) <= 4, f"{lesson} marks {len(found)} exercises; a lesson has 1 to 4"
        ids = [ex.id for ex in found]
        assert ids == [f"{lesson[:2]}.{k}" for k in range(1, len(found) + 1)], \
            f"{lesson}: exercise ids {ids} should be {lesson[:2]}.1, {lesson[:2]}.2, ..."


def test_hints_live_in_one_file_and_lead_before_they_tell():
    hints = exercises.load_hints()
    assert set(hints) == {ex.id for ex in ALL}, \
        f"lessons/hints.toml and the markers disagree: {sorted(set(hints) ^ {ex.id for ex in ALL})}"
    for ex in ALL:
        assert len(ex.hints) >= 2, f"{ex.id} needs graded hints: a nudge first, the answer last"
        # The first hint must not hand over the answer: no line of the solution in it.
        path = REFERENCE / ex.path
        solution = [line.strip() for e, start, end, _ in markers.parse(path.read_text(), ex.path)
                    if e.id == ex.id for line in path.read_text().splitlines()[start + 1:end]
                    if len(line.strip()) > 8 and not line.strip().startswith(("#", ";"))]
        given = [line for line in solution if line.rstrip(";") in ex.hints[0]]
        assert not given, f"the first hint of {ex.id} gives the answer away: {given}"
    for path in MARKED:
        assert "hint:" not in path.read_text(), f"{path}: hints belong in lessons/hints.toml, not next to the answer"


def test_marker_syntax_errors_are_caught():
    for bad in ["# EXERCISE 01.1: x\ncode\n",                                 # no END
                "# END EXERCISE\n",                                            # END alone
                "# EXERCISE 01.1: x\n# EXERCISE 01.2: y\n",                    # nested
                "# EXERCISE 01.1: x — hint: the answer\ncode\n# END EXERCISE\n"]:  # a hint in the file
        with pytest.raises(markers.MarkerError):
            markers.parse(bad, "sample.py")


@pytest.mark.parametrize("path", MARKED, ids=lambda p: p.relative_to(REFERENCE).as_posix())
def test_markers_are_comments_that_change_nothing(path):
    text = path.read_text()
    clean = markers.strip_markers(text)
    assert not markers.ANY_MARKER.search(clean)
    if path.suffix == ".py":
        # The same program with and without the marker lines: they are comments.
        assert ast.dump(ast.parse(text)) == ast.dump(ast.parse(clean))
    elif path.suffix in (".yaml", ".yml"):
        assert yaml.safe_load(text) == yaml.safe_load(clean)
    else:
        code = [line for line in text.splitlines() if not line.lstrip().startswith(("#", ";"))]
        assert code == [line for line in clean.splitlines() if not line.lstrip().startswith(("#", ";"))]


def test_rendered_nginx_configs_carry_no_markers():
    lesson04, lesson05 = REFERENCE / "04_nginx", REFERENCE / "05_multi_upstream"
    production = (lesson04 / "production" / "inference.conf").read_text()
    assert not markers.ANY_MARKER.search(production), "markers leaked into production/inference.conf"
    site = nginx.render((lesson04 / "inference.conf.template").read_text(),
                        {"LISTEN": "80", "SERVER_NAME": "x", "UPSTREAM": "u", "LOG_DIR": "/tmp",
                         "STATIC_ROOT": "/srv"})
    pool = nginx.render((lesson05 / "upstream.conf.template").read_text(),
                        {"UDS_UPSTREAM": "unix:/a.sock", "TCP_UPSTREAM": "127.0.0.1:1"})
    assert not markers.ANY_MARKER.search(site + pool)


def test_todo_versions_stay_runnable_and_name_their_todo(tmp_path):
    for path in MARKED:
        rel = path.relative_to(REFERENCE).as_posix()
        todo = markers.todo_version(path.read_text(), rel)
        assert not markers.ANY_MARKER.search(todo), f"{rel}: a marker survived in the workspace version"
        ids = {ex.id for ex, *_ in markers.parse(path.read_text(), rel)}
        assert ids <= set(re.findall(r"TODO (\d\d\.\d+): ", todo)), f"{rel}: TODO lines missing for {ids}"
        if path.suffix == ".py":
            ast.parse(todo)  # still valid Python: it raises NotImplementedError where the work goes
        if path.suffix in (".yaml", ".yml"):
            assert isinstance(yaml.safe_load(todo), dict), f"{rel}: the workspace version is not YAML"
    template = tmp_path / "inference.conf.template"
    template.write_text(markers.todo_version((REFERENCE / "04_nginx/inference.conf.template").read_text(),
                                             "04_nginx/inference.conf.template"))
    main = nginx.write_local(tmp_path / "nginx", [template],
                             {"LISTEN": "127.0.0.1:1", "SERVER_NAME": "localhost", "UPSTREAM": "unix:/x.sock"})
    result = nginx.test_config(main)
    assert result.returncode == 0, f"nginx -t rejects lesson 04's workspace template:\n{result.stderr}"


# ------------------------------------------------------------ every exercise fails while unsolved

@pytest.mark.dev  # one run of a lesson's checks per exercise: ./workshop.sh check-dev
@pytest.mark.parametrize("ex", ALL, ids=lambda ex: ex.id)
def test_unsolved_exercise_fails_its_lesson(ex):
    """Only this exercise left as shipped: its lesson's checks fail, and the summary names it."""
    root = new_workspace(unsolved={ex.id})
    try:
        out = checks(root, *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "checks").glob(f"test_{ex.id[:2]}_*.py")),
                     "-x", "-q")
        summary = progress(out)
        assert re.search(rf"✗  {ex.lesson} ", summary), \
            f"with TODO {ex.id} unsolved, every check of {ex.lesson} passed: no check tests what it teaches\n{summary}"
        nxt = summary[summary.index("next:"):]
        assert ex.id in nxt, f"the summary's next step does not name TODO {ex.id}:\n{nxt}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------ the workspace

def test_fresh_workspace_fails_lesson_01_with_its_todo(workspace):
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


def test_solved_lesson_01_passes_and_lesson_02_fails_with_its_todo(workspace):
    shutil.copy(REFERENCE / "01_echo/inference.py", workspace / "01_echo/inference.py")
    # Lesson 02's checks that run `python inference.py` with a bad setting, or start a
    # server with a weights file, are left out: unsolved, each only imports torch
    # (seconds) to stop at the same TODO, and no assertion here reads them. Two server
    # start-ups, failing alike, still run: the error must be shown once.
    out = checks(workspace, "checks/test_01_echo.py", "checks/test_02_segmentation.py",
                 "-k", "not stops_the_start_clearly and not weights_file_is_loaded")
    summary = progress(out)
    assert re.search(r"✓  01_echo +5/5 checks pass +no TODOs left", summary), summary
    assert re.search(r"✗  02_segmentation +\d+/\d+ checks pass +not started \(3 TODOs\)", summary), summary
    assert "next: lesson 02_segmentation. First failing check says:\n      TODO 02.1: build the model once" \
        in summary, summary
    # A server that cannot start is a failing check with the reason, shown once.
    assert re.search(r"02_segmentation (exited|stopped).*: NotImplementedError: TODO 02\.1", out), out[-3000:]
    assert out.count("--- its log, up to the error ---") == 1, "a repeated start-up failure should be shown once"


def test_deleting_the_todo_lines_is_not_solving_them(workspace):
    ini = workspace / "03_uwsgi" / "workers.ini"
    ini.write_text("".join(line for line in ini.read_text().splitlines(keepends=True) if "TODO 03." not in line))
    summary = progress(checks(workspace, "checks/test_03_uwsgi.py", "-x", "-q"))
    line = next(line for line in summary.splitlines() if " 03_uwsgi " in line)
    assert line.lstrip().startswith("✗") and "TODO lines gone, checks fail" in line, summary


def test_workspace_readmes_run_the_learners_copy(workspace):
    for readme in workspace.glob("*/README.md"):
        text = readme.read_text()
        assert not re.search(rf"\blessons/({'|'.join(LESSONS)})/\w+\.sh", text), \
            f"{readme.relative_to(workspace)} tells the learner to run the solution in lessons/"
    assert not (workspace / "hints.toml").exists(), "the hints are read from lessons/, not copied"


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


def test_hint_gives_the_next_hint_each_time(workspace):
    ex = next(ex for ex in ALL if ex.id == "02.2")
    shown = [cli("hint", "02.2", "--lessons", str(workspace)).stdout for _ in range(len(ex.hints) + 1)]
    for level, out in enumerate(shown[:-1], 1):
        assert f"Hint {level} of {len(ex.hints)} for TODO 02.2" in out, out
        assert f"Hint {level + 1} of" not in out, f"hint {level} showed more than one hint:\n{out}"
    assert "(the answer)" in shown[-1] and f"Hint {len(ex.hints)} of" in shown[-1], shown[-1]
    everything = cli("hint", "03", "--all", "--lessons", str(workspace)).stdout
    first03 = next(ex for ex in ALL if ex.id == "03.1")
    assert all(f"Hint {k} of {len(first03.hints)} for TODO 03.1" in everything
               for k in range(1, len(first03.hints) + 1)), everything
    assert "diff -r" not in everything and "lessons/03_uwsgi" not in everything, \
        "hints must not send the learner to the solution"


def test_check_takes_a_lesson_as_the_learner_writes_it():
    for spelling in ("1", "01", "1_echo", "echo"):
        run = cli("check", spelling, "--collect-only", "-q", timeout=120)
        assert run.returncode == 0 and "test_01_echo.py" in run.stdout, f"check {spelling}:\n{run.stdout}{run.stderr}"
    unknown = cli("check", "42", timeout=120)
    assert unknown.returncode != 0 and "01_echo, 02_segmentation" in unknown.stderr, unknown.stderr


# ------------------------------------------------------------ the guide

def test_guide_reads_lesson_files_without_markers():
    hooks = docs_hooks()
    for path in MARKED:
        shown = hooks.strip_markers(path.read_text().split("\n"))
        assert not markers.ANY_MARKER.search("\n".join(shown)), path
    # A quote by content counts lines in the file as shown, markers left out.
    target = hooks._line_range("lessons/02_segmentation/segmentation.py", "@torch.inference_mode()",
                               "return mask", "test")
    _, first, last = target.rsplit(":", 2)
    shown = markers.strip_markers((ROOT / "lessons/02_segmentation/segmentation.py").read_text()).splitlines()
    assert shown[int(first) - 1].startswith("@torch.inference_mode()") and "return mask" in shown[int(last) - 1]
    for lesson in [ex.lesson for ex in ALL if ex.id.endswith(".1")]:
        page = next((ROOT / "docs/lessons").glob(f"{lesson[:2]}-*.md")).read_text()
        assert f"<!-- exercises: {lesson} -->" in page, f"the page of {lesson} should list its exercises"


def test_guide_folds_solutions_away():
    hooks = docs_hooks()

    class Page:  # what on_page_markdown reads of a page
        class file:
            src_uri = "lessons/02-segmentation.md"

    page = ('```python\n--8<-- "lessons/02_segmentation/inference.py"\n```\n\n'
            '```python\n--8<-- "lessons/02_segmentation/voc.py"\n```\n')
    shown = hooks.on_page_markdown(page, Page).splitlines()
    assert shown[0] == '??? success "The solution (opening it spoils exercise 02.1)"', shown[:3]
    assert shown[2].startswith("    ```python") and shown[3].startswith("    --8<--"), shown
    assert '```python' in shown and '--8<-- "lessons/02_segmentation/voc.py"' in shown, \
        "a file without exercises should stay open"
    quote = hooks._line_range("lessons/02_segmentation/segmentation.py", "def to_rgb", "return img.convert", "t")
    assert hooks.spoiled_exercises(quote) == set(), "a quote outside the exercises spoils nothing"
