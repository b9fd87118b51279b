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

from workshop import harness
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

def _lesson_of(nodeid: str) -> str | None:
    m = re.search(r"test_(\d\d)_", nodeid)
    return next((name for name in LESSONS if m and name.startswith(m.group(1))), None)


def _hint(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash else str(report.longrepr)
    text = re.sub(r"^(AssertionError|Failed|.*ServerDidNotStart): ", "", text.strip())
    return text.splitlines()[0][:160] if text else "(no message)"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    results = defaultdict(lambda: {"passed": 0, "failed": 0, "skipped": 0, "first_failure": None})
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            lesson = _lesson_of(getattr(report, "nodeid", ""))
            if not lesson or (outcome == "passed" and report.when != "call"):
                continue
            entry = results[lesson]
            key = "failed" if outcome == "error" else outcome
            entry[key] += 1
            if key == "failed" and entry["first_failure"] is None:
                entry["first_failure"] = _hint(report)
    write = terminalreporter.write_line
    terminalreporter.section("workshop progress")
    write(f"lessons: {describe(config.lessons_root)}")
    next_lesson = None
    for lesson in LESSONS:
        r = results.get(lesson)
        if r is None:
            write(f"  ·  {lesson:<18} not checked in this run")
            continue
        total = r["passed"] + r["failed"]
        if r["failed"]:
            write(f"  ✗  {lesson:<18} {r['passed']}/{total} checks pass")
            next_lesson = next_lesson or (lesson, r["first_failure"])
        else:
            skipped = f" ({r['skipped']} skipped)" if r["skipped"] else ""
            write(f"  ✓  {lesson:<18} {total}/{total} checks pass{skipped}")
    if next_lesson:
        write(f"next: lesson {next_lesson[0]}. First failing check says:")
        write(f"      {next_lesson[1]}")
        write(f"      (run just this lesson: ./workshop.sh check {next_lesson[0][:2]})")
    elif results:
        write("every lesson checked in this run passes.")
