"""Lesson 06, the host run: the compose services as processes on this machine.

The very commands, environments and nginx templates that the compose file
and the Dockerfiles give, started without a container engine: the app
files laid out as the Dockerfile's COPY lines lay them out, the `socks`
volume as a temp folder, service names resolved to 127.0.0.1, each
container port on a free loopback port (workshop/hostrun.py). Proves that
the files fit together, in seconds; test_06_engine.py runs them in real
containers.
"""

from __future__ import annotations

import collections
import stat
from pathlib import Path

import pytest

from workshop import compose, hostrun, images

from checks.utils import assert_mask_through_nginx, segment, upstream_kind


@pytest.fixture(scope="module")
def host_run(lessons):
    with hostrun.running(compose.lesson_folder(lessons)) as run:
        yield run


def test_host_run_segments_through_nginx(host_run):
    assert_mask_through_nginx(segment(host_run.url, images.photo_bytes()))


def test_host_run_round_robin_across_both_services(host_run):
    counts = collections.Counter(upstream_kind(segment(host_run.url)) for _ in range(20))
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
