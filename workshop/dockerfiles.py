"""Reading lesson 06's Dockerfiles: their stages, and what the final image holds where.

The parsing itself is dockerfile-parse's (a maintained PyPI package):
instructions, continuation lines, comments, both forms of ENV. On top of
it, what the checks need and no parser gives:

- the build stages, each from its FROM on;
- the files each COPY takes from the build context (not `--from` a stage);
- `Image`: where the final stage puts those files, its WORKDIR, ENV, USER
  and HEALTHCHECK, so that the host run (workshop/hostrun.py) can lay the
  app out on this machine exactly as the image has it.

Instruction arguments are kept as written (no `$VAR` substitution), so that
the checks see what the file says; the final stage's ENV is resolved as the
builder resolves it.
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import os
import shlex
import shutil
from pathlib import Path

from dockerfile_parse import DockerfileParser

Instruction = tuple[str, str]   # ("COPY", "a b /dest/"): the word upper-case, its arguments


def _parser(dockerfile: Path) -> DockerfileParser:
    # fileobj: the parser only takes a path that ends in "Dockerfile"
    return DockerfileParser(fileobj=io.BytesIO(dockerfile.read_bytes()))


def instructions(dockerfile: Path) -> list[Instruction]:
    """A Dockerfile as (INSTRUCTION, arguments) pairs: comments dropped, continued lines joined."""
    return [(item["instruction"], item["value"]) for item in _parser(dockerfile).structure
            if item["instruction"] != "COMMENT"]


def stages(dockerfile: Path) -> list[list[Instruction]]:
    """The build stages, each from its FROM on."""
    found: list[list[Instruction]] = []
    for instr in instructions(dockerfile):
        if instr[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instr)
    return found


def copy_lines(stage: list[Instruction]) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY/ADD from the build context (not --from another stage)."""
    lines = []
    for word, args in stage:
        if word not in ("COPY", "ADD"):
            continue
        words = args.split()
        options = list(itertools.takewhile(lambda w: w.startswith("--"), words))  # come first
        if any(option.startswith("--from") for option in options):
            continue
        rest = args.split(None, len(options))[-1]
        # the exec form, COPY ["a", "b/"], or the shell form, COPY a b/
        paths = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        lines.append((paths[:-1], paths[-1]))
    return lines


class Image:
    """What the final stage of a Dockerfile puts where: WORKDIR, ENV, COPY, USER, HEALTHCHECK."""

    def __init__(self, dockerfile: Path, context: Path):
        self.dockerfile, self.context = dockerfile, context
        self.stage = stages(dockerfile)[-1]
        self.env: dict[str, str] = dict(_parser(dockerfile).envs)   # the final stage's
        self.workdir = "/"
        self.files: dict[str, Path] = {}    # path in the image -> file in the context
        self.healthcheck: list[str] = []
        self.user = ""
        for word, args in self.stage:
            if word == "WORKDIR":
                self.workdir = os.path.normpath(os.path.join(self.workdir, args))
            elif word == "USER":
                self.user = args
            elif word == "HEALTHCHECK":
                self.healthcheck = json.loads(args[args.index("CMD") + 3:].strip())
            elif word in ("COPY", "ADD"):
                for sources, dest in copy_lines([(word, args)]):
                    self._add(sources, dest)

    def _add(self, sources: list[str], dest: str) -> None:
        target = os.path.normpath(os.path.join(self.workdir, dest))
        for source in sources:
            matches = sorted(glob.glob(str(self.context / source))) or [str(self.context / source)]
            for match in map(Path, matches):
                if match.is_dir():  # a folder: its contents go into dest, as Docker copies them
                    for inner in sorted(p for p in match.rglob("*") if p.is_file()):
                        self.files[os.path.join(target, inner.relative_to(match).as_posix())] = inner
                    continue
                into_dir = dest.endswith("/") or len(sources) > 1
                path = os.path.join(target, match.name) if into_dir else target
                self.files[path] = match

    def lay_out(self, root: Path) -> None:
        """Put the image's files under root, where the image has them."""
        for path, source in self.files.items():
            assert source.is_file(), f"{self.dockerfile.name} copies {source}, which does not exist"
            dest = root / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, dest)
