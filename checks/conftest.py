"""Fixtures for every check. The machinery lives in workshop/: plugin.py (the
--lessons option, server logs on failure) and progress.py (the progress table)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
