"""Lesson 06 in real containers: its steps one container at a time, then the stack through Compose.

Steps 1 and 2, one container each, as the lesson's README runs them by hand:

    engine.build_image(lesson_folder, "Dockerfile-python", "inference-python")
    with engine.container("ws06-x", "inference-python", port=5000, command=[...]) as box:
        box.wait_answer("/readyz", timeout=240)

`docker run -d` publishes the container's port on a free 127.0.0.1 port
(box.url); `docker rm -f` removes the container afterwards, also when a
check fails, and one left by an interrupted run before it starts.

Step 3, the stack:

    with engine.running(lesson_folder) as stack:
        requests.post(stack.url + "/infer", data=photo)

builds both images, starts the stack under its own project name on a free
loopback port (HOST_PORT), waits until Compose says every service is
healthy, and takes it down again (`down -v`), also when a check fails.
A stack left by an interrupted run is taken down first.

Which Compose: workshop/compose.py's `command()`. Which engine CLI for the
single containers and for what Compose cannot tell (image sizes,
leftovers): docker if installed, else podman. `./workshop.sh check-docker`
(tools/podman/with-engine.sh) provides the engine. Build times (step 2's
by hand, then Compose's), image sizes and the upstreams seen go to
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

import requests

from . import compose, dockerfiles
from .lessons import ROOT
from .procs import free_port

METRICS = ROOT / "out" / "06-docker-engine.json"
STEP_METRICS: dict = {}  # what build_image measured; running() writes it with the stack's


def engine_cli() -> str:
    return "docker" if shutil.which("docker") else "podman"


def build_args() -> list[str]:
    """NAME=value build arguments for machines that cannot download everything:
    WORKSHOP_IMAGE_ARGS (tools/podman sets FETCH_WEIGHTS=0 TORCH_INDEX_URL=)."""
    return shlex.split(os.environ.get("WORKSHOP_IMAGE_ARGS", ""))


def weights_env(args: list[str]) -> dict[str, str]:
    """No weights in the image (FETCH_WEIGHTS=0): the app must not try to download them."""
    return {"SEG_WEIGHTS": "random"} if "FETCH_WEIGHTS=0" in args else {}


def base_image(dockerfile: Path) -> str:
    """The image a Dockerfile's final stage starts FROM (Dockerfile-nginx: nginx:1.27)."""
    return dockerfiles.stages(dockerfile)[-1][0][1].split()[0]


def build_image(lesson: Path, dockerfile: str, tag: str) -> None:
    """`docker build -f DOCKERFILE -t TAG` with the compose file's context (../..), timed."""
    started_at = time.monotonic()
    out = subprocess.run([engine_cli(), "build", "-f", str(lesson / dockerfile), "-t", tag,
                          *(f"--build-arg={a}" for a in build_args()), str(lesson.parent.parent)],
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, f"docker build -f {dockerfile} failed ({out.returncode}):\n" \
                                f"{(out.stdout + out.stderr)[-3000:]}"
    STEP_METRICS[f"{tag}_build_by_hand_seconds"] = round(time.monotonic() - started_at, 1)


class Container:
    """One container from `docker run -d`, its port published on 127.0.0.1 only."""

    def __init__(self, name: str, image: str, port: int, command=(), options=()):
        self.name, self.image, self.port = name, image, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.run_args = ["run", "-d", "--name", name, "-p", f"127.0.0.1:{self.port}:{port}",
                         *options, image, *command]

    def cli(self, *args, timeout=60) -> subprocess.CompletedProcess:
        return subprocess.run([engine_cli(), *args], capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        out = self.cli(*self.run_args, timeout=120)
        assert out.returncode == 0, f"docker {' '.join(self.run_args)} failed:\n{out.stderr[-3000:]}"

    def running(self) -> bool:
        return self.cli("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() == "true"

    def exists(self) -> bool:
        return self.name in self.cli("ps", "-a", "--format", "{{.Names}}").stdout.split()

    def logs(self) -> str:
        out = self.cli("logs", "--tail", "30", self.name)
        return f"--- docker logs {self.name} ---\n" + (out.stdout + out.stderr)[-6000:]

    def wait_answer(self, path: str, timeout: float) -> requests.Response:
        """The first 200 from GET path; fails with the container's log if it stops or time runs out."""
        deadline, last = time.monotonic() + timeout, "no answer"
        while time.monotonic() < deadline:
            try:
                r = requests.get(self.url + path, timeout=5)
                if r.status_code == 200:
                    return r
                last = f"{r.status_code}: {r.text[:200]}"
            except requests.RequestException as e:
                last = type(e).__name__
            assert self.running(), f"{self.name} ({self.image}) stopped before {path} answered\n{self.logs()}"
            time.sleep(1)
        raise AssertionError(f"{self.url}{path} did not answer 200 within {timeout:.0f} s "
                             f"(last: {last})\n{self.logs()}")

    def remove(self) -> None:
        self.cli("rm", "-f", self.name, timeout=60)


@contextlib.contextmanager
def container(name: str, image: str, port: int, command=(), options=()):
    """A started Container; removed afterwards (`docker rm -f`), whatever happened."""
    box = Container(name, image, port, command, options)
    box.remove()  # one left by an interrupted run
    try:
        box.start()
        yield box
    finally:
        box.remove()


class EngineStack:
    def __init__(self, lesson: Path):
        self.project = "ws06check"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = [*compose.command(), "-p", self.project, "-f", str(lesson / compose.COMPOSE_FILE)]
        self.build_args = build_args()
        self.env = {**os.environ, "HOST_PORT": str(self.port), **weights_env(self.build_args)}
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
        METRICS.write_text(json.dumps({**STEP_METRICS, **stack.metrics}, indent=2) + "\n")
