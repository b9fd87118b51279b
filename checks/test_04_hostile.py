"""Lesson 04 against hostile bytes: mutated images, oversized headers, chunked and lying uploads.

Whatever a client sends through nginx, the answer is 200 or a JSON 4xx,
never a 5xx and never silence, and everyone else is still served.
"""

import re
import struct
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from workshop import images
from workshop.harness import lesson_server

from checks.utils import (PHOTO_256, chunked, header_lines, mask_of, raw_post, raw_request, segment,
                          uwsgi_workers, voc)

LESSON = "04_nginx"
# Each process of the stack may map at most this much memory (uWSGI's
# limit-as; the idle workers map ~3.6 GB, mostly torch's libraries). An
# upload that makes a worker ask for gigabytes then fails on its own
# instead of pushing a shared machine out of memory.
LIMIT_AS = ["--limit-as", "8192"]
# The sample photo, small, in every format: the fuzz is about the decoders, not the model.
FILES = images.every_format(images.photo().resize((120, 80)))
EXAMPLES = 150          # mutated uploads per run: 10-30 s on 2 cores, idle to busy
ANSWER_WITHIN = 30      # s: longer than nginx's 25 s, so a hang shows as a timeout here


@pytest.fixture(scope="module")
def stack(lessons):
    with lesson_server(lessons, LESSON, args=LIMIT_AS) as server:
        yield server


def is_json_4xx(status, content_type: str, error) -> bool:
    return isinstance(status, int) and 400 <= status < 500 \
        and content_type.startswith("application/json") and bool(error)


# -- the fuzz: real files, mutated ------------------------------------------

@st.composite
def recipes(draw):
    """A real file and 1-3 things done to it, as plain data (hypothesis prints it on failure)."""
    fmt = draw(st.sampled_from(sorted(FILES)))
    size, steps = len(FILES[fmt]), []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "splice", "claim"]))
        if kind == "flip":      # XOR some bytes, often in the header, where decoders decide
            where = st.integers(0, 255) | st.integers(0, size - 1)
            steps.append((kind, draw(st.lists(st.tuples(where, st.integers(1, 255)), min_size=1, max_size=16))))
        elif kind == "truncate":
            steps.append((kind, draw(st.integers(0, size - 1))))
        elif kind == "splice":  # the first bytes of this file, then the tail of one of any format
            other = draw(st.sampled_from(sorted(FILES)))
            steps.append((kind, draw(st.integers(0, 512)), other, draw(st.integers(0, len(FILES[other]) - 1))))
        else:                   # the header claims another size, often a huge one
            side = st.integers(1, 4096) | st.integers(4096, 2**31 - 1)
            steps.append((kind, draw(side), draw(side)))
    return fmt, steps


def mutated(fmt: str, steps: list) -> bytes:
    data = bytearray(FILES[fmt])
    for kind, *args in steps:
        if not data:
            break
        if kind == "flip":
            for pos, bits in args[0]:
                data[pos % len(data)] ^= bits
        elif kind == "truncate":
            del data[args[0] % len(data):]
        elif kind == "splice":
            cut, other, start = args
            data = data[:cut] + FILES[other][start:]
        else:
            try:
                data = bytearray(images.claiming_size(bytes(data), *args))
            except (ValueError, IndexError, struct.error):
                pass            # the header is already too mangled to find the size in it
    return bytes(data)


def test_mutated_images_get_200_or_a_json_4xx(stack):
    before, seen = uwsgi_workers(stack), {}

    @settings(max_examples=EXAMPLES, derandomize=True, database=None,
              deadline=timedelta(seconds=ANSWER_WITHIN + 20),  # a backstop: the request's timeout comes first
              phases=[Phase.explicit, Phase.generate],          # no shrinking: bounded, and the recipe is short
              suppress_health_check=[HealthCheck.too_slow])
    @given(recipe=recipes())
    def upload(recipe):
        data = mutated(*recipe)
        try:
            r = requests.post(stack.url + "/infer", data=data, params={"format": "png"}, timeout=ANSWER_WITHIN)
        except requests.RequestException as exc:
            raise AssertionError(f"no answer within {ANSWER_WITHIN} s ({type(exc).__name__})") from None
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        if r.status_code == 200:
            mask_of(r)          # a real PNG mask, not just a status
        else:
            error = r.json().get("error") if r.headers.get("Content-Type") == "application/json" else None
            assert is_json_4xx(r.status_code, r.headers.get("Content-Type", ""), error), \
                f"answered {r.status_code} ({r.headers.get('Content-Type')}): {r.text[:200]}"

    upload()
    print(f"answers to {sum(seen.values())} mutated uploads: {dict(sorted(seen.items()))}")
    assert seen.get(200) and len(seen) > 1, f"the fuzz only ever got {seen}: are the mutations too mild or too wild?"
    assert segment(stack, PHOTO_256).status_code == 200, "the stack stopped serving after the fuzz"
    after = uwsgi_workers(stack)
    assert after == before, f"a worker died or was killed during the fuzz (id: pid, respawns, harakiris): " \
        f"{before} -> {after}"


def test_a_long_thin_strip_gets_a_json_4xx(stack):
    # The model scales the short side to 520: without a limit on the shape,
    # this PNG of a few hundred bytes would cost the worker gigabytes.
    strip = images.encode(Image.new("RGB", (20_000, 2), (90, 40, 20)), "PNG")
    r = requests.post(stack.url + "/infer", data=strip, params={"format": "png"}, timeout=ANSWER_WITHIN)
    assert r.status_code in (400, 413) and r.json()["error"], f"a 20000x2 image got {r.status_code}: {r.text[:200]}"
    assert segment(stack, PHOTO_256).status_code == 200


# -- requests nginx itself must refuse ----------------------------------------

# nginx reads request headers into buffers of 8 KB, at most 2 of them
# (large_client_header_buffers 2 8k in the template): beyond that, and for
# requests it cannot parse, it answers 400 itself, in JSON like every error.
NGINX_REFUSES = {
    "a 9 KB header line": raw_post(header_lines(9000, 9000)),
    "40 KB of headers": raw_post(header_lines(40_000, 4000)),
    "Content-Length and Transfer-Encoding": raw_post(b"Transfer-Encoding: chunked\r\n", chunked(PHOTO_256), length=10),
    "a chunk size that is not a number": raw_post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nshort\r\n0\r\n\r\n"),
}
# Headers nginx accepts and passes on: uWSGI's buffer-size must hold them.
# Short header lines grow most in the uwsgi packet (a name becomes HTTP_NAME,
# plus two lengths), and each is one of uWSGI's max-vars.
NGINX_PASSES_ON = {
    "12 KB of headers in 4 KB lines": raw_post(header_lines(12_000, 4000)),
    "900 short headers": raw_post(b"".join(b"X%d: a\r\n" % i for i in range(900))),
}


@pytest.mark.parametrize("name", NGINX_REFUSES)
def test_nginx_refuses_bad_requests_in_json(stack, name):
    answer = raw_request(stack.url, NGINX_REFUSES[name], timeout=ANSWER_WITHIN)
    assert answer.status == 400, f"{name}: {answer.status}, not nginx's 400"
    assert answer.json_error(), f"{name}: nginx's 400 is not JSON: {answer.body[:120]!r}"
    assert segment(stack, PHOTO_256).status_code == 200, "the stack stopped serving"


@pytest.mark.parametrize("name", NGINX_PASSES_ON)
def test_headers_nginx_passes_on_fit_in_uwsgi(stack, name):
    # Were uWSGI's buffer-size smaller than what nginx passes on, uWSGI would
    # drop the request and nginx answer 502.
    answer = raw_request(stack.url, NGINX_PASSES_ON[name], timeout=ANSWER_WITHIN)
    assert answer.status == 200, f"{name} got {answer.status}: {answer.body[:120]!r}"
    assert voc.mask_from_png(answer.body).shape == (256, 256)


# -- uploads that are chunked, or lie about their length ----------------------

def test_chunked_upload_is_segmented(stack):
    # nginx reads a chunked body whole, then passes it on with its length.
    answer = raw_request(stack.url, raw_post(b"Transfer-Encoding: chunked\r\n", chunked(PHOTO_256)),
                         timeout=ANSWER_WITHIN)
    assert answer.status == 200, f"a chunked upload got {answer.status}: {answer.body[:200]!r}"
    assert voc.mask_from_png(answer.body).shape == (256, 256), "the mask is not the photo's size"


def test_body_longer_than_declared_is_cut_at_the_length(stack):
    # The extra bytes are read as the next request on the connection, not as the image.
    answer = raw_request(stack.url, raw_post(body=PHOTO_256 + b"not part of the photo" * 10, length=len(PHOTO_256)),
                         timeout=ANSWER_WITHIN)
    assert answer.status == 200, f"got {answer.status}: {answer.body[:200]!r}"
    assert voc.mask_from_png(answer.body).shape == (256, 256)


def client_body_timeout(server) -> int:
    """nginx's client_body_timeout in seconds, as its effective config says (60 if unset)."""
    conf = (server.run_dir / "nginx").glob("conf.d/*.conf")
    found = re.findall(r"^\s*client_body_timeout\s+(\d+)(s|m)?;", "".join(p.read_text() for p in conf), re.M)
    return int(found[-1][0]) * (60 if found[-1][1] == "m" else 1) if found else 60


@pytest.mark.parametrize("then, logged", [("hangs up", 400), ("waits", 408)])
def test_body_shorter_than_declared_ties_up_no_worker(stack, then, logged):
    # nginx reads the whole body before it passes anything to uWSGI: a client
    # that sends less than it promised ties up no worker, however long it waits
    # (nginx gives up after its client_body_timeout, and logs 408).
    log = stack.run_dir / "nginx" / "inference-access.log"
    start = log.stat().st_size
    with ThreadPoolExecutor(1) as pool:
        lie = pool.submit(raw_request, stack.url, raw_post(length=len(PHOTO_256) + 1000),
                          hang_up=then == "hangs up", timeout=client_body_timeout(stack) + 15)
        assert segment(stack, PHOTO_256).status_code == 200, "a normal upload failed while a client lied"
        answer = lie.result()
    assert answer.status in ("no answer", "reset", logged), \
        f"a body 1000 bytes short of its Content-Length got {answer.status}"
    assert re.search(rf'"POST /infer\S* HTTP/1.1" {logged} .* upstream=- ', log.read_text()[start:]), \
        f"nginx's access log should show the short body as {logged}, not passed to uWSGI (upstream=-)"


def test_upload_slower_than_harakiri_is_buffered_by_nginx(lessons):
    # harakiri starts when uWSGI has the request; nginx passes it on only once
    # the whole body is in, so a slow upload costs uWSGI nothing.
    with lesson_server(lessons, LESSON, args=["--harakiri", "3"]) as server:
        answer = raw_request(server.url, raw_post(), pieces=7, pause=1.0, timeout=ANSWER_WITHIN)
        assert answer.status == 200, f"an upload over 6 s got {answer.status} with harakiri = 3 s"
        assert "HARAKIRI" not in server.log(200), "uWSGI's harakiri ended a request nginx had buffered"
