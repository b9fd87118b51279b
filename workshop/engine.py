"""Lesson 06's stack in real containers: build, up, exec, down, through Compose and an engine.

    with engine.running(lesson_folder) as stack:
        requests.post(stack.url + "/infer", data=photo)

builds both images, starts the stack under its own project name on a free
loopback port (HOST_PORT), waits until Compose says every service is
healthy, and takes it down again (`down -v`), also when a check fails.
A stack left by an interrupted run is taken down first.

Which Compose: workshop/compose.py's `command()`. Which engine CLI for
what Compose cannot tell (image sizes, leftovers): docker if installed,
else podman. `./workshop.sh check-docker` (tools/podman/with-engine.sh)
provides the engine. Build times, image sizes and the upstreams seen go to
out/06-docker-engine.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from . import compose
from .lessons import ROOT
from .procs import free_port

METRICS = ROOT / "out" / "06-docker-engine.json"


def engine_cli() -> str:
    return "docker" if shutil.which("docker") else "podman"


class EngineStack:
    def __init__(self, lesson: Path):
        self.project = "ws06check"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = [*compose.command(), "-p", self.project, "-f", str(lesson / compose.COMPOSE_FILE)]
        # WORKSHOP_IMAGE_ARGS: build arguments for machines that cannot download
        # everything (tools/podman sets FETCH_WEIGHTS=0 TORCH_INDEX_URL=).
        self.build_args = shlex.split(os.environ.get("WORKSHOP_IMAGE_ARGS", ""))
        self.env = {**os.environ, "HOST_PORT": str(self.port)}
        if "FETCH_WEIGHTS=0" in self.build_args:
            self.env["SEG_WEIGHTS"] = "random"  # no weights in the image: don't try to download
        self.metrics: dict = {"compose": " ".join(compose.command()), "build_args": self.build_args}

    def run(self, *args, check=True, timeout=600) -> subprocess.CompletedProcess:
        out = subprocess.run([*self.base, *args], capture_output=True, text=True,
                             env=self.env, timeout=timeout)
        if check:
            assert out.returncode == 0, \
                f"{' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}\n{self.logs()}"
        return out

    def exec(self, service: str, *cmd, user: str | None = None) -> subprocess.CompletedProcess:
        return self.run("exec", "-T", *(["-u", user] if user else []), service, *cmd, check=False, timeout=60)

    def logs(self) -> str:
        out = subprocess.run([*self.base, "logs", "--no-color", "--tail", "25"],
                             capture_output=True, text=True, env=self.env, timeout=60)
        return "--- docker compose logs ---\n" + out.stdout[-6000:]

    def up(self):
        started_at = time.monotonic()
        self.run("build", *(f"--build-arg={a}" for a in self.build_args), timeout=1800)
        self.metrics["build_seconds"] = round(time.monotonic() - started_at, 1)
        started_at = time.monotonic()
        self.run("up", "-d", "--wait", "--wait-timeout", "240", timeout=300)
        self.metrics["up_seconds"] = round(time.monotonic() - started_at, 1)
        for image in ("inference-python", "inference-nginx"):
            out = subprocess.run([engine_cli(), "image", "inspect", "--format", "{{.Size}}", image],
                                 capture_output=True, text=True, env=self.env)
            if out.returncode == 0:
                self.metrics[f"{image}_MB"] = round(int(out.stdout.strip()) / 1e6)

    def leftovers(self) -> dict[str, list[str]]:
        """What the engine still has of this project: Compose's labels, asked of the engine itself."""
        label = f"label=com.docker.compose.project={self.project}"
        found = {}
        for kind in ("container", "volume", "network"):
            args = [engine_cli(), kind, "ls", "-q", "--filter", label]
            if kind == "container":
                args.insert(3, "-a")
            out = subprocess.run(args, capture_output=True, text=True, env=self.env)
            found[kind] = out.stdout.split()
        return found

    def down(self, measure: bool = False):
        started_at = time.monotonic()
        self.run("down", "-v", "--remove-orphans", "--timeout", "20", check=False, timeout=120)
        if measure:
            self.metrics["down_seconds"] = round(time.monotonic() - started_at, 1)


@contextlib.contextmanager
def running(lesson: Path):
    """A built and started EngineStack; down -v afterwards, and its metrics written."""
    stack = EngineStack(lesson)
    stack.down()  # a stack left by an interrupted run
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        METRICS.parent.mkdir(exist_ok=True)
        METRICS.write_text(json.dumps(stack.metrics, indent=2) + "\n")
