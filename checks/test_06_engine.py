"""Lesson 06 in real containers, step by step as its README goes: the nginx image
alone, the uWSGI image alone speaking HTTP, then the stack with Compose (build
both images, run the stack, talk to it, take it down).

Slow (minutes the first time: torch is big), so it runs only when
WORKSHOP_ENGINE=1, which `./workshop.sh check-docker` sets: with Docker if
it answers, otherwise with podman and local stand-in base images
(tools/podman/). Everywhere else these checks skip, saying how to run them.
The containers and the stack are driven by workshop/engine.py.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import subprocess
import sys
import threading
import time

import pytest
import requests
from PIL import Image

from workshop import compose, door, engine as engines, images
from workshop.harness import LoadRun
from workshop.procs import wait_for

from checks.utils import assert_mask_through_nginx, every_target_up, mask_of, prometheus_api, segment, upstream_kind

ENGINE = os.environ.get("WORKSHOP_ENGINE") == "1"
HOW_TO_RUN_ENGINE = ("the engine check builds images and runs containers (minutes the first "
                     "time): run it with ./workshop.sh check-docker, or "
                     "WORKSHOP_ENGINE=1 .venv/bin/pytest checks/test_06_engine.py "
                     "with a Docker engine (or podman's API in DOCKER_HOST) at hand")


@pytest.fixture(scope="module")
def lesson(lessons):
    folder = compose.lesson_folder(lessons)
    if not ENGINE:
        pytest.skip(HOW_TO_RUN_ENGINE)
    return folder


@pytest.fixture(scope="module")
def engine(lesson):
    with engines.running(lesson) as stack:
        yield stack


engine_check = pytest.mark.timeout(1800)

# Step 2's command, as the README runs it: lesson 03's workers.ini where the
# image has it (WORKDIR /app), with an HTTP socket on every interface of the
# container, since a published port arrives there, not on its loopback.
UWSGI_HTTP = ["uwsgi", "--http-socket", "0.0.0.0:5000", "--ini", "03_uwsgi/workers.ini"]


def assert_removed(box: engines.Container) -> None:
    assert not box.exists(), f"docker rm -f {box.name} left the container behind"

    def port_closed():
        try:
            requests.get(box.url, timeout=2)
        except requests.ConnectionError:
            return True
        return False

    wait_for(port_closed, timeout=15, interval=0.5, what=f"{box.url} to stop answering after docker rm -f")


@engine_check
def test_engine_step1_the_nginx_image_alone_serves_its_welcome_page(lesson):
    image = engines.base_image(lesson / "Dockerfile-nginx")
    with engines.container("ws06-nginx-server", image, port=80) as nginx:
        page = nginx.wait_answer("/", timeout=60)
        assert "Welcome to nginx!" in page.text, \
            f"{image} should serve its welcome page at /, it answered:\n{page.text[:500]}\n{nginx.logs()}"
    assert_removed(nginx)


@engine_check
def test_engine_step2_the_uwsgi_image_alone_speaks_http_and_segments_the_photo(lesson, tmp_path):
    engines.build_image(lesson, "Dockerfile-python", "inference-python")
    # --no-healthcheck: the image's HEALTHCHECK speaks the uwsgi protocol, this uWSGI speaks HTTP
    env = [f"--env={name}={value}" for name, value in engines.weights_env(engines.build_args()).items()]
    with engines.container("ws06-inference-python", "inference-python", port=5000, command=UWSGI_HTTP,
                           options=["--no-healthcheck", *env]) as app:
        app.wait_answer("/readyz", timeout=240)
        width, height = images.photo().size
        assert mask_of(segment(app.url, images.photo_bytes())).shape == (height, width), \
            f"the mask should be the photo's size, {width}x{height}\n{app.logs()}"
        out = tmp_path / "overlay.png"
        client = lesson.parent / "02_segmentation" / "client.py"
        run = subprocess.run([sys.executable, str(client), "--url", app.url + "/infer", "--out", str(out)],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "overlay written to" in run.stdout, \
            f"lesson 02's client.py through the container failed:\n{run.stdout}{run.stderr[-2000:]}\n{app.logs()}"
        assert Image.open(out).size == (width, height), "the overlay should be the size of the photo"
    assert_removed(app)


@engine_check
def test_engine_segments_the_photo_through_the_published_port(engine):
    r = segment(engine.url, images.photo_bytes())
    assert_mask_through_nginx(r)
    if r.headers.get("X-Model-Weights") == "pretrained":
        assert "cat" in r.headers.get("X-Classes", ""), \
            f"the pretrained model should find the cat, found {r.headers.get('X-Classes')}"


@engine_check
def test_engine_round_robin_across_both_services(engine):
    answers = [segment(engine.url) for _ in range(20)]
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


# A stranger's knock: the packet (hex) sent to port 8001 of each host named,
# plain or over TLS (argv[2]), with no client certificate: a stranger has none.
KNOCK = """
import socket, ssl, sys
for host in sys.argv[3:]:
    try:
        s = socket.create_connection((host, 8001), timeout=5)
    except OSError as exc:
        print(host, "cannot connect:", type(exc).__name__)
        continue
    with s:
        try:
            if sys.argv[2] == "tls":
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                s = ctx.wrap_socket(s)
            s.sendall(bytes.fromhex(sys.argv[1]))
            s.settimeout(10)
            print(host, "connected, answer:", s.recv(100))
        except OSError as exc:
            print(host, "connected, no answer:", type(exc).__name__)
"""


@engine_check
def test_engine_only_nginx_reaches_uwsgi_tcp(engine):
    # The uwsgi protocol has no login: this packet asks uWSGI to run `touch`.
    marker = f"/tmp/knocked-{secrets.token_hex(4)}"
    knock = door.packet({**door.REQUEST, "SCRIPT_NAME": "/knock",
                         "UWSGI_FILE": f"exec://touch {marker}"}).hex()
    address = engine.address("uwsgi-tcp", "upstreams")
    # Not on `upstreams`: neither its name nor its address gets through, from
    # nginx's other network (default) or from uwsgi-uds, which has no network.
    outside = {"a container on the default network": engine.stranger("default", KNOCK, knock, "plain",
                                                                      "uwsgi-tcp", address),
               "uwsgi-uds": engine.exec("uwsgi-uds", "python", "-c", KNOCK, knock, "plain", "uwsgi-tcp",
                                        address).stdout}
    for who, said in outside.items():
        assert said.count("cannot connect") == 2, \
            f"{who} should not reach uwsgi-tcp ({address}:8001) at all, it says:\n{said}"
    # On it (here: uwsgi-tcp itself), the knock connects, plain or over TLS,
    # and TLS without the CA's client certificate gets no answer.
    for how in ("plain", "tls"):
        inside = engine.exec("uwsgi-tcp", "python", "-c", KNOCK, knock, how, "127.0.0.1").stdout
        assert "connected" in inside and "HTTP/" not in inside, \
            f"the {how} knock from inside uwsgi-tcp should connect and get no answer: {inside}"
    files = engine.exec("uwsgi-tcp", "ls", "/tmp").stdout.split()
    assert marker.rsplit("/", 1)[1] not in files, \
        f"UWSGI_FILE=exec:// ran a command in uwsgi-tcp: TLS should refuse it\n{engine.logs()}"
    # The image's own health check: /readyz with the probe's certificate, nothing without it.
    check = "python", "/app/06_docker/healthcheck.py"
    with_cert = engine.exec("uwsgi-tcp", *check)
    without = engine.exec("uwsgi-tcp", *check, env={"HEALTHCHECK_TLS": ""})
    assert "-> 200" in with_cert.stdout, f"the health check with its certificate: {with_cert.stdout}{with_cert.stderr}"
    assert "-> 200" not in without.stdout and "healthcheck:" in without.stderr, \
        f"plain uwsgi to the TLS port should get no answer: {without.stdout}{without.stderr}"


# ---- the metrics profile: Prometheus scrapes each uWSGI service and nginx ----


def answered_per_upstream(engine) -> dict[str, float]:
    """seg_requests_total of POST /infer, summed per upstream label, as Prometheus last scraped it."""
    result = prometheus_api(engine.prometheus_url, "query",
                            query='sum by (upstream) (seg_requests_total{route="/infer"})')["result"]
    return {s["metric"]["upstream"]: float(s["value"][1]) for s in result}


@engine_check
def test_engine_prometheus_scrapes_every_target(engine):
    found = every_target_up(engine.prometheus_url, timeout=90, interval=1, explain=engine.logs)
    jobs = collections.Counter(t["labels"]["job"] for t in found)
    assert jobs == {"app": 2, "nginx": 1, "prometheus": 1}, f"targets by job: {dict(jobs)}"
    app = {t["labels"]["upstream"]: t["scrapeUrl"] for t in found if t["labels"]["job"] == "app"}
    assert set(app) == {"uwsgi-uds", "uwsgi-tcp"}, f"one target per uWSGI service: {app}"
    up = prometheus_api(engine.prometheus_url, "query", query="up")["result"]
    assert len(up) == 4 and {s["value"][1] for s in up} == {"1"}, f"up: {up}"
    nginx = prometheus_api(engine.prometheus_url, "query", query="nginx_up")["result"]
    assert [s["value"][1] for s in nginx] == ["1"], f"the exporter should see nginx's stub_status: {nginx}"


@engine_check
def test_engine_prometheus_counts_every_request_once(engine):
    count = 12
    before = answered_per_upstream(engine)
    answers = [segment(engine.url) for _ in range(count)]
    assert [r.status_code for r in answers] == [200] * count
    served = collections.Counter(upstream_kind(r) for r in answers)
    expected = {"uwsgi-uds": before.get("uwsgi-uds", 0) + served["unix"],
                "uwsgi-tcp": before.get("uwsgi-tcp", 0) + served["tcp"]}

    def counted():
        now = answered_per_upstream(engine)
        return now if sum(now.values()) >= sum(expected.values()) else None

    try:
        wait_for(counted, timeout=30, interval=1, what=f"Prometheus to count the {count} requests")
    except TimeoutError:
        pytest.fail(f"after {count} requests Prometheus counts {answered_per_upstream(engine)}, "
                    f"expected {expected}\n{engine.logs()}")
    time.sleep(2)   # two more scrapes: nothing may be counted twice
    now = answered_per_upstream(engine)
    assert now == expected, \
        f"{count} requests through nginx ({dict(served)} by X-Upstream): Prometheus counts {now} in all, " \
        f"expected {expected}: each uWSGI service must count its own requests, every worker once"
    engine.metrics["prometheus_counted"] = now


@engine_check
def test_engine_prometheus_cannot_speak_uwsgi_to_uwsgi_tcp(engine):
    # Prometheus' own networks are `default` and `metrics`: a container on each
    # (not nginx) knocks on uwsgi-tcp by name and by address, as Prometheus would.
    prometheus = engine.container_id("prometheus")
    networks = set(json.loads(engine.inspect(prometheus, "{{json .NetworkSettings.Networks}}")))
    assert networks == {f"{engine.project}_default", f"{engine.project}_metrics"}, networks
    tcp = set(json.loads(engine.inspect(engine.container_id("uwsgi-tcp"), "{{json .NetworkSettings.Networks}}")))
    assert tcp == {f"{engine.project}_upstreams"}, f"uwsgi-tcp should be on `upstreams` only: {tcp}"
    knock = door.packet({**door.REQUEST, "UWSGI_FILE": "exec://true"}).hex()
    address = engine.address("uwsgi-tcp", "upstreams")
    for network in ("default", "metrics"):
        said = engine.stranger(network, KNOCK, knock, "plain", "uwsgi-tcp", address)
        assert said.count("cannot connect") == 2, \
            f"from Prometheus' network {network!r}, uwsgi-tcp ({address}:8001) must be out of reach:\n{said}"
    ui = requests.get(engine.prometheus_url + "/-/ready", timeout=10)
    assert ui.status_code == 200, f"Prometheus' UI on 127.0.0.1:{engine.prometheus_port}: {ui.status_code}"


def reload_nginx(engine) -> None:
    out = engine.exec("nginx", "nginx", "-s", "reload")
    assert out.returncode == 0 and "emerg" not in out.stderr, out.stderr


def answered_by(upstreams: str) -> str:
    """The server that answered, from X-Upstream: the last one nginx tried ("A:8001, unix:..." was retried)."""
    return upstreams.split(", ")[-1]


def tcp_addresses(engine, count: int = 8) -> set[str]:
    """The TCP addresses that answered `count` requests on their own, without a retry."""
    return {r.headers["X-Upstream"] for r in (segment(engine.url) for _ in range(count))
            if upstream_kind(r) == "tcp" and ", " not in r.headers["X-Upstream"]}


@engine_check
def test_engine_stop_is_graceful_requests_in_flight_finish(engine):
    grace = 30   # stop_grace_period = uWSGI's mercy (test_06_files.py checks they agree)
    hold = 4     # seconds a held request takes (?delay=, SEG_DEBUG_DELAY=1 in engine.py's stack)
    held = []

    def hold_one():
        r = segment(engine.url, delay=hold)
        held.append((r.status_code, r.headers.get("X-Upstream", "")))

    # Two held requests, one after the other: round-robin gives each upstream one.
    holders = [threading.Thread(target=hold_one) for _ in range(2)]
    for t in holders:
        t.start()
        time.sleep(0.3)
    tcp = engine.container_id("uwsgi-tcp")
    with LoadRun(lambda: segment(engine.url).status_code, count=30, at_once=2, max_seconds=120) as load:
        time.sleep(0.5)
        stop_at = time.monotonic()
        engine.run("stop", "uwsgi-tcp", timeout=grace + 30)
        stopped_in = time.monotonic() - stop_at
    for t in holders:
        t.join(timeout=60)
    engine.metrics["graceful_stop_seconds"] = round(stopped_in, 1)
    failed = [o for o in load.outcomes if o != 200] + [h for h in held if h[0] != 200]
    assert len(held) == 2 and load.done() == 30 and not failed, \
        f"every request should get its 200 while uwsgi-tcp stops: held {held}, " \
        f"{len(failed)} failed {collections.Counter(map(str, failed))}\n{engine.logs()}"
    on_tcp = [up for _, up in held if ", " not in up and not up.startswith("unix:")]
    assert on_tcp, f"the request uwsgi-tcp held when SIGTERM came should have finished there, " \
                   f"not been retried elsewhere: {held}"
    exit_code = engine.inspect(tcp, "{{.State.ExitCode}}")
    engine.metrics["graceful_stop_exit_code"] = exit_code
    assert stopped_in < grace - 5 and exit_code == "0", \
        f"uwsgi-tcp took {stopped_in:.1f} s to stop, exit code {exit_code} (137 = SIGKILL): " \
        f"a graceful stop ends when the requests do, not at the end of the {grace} s grace period"
    # Back for the checks after this one: start it again, and let nginx look it up again.
    engine.run("up", "-d", "--no-deps", "--no-recreate", "--wait", "--wait-timeout", "240", "uwsgi-tcp",
               timeout=300)
    reload_nginx(engine)
    wait_for(lambda: tcp_addresses(engine), timeout=30, interval=1, what="uwsgi-tcp to answer again")


@engine_check
def test_engine_rolling_recreate_loses_no_request(engine):
    before = tcp_addresses(engine)
    assert len(before) == 1, f"one uwsgi-tcp should answer before the recreate: {before}"

    def one():
        return segment(engine.url).status_code

    # The recreate under load (the old container's graceful stop, the gap),
    # then nginx's reload under load: 120 requests in all, none may fail.
    with LoadRun(one, count=90, at_once=3, max_seconds=240) as during_recreate:
        time.sleep(1)
        engine.run("up", "-d", "--no-deps", "--force-recreate", "--wait", "--wait-timeout", "240",
                   "uwsgi-tcp", timeout=300)
        recreated_after = during_recreate.done()
    new = f"{engine.address('uwsgi-tcp', 'upstreams')}:8001"
    # nginx looked uwsgi-tcp up when it started; the new container may have a
    # new address. A reload looks it up again.
    with LoadRun(one, count=30, at_once=3, max_seconds=120) as during_reload:
        time.sleep(0.5)
        reload_nginx(engine)
    outcomes = during_recreate.outcomes + during_reload.outcomes
    failed = [o for o in outcomes if o != 200]
    assert len(outcomes) == 120 and not failed, \
        f"{len(failed)} of {len(outcomes)} requests failed while uwsgi-tcp was recreated and nginx " \
        f"reloaded: {collections.Counter(failed)}\n{engine.logs()}"
    engine.metrics["recreate"] = {"before": sorted(before), "after": new,
                                  "requests_during_recreate": recreated_after}
    after = wait_for(lambda: tcp_addresses(engine) or None, timeout=30, interval=1,
                     what="the new uwsgi-tcp to answer after nginx reloads")
    assert after == {new}, f"after the reload nginx should send to the new uwsgi-tcp, {new}, not {after}"


@engine_check
def test_engine_scaling_takes_effect_after_nginx_reloads(engine):
    # --no-recreate: leave the running containers alone, only add the new one (podman 4.3
    # would otherwise make Compose recreate them all, nginx included).
    engine.run("up", "-d", "--no-recreate", "--wait", "--wait-timeout", "240", "--scale", "uwsgi-tcp=2",
               timeout=300)

    def tcp_upstreams():
        return {r.headers["X-Upstream"] for r in (segment(engine.url) for _ in range(12))
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
    mounted = engine.volumes_in_use()   # anonymous ones too: Compose does not label those
    engine.down(measure=True)
    left = engine.leftovers(mounted)
    assert not any(left.values()), f"left behind after down -v --profile metrics: {left}"
