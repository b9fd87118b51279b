"""The checks' pytest plugin: which lessons to check, and failures a learner can read.

    pytest checks/                          every lesson
    pytest checks/test_03_uwsgi.py          one lesson
    pytest checks/ --lessons path/to/copy   someone else's copy of the lessons

When a check fails, the end of every server's log is shown: the answer is
usually there (a traceback, "address already in use", a 502's cause). A
server that cannot start is one clear failure, shown once: the other checks
that needed it say so in one line instead of repeating it.
"""

from __future__ import annotations

import pytest

from . import harness
from .lessons import describe, lessons_root
from .procs import ServerDidNotStart

LOG_LINES = 15   # of each server's log, under a failing check


def pytest_addoption(parser):
    parser.addoption("--lessons", default=None,
                     help="folder with the lessons to check (default: $WORKSHOP_LESSONS, "
                          "else workspace/ if it exists, else lessons/)")


def pytest_configure(config):
    config.lessons_root = lessons_root(config.getoption("--lessons"))
    config.start_failures = {}   # first line of a ServerDidNotStart -> the check that showed it


def pytest_report_header(config):
    return f"checking the lessons in {describe(config.lessons_root)}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        error = call.excinfo.value if call.excinfo else None
        if isinstance(error, ServerDidNotStart):
            # Its message already holds the reason and the end of the log.
            first = str(error).splitlines()[0]
            shown = item.config.start_failures.setdefault(first, item.nodeid)
            report.longrepr = str(error) if shown == item.nodeid else "(the same start-up failure as above)"
        else:
            for server in harness.RUNNING:
                report.sections.append((f"log of {server.name} ({server.log_path})", server.log(LOG_LINES)))
            for name, log in harness.STOPPED:
                report.sections.append((f"log of {name} (stopped during this test)",
                                        "\n".join(log.splitlines()[-LOG_LINES:])))
    if report.when == "teardown":
        harness.STOPPED.clear()
    return report
