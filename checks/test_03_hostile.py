"""Lesson 03 against hostile bytes, straight to uWSGI's http-socket, with no nginx in front.

What uWSGI does on its own with oversized headers, chunked and lying
uploads, and an upload slower than harakiri: never a hang, never a 5xx,
and the workers keep serving. Lesson 04's nginx answers the same clients
better (checks/test_04_hostile.py).
"""

import re

import pytest

from workshop.harness import lesson_server
from workshop.procs import wait_for

from checks.utils import (PHOTO_256, chunked, header_lines, mask_of, raw_post, raw_request, segment,
                          uwsgi_workers, voc)

LESSON = "03_uwsgi"
BOUND = 30  # s: every exchange ends well within this, or the check fails with "timeout"


@pytest.fixture(scope="module")
def uwsgi_server(lessons):
    with lesson_server(lessons, LESSON) as server:
        yield server


def buffer_size(server) -> int:
    """workers.ini's buffer-size: how many bytes of request headers uWSGI reads."""
    found = re.search(r"^buffer-size\s*=\s*(\d+)", (server.lesson_dir / "workers.ini").read_text(), re.M)
    return int(found.group(1)) if found else 4096


def test_headers_over_buffer_size_end_the_connection(uwsgi_server):
    # The http-socket has no error page for this: uWSGI reads at most
    # buffer-size bytes of headers, then drops the connection and logs why.
    size = buffer_size(uwsgi_server)
    answer = raw_request(uwsgi_server.url, raw_post(header_lines(size + 1000, size + 1000)), timeout=BOUND)
    assert answer.status in ("no answer", "reset"), \
        f"{size + 1000} bytes of headers got {answer.status}; uWSGI closes such a connection at once"
    wait_for(lambda: f"invalid HTTP request size (max {size})" in uwsgi_server.log(50), timeout=10,
             what=f"uWSGI's 'invalid HTTP request size (max {size})' in its log")
    assert segment(uwsgi_server).status_code == 200


def test_chunked_upload_gets_411_in_json(uwsgi_server):
    # uWSGI 2.0's http-socket passes a chunked body on undecoded and without a
    # length: the app cannot read it and says so (411 Length Required).
    answer = raw_request(uwsgi_server.url, raw_post(b"Transfer-Encoding: chunked\r\n", chunked(PHOTO_256)),
                         timeout=BOUND)
    assert answer.status == 411 and "Content-Length" in answer.json_error(), \
        f"a chunked upload got {answer.status}: {answer.body[:200]!r} (411 in JSON, naming Content-Length)"


def test_body_longer_than_declared_is_cut_at_the_length(uwsgi_server):
    answer = raw_request(uwsgi_server.url,
                         raw_post(body=PHOTO_256 + b"not part of the photo" * 10, length=len(PHOTO_256)),
                         timeout=BOUND)
    assert answer.status == 200, f"got {answer.status}: {answer.body[:200]!r}"
    assert voc.mask_from_png(answer.body).shape == (256, 256)


@pytest.mark.parametrize("then", ["hangs up", "waits"])
def test_body_shorter_than_declared_gets_a_json_400(uwsgi_server, then):
    # The worker reads the body itself: a client that stops short gets a 400
    # when it hangs up, or after uWSGI's socket-timeout (4 s) when it waits.
    answer = raw_request(uwsgi_server.url, raw_post(length=len(PHOTO_256) + 1000),
                         hang_up=then == "hangs up", timeout=BOUND)
    assert answer.status == 400 and answer.json_error(), \
        f"a body 1000 bytes short of its Content-Length got {answer.status}: {answer.body[:200]!r}"
    assert "[uwsgi-body-read]" in uwsgi_server.log(20), "uWSGI's log should say the body was short"
    assert segment(uwsgi_server).status_code == 200


def test_upload_slower_than_harakiri_ends_that_request_only(lessons):
    # harakiri counts from the moment the headers are in, and the worker reads
    # the body itself: an upload trickled over 6 s is killed at 3 s. The client
    # gets no answer; the master replaces the worker. (nginx in front, lesson 04,
    # reads the body first: there the same upload gets 200.)
    with lesson_server(lessons, LESSON, args=["--harakiri", "3"]) as server:
        before = uwsgi_workers(server)
        answer = raw_request(server.url, raw_post(), pieces=7, pause=1.0, timeout=BOUND)
        assert answer.status in ("no answer", "reset"), \
            f"an upload over 6 s got {answer.status} with harakiri = 3 s"
        wait_for(lambda: "HARAKIRI" in server.log(200), timeout=10, what="HARAKIRI in uWSGI's log")
        after = wait_for(lambda: (now := uwsgi_workers(server)) != before and all(p for p, _, _ in now.values())
                         and now, timeout=30, what="the master to replace the worker harakiri killed")
        replaced = [i for i in before if before[i][0] != after[i][0]]
        assert len(replaced) == 1, f"workers (id: pid, respawns, harakiris) {before} -> {after}: one should be new"
        assert mask_of(segment(server)).shape == (256, 256), "the server did not recover after harakiri"
