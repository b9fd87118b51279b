"""Lesson 06 in real containers: build both images, run the stack, talk to it, take it down.

Slow (minutes the first time: torch is big), so it runs only when
WORKSHOP_ENGINE=1, which `./workshop.sh check-docker` sets: with Docker if
it answers, otherwise with podman and local stand-in base images
(tools/podman/). Everywhere else these checks skip, saying how to run them.
The stack is driven by workshop/engine.py through Compose.
"""

from __future__ import annotations

import collections
import os

import pytest

from workshop import compose, engine as engines
from workshop.procs import wait_for
from workshop.stack import SMALL, assert_mask, segment, upstream_kind

ENGINE = os.environ.get("WORKSHOP_ENGINE") == "1"
HOW_TO_RUN_ENGINE = ("the engine check builds images and runs containers (minutes the first "
                     "time): run it with ./workshop.sh check-docker, or "
                     "WORKSHOP_ENGINE=1 .venv/bin/pytest checks/test_06_engine.py "
                     "with a Docker engine (or podman's API in DOCKER_HOST) at hand")


@pytest.fixture(scope="module")
def engine(lessons):
    lesson = compose.lesson_folder(lessons)
    if not ENGINE:
        pytest.skip(HOW_TO_RUN_ENGINE)
    with engines.running(lesson) as stack:
        yield stack


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
