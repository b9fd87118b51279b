"""Which files of a build context `.dockerignore` keeps away from the builder.

Docker's rules (moby/patternmatcher's `MatchesOrParentMatches`):

- a pattern matches a path, or any of the folders it is in (so `*` leaves
  out `lessons/x.py` through `lessons`);
- `*` and `?` stay within one path element, `**` spans any number of them;
- patterns are cleaned like paths (`!lessons/06_docker/` = `lessons/06_docker`);
- `!` lets a path back in; the last pattern that matches wins.

A small matcher of our own, because the maintained PyPI package that has
one, the Docker SDK (`docker.utils.build`), copies moby's older `Matches`,
which moby deprecated as buggy: it compares a pattern only with the folder
of the pattern's own depth, so there `**/__pycache__` does not leave out
`lessons/06_docker/__pycache__/x.pyc`, while Docker does. (Character
classes, `[a-z]`, are not supported: no lesson needs them.)
checks/test_06_files.py tests the matcher on Docker's rules.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# Folders that are never worth walking to size a context (each is large, and left out).
NOT_WALKED = (".git", ".venv", "node_modules")


def read(context: Path) -> list[str]:
    """The patterns of <context>/.dockerignore, in order: comments and blank lines dropped."""
    lines = (context / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _regex(pattern: str) -> re.Pattern:
    pattern = os.path.normpath(pattern).lstrip("/")
    return re.compile(re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
                      .replace(r"\*", "[^/]*").replace(r"\?", "[^/]"))


def excludes(patterns: list[str], path: str) -> bool:
    """Whether the builder does not get `path` (relative to the context, with /)."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]  # its folders, then it
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _regex(pattern.lstrip("!"))
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def sent_size(context: Path, patterns: list[str]) -> int:
    """How many bytes of files the builder would get from the context."""
    size = 0
    for folder, dirs, files in os.walk(context):
        rel = Path(folder).relative_to(context).as_posix()
        dirs[:] = [d for d in dirs if d not in NOT_WALKED]
        for f in files:
            path = f if rel == "." else f"{rel}/{f}"
            if not excludes(patterns, path):
                size += (Path(folder) / f).stat().st_size
    return size
