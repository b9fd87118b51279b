"""Exercise mode: the learner writes the marked parts, the checks say how far they got.

The reference lessons (lessons/) are the solutions; workshop/markers.py says
how the parts to write are marked, lessons/hints.toml holds their hints.

    python -m workshop.exercises workspace [--lessons DIR]   create workspace/ (refuses if it exists)
    python -m workshop.exercises reset NN [--lessons DIR]    restore one lesson, with its TODOs
    python -m workshop.exercises hint [NN|NN.K] [--all]      the next hint of the exercise at hand

(./workshop.sh workspace | reset NN | hint [NN] run these.) Standard library
only: it runs before the setup, with any python3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import nginx
from .lessons import LESSONS, REFERENCE, ROOT, WORKSPACE, describe, lesson_name, lessons_root
from .markers import ANY_MARKER, TODO, TODO_ID, Exercise, MarkerError, parse, strip_markers, todo_version  # noqa: F401

try:
    import tomllib
except ImportError:  # Python 3.10: pip carries the same parser
    from pip._vendor import tomli as tomllib

HINTS = REFERENCE / "hints.toml"
STAMP = ".workshop-workspace"      # marks a folder as a learner's workspace
BACKUPS = ".backup"                # reset moves the old lesson here
STATE = ROOT / "run"               # git-ignored: what the learner's runs leave
PROGRESS = STATE / "progress.json"  # the last check results, per lessons root
HINTS_SHOWN = STATE / "hints-shown.json"   # how many hints of each exercise were shown
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.sock", HINTS.name)


def load_hints(path: Path = HINTS) -> dict[str, list[str]]:
    """{exercise id: [hint, ...]}, from a nudge to the answer."""
    with open(path, "rb") as f:
        return {ex_id: table["hints"] for ex_id, table in tomllib.load(f).items()}


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def _files(folder: Path):
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def _lesson_files(root: Path, lesson: str | None):
    """(path, text) of every file of every lesson under root (or of one lesson)."""
    for name in ([lesson] if lesson else LESSONS):
        folder = Path(root) / name
        if folder.is_dir():
            for path in _files(folder):
                yield path, _text(path)


def _by_id(found) -> list[Exercise]:
    return sorted(found, key=lambda ex: [int(p) for p in ex.id.split(".")])


def exercises(root: Path = REFERENCE, lesson: str | None = None) -> list[Exercise]:
    """Every marked exercise in the reference lessons (or one lesson), in id order, with its hints.

    One exercise may span several blocks (the same id again, e.g. a volume
    declared in one place and mounted in two): it is listed once, as its first block.
    """
    hints = load_hints()
    found: dict[str, Exercise] = {}
    for path, text in _lesson_files(root, lesson):
        if text and ANY_MARKER.search(text):
            for ex, *_ in parse(text, path.relative_to(root).as_posix()):
                ex.hints = hints.get(ex.id, [])
                found.setdefault(ex.id, ex)
    return _by_id(found.values())


def todos(root: Path, lesson: str | None = None) -> list[Exercise]:
    """The TODO lines left in a workspace (or one of its lessons), in id order."""
    hints = load_hints()
    found: dict[str, Exercise] = {}
    for path, text in _lesson_files(root, lesson):
        if not text or "TODO" not in text or path.parent.name == "production":  # generated files
            continue
        for i, line in enumerate(text.splitlines()):
            if (m := TODO.match(line)) and m["id"] not in found:
                found[m["id"]] = Exercise(m["id"], m["title"], path.relative_to(root).as_posix(),
                                          i + 1, hints.get(m["id"], []))
    return _by_id(found.values())


def not_started(root: Path, lesson: str, reference: Path = REFERENCE) -> bool:
    """Every marked file of the lesson is still exactly as the workspace created it."""
    marked = False
    for path in _files(reference / lesson):
        text = _text(path)
        if not text or not ANY_MARKER.search(text):
            continue
        marked = True
        rel = path.relative_to(reference).as_posix()
        if _text(Path(root) / rel) != todo_version(text, rel):
            return False
    return marked


def is_workspace(root: Path) -> bool:
    root = Path(root)
    return root.resolve() != REFERENCE.resolve() and ((root / STAMP).exists() or bool(todos(root)))


# ------------------------------------------------------------ making a workspace

def _build_lesson(lesson: str, dest: Path, reference: Path, unsolved: set[str] | None = None) -> None:
    """Copy one reference lesson to dest (which must not exist), with TODOs for its exercises."""
    shutil.copytree(reference / lesson, dest, ignore=SKIP)
    for path in _files(dest):
        text = _text(path)
        if text and ANY_MARKER.search(text):
            rel = f"{lesson}/{path.relative_to(dest).as_posix()}"
            path.write_text(todo_version(text, rel, unsolved), encoding="utf-8")
        elif text and path.suffix == ".md":
            # The README's commands run the learner's copy, not the solution.
            path.write_text(re.sub(rf"\blessons/(?=({'|'.join(LESSONS)})\b)", f"{dest.parent.name}/", text))
    # Generated files follow the workspace's own templates (lesson 04's check compares them).
    for path, text in nginx.production_files(dest).items():
        path.write_text(text)


def create_workspace(dest: Path = WORKSPACE, reference: Path = REFERENCE,
                     unsolved: set[str] | None = None) -> Path:
    """A learner's copy of the lessons with TODOs. Never touches an existing folder.

    unsolved: only these exercises become TODOs (the rest keep their solution).
    """
    dest = Path(dest).resolve()
    if dest == Path(reference).resolve():
        raise FileExistsError(f"{dest} is the reference lessons, not a place for a workspace")
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()  # an empty folder holds no work
    if dest.exists():
        raise FileExistsError(
            f"{_show(dest)} already exists: nothing changed, your work is safe.\n"
            f"To start one lesson again (your version is kept in {_show(dest / BACKUPS)}/): ./workshop.sh reset NN")
    # Built next to its final place, then renamed: never half a workspace.
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        for item in sorted(Path(reference).iterdir()):
            if item.name in ("__pycache__", HINTS.name):
                continue
            if item.name in LESSONS:
                _build_lesson(item.name, tmp / item.name, reference, unsolved)
            elif item.is_dir():
                shutil.copytree(item, tmp / item.name, ignore=SKIP)
            else:
                shutil.copy2(item, tmp / item.name)
        (tmp / STAMP).write_text(
            "This folder is a learner's workspace, created by ./workshop.sh workspace.\n"
            "The checks use it when it exists.\n")
        tmp.chmod(0o755)
        tmp.rename(dest)
        # The README rewrite above named the temporary folder: name the real one.
        for readme in dest.glob("*/README.md"):
            readme.write_text(readme.read_text().replace(f"{tmp.name}/", f"{dest.name}/"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def reset_lesson(root: Path, lesson: str, reference: Path = REFERENCE) -> Path | None:
    """Put one lesson back as the workspace created it; return where the old one went."""
    root = Path(root).resolve()
    if root == Path(reference).resolve() or not root.is_dir():
        raise FileNotFoundError(f"no workspace at {_show(root)}: create one with ./workshop.sh workspace")
    if not (Path(reference) / lesson).is_dir():
        raise FileNotFoundError(f"the reference has no {lesson} yet")
    target, backup = root / lesson, None
    if target.exists():
        backup = root / BACKUPS / f"{lesson}-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while backup.exists():
            backup, n = backup.with_name(f"{backup.name.split('~')[0]}~{n}"), n + 1
        backup.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(target), str(backup))
    _build_lesson(lesson, target, reference)
    return backup


# ------------------------------------------------------------ what the runs leave (run/)

def _fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in _files(folder):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}-{os.getpid()}.json")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only checkout still runs its checks


def record_progress(root: Path, results: dict) -> None:
    """Keep the results of a check run ({lesson: {passed, failed, hint}}), per lessons root.

    Lessons not checked in this run keep their earlier results. Never fails a run.
    """
    data = {k: v for k, v in _load(PROGRESS).items() if Path(k).is_dir()}  # forget deleted roots
    entry = data.setdefault(str(Path(root).resolve()), {})
    for lesson, r in results.items():
        folder = Path(root) / lesson
        entry[lesson] = {**r, "time": time.strftime("%Y-%m-%d %H:%M"),
                         "fingerprint": _fingerprint(folder) if folder.is_dir() else ""}
    _save(PROGRESS, data)


def last_progress(root: Path) -> dict:
    return _load(PROGRESS).get(str(Path(root).resolve()), {})


def current_lesson(root: Path, progress: dict | None = None) -> str | None:
    """The first lesson whose checks failed last time, else the first with TODOs left."""
    progress = last_progress(root) if progress is None else progress
    for lesson in LESSONS:
        if progress.get(lesson, {}).get("failed"):
            return lesson
    left = todos(root)
    return left[0].lesson if left else None


def hint_for(text: str, root: Path) -> str | None:
    """If text (a check's message, a server log) names a TODO, that TODO's line and place."""
    m = TODO_ID.search(text or "")
    if not m:
        return None
    for ex in todos(root):
        if ex.id == m.group(1):
            return f"{ex.todo_line()}  ({ex.path}:{ex.line})"
    # The TODO line was deleted but its stub still runs: quote what the stub says.
    return text[m.start():].splitlines()[0].rstrip("\"');")


# ------------------------------------------------------------ command line

def _show(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _wrap(text: str, indent: str = "    ", width: int = 88) -> str:
    import textwrap
    return textwrap.fill(text, width=width, initial_indent=indent, subsequent_indent=indent)


def _next_hint(root: Path, ex: Exercise, everything: bool) -> None:
    """Print the next hint of ex (all of them with everything), and remember how far we are."""
    state = {k: v for k, v in _load(HINTS_SHOWN).items() if Path(k).is_dir()}  # forget deleted roots
    shown = state.setdefault(str(Path(root).resolve()), {})
    total = len(ex.hints)
    if not total:
        print(f"\nTODO {ex.id} has no hints.")
        return
    upto = total if everything else min(shown.get(ex.id, 0) + 1, total)
    for level in range(1 if everything else upto, upto + 1):
        last = " (the answer)" if level == total else ""
        print(f"\nHint {level} of {total} for TODO {ex.id}, {ex.title}{last}:")
        print(_wrap(ex.hints[level - 1]))
    shown[ex.id] = max(shown.get(ex.id, 0), upto)
    _save(HINTS_SHOWN, state)
    if upto < total:
        print(f"\nStill stuck? Ask again for hint {upto + 1}:  ./workshop.sh hint {ex.id}")


def _print_lesson(root: Path, lesson: str, exercise: str | None, everything: bool) -> None:
    left = todos(root, lesson)
    count = f"{_plural(len(left), 'TODO')} left" if left else "no TODO lines left"
    if left and not_started(root, lesson):
        count += " (not started)"
    print(f"Lesson {lesson}: {count}")
    for ex in left:
        print(f"  TODO {ex.id}  {_show(Path(root) / ex.path)}:{ex.line}  {ex.title}")
    last = last_progress(root).get(lesson)
    named = None
    if last and last.get("failed"):
        print(f"\nYour last check run ({last['time']}): {last['failed']} of "
              f"{last['failed'] + last['passed']} checks failed; the first one says:")
        print(f"      {last['hint']}")
        folder = Path(root) / lesson
        if folder.is_dir() and last.get("fingerprint") not in ("", _fingerprint(folder)):
            print("      (you have changed the lesson since: check it again)")
        named = (TODO_ID.search(last.get("hint") or "") or [None, None])[1]
    elif last:
        print(f"\nYour last check run ({last['time']}): all {last['passed']} checks passed.")
    pool = {ex.id: ex for ex in exercises(REFERENCE, lesson)}
    chosen = pool.get(exercise or "") or pool.get(named or "") or (pool.get(left[0].id) if left else None)
    if chosen:
        _next_hint(root, chosen, everything)
    print(f"\nCheck it:  ./workshop.sh check {lesson[:2]}")


def _print_reference(lesson: str) -> None:
    print(f"Lesson {lesson}'s exercises, with their first hints:")
    for ex in exercises(REFERENCE, lesson):
        print(f"\n  {ex.id}  {ex.title}")
        print(_wrap(ex.hint, "      "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./workshop.sh", description="Exercise mode.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, help_ in [("workspace", "create workspace/: the lessons with TODOs to write"),
                        ("reset", "restore one lesson of the workspace, with its TODOs"),
                        ("hint", "the next hint of the exercise at hand (or of lesson NN, or exercise NN.K)")]:
        p = sub.add_parser(name, help=help_)
        if name == "reset":
            p.add_argument("lesson", help="e.g. 03")
        if name == "hint":
            p.add_argument("lesson", nargs="?", help="e.g. 03, or 03.2 for one exercise")
            p.add_argument("--all", action="store_true", help="every hint at once, the answer too")
        p.add_argument("--lessons", help="the workspace folder (default: $WORKSHOP_LESSONS, else workspace/)")
    args = parser.parse_args(argv)

    try:
        if args.cmd == "workspace":
            dest = Path(args.lessons or os.environ.get("WORKSHOP_LESSONS") or WORKSPACE)
            dest = create_workspace(dest)
            marked = exercises(REFERENCE)
            print(f"Created {_show(dest)}: the lessons, with {len(marked)} parts for you to write (TODO).")
            print("The checks now test your workspace.\n")
            print("  ./workshop.sh hint        what to do next (ask again for the next hint)")
            print("  ./workshop.sh check 01    check one lesson")
            print("  ./workshop.sh reset 01    start one lesson again")
            return 0

        if args.cmd == "reset":
            lesson = lesson_name(args.lesson)
            root = lessons_root(args.lessons) if (args.lessons or os.environ.get("WORKSHOP_LESSONS")) else WORKSPACE
            backup = reset_lesson(root, lesson)
            print(f"{_show(root / lesson)} is back as the workspace created it "
                  f"({_plural(len(todos(root, lesson)), 'TODO')}).")
            if backup:
                print(f"Your previous version is in {_show(backup)}")
            return 0

        exercise = args.lesson if args.lesson and re.fullmatch(r"\d\d?\.\d+", args.lesson) else None
        if exercise:
            exercise = f"{int(exercise.split('.')[0]):02d}.{exercise.split('.')[1]}"
        lesson = lesson_name(exercise.split(".")[0] if exercise else args.lesson) if args.lesson else None
        root = lessons_root(args.lessons)
        if root.resolve() == REFERENCE.resolve():
            print("There is no workspace: the checks use the reference solutions.\n"
                  "Create your workspace, with the parts to write as TODOs:  ./workshop.sh workspace")
            if lesson:
                print()
                _print_reference(lesson)
            return 0
        lesson = lesson or current_lesson(root)
        if lesson is None:
            print(f"Checking {describe(root)}: no TODOs left, and no failing check in your last run. "
                  "Run every check: ./workshop.sh check")
            return 0
        print(f"Checking {describe(root)}\n")
        _print_lesson(root, lesson, exercise, args.all)
        return 0
    except (FileExistsError, FileNotFoundError, KeyError, MarkerError) as exc:
        print(str(exc).strip("'\""), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
