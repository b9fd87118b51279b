"""Lesson 01: the echo server answers POST /infer with the body plus " Bye!"."""

import subprocess
import sys

import pytest
import requests

from workshop.harness import lesson_server, server_error

LESSON = "01_echo"


@pytest.fixture(scope="module")
def echo(lessons):
    with lesson_server(lessons, LESSON, ready="/healthz") as server:
        yield server


def test_echo_adds_bye(echo):
    r = requests.post(echo.url + "/infer", data=b"Hi there!", timeout=10)
    assert r.status_code == 200, \
        f"POST /infer answered {r.status_code}: {server_error(echo, r) or 'is the route declared for POST?'}"
    assert r.text == "Hi there! Bye!", \
        f"expected 'Hi there! Bye!', got {r.text!r}: return the body, a space, then 'Bye!'"


def test_client_prints_the_answer(echo, lessons):
    out = subprocess.run([sys.executable, "client.py", "--url", echo.url + "/infer"],
                         cwd=lessons / LESSON, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"client.py failed: {server_error(echo) or 'its error is below'}\n{out.stderr}"
    assert out.stdout.strip() == "Hi there! Bye!", f"client.py printed {out.stdout!r}"


def test_non_utf8_body_is_a_400_with_json(echo):
    r = requests.post(echo.url + "/infer", data=b"\xff\xfe\xfa", timeout=10)
    assert r.status_code == 400, \
        f"a body that is not UTF-8 got {r.status_code}: catch UnicodeDecodeError and answer 400" + \
        (f"; {server_error(echo, r)}" if server_error(echo, r) else "")
    assert "error" in r.json(), "the 400 should be JSON with an 'error' field saying what was wrong"
    assert requests.post(echo.url + "/infer", data=b"still there?", timeout=10).ok, \
        "the server stopped answering after a bad request"


def test_get_is_not_allowed(echo):
    r = requests.get(echo.url + "/infer", timeout=10)
    assert r.status_code == 405, f"GET /infer answered {r.status_code}; only POST should be allowed"


def test_listens_on_loopback_only(echo):
    port = echo.url.rsplit(":", 1)[1]
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"],
                               capture_output=True, text=True).stdout
    assert "127.0.0.1:" + port in listening, \
        f"the server should listen on 127.0.0.1 only, ss says:\n{listening}" \
        "\nuse app.run(host='127.0.0.1', ...), not 0.0.0.0"
