"""The model with no HTTP at all, run in fresh processes the benchmark starts.

    python -m bench.inproc limit --threads T --seconds D --image cat.jpg
        builds the model (as the app does), warms up, prints "ready", waits for
        a line on stdin (so N processes start together), then runs
        decode -> predict -> PNG mask, the app's own functions, for D seconds
        and prints one JSON line: images, seconds, latency percentiles.

    python -m bench.inproc prep --image cat.jpg --weights-out w.pth
        one process, one torch thread: saves a state dict (for the "weights
        file" runs), times each step of a request (decode, resize, model,
        mask, PNG), and compares the PNG and JSON encodings of the same mask.

Run as separate processes on purpose: torch never runs in the benchmark's
own process, which forks wrk, uWSGI and nginx.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _lesson_modules(lessons: Path):
    sys.path.insert(0, str(lessons / "02_segmentation"))
    import segmentation  # noqa: E402  (the app's own model code)
    import voc  # noqa: E402

    return segmentation, voc


def _pcts(samples_ms: list[float]) -> dict:
    s = sorted(samples_ms)
    if not s:
        return {}

    def pct(q):
        return round(s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))], 1)

    return {"p50": pct(50), "p95": pct(95), "p99": pct(99), "mean": round(statistics.fmean(s), 1)}


def limit(args) -> None:
    import torch

    torch.set_num_threads(args.threads)  # before any torch work, as the app does
    segmentation, voc = _lesson_modules(Path(args.lessons))
    data = Path(args.image).read_bytes()
    model = segmentation.load_model("random")

    def one() -> bytes:
        img = segmentation.decode_image(data, 40_000_000)
        return voc.mask_to_png(segmentation.predict(model, img))

    for _ in range(args.warmup):
        one()
    print("ready", flush=True)
    sys.stdin.readline()  # the go signal
    samples = []
    started = time.perf_counter()
    deadline = started + args.seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        one()
        samples.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - started
    print(json.dumps({"images": len(samples), "seconds": round(elapsed, 3),
                      "threads": torch.get_num_threads(), "latency_ms": _pcts(samples),
                      "samples_ms": [round(x, 2) for x in samples]}), flush=True)
    sys.stdin.readline()  # stay alive until told, so the parent can read our CPU time in /proc


def _median_ms(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 3), out


def prep(args) -> None:
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    segmentation, voc = _lesson_modules(Path(args.lessons))
    result: dict = {}

    # 1. A weights file: the seeded random model (batch norm calibrated), saved
    #    as a plain state dict. Loading it is what SEG_WEIGHTS=/path.pth does.
    t0 = time.perf_counter()
    model = segmentation.load_model("random")
    result["build_random_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    torch.save(model.net.state_dict(), args.weights_out)
    t0 = time.perf_counter()
    segmentation.load_model(args.weights_out)
    result["build_from_file_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    result["weights_file_bytes"] = os.path.getsize(args.weights_out)

    # 2. Where one request's time goes (the app's steps, taken apart).
    data = Path(args.image).read_bytes()
    repeat = args.repeat
    for _ in range(3):  # warm-up
        segmentation.predict(model, segmentation.decode_image(data, 40_000_000))
    decode_ms, img = _median_ms(lambda: segmentation.decode_image(data, 40_000_000), repeat)
    pre_ms, batch = _median_ms(lambda: model.preprocess(img).unsqueeze(0), repeat)
    with torch.inference_mode():
        fwd_ms, logits = _median_ms(lambda: model.net(batch)["out"][0], repeat)
        argmax_ms, mask520 = _median_ms(lambda: logits.argmax(0).to(torch.uint8).numpy(), repeat)
        # The same class ids, found by max(0): a different reduction kernel.
        maxidx_ms, mask520b = _median_ms(lambda: logits.max(0).indices.to(torch.uint8).numpy(), repeat)
        same = bool(np.array_equal(mask520, mask520b))
        resize_ms, mask = _median_ms(
            lambda: np.asarray(Image.fromarray(mask520).resize(img.size, Image.NEAREST)), repeat)
    png_ms, png = _median_ms(lambda: voc.mask_to_png(mask), repeat)
    json_ms, js = _median_ms(lambda: voc.mask_to_json(mask), max(3, repeat // 3))
    whole_ms, _ = _median_ms(lambda: voc.mask_to_png(segmentation.predict(
        model, segmentation.decode_image(data, 40_000_000))), repeat)
    result["profile"] = {
        "image": f"{img.width}x{img.height} JPEG, {len(data)} bytes",
        "model_input": "x".join(str(d) for d in batch.shape[-2:]),
        "torch_threads": torch.get_num_threads(),
        "steps_ms": {"decode JPEG": decode_ms, "resize + normalise": pre_ms,
                     "model forward": fwd_ms, "argmax over 21 classes": argmax_ms,
                     "resize mask back": resize_ms, "PNG encode": png_ms},
        "whole_request_ms": whole_ms,
        "alternative": {"max(0).indices instead of argmax(0)": maxidx_ms, "same_mask": same},
        "json_encode_ms": json_ms, "png_bytes": len(png), "json_bytes": len(js),
    }

    # 2b. The same request through lesson 02's Flask app (test client, no
    #     network, no server), interleaved with the bare pipeline: what Flask
    #     itself adds to one request.
    os.environ.setdefault("SEG_WEIGHTS", "random")
    os.environ["SEG_TORCH_THREADS"] = str(args.threads)
    import inference  # lesson 02's app module: builds its own model
    client = inference.app.test_client()

    def via_flask():
        r = client.post("/infer?format=png", data=data)
        assert r.status_code == 200, r.status_code

    def bare():
        voc.mask_to_png(segmentation.predict(inference.model, segmentation.decode_image(data, 40_000_000)))
    via_flask(), bare()
    flask_ms, bare_ms = [], []
    for _ in range(repeat):
        for fn, out in ((bare, bare_ms), (via_flask, flask_ms)):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1000)
    result["profile"]["flask_test_client_ms"] = round(statistics.median(flask_ms), 1)
    result["profile"]["bare_pipeline_ms"] = round(statistics.median(bare_ms), 1)

    # 3. PNG vs JSON for the same mask, at the sample photo's full size. With
    #    torchvision's pretrained weights if they are already in torch's cache
    #    (never downloaded here), else the seeded random ones.
    from workshop import images
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "lraspp_mobilenet_v3_large-d234d4ea.pth"
    mask_model = segmentation.load_model("default") if cached.exists() else model
    full = images.photo_bytes("chelsea")
    full_img = segmentation.decode_image(full, 40_000_000)
    full_mask = segmentation.predict(mask_model, full_img)
    png_ms, png = _median_ms(lambda: voc.mask_to_png(full_mask), repeat)
    json_ms, js = _median_ms(lambda: voc.mask_to_json(full_mask), repeat)
    assert np.array_equal(voc.mask_from_png(png), full_mask)
    result["mask_formats"] = {
        "image": f"scikit-image chelsea, full size {full_img.width}x{full_img.height} "
                 f"(JPEG {len(full)} bytes)",
        "mask_shape": list(full_mask.shape),
        "classes_in_mask": int(len(np.unique(full_mask))),
        "weights": mask_model.weights,
        "png_bytes": len(png), "json_bytes": len(js),
        "json_gzip_bytes": len(gzip.compress(js, 6)),
        "png_encode_ms": png_ms, "json_encode_ms": json_ms,
        "size_ratio_json_over_png": round(len(js) / len(png), 1),
        "time_ratio_json_over_png": round(json_ms / png_ms, 1) if png_ms else None,
        "repeats": repeat,
    }
    # The untrained model's mask is speckled with many classes; a trained one
    # gives a few large regions (here: background and one cat). For reference
    # only, a SYNTHETIC mask of that kind at the same size: one ellipse of
    # class 8 ("cat") on background. Not a model output.
    h, w = full_mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    blob = (((yy - 0.55 * h) / (0.42 * h)) ** 2 + ((xx - 0.5 * w) / (0.33 * w)) ** 2) <= 1
    synth = np.where(blob, 8, 0).astype(np.uint8)
    png_ms, png = _median_ms(lambda: voc.mask_to_png(synth), repeat)
    json_ms, js = _median_ms(lambda: voc.mask_to_json(synth), repeat)
    result["mask_formats"]["synthetic_two_region"] = {
        "what": "synthetic mask, same size: background + one ellipse of class 8 (cat); "
                "stands in for a trained model's mask, not a model output",
        "png_bytes": len(png), "json_bytes": len(js), "png_encode_ms": png_ms,
        "json_encode_ms": json_ms, "size_ratio_json_over_png": round(len(js) / len(png), 1),
        "time_ratio_json_over_png": round(json_ms / png_ms, 1) if png_ms else None,
    }
    print(json.dumps(result), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lessons", default=str(ROOT / "lessons"))
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("limit")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--image", required=True)
    p = sub.add_parser("prep")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--image", required=True)
    p.add_argument("--weights-out", required=True)
    p.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    {"limit": limit, "prep": prep}[args.cmd](args)


if __name__ == "__main__":
    main()
