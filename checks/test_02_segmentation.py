"""Lesson 02: the segmentation app, model built once, masks that line up, 4xx for bad input."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from workshop import images
from workshop.harness import base_env, concurrently, lesson_server, side_by_side

from checks.utils import mask_of, segment, voc

LESSON = "02_segmentation"
PRETRAINED = Path(os.environ.get(
    "SEG_PRETRAINED_FILE",
    Path.home() / ".cache/torch/hub/checkpoints/lraspp_mobilenet_v3_large-d234d4ea.pth"))


@pytest.fixture(scope="module")
def seg(lessons):
    with lesson_server(lessons, LESSON, env={"SEG_MAX_BYTES": str(2 * 1024 * 1024)}) as server:
        yield server


def expected_mask(reference, photo: bytes) -> np.ndarray:
    segmentation, model = reference
    return segmentation.predict(model, segmentation.decode_image(photo, 10**8))


def test_mask_equals_the_reference_pipeline(seg, reference):
    photo = images.photo_bytes()
    expected = expected_mask(reference, photo)
    served = mask_of(segment(seg, photo))
    assert len(np.unique(expected)) > 1, "the reference mask is one flat class: this check would prove nothing"
    assert served.shape == expected.shape, f"the mask is {served.shape}, the photo's mask {expected.shape}"
    foreign = sorted(set(np.unique(served)) - set(np.unique(expected)))
    assert not foreign, \
        f"the mask holds class ids {foreign} that the network never predicted for this photo: " \
        "a mask of class ids must be resized with Image.NEAREST (any other filter blends ids into new ones)"
    differ = (served != expected).mean()
    assert differ == 0, f"{differ:.1%} of pixels differ from the reference pipeline's mask: " + (
        "only at the edges of regions? take the scores from class_scores (at the upload's size when it is the "
        "smaller), and resize the mask with Image.NEAREST" if differ < 0.05 else
        "preprocess with model.preprocess (it resizes and normalises), batch it, argmax over the 21 classes")


@pytest.mark.parametrize("size", [(451, 300), (333, 517), (64, 48)])
def test_mask_has_the_uploaded_size(seg, size):
    img = images.photo().resize(size)
    mask = mask_of(segment(seg, images.encode(img, "PNG")))
    assert mask.shape == (size[1], size[0]), \
        f"mask is {mask.shape[1]}x{mask.shape[0]} for a {size[0]}x{size[1]} upload: " \
        "resize the mask back to the image size (NEAREST) so the overlay lines up"


def test_exif_orientation_is_respected(seg):
    img = images.photo()  # 451 x 300, stored as is, EXIF says "rotate 90°"
    mask = mask_of(segment(seg, images.with_exif_rotation(img, orientation=6)))
    assert mask.shape == (451, 300), \
        f"mask is {mask.shape}; an EXIF-rotated photo is displayed 300 wide, 451 high: use ImageOps.exif_transpose"


def test_a_12_megapixel_jpeg_gets_a_mask_of_its_full_size_aligned(seg, reference):
    photo = images.encode(images.photo_at(4000, 3000), "JPEG", quality=90)
    served = mask_of(segment(seg, photo))
    assert served.shape == (3000, 4000), \
        f"mask is {served.shape[1]}x{served.shape[0]} for a 4000x3000 upload: a large JPEG may be decoded " \
        "smaller (draft), but the mask must have the upload's own size"
    assert np.array_equal(served, expected_mask(reference, photo)), "the mask differs from the reference pipeline's"
    # Aligned: the same photo, 4x smaller, gives (nearly) the same mask once scaled up.
    small = expected_mask(reference, images.encode(images.photo_at(1000, 750), "JPEG", quality=90))
    agree = (served == np.asarray(Image.fromarray(small).resize((4000, 3000), Image.NEAREST))).mean()
    assert agree > 0.85, f"only {agree:.0%} of the mask agrees with the small photo's: it does not line up " \
                         "with the photo (scaled from the decoded size, not the upload's, or turned?)"


def test_a_large_exif_rotated_jpeg_gets_an_upright_mask(seg):
    upright = images.photo_at(3000, 4000)  # shown 3000 wide, 4000 high; stored sideways, EXIF says "turn me"
    sideways = images.with_exif_rotation(upright.transpose(Image.Transpose.ROTATE_90), orientation=6)
    served, plain = mask_of(segment(seg, sideways)), mask_of(segment(seg, images.encode(upright, "JPEG")))
    assert served.shape == (4000, 3000), \
        f"mask is {served.shape[1]}x{served.shape[0]}; the photo is displayed 3000x4000: turn the size with the pixels"
    agree = (served == plain).mean()
    assert agree > 0.85, f"only {agree:.0%} of the mask agrees with the same photo stored upright: " \
                         "the mask does not line up with the photo as displayed"


def test_json_and_png_carry_the_same_mask(seg):
    photo = images.photo_bytes()
    as_png, as_json = segment(seg, photo), segment(seg, photo, format="json")
    assert as_png.headers["Content-Type"] == "image/png"
    assert as_json.headers["Content-Type"] == "application/json"
    assert np.array_equal(mask_of(as_png), mask_of(as_json))
    assert len(as_png.content) * 10 < len(as_json.content), "the PNG mask should be far smaller than JSON"


def test_accept_header_chooses_the_format(seg):
    r = requests.post(seg.url + "/infer", data=images.photo_bytes(),
                      headers={"Accept": "image/png"}, timeout=60)
    assert r.headers["Content-Type"] == "image/png", "Accept: image/png should get a PNG mask"


def test_answer_names_the_classes_the_weights_and_the_device(seg):
    r = segment(seg, images.photo_bytes())
    assert r.headers.get("X-Model-Weights") == "random", "every answer should say which weights served it"
    assert r.headers["X-Classes"].split(",") == voc.classes_in(mask_of(r))
    ready = requests.get(seg.url + "/readyz", timeout=10).json()
    assert r.headers.get("X-Model-Device") == ready.get("device") == usable_device(), \
        f"the answer says X-Model-Device {r.headers.get('X-Model-Device')!r}, /readyz says " \
        f"{ready.get('device')!r}; SEG_DEVICE=auto should give {usable_device()!r} on this machine"
    assert ("gpu" in ready) == ready["device"].startswith("cuda"), \
        "/readyz reports the GPU (name, memory) exactly when the model is on one"
    assert "segmentation: device " + ready["device"] in seg.log(200), \
        "the start log should say which device the model runs on"


def usable_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def test_model_is_built_once_per_process(seg):
    before = requests.get(seg.url + "/readyz", timeout=10).json()
    concurrently(lambda: segment(seg, images.photo_bytes()).raise_for_status(), times=6, at_once=2)
    after = requests.get(seg.url + "/readyz", timeout=10).json()
    assert after["requests_served"] >= before["requests_served"] + 6
    assert after["model_builds"] == 1, \
        f"the model was built {after['model_builds']} times: build it once at import, not in the request"
    assert after["pid"] == before["pid"]


def test_health_and_readiness(seg):
    alive = requests.get(seg.url + "/healthz", timeout=10)
    ready = requests.get(seg.url + "/readyz", timeout=10).json()
    assert alive.status_code == 200
    assert {"pid", "weights", "torch_threads", "requests_served", "model_builds"} <= ready.keys()
    assert ready["torch_threads"] == 1


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16"])
def test_any_image_mode_is_accepted(seg, mode):
    mask = mask_of(segment(seg, images.in_mode(images.photo(), mode)))
    assert mask.shape == (300, 451), f"a {mode} image should be converted to RGB and segmented"


BAD_INPUTS = {
    "empty body": (b"", 400),
    "not an image": (b"hello, I am text", 400),
    "truncated image": (images.truncated(), 400),
    "400-megapixel bomb": (images.pixel_bomb(), 413),
    "body over the size limit": (os.urandom(3 * 1024 * 1024), 413),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_gets_a_json_4xx(seg, name):
    body, status = BAD_INPUTS[name]
    r = segment(seg, body)
    assert r.status_code == status, f"{name}: got {r.status_code}, expected {status}: {r.text[:200]}"
    assert r.headers["Content-Type"] == "application/json" and r.json().get("error"), \
        f"{name}: the {status} should be JSON with an 'error' saying what is wrong"
    assert segment(seg, images.photo_bytes()).status_code == 200, f"the server stopped serving after: {name}"


def test_wrong_method_and_unknown_format(seg):
    assert requests.get(seg.url + "/infer", timeout=10).status_code == 405
    r = segment(seg, images.photo_bytes(), format="bmp")
    assert r.status_code == 400 and "format" in r.json()["error"]


def test_client_writes_an_overlay(seg, lessons, tmp_path):
    out = tmp_path / "overlay.png"
    run = subprocess.run([sys.executable, "client.py", "--url", seg.url + "/infer", "--out", str(out)],
                         cwd=lessons / LESSON, capture_output=True, text=True, timeout=120,
                         env=base_env())
    assert run.returncode == 0, f"client.py failed:\n{run.stderr[-2000:]}"
    assert "classes found:" in run.stdout and "round trip" in run.stdout
    overlay = Image.open(out)
    assert overlay.size == images.photo().size, "the overlay should be the size of the photo"
    photo = np.asarray(images.photo(), dtype=int)
    assert np.abs(np.asarray(overlay.convert("RGB"), dtype=int) - photo).mean() > 5, \
        "the overlay looks like the bare photo: paint the mask over it"


def _start_with_weights(lessons, weights: str):
    return lesson_server(lessons, LESSON, env={"SEG_WEIGHTS": weights})


def test_weights_file_is_loaded(lessons, reference, tmp_path):
    import torch

    _, model = reference
    path = tmp_path / "my-weights.pth"
    torch.save(model.net.state_dict(), path)
    photo = images.photo_bytes()
    with _start_with_weights(lessons, str(path)) as server:
        r = segment(server, photo)
        assert r.headers["X-Model-Weights"] == "file:my-weights.pth"
        assert np.array_equal(mask_of(r), expected_mask(reference, photo))


def test_bf16_precision_serves(lessons, reference):
    photo = images.photo_bytes()
    with lesson_server(lessons, LESSON, env={"SEG_PRECISION": "bf16"}) as server:
        assert requests.get(server.url + "/readyz", timeout=10).json()["precision"] == "bf16"
        served = mask_of(segment(server, photo))
    fp32 = expected_mask(reference, photo)
    assert served.shape == fp32.shape
    agree = (served == fp32).mean()
    # Untrained weights put many pixels near a tie between two classes: bf16 flips some.
    assert 0.9 < agree < 1, f"{agree:.2%} of the bf16 mask agrees with fp32's: " + (
        "bf16 gave exactly the fp32 mask, is autocast applied?" if agree == 1 else "too far from fp32's")


DEVICES = ["cuda", "cuda:0", "tpu"]
BAD_WEIGHTS = {"text": b"this is not a checkpoint", "wrong-shape": None}   # None: a state dict of the wrong shape


@pytest.fixture(scope="module")
def refused(lessons, tmp_path_factory) -> dict:
    """`python inference.py` with each bad setting, by name: the future of how its start ended.

    Each spends seconds importing torch before it stops, so they run side by
    side (one per core), once for this module's checks.
    """
    import torch

    folder = tmp_path_factory.mktemp("weights")
    for name, content in BAD_WEIGHTS.items():
        if content is None:
            torch.save({"backbone.0.0.weight": torch.zeros(1)}, folder / f"{name}.pth")
        else:
            (folder / f"{name}.pth").write_bytes(content)
    devices = [d for d in DEVICES if not (d.startswith("cuda") and torch.cuda.is_available())]
    settings = {"precision": {"SEG_PRECISION": "fp16"}, **{f"device {d}": {"SEG_DEVICE": d} for d in devices},
                **{f"weights {name}": {"SEG_WEIGHTS": str(folder / f"{name}.pth")} for name in BAD_WEIGHTS}}

    def start(env: dict) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "inference.py"], cwd=lessons / LESSON, capture_output=True,
                              text=True, timeout=120, env=base_env({**env, "PORT": "1"}))
    return side_by_side(start, settings)


def test_unknown_precision_stops_the_start_clearly(refused):
    run = refused["precision"].result()
    assert run.returncode != 0, "the app started with SEG_PRECISION=fp16"
    assert "SEG_PRECISION=fp16" in run.stderr and "Traceback" not in run.stderr, \
        f"expected one clear line naming the setting, got:\n{run.stderr[-1500:]}"


@pytest.mark.parametrize("device", DEVICES)
def test_a_device_that_is_not_there_stops_the_start_clearly(refused, device):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has a usable CUDA device: SEG_DEVICE=cuda serves (checks/test_03_gpu.py)")
    run = refused[f"device {device}"].result()
    assert run.returncode != 0, f"the app started with SEG_DEVICE={device} on a machine without it"
    lines = [line for line in run.stderr.splitlines() if f"SEG_DEVICE={device}" in line]
    assert lines and "Traceback" not in run.stderr, \
        f"expected one clear line naming SEG_DEVICE={device} and why, got:\n{run.stderr[-1500:]}"
    if device.startswith("cuda"):
        assert any(why in lines[0] for why in ("driver", "GPU", "CPU-only")), \
            f"the line should name the cause (no driver, no device, a CPU-only torch): {lines[0]}"


@pytest.mark.parametrize("name", BAD_WEIGHTS)
def test_bad_weights_file_stops_the_start_clearly(refused, name):
    run = refused[f"weights {name}"].result()
    assert run.returncode != 0, "the app started with a broken weights file"
    one_clear_line = "not a state dict" in run.stderr and "Traceback" not in run.stderr
    assert one_clear_line, f"expected one clear line naming the file, got:\n{run.stderr[-1500:]}"


@pytest.mark.pretrained
def test_pretrained_weights_see_the_cat(lessons):
    if not PRETRAINED.exists():
        pytest.skip(f"the pretrained weights are not on this machine ({PRETRAINED}); "
                    "they download on first use with SEG_WEIGHTS=default where there is internet")
    with _start_with_weights(lessons, str(PRETRAINED)) as server:
        mask = mask_of(segment(server, images.photo_bytes()))
    ids, counts = np.unique(mask[mask > 0], return_counts=True)
    assert len(ids), "the pretrained model found nothing but background in the cat photo"
    assert voc.CLASSES[ids[counts.argmax()]] == "cat"
