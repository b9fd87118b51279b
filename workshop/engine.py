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
A stack left by an interrupted run is taken down first. Who can reach what:

    stack.address("uwsgi-tcp", "upstreams")          # its IP on one of the project's networks
    stack.prometheus_url                             # the metrics profile's Prometheus (always on here)
    stack.stranger("default", "print(1)")            # python -c in a throwaway container that is not nginx

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
import re
import shlex
import shutil
import subprocess
import tempfile
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
        self.port, self.prometheus_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prometheus_url = f"http://127.0.0.1:{self.prometheus_port}"
        # With the metrics profile: Prometheus and what it scrapes, for every command
        self.base = [*compose.command(), "-p", self.project, "-f", str(lesson / compose.COMPOSE_FILE),
                     "--profile", compose.METRICS_PROFILE]
        self.build_args = build_args()
        # SEG_DEBUG_DELAY=1: ?delay=S holds a request, so the graceful-stop check has one in flight for sure
        self.env = {**os.environ, "HOST_PORT": str(self.port), "PROMETHEUS_PORT": str(self.prometheus_port),
                    "SEG_DEBUG_DELAY": "1", **weights_env(self.build_args)}
        self.metrics: dict = {"compose": " ".join(compose.command()), "build_args": self.build_args}

    def run(self, *args, check=True, timeout=600) -> subprocess.CompletedProcess:
        out = subprocess.run([*self.base, *args], capture_output=True, text=True,
                             env=self.env, timeout=timeout)
        if check:
            assert out.returncode == 0, \
                f"{' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}\n{self.logs()}"
        return out

    def exec(self, service: str, *cmd, user: str | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        options = [*(["-u", user] if user else []), *(f"--env={k}={v}" for k, v in (env or {}).items())]
        return self.run("exec", "-T", *options, service, *cmd, check=False, timeout=60)

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

    def container_id(self, service: str) -> str:
        """The one running container of a service (`compose ps -q SERVICE`)."""
        ids = self.run("ps", "-q", service, timeout=60).stdout.split()
        assert len(ids) == 1, f"{service} should run one container, runs {ids}\n{self.logs()}"
        return ids[0]

    def inspect(self, container: str, template: str) -> str:
        out = subprocess.run([engine_cli(), "inspect", "--format", template, container],
                             capture_output=True, text=True, env=self.env, timeout=60)
        assert out.returncode == 0, f"docker inspect {container} failed: {out.stderr[-1000:]}"
        return out.stdout.strip()

    def address(self, service: str, network: str) -> str:
        """A service's IP address on one of the project's networks (Compose names it PROJECT_NETWORK)."""
        networks = json.loads(self.inspect(self.container_id(service), "{{json .NetworkSettings.Networks}}"))
        found = networks.get(f"{self.project}_{network}", {}).get("IPAddress")
        assert found, f"{service} has no address on {network}: {networks}"
        return found

    def stranger(self, network: str, script: str, *args: str, timeout: float = 120) -> str:
        """What `python -c SCRIPT ARGS` prints in a throwaway container of the uWSGI image on one of the
        project's networks ("none": no network): a container that is not nginx. Removed afterwards."""
        name = f"{self.project}-stranger"
        net = "none" if network == "none" else f"{self.project}_{network}"
        cli = [engine_cli(), "run", "--name", name, "--network", net, "--no-healthcheck",
               "inference-python", "python", "-c", script, *args]
        subprocess.run([engine_cli(), "rm", "-f", name], capture_output=True, env=self.env, timeout=60)
        try:
            out = subprocess.run(cli, capture_output=True, text=True, env=self.env, timeout=timeout)
            return out.stdout + out.stderr
        finally:
            subprocess.run([engine_cli(), "rm", "-f", name], capture_output=True, env=self.env, timeout=60)

    def volumes_in_use(self) -> set[str]:
        """Every volume the project's containers mount, named or anonymous (Compose labels only the named)."""
        ids = subprocess.run([engine_cli(), "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"],
                             capture_output=True, text=True, env=self.env, timeout=60).stdout.split()
        names = set()
        for container in ids:
            names.update(self.inspect(container, '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}').split())
        return names

    def leftovers(self, mounted: set[str] = frozenset()) -> dict[str, list[str]]:
        """What the engine still has of this project: Compose's labels, asked of the engine itself,
        plus those of the volumes `mounted` (volumes_in_use(), before the stop) that still exist:
        anonymous volumes carry no Compose label."""
        label = f"label=com.docker.compose.project={self.project}"
        found = {}
        for kind in ("container", "volume", "network"):
            args = [engine_cli(), kind, "ls", "-q", "--filter", label]
            if kind == "container":
                args.insert(3, "-a")
            out = subprocess.run(args, capture_output=True, text=True, env=self.env)
            found[kind] = out.stdout.split()
        if mounted:
            out = subprocess.run([engine_cli(), "volume", "ls", "-q"], capture_output=True, text=True, env=self.env)
            found["volume"] = sorted(set(found["volume"]) | (set(mounted) & set(out.stdout.split())))
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


# ---- the dev container: .devcontainer/, used as a dev-container client uses it ----
#
#   config = engine.devcontainer_config()
#   with engine.dev_container(config) as box:      # build, run, a copy of the repository mounted
#       box.run("./workshop.sh setup", timeout=2400)
#
# VS Code's Dev Containers and Codespaces build the image with the context
# devcontainer.json names, start it with the repository at
# /workspaces/NAME, the image's command replaced by a wait (overrideCommand),
# and run postCreateCommand and every terminal as remoteUser, in the
# environment of that user's login shell (userEnvProbe). Here the repository
# is a copy (the working tree's files, none of .venv, site/, run/, out/,
# workspace*/), so the container's .venv never touches this machine's.

DEVCONTAINER_JSON = ROOT / ".devcontainer" / "devcontainer.json"
DEVCONTAINER_METRICS = ROOT / "out" / "06-devcontainer.json"
NOT_COPIED = (".venv/", "site/", "run/", "out/", "workspace")


def jsonc(text: str):
    """JSON with // and /* */ comments and trailing commas, as VS Code reads devcontainer.json:
    what only looks like a comment or a comma inside a string stays."""
    kept, strings, i = [], [], 0
    while i < len(text):
        if text[i] == '"':
            end = i + 1
            while text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            strings.append(text[i:end + 1])
            kept.append("\0")   # the strings go back in after the commas are gone
            i = end + 1
        elif text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
        else:
            kept.append(text[i])
            i += 1
    bare = re.sub(r",(\s*[}\]])", r"\1", "".join(kept))
    parts = bare.split("\0")
    return json.loads("".join(p + (strings[n] if n < len(strings) else "") for n, p in enumerate(parts)))


def devcontainer_config(path: Path = DEVCONTAINER_JSON) -> dict:
    """devcontainer.json, with the paths it names made absolute: _dockerfile, _context."""
    config = jsonc(path.read_text())
    build = config.get("build", {})
    config["_dockerfile"] = (path.parent / build.get("dockerfile", "Dockerfile")).resolve()
    config["_context"] = (path.parent / build.get("context", ".")).resolve()
    return config


def working_tree_files(root: Path = ROOT) -> list[str]:
    """The files a clone with the work in progress has: tracked and untracked-not-ignored, minus NOT_COPIED."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, capture_output=True, timeout=60)
    assert out.returncode == 0, f"git ls-files failed in {root}: {out.stderr.decode()[-500:]}"
    names = [n for n in out.stdout.decode().split("\0") if n and not n.startswith(NOT_COPIED)]
    return [n for n in names if (root / n).is_file()]   # not the deleted ones


class DevContainer:
    """The dev container's image and one container of it, with a copy of the repository mounted."""

    def __init__(self, config: dict, name: str = "ws06-devcontainer"):
        self.config, self.name, self.image = config, name, f"localhost/{name}"
        self.user = config.get("remoteUser") or config.get("containerUser") or "root"
        self.workspace = f"/workspaces/{ROOT.name}"
        self.copy = Path(tempfile.mkdtemp(prefix="ws06-devcontainer-")) / ROOT.name
        self.metrics: dict = {}

    def cli(self, *args, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([engine_cli(), *args], capture_output=True, text=True, timeout=timeout)

    def timed(self, key: str, *args, timeout: float) -> subprocess.CompletedProcess:
        started_at = time.monotonic()
        out = self.cli(*args, timeout=timeout)
        self.metrics[key] = round(time.monotonic() - started_at, 1)
        return out

    def copy_repository(self) -> None:
        for name in working_tree_files():
            dest = self.copy / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest)

    def build(self, timeout: float) -> None:
        """`docker build` of build.dockerfile with build.context, both as devcontainer.json names them."""
        dockerfile = self.copy / self.config["_dockerfile"].relative_to(ROOT)
        context = self.copy / self.config["_context"].relative_to(ROOT)
        out = self.timed("build_seconds", "build", "-f", str(dockerfile), "-t", self.image, str(context),
                         timeout=timeout)
        assert out.returncode == 0, f"docker build -f {dockerfile.relative_to(self.copy)} failed " \
                                    f"({out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}"

    def start(self) -> None:
        # overrideCommand: a shell that waits, as the clients start it; the repository
        # belongs to remoteUser inside, as on a Mac or in Codespaces
        out = self.cli("run", "-d", "--name", self.name, "-v", f"{self.copy}:{self.workspace}",
                       "--entrypoint", "/bin/sh", self.image,
                       "-c", 'trap "exit 0" TERM; while sleep 1 & wait $!; do :; done')
        assert out.returncode == 0, f"docker run {self.image} failed:\n{out.stderr[-3000:]}"
        owner = self.exec_as("root", f"chown -R {shlex.quote(self.user)}: {self.workspace}", timeout=300)
        assert owner.returncode == 0, f"chown of {self.workspace} to {self.user} failed:\n{owner.stderr[-2000:]}"

    def exec_as(self, user: str, command: str, timeout: float) -> subprocess.CompletedProcess:
        return self.cli("exec", "-u", user, "-w", self.workspace, self.name, "bash", "-lc", command,
                        timeout=timeout)

    def run(self, command: str, timeout: float, key: str | None = None) -> subprocess.CompletedProcess:
        """COMMAND as remoteUser in its login shell, in the workspace; timed as metrics[key]."""
        started_at = time.monotonic()
        out = self.exec_as(self.user, command, timeout)
        if key:
            self.metrics[key] = round(time.monotonic() - started_at, 1)
        return out

    def remove(self) -> None:
        """The container (its files in the copy first: they belong to the container's user), image, copy."""
        running = self.cli("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() == "true"
        if running and self.copy.exists():
            self.exec_as("root", f"find {self.workspace} -mindepth 1 -delete", timeout=600)
        self.cli("rm", "-f", self.name, timeout=120)
        self.cli("rmi", "-f", self.image, timeout=300)
        shutil.rmtree(self.copy.parent, ignore_errors=True)


@contextlib.contextmanager
def dev_container(config: dict, build_timeout: float = 1800):
    """A built and started DevContainer; container, image and copy removed afterwards, whatever happened."""
    for stale in Path(tempfile.gettempdir()).glob("ws06-devcontainer-*"):   # an interrupted run's
        shutil.rmtree(stale, ignore_errors=True)
    box = DevContainer(config)
    box.cli("rm", "-f", box.name)
    try:
        box.copy_repository()
        box.build(build_timeout)
        box.start()
        yield box
    finally:
        box.remove()
        DEVCONTAINER_METRICS.parent.mkdir(exist_ok=True)
        DEVCONTAINER_METRICS.write_text(json.dumps(box.metrics, indent=2) + "\n")
