"""Lesson 06, the files: lint and the promises the Dockerfiles and the compose file make.

Seconds, no container engine: hadolint on both Dockerfiles; Compose v2
itself parses docker-compose.yaml (`docker-compose config`), alone and with
its GPU variant docker-compose.gpu.yaml on top; the compose
file's promises (no `version:`, only nginx publishes a port, ...), the
Dockerfiles' (slim base, not root, the lessons' own files), and
`.dockerignore` sending what the images copy and little else.
The same files run on this machine in test_06_host_run.py, and in real
containers in test_06_engine.py.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workshop import compose, dockerignore
from workshop.dockerfiles import Image, copy_lines, instructions, stages
from workshop.lessons import ROOT
from workshop.procs import free_port
from workshop.tools import tool

SERVICES = {"nginx", "uwsgi-uds", "uwsgi-tcp"}
ONE_SHOT = {"certs"}   # runs once per `up`, makes the certificates, exits
WATCHERS = {"prometheus", "nginx-exporter", "uwsgi-uds-metrics", "uwsgi-tcp-metrics"}   # the metrics profile


@pytest.fixture(scope="module")
def lesson(lessons) -> Path:
    return compose.lesson_folder(lessons)


@pytest.mark.parametrize("name", ["Dockerfile-python", "Dockerfile-nginx"])
def test_hadolint_finds_nothing(lesson, name):
    out = subprocess.run([tool("hadolint"), "--no-color", str(lesson / name)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"hadolint {name}:\n{out.stdout}{out.stderr}"


def test_hadolint_finds_nothing_in_the_dev_container():
    dockerfile = ROOT / ".devcontainer" / "Dockerfile"
    out = subprocess.run([tool("hadolint"), "--no-color", str(dockerfile)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"hadolint .devcontainer/Dockerfile:\n{out.stdout}{out.stderr}"


# The compose file as it is, with the GPU variant on top, with the metrics profile.
VARIANTS = {"plain": [], "gpu": ["-f", compose.GPU_FILE], "metrics": ["--profile", compose.METRICS_PROFILE]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_compose_v2_parses_the_file_without_warnings(lesson, variant):
    args = [str(lesson / a) if a == compose.GPU_FILE else a for a in VARIANTS[variant]]
    out = subprocess.run([tool("docker-compose"), "-f", str(lesson / compose.COMPOSE_FILE), *args,
                          "config", "--quiet"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), \
        f"docker-compose config {' '.join(VARIANTS[variant])} says:\n{out.stderr}"


def test_gpu_variant_asks_for_the_gpu_and_changes_nothing_else(lesson):
    # Linted and compared here; it runs only where a GPU and NVIDIA's container toolkit are.
    raw = yaml.safe_load((lesson / compose.GPU_FILE).read_text())
    assert "version" not in raw, "the Compose specification has no `version:` key: remove it"
    cpu = compose.config(lesson / compose.COMPOSE_FILE)["services"]
    gpu = compose.config([lesson / compose.COMPOSE_FILE, lesson / compose.GPU_FILE])["services"]
    assert set(gpu) == SERVICES | ONE_SHOT and gpu["nginx"] == cpu["nginx"] and gpu["certs"] == cpu["certs"], \
        f"{compose.GPU_FILE} leaves nginx and certs alone"
    build = gpu["uwsgi-uds"]["build"]
    assert build["dockerfile"] == cpu["uwsgi-uds"]["build"]["dockerfile"], "the same Dockerfile-python"
    assert build.get("args", {}).get("TORCH_INDEX_URL") == "", \
        "TORCH_INDEX_URL empty: torch from PyPI, the CUDA build (the default index is CPU-only)"
    for name in ("uwsgi-uds", "uwsgi-tcp"):
        service = gpu[name]
        assert service["command"][:3] == cpu[name]["command"][:3], f"{name}: the same .ini as on the CPU"
        assert service["image"] != cpu[name]["image"], f"{name}: a tag of its own, so the CPU image stays"
        assert service["environment"].get("SEG_DEVICE") == "cuda", \
            f"{name}: SEG_DEVICE=cuda, so that a missing GPU stops the start instead of serving on the CPU"
        assert "compute" in service["environment"].get("NVIDIA_DRIVER_CAPABILITIES", ""), \
            f"{name}: the container needs the driver's CUDA (NVIDIA_DRIVER_CAPABILITIES=compute,utility)"
        assert {k: v for k, v in service["environment"].items()
                if k not in ("SEG_DEVICE", "NVIDIA_DRIVER_CAPABILITIES")} == cpu[name]["environment"]
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), \
            f"{name}: ask for the GPU (deploy.resources.reservations.devices: driver nvidia, capabilities [gpu])"
        assert {k: v for k, v in service.items() if k not in ("build", "image", "command", "environment", "deploy")} \
            == {k: v for k, v in cpu[name].items() if k not in ("build", "image", "command", "environment", "deploy")}, \
            f"{name}: only the image, the workers, the device and the GPU change"


def test_compose_file_keeps_its_promises(lesson):
    # (the one key read from the YAML itself: Compose drops `version` from its model)
    raw = yaml.safe_load((lesson / compose.COMPOSE_FILE).read_text())
    assert "version" not in raw, "the Compose specification has no `version:` key: remove it"
    config = compose.config(lesson / compose.COMPOSE_FILE)
    services = config["services"]
    assert set(services) == SERVICES | ONE_SHOT
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"nginx"}, f"only nginx may publish a port, not {published - {'nginx'}}"
    for port in services["nginx"]["ports"]:
        assert port.get("host_ip") == "127.0.0.1", \
            "bind the published port to 127.0.0.1 (reachable from this machine only)"
    for name in ("uwsgi-uds", "uwsgi-tcp"):
        condition = services["nginx"].get("depends_on", {}).get(name, {}).get("condition")
        assert condition == "service_healthy", \
            f"nginx must wait until {name} is healthy (it resolves names once, at start)"
    for name in SERVICES:
        assert services[name].get("restart") in ("unless-stopped", "always", "on-failure"), \
            f"{name} needs a restart policy"
    assert services["certs"].get("restart", "no") == "no", "certs runs once and exits: no restart policy"
    mounts = {name: {v["target"]: v.get("source") for v in s.get("volumes", [])}
              for name, s in services.items()}
    assert mounts["uwsgi-uds"].get("/socks") and \
        mounts["uwsgi-uds"]["/socks"] == mounts["nginx"].get("/socks"), \
        "uwsgi-uds and nginx share one named volume at /socks"
    assert services["nginx"]["environment"]["TCP_UPSTREAM"].startswith("uwsgi-tcp:")


def test_uwsgi_sockets_are_locked_by_tls_with_the_certs_services_ca(lesson):
    # The uwsgi protocol has no login: who can connect can ask for a command
    # (UWSGI_FILE=exec://...). As in lesson 05, both sockets speak TLS and
    # want a client certificate from the private CA; the certs service makes
    # it, and each side gets only its part.
    services = compose.config(lesson / compose.COMPOSE_FILE)["services"]
    for ini, name in (("uwsgi-uds.ini", "uwsgi-uds"), ("uwsgi-tcp.ini", "uwsgi-tcp")):
        text = re.sub(r"^\s*;.*$", "", (lesson / ini).read_text(), flags=re.M)
        assert not re.search(r"^(socket|uwsgi-socket|http-socket)\s*=", text, re.M), \
            f"{ini}: no plain socket; ssl-socket only"
        found = re.search(r"^ssl-socket\s*=\s*([^,\n]+),\$\(TLS_DIR\)/uwsgi\.crt,\$\(TLS_DIR\)/uwsgi\.key,"
                          r"[^,\n]*,!\$\(TLS_DIR\)/ca\.crt\s*$", text, re.M)
        assert found, f"{ini}: ssl-socket = ADDRESS,$(TLS_DIR)/uwsgi.crt,$(TLS_DIR)/uwsgi.key,,!$(TLS_DIR)/ca.crt " \
                      "(the ! makes the client's certificate required)"
        service = services[name]
        tls_dir = service["environment"]["TLS_DIR"]
        assert service["environment"].get("HEALTHCHECK_TLS") == tls_dir, \
            f"{name}: the health check shows the probe's certificate from {tls_dir} (HEALTHCHECK_TLS)"
        mounts = {v["target"]: v for v in service.get("volumes", []) if v.get("source")}
        assert mounts.get(tls_dir, {}).get("source") == "tls-uwsgi" and mounts[tls_dir].get("read_only"), \
            f"{name}: the volume tls-uwsgi, read-only, at {tls_dir}"
    nginx = services["nginx"]
    assert nginx["environment"]["UPSTREAM"].startswith("suwsgi://"), "nginx speaks uwsgi over TLS: suwsgi://"
    mounts = {v["target"]: v for v in nginx.get("volumes", []) if v.get("source")}
    assert mounts.get("/etc/nginx/tls", {}).get("source") == "tls-nginx" and mounts["/etc/nginx/tls"].get("read_only"), \
        "nginx gets tls-nginx read-only at /etc/nginx/tls (the template's tls/, next to nginx.conf)"
    holders = collections.defaultdict(set)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if volume.get("source"):
                holders[volume["source"]].add(name)
    assert holders.get("tls-ca") == {"certs"}, f"the CA's key is the certs service's alone: {holders.get('tls-ca')}"
    assert holders.get("tls-nginx") == {"certs", "nginx"}, holders.get("tls-nginx")
    assert holders.get("tls-uwsgi") == {"certs", "uwsgi-uds", "uwsgi-tcp"}, holders.get("tls-uwsgi")
    assert services["certs"].get("network_mode") == "none", "certs needs no network"
    for name in SERVICES:
        assert services[name]["depends_on"].get("certs", {}).get("condition") == "service_completed_successfully", \
            f"{name} starts once the certs service has made the certificates"


def test_uwsgi_sockets_are_locked_by_place(lesson):
    # Where they are, the lock for whoever cannot even connect; and
    # max-apps = 1 in the .ini files, a bolt for whoever can.
    config = compose.config(lesson / compose.COMPOSE_FILE)
    services, networks = config["services"], config.get("networks", {})
    assert services["uwsgi-uds"].get("network_mode") == "none", \
        "uwsgi-uds is reached through the socket on the volume: give it `network_mode: none`"
    tcp_networks = set(services["uwsgi-tcp"].get("networks") or {"default": None})
    for name in tcp_networks:
        assert networks.get(name, {}).get("internal") is True, \
            f"uwsgi-tcp is on network {name!r}: put it only on an `internal: true` network"
        members = {s for s, service in services.items() if name in (service.get("networks") or {})}
        assert members == {"nginx", "uwsgi-tcp"}, \
            f"network {name!r} is for nginx and uwsgi-tcp only, not {sorted(members - {'nginx', 'uwsgi-tcp'})}"
    published_on = set(services["nginx"].get("networks") or {"default": None})
    assert any(not networks.get(n, {}).get("internal") for n in published_on), \
        "nginx's published port needs an ordinary (not internal) network too"
    for ini in ("uwsgi-uds.ini", "uwsgi-tcp.ini"):
        assert re.search(r"^max-apps\s*=\s*1\s*$", (lesson / ini).read_text(), re.M), \
            f"{ini}: max-apps = 1, so that a packet cannot load another app"


def test_metrics_profile_adds_watchers_and_changes_nothing_else(lesson):
    plain = compose.config(lesson / compose.COMPOSE_FILE)
    measured = compose.config(lesson / compose.COMPOSE_FILE, profiles=(compose.METRICS_PROFILE,))
    services = measured["services"]
    assert set(services) == SERVICES | ONE_SHOT | WATCHERS, f"the metrics profile's services: {sorted(services)}"
    for name in SERVICES | ONE_SHOT:
        assert services[name] == plain["services"][name], f"--profile metrics must leave {name} as it is"
    for name in WATCHERS:
        assert services[name].get("profiles") == [compose.METRICS_PROFILE], \
            f"{name} belongs to the metrics profile only: without it, the stack is the same"
        assert services[name].get("restart") in ("unless-stopped", "always", "on-failure"), \
            f"{name} needs a restart policy"
    assert {n: v for n, v in measured["networks"].items() if n != "metrics"} == plain["networks"]
    assert measured["networks"]["metrics"].get("internal") is True, "`metrics`: an internal network"
    prometheus = services["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prometheus["image"]), \
        f"the official Prometheus image, a pinned tag: {prometheus['image']}"
    assert re.fullmatch(r"nginx/nginx-prometheus-exporter:\d+\.\d+\.\d+", services["nginx-exporter"]["image"])
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"nginx", "prometheus"}, f"who publishes a port: {sorted(published)}"
    for port in prometheus["ports"]:
        assert port.get("host_ip") == "127.0.0.1" and str(port["target"]) == "9090", \
            f"Prometheus' UI on 127.0.0.1 only: {port}"
    for mount in prometheus.get("volumes", []):
        assert mount["type"] == "bind" and mount.get("read_only"), \
            f"Prometheus gets its configuration read-only at run time: {mount}"
    configs = {Path(m["target"]).name: Path(m["source"]) for m in prometheus["volumes"]}
    assert configs == {"prometheus.yml": lesson / "prometheus.yml",
                       "rules.yml": lesson.parent / "07_metrics" / "rules.yml"}, \
        f"lesson 06's prometheus.yml and lesson 07's rules.yml, not a copy: {configs}"


def test_prometheus_reaches_no_uwsgi_protocol(lesson):
    # Who shares a network with Prometheus may be scraped, so may be spoken
    # to: only HTTP servers there, never a uWSGI socket.
    config = compose.config(lesson / compose.COMPOSE_FILE, profiles=(compose.METRICS_PROFILE,))
    services, networks = config["services"], config["networks"]
    seen = set(services["prometheus"]["networks"])
    for name in seen:
        members = {s for s, service in services.items() if name in (service.get("networks") or {})}
        assert not members & {"uwsgi-uds", "uwsgi-tcp"}, \
            f"network {name!r} has Prometheus and {sorted(members & {'uwsgi-uds', 'uwsgi-tcp'})}: " \
            "it could speak the uwsgi protocol to them"
        assert members <= {"prometheus", "nginx", "uwsgi-uds-metrics", "uwsgi-tcp-metrics"}, sorted(members)
    assert "upstreams" not in seen and networks["upstreams"].get("internal") is True
    assert services["nginx-exporter"].get("network_mode") == "service:nginx", \
        "the exporter reads stub_status on nginx's own 127.0.0.1, in nginx's network namespace"
    for name in ("uwsgi-uds-metrics", "uwsgi-tcp-metrics"):
        service = services[name]
        assert service["command"] == ["python", "07_metrics/metrics_mule.py"], \
            f"{name} runs lesson 07's metrics server (HTTP), nothing else: {service['command']}"
        assert set(service["networks"]) == {"metrics"}, f"{name}: on `metrics` only"
        mounts = [v for v in service.get("volumes", [])] + \
            [{"read_only": v.endswith(":ro")} for v in service.get("volumes_from", [])]
        assert mounts and all(m.get("read_only") for m in mounts), f"{name} reads the numbers, read-only"
    for ini, directory in (("uwsgi-uds.ini", "metrics1"), ("uwsgi-tcp.ini", "metrics2")):
        text = (lesson / ini).read_text()
        assert re.search(r"^wsgi-file\s*=\s*%d\.\./07_metrics/instrumented\.py\s*$", text, re.M), \
            f"{ini} serves lesson 07's instrumented app"
        assert f"PROMETHEUS_MULTIPROC_DIR=$(RUN_DIR)/{directory}" in text
        assert "mule" not in re.sub(r"^\s*;.*$", "", text, flags=re.M), \
            f"{ini}: no metrics server inside the uWSGI container (it would need a network)"
    site = (lesson.parent / "07_metrics" / "status.conf.template").read_text()
    assert re.search(r"^\s*listen 127\.0\.0\.1:\$\{STATUS_PORT\};", site, re.M), \
        "stub_status listens on nginx's 127.0.0.1 only"
    scrape = services["nginx-exporter"]["command"]
    port = services["nginx"]["environment"]["STATUS_PORT"]
    assert any(f"http://127.0.0.1:{port}/stub_status" in a for a in scrape), scrape


def test_prometheus_config_is_valid_and_scrapes_each_upstream(lesson, tmp_path):
    # promtool as run.sh runs it: the config and lesson 07's rules.yml side by side
    (tmp_path / "prometheus.yml").write_text((lesson / "prometheus.yml").read_text())
    (tmp_path / "rules.yml").write_text((lesson.parent / "07_metrics" / "rules.yml").read_text())
    out = subprocess.run([tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"promtool check config:\n{out.stdout}{out.stderr}"
    jobs = {j["job_name"]: [t for c in j["static_configs"] for t in c["targets"]]
            for j in yaml.safe_load((lesson / "prometheus.yml").read_text())["scrape_configs"]}
    assert sorted(jobs["app"]) == ["uwsgi-tcp-metrics:9102", "uwsgi-uds-metrics:9101"], \
        f"one target per uWSGI service, its own metrics server, never nginx: {jobs['app']}"
    assert jobs["nginx"] == ["nginx:9113"], jobs["nginx"]


def seconds(duration: str) -> float:
    """A Compose duration (40s, 1m30s, 1.5s) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"([\d.]+)(ms|h|m|s)", duration)
    assert parts, f"not a Compose duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_stop_grace_period_is_uwsgis_mercy(lesson):
    # SIGTERM is a graceful stop: uWSGI waits for its workers, up to the
    # mercy. Docker's default 10 s would SIGKILL requests still running.
    workers = (lesson.parent / "03_uwsgi" / "workers.ini").read_text()
    assert re.search(r"^hook-master-start\s*=\s*unix_signal:15 gracefully_kill_them_all\s*$", workers, re.M), \
        "lesson 03's workers.ini should make SIGTERM a graceful stop"
    mercy = int(re.search(r"^worker-reload-mercy\s*=\s*(\d+)", workers, re.M).group(1))
    services = compose.config(lesson / compose.COMPOSE_FILE)["services"]
    for name in ("uwsgi-uds", "uwsgi-tcp"):
        grace = services[name].get("stop_grace_period")
        assert grace and seconds(grace) >= mercy, \
            f"{name}: stop_grace_period should be uWSGI's mercy, {mercy}s (worker-reload-mercy), not {grace}"


def test_no_world_writable_socket_anywhere(lesson):
    # (comments may say why not: only what the files do counts)
    texts = {compose.COMPOSE_FILE: json.dumps(compose.config(lesson / compose.COMPOSE_FILE))}
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
    builds = [a for stage in py[:-1] for w, a in stage if w == "RUN" and "pip wheel" in a]
    assert builds and any("libssl-dev" in a for stage in py[:-1] for w, a in stage if w == "RUN"), \
        "uWSGI's build stage needs OpenSSL's headers (libssl-dev): without them uWSGI has no ssl-socket"
    ngx = stages(lesson / "Dockerfile-nginx")
    assert len(ngx) == 1 and re.fullmatch(r"nginx:1\.\d+(\.\d+)?", ngx[0][0][1]), \
        "Dockerfile-nginx: FROM a pinned official nginx, e.g. nginx:1.27"
    dests = {dest for _, dest in copy_lines(ngx[0])}
    page = compose.config(lesson / compose.COMPOSE_FILE)["services"]["nginx"]["environment"]["STATIC_ROOT"]
    assert dests == {"/etc/nginx/templates/", page.rstrip("/") + "/"}, \
        "the templates go to /etc/nginx/templates/ (the image renders them at start), " \
        f"the page to STATIC_ROOT ({page}), nowhere else"


def test_images_use_the_lessons_own_files(lesson):
    config = compose.config(lesson / compose.COMPOSE_FILE)
    context = Path(config["services"]["uwsgi-uds"]["build"]["context"])
    assert context == ROOT, "the build context is the repository root"
    app = Image(lesson / "Dockerfile-python", context)
    sources = {p.relative_to(ROOT).as_posix() for p in app.files.values()}
    for needed in ("lessons/02_segmentation/inference.py", "lessons/03_uwsgi/workers.ini",
                   "lessons/05_multi_upstream/inference1.ini",
                   "lessons/05_multi_upstream/inference2.ini",
                   "lessons/07_metrics/instrumented.py", "lessons/07_metrics/metrics_mule.py"):
        assert needed in sources, f"Dockerfile-python should COPY {needed}, the lesson's own file"
    ngx = Image(lesson / "Dockerfile-nginx", context)
    templates = {p.name for dest, p in ngx.files.items() if dest.startswith("/etc/nginx/templates/")}
    assert templates == {"inference.conf.template", "upstream.conf.template", "status.conf.template"}
    page = {p.relative_to(ROOT).as_posix() for dest, p in ngx.files.items()
            if not dest.startswith("/etc/nginx/templates/")}
    static = {p.relative_to(ROOT).as_posix() for p in (ROOT / "lessons/04_nginx/static").rglob("*") if p.is_file()}
    assert page == static, "Dockerfile-nginx should COPY lesson 04's page, lessons/04_nginx/static/, and only it"


# Docker's .dockerignore rules, as moby's patternmatcher applies them (see workshop/dockerignore.py).
DOCKER_RULES = [
    (["*"], "a.py", True),
    (["*"], "lessons/a.py", True),                         # through its folder `lessons`
    (["*.py"], "lessons/a.py", False),                     # `*` stays within one element
    (["**/*.py"], "lessons/02/a.py", True),
    (["**/*.py"], "a.py", True),                           # `**/` spans zero elements too
    (["**/__pycache__"], "lessons/06_docker/__pycache__/x.pyc", True),
    (["lessons/**"], "lessons/02/deep/a.py", True),
    (["a?.py"], "ab.py", True),
    (["a?.py"], "a/.py", False),
    (["*", "!lessons/06_docker/"], "lessons/06_docker/healthcheck.py", False),  # cleaned like a path
    (["*", "!lessons/06_docker/"], "lessons/05/x.ini", True),
    (["*", "!lessons/*.py", "lessons/b.py"], "lessons/b.py", True),              # the last match wins
    (["*", "!lessons/*.py", "lessons/b.py"], "lessons/a.py", False),
    (["/out"], "out/x.png", True),                         # a leading / is the context's root
    (["./site"], "site/index.html", True),
]


def test_dockerignore_matcher_follows_dockers_rules():
    wrong = [(patterns, path, expected) for patterns, path, expected in DOCKER_RULES
             if dockerignore.excludes(patterns, path) != expected]
    assert not wrong, f"workshop/dockerignore.py disagrees with Docker on (patterns, path, excluded): {wrong}"


def test_dockerignore_sends_what_the_images_copy_and_little_else(lesson):
    context = ROOT
    patterns = dockerignore.read(context)
    for name in ("Dockerfile-python", "Dockerfile-nginx"):
        for stage in stages(lesson / name):
            for sources, _ in copy_lines(stage):
                for source in sources:
                    assert not dockerignore.excludes(patterns, source), \
                        f"{name} copies {source}, but .dockerignore keeps it out of the build context"
    for big in (".venv/bin/python", ".git/HEAD", "site/index.html", "out/x.png",
                "lessons/02_segmentation/__pycache__/voc.cpython-311.pyc"):
        assert dockerignore.excludes(patterns, big), f".dockerignore should leave out {big}"
    size = dockerignore.sent_size(context, patterns)
    assert size < 1_000_000, f"the build context would be {size / 1e6:.1f} MB: tighten .dockerignore"


def test_healthcheck_is_unhealthy_when_nothing_listens(lesson, tmp_path):
    for target in (str(tmp_path / "none.sock"), f"127.0.0.1:{free_port()}"):
        out = subprocess.run([sys.executable, str(lesson / "healthcheck.py"), target],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 1, f"healthcheck.py {target} should fail: {out.stdout}{out.stderr}"
