"""Lesson 05 in a real browser: lesson 04's upload page in front of two upstreams.

Chromium (Debian's, driven by Playwright) opens the page nginx serves,
uploads the sample photo through the file input and reads the canvas back:
the mask the app sends is drawn over the photo, pixel for pixel. Two uploads
show both upstreams; a text file shows the app's JSON error; the page logs
no error and asks no host but 127.0.0.1. Without chromium these checks
are skipped, saying so (and fail under CI, where setup installs it).
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from workshop import images, page
from workshop.harness import lesson_server

from checks.utils import PHOTO_256, segment, voc

LESSON = "05_multi_upstream"
OPACITY = 0.6




@pytest.fixture(scope="module")
def stack(lessons):
    with lesson_server(lessons, LESSON) as server:
        yield server


@pytest.fixture(scope="module")
def browser(chromium):
    with page.browser(chromium) as b:
        yield b


@pytest.fixture
def visit(browser, stack):
    with page.visit(browser, stack.url + "/") as seen:
        yield seen
        assert all(url.startswith(stack.url + "/") for url in seen.requests), \
            f"the page asked another host: {[u for u in seen.requests if not u.startswith(stack.url)]}"


def test_the_mask_is_drawn_over_the_photo(visit, stack):
    answer = segment(stack, PHOTO_256)
    mask = voc.mask_from_png(answer.content)
    background = mask == 0
    # Untrained weights give a noisy mask; this photo has both kinds of pixel,
    # so neither half of the comparison below is empty.
    assert background.any() and (~background).any(), \
        f"the check needs a mask with background and other classes; this one has {voc.classes_in(mask)}"

    visit.upload("cat.jpg", PHOTO_256)
    assert not visit.page.is_visible("#error"), visit.page.inner_text("#error")
    visit.set_opacity(0)
    photo = visit.canvas()
    visit.set_opacity(OPACITY)
    drawn = visit.canvas()
    assert photo.shape[:2] == mask.shape, f"the canvas is {photo.shape[1::-1]}, the mask {mask.shape[::-1]}"

    assert np.abs(drawn - photo)[background].max() <= 2, "background pixels should show the bare photo"
    colours = np.array(voc.PALETTE, dtype=int).reshape(-1, 3)[mask]
    expected = photo * (1 - OPACITY) + colours * OPACITY
    off = np.abs(drawn - expected)[~background]
    assert off.max() <= 3, f"the class colours are not blended at opacity {OPACITY}: off by up to {off.max():.0f}"
    changed = (np.abs(drawn - photo) > 2).any(axis=2)[~background].mean()
    assert changed > 0.9, f"only {changed:.0%} of the masked pixels differ from the photo"
    assert not visit.console_errors, visit.console_errors


def test_the_legend_and_the_answer_come_from_the_headers(visit, stack):
    visit.upload("cat.jpg", PHOTO_256)
    classes = segment(stack, PHOTO_256).headers["X-Classes"].split(",")
    assert visit.texts("#legend li") == classes, "the legend should list exactly the classes in X-Classes"
    row = visit.texts("#answers tr:first-child td")
    assert len(row) == 5 and row[2] == "random" and float(row[3]) > 0 and float(row[4]) >= float(row[3]), \
        f"the answer's row: X-Upstream, X-Worker-Pid, X-Model-Weights, X-Inference-Ms, round trip: {row}"
    assert visit.page.is_visible("#untrained"), "untrained weights (X-Model-Weights: random) need the loud note"
    assert not visit.console_errors, visit.console_errors


def test_two_uploads_show_both_upstreams(visit):
    visit.upload("cat.jpg", PHOTO_256)
    visit.upload("cat.jpg", PHOTO_256)
    upstreams = [cells[0] for cells in (visit.texts(f"#answers tr:nth-child({n}) td") for n in (1, 2))]
    kinds = {"unix" if u.startswith("unix:") else "tcp" for u in upstreams}   # as utils.upstream_kind
    assert kinds == {"unix", "tcp"}, f"two uploads in a row came from {upstreams}: round-robin shows both"
    assert not visit.console_errors, visit.console_errors


def test_an_exif_rotated_photo_lines_up_with_its_mask(visit, stack):
    rotated = images.with_exif_rotation(images.photo().resize((256, 160)), 6)   # stored 256x160, shown 160x256
    mask = voc.mask_from_png(segment(stack, rotated).content)
    visit.upload("rotated.jpg", rotated)
    assert visit.canvas().shape[:2] == mask.shape == (256, 160), \
        "the photo is drawn turned by its EXIF orientation, as the app decodes it, at the mask's size"
    assert not visit.console_errors, visit.console_errors


def test_a_text_file_shows_the_servers_json_error(visit, stack):
    text = b"this is not a photo\n"
    expected = requests.post(stack.url + "/infer", params={"format": "png"}, data=text, timeout=30)
    assert expected.status_code == 400
    visit.upload("notes.txt", text, mime="text/plain")
    assert visit.page.is_visible("#error") and visit.page.inner_text("#error") == expected.json()["error"]
    # The browser itself reports the 400 of the upload; nothing else may go wrong.
    others = [e for e in visit.console_errors if "status of 400" not in e]
    assert not others, others


def test_an_ordinary_photo_through_lesson_05s_tls(visit):
    # Many TLS records between nginx and uWSGI, not one (16 KB).
    visit.upload("chelsea.jpg", images.photo_bytes())   # 451x300, 38 KB
    assert not visit.page.is_visible("#error"), visit.page.inner_text("#error")
