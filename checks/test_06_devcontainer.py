"""The dev container (.devcontainer/): the README's way in on any laptop.

Seconds, no engine: devcontainer.json parses (JSON with comments), builds
the Dockerfile it names with the repository as context, forwards ports 5000
(the lessons) and 8000 (the guide), runs `./workshop.sh setup` once created,
as a user who is not root, on lesson 06's base image. (hadolint on its
Dockerfile: test_06_files.py.)

With an engine (WORKSHOP_ENGINE=1, as `./workshop.sh check-docker` sets; with
podman, the stand-in base image): what VS Code's Dev Containers or Codespaces
do, by hand, through workshop/engine.py's DevContainer: build the image, run
it with a copy of the repository mounted, run postCreateCommand as the
remote user in a login shell, then `./workshop.sh check 01`. Minutes: the
setup pip-installs the pinned requirements, torch among them, from PyPI.
Not exercised: the editor itself, its port forwarding, Codespaces' machines.
"""

from __future__ import annotations

import os
import re
import string

import pytest

from workshop import compose, engine as engines
from workshop.dockerfiles import stages
from workshop.lessons import ROOT

ENGINE = os.environ.get("WORKSHOP_ENGINE") == "1"
HOW_TO_RUN_ENGINE = ("the dev container check builds its image and runs the setup in it (minutes): "
                     "run it with ./workshop.sh check-docker, or WORKSHOP_ENGINE=1 "
                     ".venv/bin/pytest checks/test_06_devcontainer.py with a Docker engine "
                     "(or podman's API in DOCKER_HOST) at hand")
BUILD_TIMEOUT, SETUP_TIMEOUT, CHECK_TIMEOUT = 1800, 2400, 600
# whichever engine check runs first builds the container and sets it up; the last removes it
engine_check = pytest.mark.timeout(BUILD_TIMEOUT + SETUP_TIMEOUT + CHECK_TIMEOUT + 600)


@pytest.fixture(scope="module")
def config() -> dict:
    return engines.devcontainer_config()


def test_devcontainer_json_reader_keeps_what_only_looks_like_a_comment():
    text = '{\n  // a comment\n  "url": "http://127.0.0.1:8000//x", /* another */ "q": "a\\"//b"\n}\n'
    assert engines.jsonc(text) == {"url": "http://127.0.0.1:8000//x", "q": 'a"//b'}
    # VS Code also takes trailing commas; a comma before a bracket inside a string stays.
    assert engines.jsonc('{"a": [1, 2,], "b": ",}", // x\n}') == {"a": [1, 2], "b": ",}"}


def test_devcontainer_json_builds_the_dockerfile_and_forwards_both_ports(config):
    assert config["_dockerfile"].is_file(), \
        f"build.dockerfile names {config['_dockerfile']}, which does not exist"
    assert config["_context"] == ROOT, \
        f"build.context should be the repository root (\"..\"), not {config['_context']}"
    ports = set(config.get("forwardPorts", []))
    assert {5000, 8000} <= ports, \
        f"forwardPorts should hold 5000 (every lesson's run.sh) and 8000 (./workshop.sh docs), not {sorted(ports)}"
    assert config.get("postCreateCommand") == "./workshop.sh setup", \
        "postCreateCommand should be the README's setup: ./workshop.sh setup"


def test_dev_container_is_lesson_06s_base_and_its_user_is_not_root(config, lessons):
    dockerfile = config["_dockerfile"]
    lesson_base = engines.base_image(compose.lesson_folder(lessons) / "Dockerfile-python")
    assert engines.base_image(dockerfile) == lesson_base, \
        f"the dev container should start FROM lesson 06's base, {lesson_base}"
    final = stages(dockerfile)[-1]
    args = dict(a.split("=", 1) for w, a in final if w == "ARG" and "=" in a)
    users = [string.Template(a).safe_substitute(args) for w, a in final if w == "USER"]
    assert users and users[-1] not in ("root", "0"), "the Dockerfile should end as an ordinary user (USER)"
    assert config.get("remoteUser") == users[-1], \
        f"remoteUser ({config.get('remoteUser')}) should be the Dockerfile's user, {users[-1]}"


@pytest.fixture(scope="module")
def box(config):
    if not ENGINE:
        pytest.skip(HOW_TO_RUN_ENGINE)
    with engines.dev_container(config, build_timeout=BUILD_TIMEOUT) as container:
        setup = container.run(config["postCreateCommand"], timeout=SETUP_TIMEOUT, key="setup_seconds")
        said = [line for line in setup.stdout.splitlines() if line.startswith("[setup]")]
        container.metrics["setup_said"] = said
        venv = container.run("du -sm .venv", timeout=120).stdout.split()
        container.metrics["venv_MB"] = int(venv[0]) if venv and venv[0].isdigit() else None
        container.setup = setup
        yield container


@engine_check
def test_engine_dev_container_post_create_sets_everything_up(box):
    out = box.setup
    assert out.returncode == 0, \
        f"./workshop.sh setup in the dev container failed ({out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}"
    said = "\n".join(box.metrics["setup_said"])
    assert re.search(r"^\[setup\] torch: the \S+ build \(", said, re.M), \
        f"the setup should say which torch build it took:\n{said}"
    ready = re.search(r"^\[setup\] ready: .*torch \S+, uwsgi \S+, nginx version: nginx/\S+", said, re.M)
    assert ready, f"the setup should end ready with torch, uWSGI and nginx:\n{said}"


@engine_check
def test_engine_dev_container_uwsgi_speaks_tls(box):
    # pip compiles uWSGI there; without OpenSSL's headers it has no ssl-socket (lessons 05-08)
    out = box.run(".venv/bin/uwsgi --help", timeout=60)
    assert "--ssl-socket" in out.stdout, \
        f"the dev container's uWSGI has no ssl-socket: was it compiled without libssl-dev?\n{out.stderr[-2000:]}"


@engine_check
def test_engine_dev_container_login_shell_finds_nginx(box):
    # the editor's terminal: a login shell, whose /etc/profile drops /usr/sbin for non-root users
    out = box.run("command -v nginx && nginx -v", timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "/usr/sbin/nginx", \
        f"in the dev container's login shell, nginx should be on PATH (lessons 04-05's run.sh call it):\n" \
        f"{out.stdout}{out.stderr}"


@engine_check
def test_engine_dev_container_passes_check_01(box):
    out = box.run("./workshop.sh check 01", timeout=CHECK_TIMEOUT, key="check_01_seconds")
    table = re.search(r"^\s*(\S)\s+01_echo\s+(.*)$", out.stdout, re.M)
    assert out.returncode == 0 and table and table.group(1) == "✓", \
        f"./workshop.sh check 01 in the dev container ({out.returncode}):\n{(out.stdout + out.stderr)[-4000:]}"
    box.metrics["check_01"] = table.group(2).strip()
