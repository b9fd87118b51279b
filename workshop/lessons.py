"""Where the lessons live: the reference solutions, or a learner's workspace."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "lessons"
WORKSPACE = ROOT / "workspace"

LESSONS = ["01_echo", "02_segmentation", "03_uwsgi", "04_nginx",
           "05_multi_upstream", "06_docker"]


def lessons_root(option: str | None = None) -> Path:
    """--lessons, else $WORKSHOP_LESSONS, else the workspace if it exists, else the reference."""
    chosen = option or os.environ.get("WORKSHOP_LESSONS")
    if chosen:
        return Path(chosen).resolve()
    if (WORKSPACE / LESSONS[0]).is_dir():
        return WORKSPACE
    return REFERENCE


def describe(root: Path) -> str:
    if root == REFERENCE:
        return f"{root} (the reference solutions)"
    if root == WORKSPACE:
        return f"{root} (your workspace)"
    return str(root)


def import_module(root: Path, lesson: str, module: str):
    """Import e.g. 02_segmentation/segmentation.py from a lessons root, in this process."""
    folder = str(root / lesson)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = f"{module}"
    if name in sys.modules and not sys.modules[name].__file__.startswith(folder):
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(folder) / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
