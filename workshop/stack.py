"""Talking to lesson 06's stack through its nginx: the same for the host run and the engine.

Both runs answer on one URL (nginx's published port); these helpers send
the sample photo, tell which of the two uWSGI services answered (nginx's
X-Upstream header: a unix socket is uwsgi-uds, an address is uwsgi-tcp)
and check that a mask of the photo's size came back through nginx.
"""

from __future__ import annotations

import io

import requests
from PIL import Image as PILImage

from . import images

PHOTO = images.photo_bytes()                      # chelsea, 451 x 300
SMALL = images.encode(images.photo().resize((128, 128)), "JPEG")


def segment(url: str, data: bytes = PHOTO) -> requests.Response:
    return requests.post(url + "/infer", data=data, params={"format": "png"}, timeout=60)


def upstream_kind(resp) -> str:
    addr = resp.headers.get("X-Upstream", "")
    return "unix" if addr.startswith("unix:") else "tcp" if addr else "none"


def assert_mask(resp, size=(451, 300)):
    assert resp.status_code == 200, f"POST /infer answered {resp.status_code}: {resp.text[:200]}"
    assert resp.headers.get("Server") == "nginx", "the answer did not come through nginx"
    mask = PILImage.open(io.BytesIO(resp.content))
    assert mask.size == size, f"the mask is {mask.size}, the photo {size}"
