"""The checks harness: which lessons to check, servers for each test, progress.

    pytest checks/                          every lesson
    pytest checks/test_03_uwsgi.py          one lesson
    pytest checks/ --lessons path/to/copy   someone else's copy of the lessons
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

from workshop import exercises, harness
from workshop.lessons import LESSONS, describe, lessons_root


def pytest_addoption(parser):
    parser.addoption("--lessons", default=None,
                     help="folder with the lessons to check (default: $WORKSHOP_LESSONS, "
                          "else workspace/ if it exists, else lessons/)")


def pytest_configure(config):
    config.lessons_root = lessons_root(config.getoption("--lessons"))


def pytest_report_header(config):
    return f"checking the lessons in {describe(config.lessons_root)}"


@pytest.fixture(scope="session")
def lessons(request) -> Path:
    return request.config.lessons_root


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    # When a check fails, show the end of every server log: the answer is
    # usually there (a traceback, "address already in use", a 502's cause).
    if report.failed:
        for server in harness.RUNNING:
            report.sections.append((f"log of {server.name} ({server.log_path})", server.log(30)))
        for name, log in harness.STOPPED:
            report.sections.append((f"log of {name} (stopped during this test)", log))
    if report.when == "teardown":
        harness.STOPPED.clear()
    return report


# ---- the progress summary, rustlings style ----

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
        return todo[:400]
    text = re.sub(r"^(AssertionError|Failed|.*ServerDidNotStart): ", "", text.strip())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    first = lines[0]
    if first.endswith(":") and len(lines) > 1:  # "... says:" and the reason on the next line
        first += " " + lines[1]
    return first[:160]


def _line(mark: str, name: str, status: str, extra: str = "") -> str:
    return f"  {mark}  {name:<18} {status:<26} {extra}".rstrip()


_REPORTS: list = []   # every test report, in the order the checks ran


def pytest_runtest_logreport(report):
    _REPORTS.append(report)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    root = config.lessons_root
    results = defaultdict(lambda: {"passed": 0, "failed": 0, "skipped": 0, "hint": None})
    for report in _REPORTS:
        if report.passed and report.when != "call":
            continue
        entry = results[_group_of(report.nodeid)]
        key = "passed" if report.passed else "skipped" if report.skipped else "failed"
        entry[key] += 1
        if key == "failed" and entry["hint"] is None:
            entry["hint"] = _hint(report, root)
    exercises.record_progress(root, {k: v for k, v in results.items() if k in LESSONS})

    exercise_mode = exercises.is_workspace(root)
    left = exercises.todos(root) if exercise_mode else []
    marked = {ex.lesson for ex in exercises.exercises()}
    write = terminalreporter.write_line
    terminalreporter.section("workshop progress")
    write(f"lessons: {describe(root)}")

    def status(r) -> tuple[str, str]:
        total = r["passed"] + r["failed"]
        if r["failed"]:
            return "✗", f"{r['passed']}/{total} checks pass"
        skipped = f" ({r['skipped']} skipped)" if r["skipped"] else ""
        return "✓", f"{total}/{total} checks pass{skipped}"

    checked_lessons = [lesson for lesson in LESSONS if lesson in results]
    for lesson in LESSONS if checked_lessons or exercise_mode else []:
        mark, text = status(results[lesson]) if lesson in results else ("·", "not checked in this run")
        extra = ""
        if exercise_mode and lesson in marked:
            n = sum(ex.lesson == lesson for ex in left)
            extra = f"{n} TODO{'s' if n != 1 else ''} left" if n else "no TODOs left"
            if n and exercises.not_started(root, lesson):
                extra = f"not started ({n} TODO{'s' if n != 1 else ''})"
        write(_line(mark, lesson, text, extra))
    others = sorted(g for g in results if g not in LESSONS)
    if others:
        write("other checks:" if checked_lessons or exercise_mode else "no lesson checked in this run; other checks:")
        for group in others:
            mark, text = status(results[group])
            write(_line(mark, group, text))

    failing = [lesson for lesson in LESSONS if results.get(lesson, {}).get("failed")]
    if failing:
        lesson = failing[0]
        write(f"next: lesson {lesson}. First failing check says:")
        write(f"      {results[lesson]['hint']}")
        mine = [f"{ex.id} ({ex.path.split('/', 1)[1]}:{ex.line})" for ex in left if ex.lesson == lesson]
        if mine:
            write(f"      TODOs left in this lesson: {', '.join(mine)}")
        more = "; its hints: ./workshop.sh hint" if exercise_mode else ""
        write(f"      (run just this lesson: ./workshop.sh check {lesson[:2]}{more})")
    elif left:
        first = left[0]
        checked = "passes its checks" if first.lesson in results else "was not checked in this run"
        write(f"next: lesson {first.lesson}, which {checked} but has TODO {first.id} left:")
        write(f"      {first.todo_text()}  ({first.path}:{first.line})")
        write(f"      (done? delete its TODO line. All its hints: ./workshop.sh hint {first.lesson[:2]})")
    elif checked_lessons:
        write("every lesson checked in this run passes.")
    for group in others:
        if results[group]["failed"]:
            write(f"{group} checks fail; the first says: {results[group]['hint']}")
