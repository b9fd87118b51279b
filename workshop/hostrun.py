"""Lesson 06's compose services as processes on this machine: the host run.

    with hostrun.running(lesson_folder) as run:
        requests.post(run.url + "/infer", data=photo)

starts the very commands, environments and nginx templates that the compose
file and the Dockerfiles give, without a container engine:

- each container's file system is a folder, with the app files laid out as
  the Dockerfile's COPY lines lay them out (workshop/dockerfiles.py);
- each named volume is a temp folder, mounted where the compose file says
  (paths in the environment and the command point into it; a link stands
  at the mount point, for paths relative to a config file);
- service names resolve to 127.0.0.1 and each container port gets a free
  loopback port;
- the one-shot `certs` service runs first and must exit 0, and nginx starts
  once both uWSGI services pass the image's HEALTHCHECK, as
  `depends_on: condition: service_completed_successfully / service_healthy`
  has it.

It proves that the files fit together, in seconds. What it cannot prove
(the images build, the containers reach each other) is the engine checks'
(workshop/engine.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from . import compose, nginx
from .dockerfiles import Image
from .harness import base_env, make_run_dir, started, stop
from .procs import ServerDidNotStart, free_port, wait_for


class HostRun:
    """The compose services as processes on this machine (see the module's docstring)."""

    def __init__(self, lesson: Path, tmp: Path):
        self.tmp = tmp
        self.config = compose.config(lesson / compose.COMPOSE_FILE, {"SEG_WEIGHTS": "random"})
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
            if "source" not in volume:
                continue   # an anonymous volume: the container's own folder
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
        if key.endswith("_PORT") and value.isdigit():
            # a port inside the container (nginx's STATUS_PORT): a free one here
            return self.ports.setdefault(value, str(free_port()))
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

    def args(self, name: str, argv: list[str]) -> list[str]:
        """A command line of this container's, its container paths (also in NAME=/path) pointing here."""
        out = []
        for arg in argv:
            key, sep, value = arg.rpartition("=")
            if value.startswith("/"):
                arg = key + sep + self.path(name, value)
            out.append(sys.executable if arg == "python" else arg)
        return out

    def command(self, name: str) -> list[str]:
        return self.args(name, self.services[name]["command"])

    def mount(self, name: str, image: Image) -> None:
        """Lay the image out for this container, with a link to each named volume where it is mounted."""
        image.lay_out(self.root(name))
        for volume in self.services[name].get("volumes", []):
            if "source" in volume:
                point = Path(str(self.root(name)) + volume["target"])
                point.parent.mkdir(parents=True, exist_ok=True)
                if point.is_dir() and not point.is_symlink():
                    point.rmdir()   # the image's empty mount point, as a volume hides it
                point.symlink_to(self.tmp / "volumes" / volume["source"])

    def healthcheck(self, name: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.args(name, self.app.healthcheck), capture_output=True, text=True, timeout=30,
                              env=base_env(self.env(name, self.app)))

    def start(self):
        (self.tmp / "volumes").mkdir(parents=True)
        for volume in {v["source"] for s in self.services.values() for v in s.get("volumes", []) if "source" in v}:
            (self.tmp / "volumes" / volume).mkdir(mode=0o755)
        # depends_on: condition: service_completed_successfully
        self.mount("certs", self.app)
        certs = subprocess.run(self.command("certs"), capture_output=True, text=True, timeout=60,
                               cwd=self.path("certs", self.app.workdir), env=base_env(self.env("certs", self.app)))
        assert certs.returncode == 0, f"the certs service failed:\n{certs.stdout}{certs.stderr}"
        for name in ("uwsgi-uds", "uwsgi-tcp"):
            self.mount(name, self.app)
            env = self.env(name, self.app)
            for key in ("RUN_DIR", "TORCH_HOME"):
                Path(env[key]).mkdir(parents=True, exist_ok=True)
            cwd = self.path(name, self.app.workdir)
            self.servers.append(started(name, self.command(name), run_dir=self.tmp,
                                        env=env, cwd=Path(cwd)))
        for server in self.servers:  # nginx's depends_on: condition: service_healthy
            wait_for(lambda: self.healthcheck(server.name).returncode == 0 or not server.alive(),
                     timeout=90, interval=0.5, what=f"{server.name}'s HEALTHCHECK to pass")
            assert server.alive(), f"{server.name} exited:\n{server.log()}"
        self.mount("nginx", self.web)   # the page, where STATIC_ROOT says; tls/ next to nginx.conf
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


@contextlib.contextmanager
def running(lesson: Path):
    """A started HostRun of lesson 06's folder; everything stopped and removed afterwards."""
    if not shutil.which("nginx", path=base_env()["PATH"]):
        raise ServerDidNotStart("nginx is not installed: run ./workshop.sh setup")
    tmp = make_run_dir()  # short (socket paths) and 755 (nginx's workers walk through it)
    try:
        run = HostRun(lesson, tmp)
        try:
            run.start()
            yield run
        finally:
            run.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
