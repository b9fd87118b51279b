"""The exercise markers: their one definition, for every tool that reads them.

The reference lessons (lessons/) are the solutions. The parts a learner
writes are marked in them with comment lines, in the comment syntax of each
file (`#` for Python, bash, nginx, Dockerfile, YAML; `;` for uWSGI .ini):

    # EXERCISE 02.1: build the model once per process
    model = segmentation.load_model()
    # END EXERCISE

Inside a block, an optional `# STUB: <line>` says what stands in for the
solution in the workspace. Without one, a Python block becomes
`raise NotImplementedError("TODO 02.1: ...")` (so a check fails saying which
TODO to do) and any other file just loses the lines (an .ini option removed).
The hints live in one file, lessons/hints.toml, never next to the answer.

Markers are comment lines only: the reference lessons run as they are. The
guide (scripts/docs/hooks.py), the nginx renderings (workshop/nginx.py) and
the workspace tool (workshop/exercises.py) all read them through this module,
which imports nothing of the workshop's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

MARK = re.compile(r"^(?P<indent>[ \t]*)(?P<c>[#;])[ \t]?EXERCISE[ \t]+(?P<id>\d\d\.\d+):[ \t]*"
                  r"(?P<title>[^—]+?)[ \t]*$")
END = re.compile(r"^[ \t]*[#;][ \t]?END EXERCISE[ \t]*$")
STUB = re.compile(r"^(?P<indent>[ \t]*)[#;][ \t]?STUB:[ \t]?(?P<code>.*?)[ \t]*$")
# Anything that looks like a marker, well-formed or not (what must never leak).
ANY_MARKER = re.compile(r"^[ \t]*[#;][ \t]?(?:EXERCISE[ \t]+\d|END EXERCISE|STUB:)", re.M)
# A TODO left in a workspace file: the comment line a block turned into.
TODO = re.compile(r"^(?P<indent>[ \t]*)(?P<c>[#;])[ \t]?TODO[ \t]+(?P<id>\d\d\.\d+):[ \t]*"
                  r"(?P<title>.+?)(?:[ \t]+\(hints?:.*\))?[ \t]*$")
# A TODO id mentioned anywhere (a log line, an exception, an HTTP answer).
TODO_ID = re.compile(r"\bTODO (\d\d\.\d+)\b")


class MarkerError(ValueError):
    """A reference file's markers are malformed (unclosed or nested block, no title, ...)."""


@dataclass
class Exercise:
    id: str        # "02.1"
    title: str
    path: str      # relative to the lessons root, e.g. "02_segmentation/inference.py"
    line: int      # 1-based: the EXERCISE line (reference) or the TODO line (workspace)
    hints: list[str] = field(default_factory=list)   # from lessons/hints.toml, nudge first

    @property
    def lesson(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def hint(self) -> str:
        """The first hint: a question or a pointer, never the answer."""
        return self.hints[0] if self.hints else ""

    def todo_line(self) -> str:
        return f"TODO {self.id}: {self.title} (hints: ./workshop.sh hint {self.id})"


def parse(text: str, path: str = "?") -> list[tuple[Exercise, int, int, str | None]]:
    """The blocks in a reference file: (exercise, first line index, END line index, stub)."""
    blocks, current, stub = [], None, None
    for i, line in enumerate(text.splitlines()):
        if m := MARK.match(line):
            if current:
                raise MarkerError(f"{path}:{i + 1}: EXERCISE {m['id']} starts inside EXERCISE {current[0].id}")
            current, stub = (Exercise(m["id"], m["title"], path, i + 1), i), None
        elif END.match(line):
            if not current:
                raise MarkerError(f"{path}:{i + 1}: END EXERCISE without an EXERCISE line")
            blocks.append((current[0], current[1], i, stub))
            current = None
        elif current and (s := STUB.match(line)):
            stub = s["indent"] + s["code"]
        elif ANY_MARKER.match(line):
            raise MarkerError(f"{path}:{i + 1}: malformed marker (expected 'EXERCISE NN.K: title', "
                              f"hints go to lessons/hints.toml): {line.strip()}")
    if current:
        raise MarkerError(f"{path}:{current[1] + 1}: EXERCISE {current[0].id} has no END EXERCISE")
    return blocks


def strip_markers(text: str) -> str:
    """The solution as the learner should see it: marker lines (and stubs) removed.

    A workspace's TODO lines go too: a file rendered from a workspace template
    (nginx's production config) is generated, not a place to work in.
    """
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        if MARK.match(line):
            inside = True
        elif END.match(line):
            inside = False
        elif not (inside and STUB.match(line)) and not TODO.match(line):
            out.append(line)
    return "".join(out)


def todo_version(text: str, path: str, unsolved: set[str] | None = None) -> str:
    """The workspace file: each block replaced by a TODO line (and its stub).

    unsolved: only these exercise ids become TODOs, the others keep their
    solution (how the checks prove that each exercise alone fails).
    """
    blocks = parse(text, path)
    if not blocks:
        return text
    lines = text.splitlines(keepends=True)
    out, pos = [], 0
    for ex, start, end, stub in blocks:
        out += lines[pos:start]
        if unsolved is not None and ex.id not in unsolved:
            out += [line for line in lines[start + 1:end] if not STUB.match(line)]
            pos = end + 1
            continue
        m = MARK.match(lines[start])
        indent, c = m["indent"], m["c"]
        out.append(f"{indent}{c} {ex.todo_line()}\n")
        if stub is not None:
            out.append(stub + "\n")
        elif path.endswith(".py"):
            # Fails where the solution would run, naming the TODO (the checks show it).
            message = json.dumps(f"TODO {ex.id}: {ex.title}", ensure_ascii=False)
            out.append(f"{indent}raise NotImplementedError({message})\n")
        pos = end + 1
    out += lines[pos:]
    return "".join(out)
