"""Exercise mode: the learner writes the marked parts, the checks say how far they got.

The reference lessons (lessons/) are the solutions. The parts a learner
writes are marked in them with comment lines, in the comment syntax of each
file (`#` for Python, bash, nginx, Dockerfile, YAML; `;` for uWSGI .ini):

    # EXERCISE 02.1: build the model once per process — hint: call ... at import time
    model = segmentation.load_model()
    # END EXERCISE

Inside a block, an optional `# STUB: <line>` says what stands in for the
solution in the workspace. Without one, a Python block becomes
`raise NotImplementedError("TODO 02.1: ...")` (so a check fails saying which
TODO to do) and any other file just loses the lines (an .ini option removed).
Markers are comment lines only: the reference lessons run as they are, and
the guide (scripts/docs/hooks.py) and nginx renderings strip them.

    python -m workshop.exercises workspace [--lessons DIR]   create workspace/ (refuses if it exists)
    python -m workshop.exercises reset NN [--lessons DIR]    restore one lesson, with its TODOs
    python -m workshop.exercises hint [NN] [--lessons DIR]   the hints of the current lesson

(./workshop.sh workspace | reset NN | hint [NN] run these.)
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
from dataclasses import dataclass
from pathlib import Path

from .lessons import LESSONS, REFERENCE, ROOT, WORKSPACE, describe, lessons_root

MARK = re.compile(r"^(?P<indent>[ \t]*)(?P<c>[#;])[ \t]?EXERCISE[ \t]+(?P<id>\d\d\.\d+):[ \t]*"
                  r"(?P<title>.+?)[ \t]+(?:—|--)[ \t]+hint:[ \t]*(?P<hint>.+?)[ \t]*$")
END = re.compile(r"^[ \t]*[#;][ \t]?END EXERCISE[ \t]*$")
STUB = re.compile(r"^(?P<indent>[ \t]*)[#;][ \t]?STUB:[ \t]?(?P<code>.*?)[ \t]*$")
# Anything that looks like a marker, well-formed or not (what must never leak).
ANY_MARKER = re.compile(r"^[ \t]*[#;][ \t]?(?:EXERCISE[ \t]+\d|END EXERCISE|STUB:)", re.M)
# A TODO left in a workspace file: the comment line a block turned into.
TODO = re.compile(r"^(?P<indent>[ \t]*)(?P<c>[#;])[ \t]?TODO[ \t]+(?P<id>\d\d\.\d+):[ \t]*(?P<title>.+?)"
                  r"(?:[ \t]+(?:—|--)[ \t]+hint:[ \t]*(?P<hint>.+?))?[ \t]*$")
# A TODO id mentioned anywhere (a log line, an exception, an HTTP answer).
TODO_ID = re.compile(r"\bTODO (\d\d\.\d+)\b")

STAMP = ".workshop-workspace"      # marks a folder as a learner's workspace
BACKUPS = ".backup"                # reset moves the old lesson here
PROGRESS = ROOT / "run" / "progress.json"   # the last check results, per lessons root
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.sock")


class MarkerError(ValueError):
    """A reference file's markers are malformed (unclosed or nested block, no hint, ...)."""


@dataclass
class Exercise:
    id: str        # "02.1"
    title: str
    hint: str
    path: str      # relative to the lessons root, e.g. "02_segmentation/inference.py"
    line: int      # 1-based: the EXERCISE line (reference) or the TODO line (workspace)

    @property
    def lesson(self) -> str:
        return self.path.split("/", 1)[0]

    def todo_text(self) -> str:
        return f"TODO {self.id}: {self.title} — hint: {self.hint}"


# ------------------------------------------------------------ one file

def parse(text: str, path: str = "?") -> list[tuple[Exercise, int, int, str | None]]:
    """The blocks in a reference file: (exercise, first line index, END line index, stub)."""
    blocks, current, stub = [], None, None
    for i, line in enumerate(text.splitlines()):
        if m := MARK.match(line):
            if current:
                raise MarkerError(f"{path}:{i + 1}: EXERCISE {m['id']} starts inside EXERCISE {current[0].id}")
            current, stub = (Exercise(m["id"], m["title"], m["hint"], path, i + 1), i), None
        elif END.match(line):
            if not current:
                raise MarkerError(f"{path}:{i + 1}: END EXERCISE without an EXERCISE line")
            blocks.append((current[0], current[1], i, stub))
            current = None
        elif current and (s := STUB.match(line)):
            stub = s["indent"] + s["code"]
        elif ANY_MARKER.match(line):
            raise MarkerError(f"{path}:{i + 1}: malformed marker (expected "
                              f"'EXERCISE NN.K: title — hint: text'): {line.strip()}")
    if current:
        raise MarkerError(f"{path}:{current[1] + 1}: EXERCISE {current[0].id} has no END EXERCISE")
    return blocks


def strip_markers(text: str) -> str:
    """The solution as the learner should see it: marker lines (and stubs) removed."""
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        if MARK.match(line):
            inside = True
        elif END.match(line):
            inside = False
        elif not (inside and STUB.match(line)):
            out.append(line)
    return "".join(out)


def todo_version(text: str, path: str) -> str:
    """The workspace file: every block replaced by a TODO line with its hint (and a stub)."""
    blocks = parse(text, path)
    if not blocks:
        return text
    lines = text.splitlines(keepends=True)
    out, pos = [], 0
    for ex, start, end, stub in blocks:
        out += lines[pos:start]
        m = MARK.match(lines[start])
        indent, c = m["indent"], m["c"]
        out.append(f"{indent}{c} {ex.todo_text()}\n")
        if stub is not None:
            out.append(stub + "\n")
        elif path.endswith(".py"):
            # Fails where the solution would run, naming the TODO (the checks show it).
            out.append(f"{indent}raise NotImplementedError({json.dumps(f'TODO {ex.id}: {ex.title}', ensure_ascii=False)})\n")
        pos = end + 1
    out += lines[pos:]
    return "".join(out)


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def _files(folder: Path):
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


# ------------------------------------------------------------ lessons

def _lesson_files(root: Path, lesson: str | None):
    """(path, text) of every file of every lesson under root (or of one lesson)."""
    for name in ([lesson] if lesson else LESSONS):
        folder = Path(root) / name
        if folder.is_dir():
            for path in _files(folder):
                yield path, _text(path)


def exercises(root: Path = REFERENCE, lesson: str | None = None) -> list[Exercise]:
    """Every marked exercise in the reference lessons (or one lesson), in id order.

    One exercise may span several blocks (the same id again, e.g. a volume
    declared in one place and mounted in two): it is listed once, as its first block.
    """
    found: dict[str, Exercise] = {}
    for path, text in _lesson_files(root, lesson):
        if text and ANY_MARKER.search(text):
            for ex, *_ in parse(text, path.relative_to(root).as_posix()):
                found.setdefault(ex.id, ex)
    return sorted(found.values(), key=lambda ex: [int(p) for p in ex.id.split(".")])


def todos(root: Path, lesson: str | None = None) -> list[Exercise]:
    """The TODO lines left in a workspace (or one of its lessons), in id order."""
    found, seen = [], set()
    for path, text in _lesson_files(root, lesson):
        if not text or "TODO" not in text:
            continue
        for i, line in enumerate(text.splitlines()):
            if (m := TODO.match(line)) and m["id"] not in seen:
                seen.add(m["id"])
                found.append(Exercise(m["id"], m["title"], m["hint"] or "", path.relative_to(root).as_posix(), i + 1))
    return sorted(found, key=lambda ex: [int(p) for p in ex.id.split(".")])


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


def _build_lesson(lesson: str, dest: Path, reference: Path) -> None:
    """Copy one reference lesson to dest (which must not exist), with TODOs for its exercises."""
    shutil.copytree(reference / lesson, dest, ignore=SKIP)
    for path in _files(dest):
        text = _text(path)
        if text and ANY_MARKER.search(text):
            path.write_text(todo_version(text, f"{lesson}/{path.relative_to(dest).as_posix()}"), encoding="utf-8")
    # A generated file must match what the workspace's own template renders
    # (lesson 04's check compares them), not the reference's solution.
    template, values, out = dest / "inference.conf.template", dest / "production.env", dest / "production/inference.conf"
    if template.exists() and values.exists() and out.exists():
        from . import nginx
        out.write_text(nginx.production(template, values))


def create_workspace(dest: Path = WORKSPACE, reference: Path = REFERENCE) -> Path:
    """A learner's copy of the lessons with TODOs. Never touches an existing folder."""
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
            if item.name == "__pycache__":
                continue
            if item.name in LESSONS:
                _build_lesson(item.name, tmp / item.name, reference)
            elif item.is_dir():
                shutil.copytree(item, tmp / item.name, ignore=SKIP)
            else:
                shutil.copy2(item, tmp / item.name)
        (tmp / STAMP).write_text(
            "This folder is a learner's workspace, created by ./workshop.sh workspace from lessons/.\n"
            "The checks use it when it exists. lessons/ holds the solutions.\n")
        tmp.chmod(0o755)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def lesson_name(arg: str) -> str:
    arg = arg.strip().rstrip("/").split("/")[-1]
    for name in LESSONS:
        if arg == name or (arg.isdigit() and int(arg) == int(name[:2])):
            return name
    raise KeyError(f"no lesson {arg!r}: one of {', '.join(n[:2] for n in LESSONS)}")


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


# ------------------------------------------------------------ progress (written by the checks)

def _fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in _files(folder):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def record_progress(root: Path, results: dict) -> None:
    """Keep the results of a check run ({lesson: {passed, failed, hint}}), per lessons root.

    Lessons not checked in this run keep their earlier results. Never fails a run.
    """
    try:
        data = json.loads(PROGRESS.read_text()) if PROGRESS.exists() else {}
        data = {k: v for k, v in data.items() if Path(k).is_dir()}  # forget deleted roots
        entry = data.setdefault(str(Path(root).resolve()), {})
        for lesson, r in results.items():
            folder = Path(root) / lesson
            entry[lesson] = {**r, "time": time.strftime("%Y-%m-%d %H:%M"),
                             "fingerprint": _fingerprint(folder) if folder.is_dir() else ""}
        PROGRESS.parent.mkdir(parents=True, exist_ok=True)
        tmp = PROGRESS.with_name(f".progress-{os.getpid()}.json")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(PROGRESS)
    except (OSError, ValueError):
        pass


def last_progress(root: Path) -> dict:
    try:
        return json.loads(PROGRESS.read_text()).get(str(Path(root).resolve()), {})
    except (OSError, ValueError):
        return {}


def current_lesson(root: Path, progress: dict | None = None) -> str | None:
    """The first lesson whose checks failed last time, else the first with TODOs left."""
    progress = last_progress(root) if progress is None else progress
    for lesson in LESSONS:
        if progress.get(lesson, {}).get("failed"):
            return lesson
    left = todos(root)
    return left[0].lesson if left else None


def hint_for(text: str, root: Path) -> str | None:
    """If text (a check's message, a server log) names a TODO, the full hint for it."""
    m = TODO_ID.search(text or "")
    if not m:
        return None
    for ex in todos(root):
        if ex.id == m.group(1):
            return f"{ex.todo_text()}  ({ex.path}:{ex.line})"
    # The TODO line was deleted but its stub still runs: quote what the stub says.
    return text[m.start():].splitlines()[0].rstrip("\"');")


# ------------------------------------------------------------ command line

def _show(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def _print_hints(root: Path, lesson: str) -> None:
    if Path(root).resolve() == REFERENCE.resolve():
        print(f"Lesson {lesson}: its exercises (lessons/ holds their solutions)")
        for ex in exercises(REFERENCE, lesson):
            print(f"\n  {ex.id}  {_show(REFERENCE / ex.path)}:{ex.line}\n      {ex.title}\n      hint: {ex.hint}")
        return
    left = todos(root, lesson)
    count = f"{len(left)} TODO{'s' if len(left) != 1 else ''} left" if left else "no TODOs left"
    if left and not_started(root, lesson):
        count += " (not started)"
    print(f"Lesson {lesson}: {count}")
    for ex in left:
        print(f"\n  TODO {ex.id}  {_show(Path(root) / ex.path)}:{ex.line}")
        print(f"      {ex.title}")
        if ex.hint:
            print(f"      hint: {ex.hint}")
    last = last_progress(root).get(lesson)
    if last and last.get("failed"):
        print(f"\nYour last check run ({last['time']}): {last['failed']} of "
              f"{last['failed'] + last['passed']} checks failed; the first one says:")
        print(f"      {last['hint']}")
        folder = Path(root) / lesson
        if folder.is_dir() and last.get("fingerprint") not in ("", _fingerprint(folder)):
            print("      (you have changed the lesson since: check it again)")
    elif last:
        print(f"\nYour last check run ({last['time']}): all {last['passed']} checks passed.")
    print(f"\nCheck it:            ./workshop.sh check {lesson[:2]}")
    if Path(root).resolve() != REFERENCE.resolve():
        print(f"Compare with the solution:  diff -r {_show(REFERENCE / lesson)} {_show(Path(root) / lesson)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./workshop.sh", description="Exercise mode.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, help_ in [("workspace", "create workspace/: the lessons with TODOs to write"),
                        ("reset", "restore one lesson of the workspace, with its TODOs"),
                        ("hint", "the hints of the current lesson (or of lesson NN)")]:
        p = sub.add_parser(name, help=help_)
        if name != "workspace":
            p.add_argument("lesson", nargs="?" if name == "hint" else None, help="e.g. 03")
        p.add_argument("--lessons", help="the workspace folder (default: $WORKSHOP_LESSONS, else workspace/)")
    args = parser.parse_args(argv)

    try:
        if args.cmd == "workspace":
            dest = Path(args.lessons or os.environ.get("WORKSHOP_LESSONS") or WORKSPACE)
            dest = create_workspace(dest)
            marked = exercises(REFERENCE)
            print(f"Created {_show(dest)}: the lessons, with {len(marked)} parts for you to write (TODO).")
            print("The checks now test your workspace; lessons/ holds the solutions.\n")
            print("  ./workshop.sh hint        what to do next")
            print("  ./workshop.sh check 01    check one lesson")
            print("  ./workshop.sh reset 01    start one lesson again")
            return 0

        if args.cmd == "reset":
            lesson = lesson_name(args.lesson)
            root = lessons_root(args.lessons) if (args.lessons or os.environ.get("WORKSHOP_LESSONS")) else WORKSPACE
            backup = reset_lesson(root, lesson)
            print(f"{_show(root / lesson)} is back as the workspace created it ({len(todos(root, lesson))} TODOs).")
            if backup:
                print(f"Your previous version is in {_show(backup)}")
            return 0

        root = lessons_root(args.lessons)
        if root.resolve() == REFERENCE.resolve():
            print("There is no workspace: the checks use the reference solutions in lessons/.\n"
                  "Create your workspace, with the parts to write as TODOs:  ./workshop.sh workspace")
            if not args.lesson:
                return 0
            print()
        lesson = lesson_name(args.lesson) if args.lesson else current_lesson(root)
        if lesson is None:
            print(f"Checking {describe(root)}: no TODOs left, and no failing check in your last run. "
                  "Run every check: ./workshop.sh check")
            return 0
        print(f"Checking {describe(root)}\n")
        _print_hints(root, lesson)
        return 0
    except (FileExistsError, FileNotFoundError, KeyError, MarkerError) as exc:
        print(str(exc).strip("'\""), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
