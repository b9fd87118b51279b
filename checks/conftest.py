"""Fixtures for every check. The machinery lives in workshop/: plugin.py (the
--lessons option, server logs on failure) and progress.py (the progress table)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workshop import page
from workshop.lessons import REFERENCE, import_module

pytest_plugins = ["workshop.plugin", "workshop.progress"]


@pytest.fixture(scope="session")
def lessons(request) -> Path:
    """The lessons under test: the reference solutions, or a learner's workspace."""
    return request.config.lessons_root


@pytest.fixture(scope="session")
def reference():
    """The reference solution's model code, run in this process: the expected answers.

    Always lessons/, never the lessons under test: a learner's pipeline must
    not be the judge of its own masks. Returns (segmentation, model).
    """
    import torch

    torch.set_num_threads(1)  # as the servers run it: same arithmetic, same mask
    segmentation = import_module(REFERENCE, "02_segmentation", "segmentation", as_name="reference_segmentation")
    return segmentation, segmentation.load_model("random")


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium (the guide's and the page's browser checks); under CI it must be there."""
    path = page.find_chromium()
    if path is None:
        reason = "chromium is not installed (Debian: apt-get install chromium); the browser checks need it"
        if os.environ.get("CI"):
            pytest.fail(reason + ", and CI must have it: scripts/setup.sh installs it")
        pytest.skip(reason)
    return path
