"""Where the lessons live (the reference solutions, or a learner's workspace), and their names.

    python -m workshop.lessons name ARG   the lesson ARG means (1, 01, 1_echo, echo), else the list

Standard library only: ./workshop.sh uses it before the setup.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "lessons"
WORKSPACE = ROOT / "workspace"

LESSONS = ["01_echo", "02_segmentation", "03_uwsgi", "04_nginx",
           "05_multi_upstream", "06_docker", "07_metrics", "08_cluster"]


def lessons_root(option: str | None = None) -> Path:
    """--lessons, else $WORKSHOP_LESSONS, else the workspace if it exists, else the reference."""
    chosen = option or os.environ.get("WORKSHOP_LESSONS")
    if chosen:
        return Path(chosen).resolve()
    if (WORKSPACE / LESSONS[0]).is_dir():
        return WORKSPACE
    return REFERENCE


def lesson_name(arg: str) -> str:
    """The lesson a learner means: "3", "03", "03_uwsgi", "3_uwsgi", "uwsgi" or a path to it."""
    arg = arg.strip().rstrip("/").split("/")[-1].lower()
    number, _, rest = arg.partition("_")
    for name in LESSONS:
        if arg in (name, name[3:]) or (number.isdigit() and int(number) == int(name[:2])
                                       and rest in ("", name[3:])):
            return name
    raise KeyError(f"no lesson {arg!r}; the lessons are: {', '.join(LESSONS)}")


def describe(root: Path) -> str:
    if root == REFERENCE:
        return f"{root} (the reference solutions)"
    if root == WORKSPACE:
        return f"{root} (your workspace)"
    return str(root)


def import_module(root: Path, lesson: str, module: str, as_name: str | None = None):
    """Import e.g. 02_segmentation/segmentation.py from a lessons root, in this process.

    as_name: the name to import it under, so that the reference's module and
    a workspace's module of the same file name can live side by side.
    """
    folder = str(Path(root) / lesson)
    if folder not in sys.path:
        sys.path.insert(0, folder)   # its own imports (segmentation imports voc)
    name = as_name or module
    if name in sys.modules and not sys.modules[name].__file__.startswith(folder):
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(folder) / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


if __name__ == "__main__":
    if sys.argv[1:2] == ["name"] and len(sys.argv) == 3:
        try:
            print(lesson_name(sys.argv[2]))
        except KeyError as exc:
            sys.exit(str(exc).strip("'\""))
    else:
        sys.exit(__doc__)
