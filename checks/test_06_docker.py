"""Lesson 06: the stack in containers. Three kinds of checks, fast to slow.

1. Lint: hadolint on both Dockerfiles; Compose v2 itself parses
   docker-compose.yaml (`docker-compose config`, no engine needed); the
   file's promises (no `version:`, only nginx publishes a port, ...).
2. Host run: the very commands, environments and nginx templates that the
   compose file and the Dockerfiles give, started on this machine. The app
   files are laid out as the Dockerfile's COPY lines lay them out, the
   `socks` volume is a temp folder, service names resolve to 127.0.0.1 and
   each container port gets a free loopback port. Proves that the files fit
   together, in seconds, without an engine.
3. Engine: build both images, run the stack with a real container engine,
   talk to it through the published port, take it down. Slow (minutes the
   first time: torch is big), so it runs only when WORKSHOP_ENGINE=1, which
   `./workshop.sh check-docker` sets: with Docker if it answers, otherwise
   with podman and local stand-in base images (tools/podman/).
"""

from __future__ import annotations

import collections
import io
import fnmatch
import glob
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from PIL import Image as PILImage

from workshop import images, nginx
from workshop.harness import base_env, make_run_dir, started, stop
from workshop.lessons import ROOT
from workshop.procs import free_port, wait_for

LESSON = "06_docker"
PHOTO = images.photo_bytes()                      # chelsea, 451 x 300
SMALL = images.encode(images.photo().resize((128, 128)), "JPEG")
SERVICES = {"nginx", "uwsgi-uds", "uwsgi-tcp"}
VENV_BIN = Path(sys.executable).parent
ENGINE = os.environ.get("WORKSHOP_ENGINE") == "1"
HOW_TO_RUN_ENGINE = ("the engine check builds images and runs containers (minutes the first "
                     "time): run it with ./workshop.sh check-docker, or "
                     "WORKSHOP_ENGINE=1 .venv/bin/pytest checks/test_06_docker.py "
                     "with a Docker engine (or podman's API in DOCKER_HOST) at hand")


@pytest.fixture(scope="module")
def lesson(lessons) -> Path:
    folder = lessons / LESSON
    if not (folder / "docker-compose.yaml").exists():
        pytest.fail(f"{folder}/docker-compose.yaml does not exist: start lesson 06 there")
    return folder


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail(f"{name} is not installed: run ./workshop.sh setup (requirements.txt pins it)")
    return found


# ------------------------------------------------------------ reading files

def compose_config(lesson: Path, env: dict | None = None) -> dict:
    """The compose file as Compose v2 reads it: interpolated, defaults filled in."""
    out = subprocess.run([tool("docker-compose"), "-f", str(lesson / "docker-compose.yaml"),
                          "config", "--format", "json"], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=60)
    # (an invalid project can exit 0 with nothing on stdout: the reason is on stderr)
    assert out.returncode == 0 and out.stdout.strip(), f"docker-compose config failed: {out.stderr.strip()}"
    return json.loads(out.stdout)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """A Dockerfile as (INSTRUCTION, arguments) pairs: comments dropped, lines joined."""
    result, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue  # a comment or blank line, also inside a continued instruction
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        word, _, rest = current.strip().partition(" ")
        result.append((word.upper(), rest.strip()))
        current = ""
    return result


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The build stages, each from its FROM on."""
    found: list[list[tuple[str, str]]] = []
    for instr in instructions(dockerfile):
        if instr[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instr)
    return found


def copy_lines(stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not --from another stage)."""
    lines = []
    for word, args in stage:
        if word not in ("COPY", "ADD"):
            continue
        parts = shlex.split(args)
        if any(p.startswith("--from") for p in parts):
            continue
        parts = [p for p in parts if not p.startswith("--")]
        lines.append((parts[:-1], parts[-1]))
    return lines


def env_pairs(args: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(args))


class Image:
    """What the final stage of a Dockerfile puts where: WORKDIR, ENV, COPY, USER, ..."""

    def __init__(self, dockerfile: Path, context: Path):
        self.dockerfile, self.context = dockerfile, context
        self.stage = stages(dockerfile)[-1]
        self.env: dict[str, str] = {}
        self.workdir = "/"
        self.files: dict[str, Path] = {}    # path in the image -> file in the context
        self.healthcheck: list[str] = []
        self.user = ""
        for word, args in self.stage:
            if word == "ENV":
                self.env.update(env_pairs(args))
            elif word == "WORKDIR":
                self.workdir = os.path.normpath(os.path.join(self.workdir, args))
            elif word == "USER":
                self.user = args
            elif word == "HEALTHCHECK":
                self.healthcheck = json.loads(args[args.index("CMD") + 3:].strip())
        for sources, dest in copy_lines(self.stage):
            target = os.path.normpath(os.path.join(self.workdir, dest))
            for source in sources:
                matches = sorted(glob.glob(str(context / source))) or [str(context / source)]
                for match in map(Path, matches):
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


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = os.path.normpath(pattern.lstrip("!")).lstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*") \
            .replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def read_dockerignore(context: Path) -> list[str]:
    lines = (context / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


# ------------------------------------------------------------------- 1. lint

@pytest.mark.parametrize("name", ["Dockerfile-python", "Dockerfile-nginx"])
def test_hadolint_finds_nothing(lesson, name):
    out = subprocess.run([tool("hadolint"), "--no-color", str(lesson / name)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"hadolint {name}:\n{out.stdout}{out.stderr}"


def test_compose_v2_parses_the_file_without_warnings(lesson):
    out = subprocess.run([tool("docker-compose"), "-f", str(lesson / "docker-compose.yaml"),
                          "config", "--quiet"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), \
        f"docker-compose config says:\n{out.stderr}"


def test_compose_file_keeps_its_promises(lesson):
    raw = yaml.safe_load((lesson / "docker-compose.yaml").read_text())
    assert "version" not in raw, "the Compose specification has no `version:` key: remove it"
    config = compose_config(lesson)
    services = config["services"]
    assert set(services) == SERVICES
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"nginx"}, f"only nginx may publish a port, not {published - {'nginx'}}"
    for port in services["nginx"]["ports"]:
        assert port.get("host_ip") == "127.0.0.1", \
            "bind the published port to 127.0.0.1 (reachable from this machine only)"
    for name in ("uwsgi-uds", "uwsgi-tcp"):
        condition = services["nginx"].get("depends_on", {}).get(name, {}).get("condition")
        assert condition == "service_healthy", \
            f"nginx must wait until {name} is healthy (it resolves names once, at start)"
    for name, service in services.items():
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), \
            f"{name} needs a restart policy"
    mounts = {name: {v["target"]: v["source"] for v in s.get("volumes", [])}
              for name, s in services.items()}
    assert mounts["uwsgi-uds"].get("/socks") and \
        mounts["uwsgi-uds"]["/socks"] == mounts["nginx"].get("/socks"), \
        "uwsgi-uds and nginx share one named volume at /socks"
    assert services["nginx"]["environment"]["TCP_UPSTREAM"].startswith("uwsgi-tcp:")


def test_no_world_writable_socket_anywhere(lesson):
    # (comments may say why not: only what the files do counts)
    texts = {"docker-compose.yaml": json.dumps(compose_config(lesson))}
    texts.update({p.name: repr(instructions(p)) for p in lesson.glob("Dockerfile-*")})
    for name, text in texts.items():
        assert "666" not in text, f"{name}: share the socket through a group (mode 660), never 666"
    ini = (ROOT / "lessons/05_multi_upstream/inference1.ini").read_text()
    assert re.search(r"^chmod-socket\s*=\s*660\s*$", ini, re.M), "inference1.ini: chmod-socket = 660"


def test_dockerfiles_keep_their_promises(lesson):
    py = stages(lesson / "Dockerfile-python")
    for stage in py:
        base = stage[0][1].split()[0]
        assert base.startswith("python:3.11-slim"), f"Dockerfile-python: FROM {base}: use python:3.11-slim-bookworm"
    final = dict(reversed(py[-1]))  # first occurrence of each instruction
    args = "\n".join(a for w, a in py[-1] if w == "ARG")
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in args, "CPU-only torch wheels by default"
    assert "FETCH_WEIGHTS=1" in args, "the weights are fetched at build time unless FETCH_WEIGHTS=0"
    user = [a for w, a in py[-1] if w == "USER"]
    assert user and user[-1] not in ("root", "0", "0:0"), "the app must not run as root: add USER"
    assert "HEALTHCHECK" in final and "CMD" in final
    ngx = stages(lesson / "Dockerfile-nginx")
    assert len(ngx) == 1 and re.fullmatch(r"nginx:1\.\d+(\.\d+)?", ngx[0][0][1]), \
        "Dockerfile-nginx: FROM a pinned official nginx, e.g. nginx:1.27"
    dests = {dest for _, dest in copy_lines(ngx[0])}
    assert dests == {"/etc/nginx/templates/"}, \
        "the templates go to /etc/nginx/templates/: the image renders them at start"


def test_images_use_the_lessons_own_files(lesson):
    config = compose_config(lesson)
    context = Path(config["services"]["uwsgi-uds"]["build"]["context"])
    assert context == ROOT, "the build context is the repository root"
    app = Image(lesson / "Dockerfile-python", context)
    sources = {p.relative_to(ROOT).as_posix() for p in app.files.values()}
    for needed in ("lessons/02_segmentation/inference.py", "lessons/03_uwsgi/workers.ini",
                   "lessons/05_multi_upstream/inference1.ini",
                   "lessons/05_multi_upstream/inference2.ini"):
        assert needed in sources, f"Dockerfile-python should COPY {needed}, the lesson's own file"
    ngx = Image(lesson / "Dockerfile-nginx", context)
    assert {p.name for p in ngx.files.values()} == {"inference.conf.template", "upstream.conf.template"}


def test_dockerignore_sends_what_the_images_copy_and_little_else(lesson):
    context = ROOT
    patterns = read_dockerignore(context)
    for name in ("Dockerfile-python", "Dockerfile-nginx"):
        for stage in stages(lesson / name):
            for sources, _ in copy_lines(stage):
                for source in sources:
                    assert not dockerignore_excludes(patterns, source), \
                        f"{name} copies {source}, but .dockerignore keeps it out of the build context"
    for big in (".venv/bin/python", ".git/HEAD", "site/index.html", "out/x.png",
                "lessons/02_segmentation/__pycache__/voc.cpython-311.pyc"):
        assert dockerignore_excludes(patterns, big), f".dockerignore should leave out {big}"
    size = 0
    for folder, dirs, files in os.walk(context):
        rel = Path(folder).relative_to(context).as_posix()
        dirs[:] = [d for d in dirs if d not in (".git", ".venv", "node_modules")]
        for f in files:
            path = f if rel == "." else f"{rel}/{f}"
            if not dockerignore_excludes(patterns, path):
                size += (Path(folder) / f).stat().st_size
    assert size < 1_000_000, f"the build context would be {size / 1e6:.1f} MB: tighten .dockerignore"


def test_healthcheck_is_unhealthy_when_nothing_listens(lesson, tmp_path):
    for target in (str(tmp_path / "none.sock"), f"127.0.0.1:{free_port()}"):
        out = subprocess.run([sys.executable, str(lesson / "healthcheck.py"), target],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 1, f"healthcheck.py {target} should fail: {out.stdout}{out.stderr}"


# --------------------------------------------------------------- 2. host run

class HostRun:
    """The compose services as processes on this machine (see the module's docstring)."""

    def __init__(self, lesson: Path, tmp: Path):
        self.tmp = tmp
        self.config = compose_config(lesson, {"SEG_WEIGHTS": "random"})
        self.services = self.config["services"]
        self.ports = {}  # container port -> free loopback port
        for service in self.services.values():
            for port in [*service.get("expose", []), *(p["target"] for p in service.get("ports", []))]:
                self.ports.setdefault(str(port), str(free_port()))
        context = Path(self.services["uwsgi-uds"]["build"]["context"])
        self.app = Image(context / self.services["uwsgi-uds"]["build"]["dockerfile"], context)
        self.web = Image(context / self.services["nginx"]["build"]["dockerfile"], context)
        self.url = f"http://127.0.0.1:{self.ports[str(self.services['nginx']['ports'][0]['target'])]}"
        self.servers = []

    def root(self, name: str) -> Path:
        return self.tmp / name  # each container's own file system

    def path(self, name: str, container_path: str) -> str:
        for volume in self.services[name].get("volumes", []):
            target = volume["target"].rstrip("/")
            if container_path == target or container_path.startswith(target + "/"):
                return str(self.tmp / "volumes" / volume["source"]) + container_path[len(target):]
        return str(self.root(name)) + container_path

    def value(self, name: str, key: str, value: str) -> str | None:
        if key == "SOCKET_OWNER":
            # The image's app:web. Here: as root, nginx's workers are www-data
            # (workshop/nginx.py), so hand them the socket as lesson 04 does;
            # otherwise everything runs as you, and the owner is enough.
            return "root:www-data" if os.geteuid() == 0 else None
        if value in self.ports:
            return self.ports[value]
        if value == "0.0.0.0":
            return "127.0.0.1"  # a container's every interface; here, loopback only
        if value.startswith("unix:/"):
            return "unix:" + self.path(name, value[5:])
        if value.startswith("/"):
            return self.path(name, value)
        m = re.fullmatch(r"([\w.-]+):(\d+)", value)
        if m and (m[1] in self.services or m[1] in ("0.0.0.0", "127.0.0.1", "localhost")):
            return f"127.0.0.1:{self.ports.get(m[2], m[2])}"
        return value

    def env(self, name: str, image: Image) -> dict[str, str]:
        merged = {**image.env, **self.services[name].get("environment", {})}
        env = {}
        for key, value in merged.items():
            mapped = self.value(name, key, str(value))
            if mapped is not None:
                env[key] = mapped
        return env

    def healthcheck(self, name: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable if c == "python" else self.path(name, c) if c.startswith("/") else c
               for c in self.app.healthcheck]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                              env=base_env(self.env(name, self.app)))

    def start(self):
        (self.tmp / "volumes").mkdir(parents=True)
        for volume in {v["source"] for s in self.services.values() for v in s.get("volumes", [])}:
            (self.tmp / "volumes" / volume).mkdir(mode=0o755)
        for name in ("uwsgi-uds", "uwsgi-tcp"):
            self.app.lay_out(self.root(name))
            env = self.env(name, self.app)
            for key in ("RUN_DIR", "TORCH_HOME"):
                Path(env[key]).mkdir(parents=True, exist_ok=True)
            cwd = self.path(name, self.app.workdir)
            self.servers.append(started(name, self.services[name]["command"], run_dir=self.tmp,
                                        env=env, cwd=Path(cwd)))
        for server in self.servers:  # nginx's depends_on: condition: service_healthy
            wait_for(lambda: self.healthcheck(server.name).returncode == 0 or not server.alive(),
                     timeout=90, interval=0.5, what=f"{server.name}'s HEALTHCHECK to pass")
            assert server.alive(), f"{server.name} exited:\n{server.log()}"
        values = self.env("nginx", self.web)
        Path(values["LOG_DIR"]).mkdir(parents=True, exist_ok=True)
        templates = [src for dest, src in self.web.files.items()
                     if dest.startswith("/etc/nginx/templates/") and dest.endswith(".template")]
        prefix = self.root("nginx") / "etc/nginx"
        conf = nginx.write_local(prefix, templates, values)
        checked = nginx.test_config(conf)
        assert checked.returncode == 0, f"nginx -t:\n{checked.stderr}"
        server = started("nginx", ["nginx", "-p", str(prefix), "-c", str(conf)], run_dir=self.tmp,
                         url=self.url)
        self.servers.append(server)
        server.wait_http("/readyz", timeout=60)

    def stop(self):
        for server in reversed(self.servers):
            stop(server)


@pytest.fixture(scope="module")
def host_run(lesson):
    if not shutil.which("nginx", path=base_env()["PATH"]):
        pytest.fail("nginx is not installed: run ./workshop.sh setup")
    tmp = make_run_dir()  # short (socket paths) and 755 (nginx's workers walk through it)
    run = HostRun(lesson, tmp)
    try:
        run.start()
        yield run
    finally:
        run.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def segment(url: str, data: bytes = PHOTO) -> requests.Response:
    return requests.post(url + "/infer", data=data, params={"format": "png"}, timeout=60)


def upstream_kind(resp) -> str:
    addr = resp.headers.get("X-Upstream", "")
    return "unix" if addr.startswith("unix:") else "tcp" if addr else "none"


def assert_mask(resp, size=(451, 300)):
    assert resp.status_code == 200, f"POST /infer answered {resp.status_code}: {resp.text[:200]}"
    assert resp.headers.get("Server") == "nginx", "the answer did not come through nginx"
    mask = PILImage.open(io.BytesIO(resp.content))
    assert mask.size == size, f"the mask is {mask.size}, the photo {size}"


def test_host_run_segments_through_nginx(host_run):
    assert_mask(segment(host_run.url))


def test_host_run_round_robin_across_both_services(host_run):
    counts = collections.Counter(upstream_kind(segment(host_run.url, SMALL)) for _ in range(20))
    assert counts == {"unix": 10, "tcp": 10}, \
        f"20 requests should alternate between the unix socket and uwsgi-tcp, got {dict(counts)}"


def test_host_run_healthchecks_pass_for_both_services(host_run):
    for name in ("uwsgi-uds", "uwsgi-tcp"):
        out = host_run.healthcheck(name)
        assert out.returncode == 0 and "-> 200" in out.stdout, f"{name}: {out.stdout}{out.stderr}"


def test_host_run_socket_is_660_on_the_volume(host_run):
    sock = Path(host_run.env("uwsgi-uds", host_run.app)["HEALTHCHECK_SOCKET"])
    mode = stat.S_IMODE(sock.stat().st_mode)
    assert stat.S_ISSOCK(sock.stat().st_mode) and mode == 0o660, f"{sock}: mode {mode:o}, want 660"


# ----------------------------------------------------------------- 3. engine

def compose_command() -> list[str]:
    chosen = os.environ.get("WORKSHOP_COMPOSE")
    if chosen:
        return shlex.split(chosen)
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return [tool("docker-compose")]


def engine_cli() -> str:
    return "docker" if shutil.which("docker") else "podman"


class EngineStack:
    def __init__(self, lesson: Path):
        self.project = "ws06check"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = [*compose_command(), "-p", self.project, "-f", str(lesson / "docker-compose.yaml")]
        # WORKSHOP_IMAGE_ARGS: build arguments for machines that cannot download
        # everything (tools/podman sets FETCH_WEIGHTS=0 TORCH_INDEX_URL=).
        self.build_args = shlex.split(os.environ.get("WORKSHOP_IMAGE_ARGS", ""))
        self.env = {**os.environ, "HOST_PORT": str(self.port)}
        if "FETCH_WEIGHTS=0" in self.build_args:
            self.env["SEG_WEIGHTS"] = "random"  # no weights in the image: don't try to download
        self.metrics: dict = {"compose": " ".join(compose_command()), "build_args": self.build_args}

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


@pytest.fixture(scope="module")
def engine(lesson):
    if not ENGINE:
        pytest.skip(HOW_TO_RUN_ENGINE)
    stack = EngineStack(lesson)
    stack.down()  # a stack left by an interrupted run
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        out = ROOT / "out" / "06-docker-engine.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(stack.metrics, indent=2) + "\n")


engine_check = pytest.mark.timeout(1800)


@engine_check
def test_engine_segments_the_photo_through_the_published_port(engine):
    r = segment(engine.url)
    assert_mask(r)
    if r.headers.get("X-Model-Weights") == "pretrained":
        assert "cat" in r.headers.get("X-Classes", ""), \
            f"the pretrained model should find the cat, found {r.headers.get('X-Classes')}"


@engine_check
def test_engine_round_robin_across_both_services(engine):
    answers = [segment(engine.url, SMALL) for _ in range(20)]
    counts = collections.Counter(upstream_kind(r) for r in answers)
    assert counts == {"unix": 10, "tcp": 10}, \
        f"20 requests should alternate between uwsgi-uds and uwsgi-tcp, got {dict(counts)}\n{engine.logs()}"
    engine.metrics["upstreams"] = sorted({r.headers["X-Upstream"] for r in answers})


@engine_check
def test_engine_socket_is_shared_through_the_group_not_666(engine):
    out = engine.exec("uwsgi-uds", "stat", "-c", "%a %U %G %g", "/socks/inference1.sock")
    mode, owner, group, gid = out.stdout.split()
    assert mode == "660" and owner == "app" and group == "web", f"socket: {out.stdout}"
    seen_by_nginx = engine.exec("nginx", "stat", "-c", "%a %g", "/socks/inference1.sock").stdout.split()
    nginx_groups = engine.exec("nginx", "id", "-G", "nginx").stdout.split()
    assert seen_by_nginx == ["660", gid] and gid in nginx_groups, \
        f"nginx sees the socket as {seen_by_nginx}; its workers' groups are {nginx_groups}"
    stranger = engine.exec("uwsgi-uds", "python", "/app/06_docker/healthcheck.py",
                           "/socks/inference1.sock", user="nobody")
    # (the output, not the exit code: podman 4.3's Docker API reports 0 for every exec)
    assert "Permission denied" in stranger.stderr and "-> 200" not in stranger.stdout, \
        f"a user outside the group must not reach the socket: {stranger.stdout}{stranger.stderr}"


@engine_check
def test_engine_app_runs_as_non_root(engine):
    for service in ("uwsgi-uds", "uwsgi-tcp"):
        uid = engine.exec(service, "id", "-u").stdout.strip()
        pid1 = engine.exec(service, "grep", "^Uid:", "/proc/1/status").stdout.split()
        assert uid not in ("", "0") and pid1[1:2] == [uid], \
            f"{service}: exec user {uid!r}, uWSGI (pid 1) {pid1}: both must be the app user, not root"


@engine_check
def test_engine_scaling_takes_effect_after_nginx_reloads(engine):
    # --no-recreate: leave the running containers alone, only add the new one (podman 4.3
    # would otherwise make Compose recreate them all, nginx included).
    engine.run("up", "-d", "--no-recreate", "--wait", "--wait-timeout", "240", "--scale", "uwsgi-tcp=2",
               timeout=300)

    def tcp_upstreams():
        return {r.headers["X-Upstream"] for r in (segment(engine.url, SMALL) for _ in range(12))
                if upstream_kind(r) == "tcp"}

    before = tcp_upstreams()
    assert len(before) == 1, f"nginx resolved uwsgi-tcp at start and should still use one address: {before}"
    reload = engine.exec("nginx", "nginx", "-s", "reload")
    assert reload.returncode == 0, reload.stderr

    def both():
        found = tcp_upstreams()
        return found if len(found) == 2 else None

    after = wait_for(both, timeout=30, interval=1, what="nginx to use both uwsgi-tcp containers after reload")
    engine.metrics["scaled_upstreams"] = sorted(after)


@engine_check
def test_engine_down_leaves_nothing(engine):
    engine.down(measure=True)
    left = engine.leftovers()
    assert not any(left.values()), f"left behind after down -v: {left}"
