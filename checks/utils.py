"""What several check files share: one photo, one way to ask for a mask, one way to read it."""

from __future__ import annotations

import requests

from workshop import images
from workshop.lessons import REFERENCE, import_module

# A 256x256 JPEG: small enough for load runs, big enough to be a real photo.
PHOTO_256 = images.encode(images.photo().resize((256, 256)), "JPEG")
# The reference voc.py decodes masks: a learner's unfinished one must not judge their own answers.
voc = import_module(REFERENCE, "02_segmentation", "voc", as_name="reference_voc")


def segment(server, data: bytes = PHOTO_256, **params) -> requests.Response:
    """POST a photo to /infer of a server (or a base URL); the mask comes back as PNG."""
    url = server if isinstance(server, str) else server.url
    return requests.post(url + "/infer", data=data, params={"format": "png", **params}, timeout=60)


def upstream_kind(resp: requests.Response) -> str:
    """Which of lesson 05's upstreams answered, from nginx's X-Upstream: unix, tcp or none."""
    addr = resp.headers.get("X-Upstream", "")
    return "unix" if addr.startswith("unix:") else "tcp" if addr else "none"


def assert_mask_through_nginx(resp: requests.Response, size=(451, 300)) -> None:
    """A PNG mask of the photo's size came back, and nginx passed it on."""
    assert resp.status_code == 200, f"POST /infer answered {resp.status_code}: {resp.text[:200]}"
    assert resp.headers.get("Server") == "nginx", "the answer did not come through nginx"
    height, width = mask_of(resp).shape
    assert (width, height) == size, f"the mask is {(width, height)}, the photo {size}"


def mask_of(resp: requests.Response):
    """The mask in an answer (PNG or JSON), as a numpy array of class ids."""
    assert resp.status_code == 200, f"/infer answered {resp.status_code}: {resp.text[:300]}"
    kind = resp.headers["Content-Type"]
    return voc.mask_from_png(resp.content) if kind == "image/png" else voc.mask_from_json(resp.content)


def docs_hooks():
    """The guide's mkdocs hooks (scripts/docs/hooks.py), loaded as a module."""
    import importlib.util

    from workshop.lessons import ROOT

    spec = importlib.util.spec_from_file_location("guide_hooks", ROOT / "scripts/docs/hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks
