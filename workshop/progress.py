"""The checks' progress table, rustlings style: a pytest plugin (checks/conftest.py loads it).

At the end of every check run: one line per lesson (checks passed, TODOs
left in a workspace), then what to do next, with the first failing check's
message or the hint of the TODO it names. The results are also kept in
run/progress.json, where `./workshop.sh hint` finds them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

from . import exercises
from .lessons import LESSONS, describe

_REPORTS: list = []   # every test report, in the order the checks ran


def pytest_runtest_logreport(report):
    _REPORTS.append(report)


def _group_of(nodeid: str) -> str:
    """A lesson (checks/test_03_uwsgi.py -> 03_uwsgi), else the file's topic (test_guide.py -> guide)."""
    file = Path(nodeid.split("::")[0]).name
    m = re.match(r"test_(\d\d)_", file)
    lesson = next((name for name in LESSONS if m and name.startswith(m.group(1))), None)
    return lesson or Path(file).stem.removeprefix("test_")


def _hint(report, root: Path) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash else str(report.longrepr)
    # A TODO of the workspace named anywhere in the failure (the message, a
    # server's answer or log): the hint is that exercise's own.
    todo = exercises.hint_for("\n".join([text, report.longreprtext,
                                         *(content for _, content in report.sections)]), root)
    if todo:
        return todo
    text = re.sub(r"^(AssertionError|Failed|.*ServerDidNotStart): ", "", text.strip())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    first = lines[0]
    if first.endswith(":") and len(lines) > 1:  # "... says:" and the reason on the next line
        first += " " + lines[1]
    return first if len(first) <= 200 else first[:200].rsplit(" ", 1)[0] + " …"


def _results(root: Path) -> dict:
    results = defaultdict(lambda: {"passed": 0, "failed": 0, "skipped": 0, "hint": None})
    for report in _REPORTS:
        if report.passed and report.when != "call":
            continue
        entry = results[_group_of(report.nodeid)]
        key = "passed" if report.passed else "skipped" if report.skipped else "failed"
        entry[key] += 1
        if key == "failed" and entry["hint"] is None:
            entry["hint"] = _hint(report, root)
    return results


def _status(r) -> tuple[str, str]:
    total = r["passed"] + r["failed"]
    if r["failed"]:
        return "✗", f"{r['passed']}/{total} checks pass"
    skipped = f" ({r['skipped']} skipped)" if r["skipped"] else ""
    return "✓", f"{total}/{total} checks pass{skipped}"


def _line(mark: str, name: str, status: str, extra: str = "") -> str:
    return f"  {mark}  {name:<18} {status:<26} {extra}".rstrip()


def _todos_text(root: Path, lesson: str, left: list, result: dict | None) -> str:
    n = sum(ex.lesson == lesson for ex in left)
    if n:
        todo = f"{n} TODO{'s' if n != 1 else ''}"
        return f"not started ({todo})" if exercises.not_started(root, lesson) else f"{todo} left"
    # A lesson is done when its checks pass, not when its TODO comments are gone.
    return "TODO lines gone, checks fail" if result and result["failed"] else "no TODOs left"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    root = config.lessons_root
    results = _results(root)
    exercises.record_progress(root, {k: v for k, v in results.items() if k in LESSONS})

    exercise_mode = exercises.is_workspace(root)
    left = exercises.todos(root) if exercise_mode else []
    marked = {ex.lesson for ex in exercises.exercises()}
    write = terminalreporter.write_line
    terminalreporter.section("workshop progress")
    write(f"lessons: {describe(root)}")

    checked_lessons = [lesson for lesson in LESSONS if lesson in results]
    for lesson in LESSONS if checked_lessons or exercise_mode else []:
        result = results.get(lesson)
        mark, text = _status(result) if result else ("·", "not checked in this run")
        extra = _todos_text(root, lesson, left, result) if exercise_mode and lesson in marked else ""
        write(_line(mark, lesson, text, extra))
    others = sorted(g for g in results if g not in LESSONS)
    if others:
        write("other checks:" if checked_lessons or exercise_mode else "no lesson checked in this run; other checks:")
        for group in others:
            mark, text = _status(results[group])
            write(_line(mark, group, text))

    failing = [lesson for lesson in LESSONS if results.get(lesson, {}).get("failed")]
    if failing:
        lesson = failing[0]
        write(f"next: lesson {lesson}. First failing check says:")
        write(f"      {results[lesson]['hint']}")
        mine = [f"{ex.id} ({ex.path.split('/', 1)[1]}:{ex.line})" for ex in left if ex.lesson == lesson]
        if mine:
            write(f"      TODOs left in this lesson: {', '.join(mine)}")
        more = "; a hint: ./workshop.sh hint" if exercise_mode else ""
        write(f"      (run just this lesson: ./workshop.sh check {lesson[:2]}{more})")
    elif left:
        first = left[0]
        checked = "passes its checks" if first.lesson in results else "was not checked in this run"
        write(f"next: lesson {first.lesson}, which {checked} but has TODO {first.id} left:")
        write(f"      {first.todo_line()}  ({first.path}:{first.line})")
        write(f"      (done? delete its TODO line. A hint: ./workshop.sh hint {first.id})")
    elif checked_lessons and exitstatus == pytest.ExitCode.INTERRUPTED:
        write("the run was stopped before its end: the table counts the checks that ran.")
    elif checked_lessons:
        write("every lesson checked in this run passes.")
    for group in others:
        if results[group]["failed"]:
            write(f"{group} checks fail; the first says: {results[group]['hint']}")
