"""The model with no HTTP, in processes of its own (torch never runs in the benchmark's
process, which forks wrk, uWSGI and nginx), one torch thread each.

    python -m bench.inproc limit forward,pipeline --image cat.jpg --seconds D --signals DIR
        for each phase: prints "READY forward", waits for DIR/go-forward (N
        processes start together), warms up, runs the network's forward
        pass alone on the app's input for D seconds, prints "RESULT forward" +
        the times, idles until DIR/done-forward; then the app's whole pipeline.
        A phase may come back (forward.1, forward.2: the part after the dot
        names the round).

    python -m bench.inproc model --photos photos.json --weights-out w.pth [--quick]
        the pipeline before and after the lessons' levers, step by step; the forward
        pass's layouts, precisions and batch sizes; PNG vs JSON by photo size.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.models.segmentation import LRASPP_MobileNet_V3_Large_Weights

from bench.measure import median
from workshop import images
from workshop.lessons import REFERENCE, import_module

PRETRAINED = Path(torch.hub.get_dir()) / "checkpoints" / "lraspp_mobilenet_v3_large-d234d4ea.pth"
SAMPLES = ("chelsea", "astronaut", "coffee")


def timed(fns: dict, repeat: int, warmup: bool = True) -> dict:
    """Median ms of each function, run in turns so that the machine's drift hits them alike."""
    for fn in fns.values() if warmup else []:
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000)
    return {name: median(xs) for name, xs in times.items()}


@torch.inference_mode()
def layers(net, batch):
    """The forward pass as the benchmark counts it: the network's layers, up to their 65 x 65 scores.
    Scaling those to a size is the app's own step (segmentation.class_scores)."""
    return net.classifier(net.backbone(batch))


def limit(args, seg, voc) -> None:
    model = seg.load_model("random", "fp32")
    data, signals = Path(args.image).read_bytes(), Path(args.signals)
    batch = model.preprocess(seg.decode_image(data, 10**8).image).unsqueeze(0)

    def forward():
        layers(model.net, batch)

    def pipeline():
        voc.mask_to_png(seg.predict(model, seg.decode_image(data, 10**8)))
    for what in args.what.split(","):
        one = pipeline if what.split(".")[0] == "pipeline" else forward
        print(f"READY {what}", flush=True)
        while not (signals / f"go-{what}").exists():  # seldom: no wake-ups to disturb a stack measured now
            time.sleep(0.01)
        for _ in range(args.warmup):  # after "go": never beside the parent's own measurements
            one()
        samples, started = [], time.perf_counter()
        while time.perf_counter() < started + args.seconds:
            t0 = time.perf_counter()
            one()
            samples.append(round((time.perf_counter() - t0) * 1000, 2))
        print(f"RESULT {what} " + json.dumps({"seconds": round(time.perf_counter() - started, 3),
                                             "samples_ms": samples, "input": list(batch.shape)}), flush=True)
        while not (signals / f"done-{what}").exists():  # idle until told, for the parent to read our CPU time
            time.sleep(0.01)


class Before:
    """The pipeline as lesson 02 wrote it before the levers: a full decode, two copies
    (EXIF, RGB), the weights' own transforms (new tensors at each step), a contiguous
    network, argmax(0), np.unique over the full-size mask, PNG at zlib's defaults."""

    def __init__(self, model):
        self.model, self.net = model, copy.deepcopy(model.net).to(memory_format=torch.contiguous_format)
        self.preprocess = LRASPP_MobileNet_V3_Large_Weights.DEFAULT.transforms()

    def decode(self, data):
        img = Image.open(io.BytesIO(data))
        img.load()
        return img

    def upright(self, img):
        return ImageOps.exif_transpose(img).convert("RGB")

    @torch.inference_mode()
    def forward(self, batch):
        return self.net(batch)["out"][0]

    def classes(self, logits):
        return logits.argmax(0).to(torch.uint8).numpy()

    def png(self, mask, voc):
        img = Image.frombytes("P", mask.shape[::-1], np.ascontiguousarray(mask).tobytes())
        img.putpalette(voc.PALETTE)
        img.save(buf := io.BytesIO(), format="PNG")
        return buf.getvalue()

    def mask(self, data):
        img = self.upright(self.decode(data))
        mask = self.classes(self.forward(self.preprocess(img).unsqueeze(0)))
        return np.asarray(Image.fromarray(mask).resize(img.size, Image.NEAREST))

    def request(self, data, voc):
        mask = self.mask(data)
        return self.png(mask, voc), [voc.CLASSES[i] for i in np.unique(mask)]


def profile(seg, voc, model, before: Before, data: bytes, repeat: int, warmup: bool) -> dict:
    """Each step of one request before and after the levers (as the lesson's code does them), and the whole."""
    def draft_decode():
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (seg.MODEL_SIDE, seg.MODEL_SIDE))
        img.load()
        return img

    def upright(img):
        ImageOps.exif_transpose(img, in_place=True)
        return seg.to_rgb(img)

    def forward():
        return layers(net, batch)

    @torch.inference_mode()
    def scale(scores, size):  # the last step of LRASPP's forward(), to a size of our choice
        return torch.nn.functional.interpolate(scores, size=size, mode="bilinear", align_corners=False)[0]

    def request():
        mask, classes = seg.predict(model, seg.decode_image(data, 10**8), return_classes=True)
        return voc.mask_to_png(mask), classes
    photo = seg.decode_image(data, 10**8)
    full, small = before.decode(data), draft_decode()
    upright_full = before.upright(full)
    batch_full, batch = before.preprocess(upright_full).unsqueeze(0), model.preprocess(photo.image).unsqueeze(0)
    net, old_net = model.net, before.net
    scores_full, scores = layers(old_net, batch_full), forward()
    with torch.inference_mode():  # as in predict: no autograd records in the steps timed below
        logits_full, logits = before.forward(batch_full), seg.class_scores(net, batch, photo.size)
    old_mask = before.classes(logits_full)
    small_mask, mask = logits.max(0).indices.to(torch.uint8).numpy(), seg.predict(model, photo)
    steps = {"decode the JPEG": (lambda: before.decode(data), draft_decode),
             "EXIF orientation + RGB": (lambda: before.upright(full), lambda: upright(small)),
             "resize + normalise": (lambda: before.preprocess(upright_full), lambda: model.preprocess(photo.image)),
             "forward pass (the network's layers)": (lambda: layers(old_net, batch_full), forward),
             "scores to the mask's size": (lambda: scale(scores_full, batch_full.shape[-2:]),
                                           lambda: scale(scores, logits.shape[-2:])),
             "class of each pixel": (lambda: before.classes(logits_full),
                                     lambda: logits.max(0).indices.to(torch.uint8).numpy()),
             "mask to the upload's size": (
                 lambda: Image.fromarray(old_mask).resize(photo.size, Image.NEAREST),
                 lambda: small_mask if small_mask.shape == mask.shape else
                 Image.fromarray(small_mask).resize(photo.size, Image.NEAREST)),
             "class names (X-Classes)": (lambda: np.unique(mask), lambda: voc.classes_in(small_mask)),
             "PNG encode": (lambda: before.png(mask, voc), lambda: voc.mask_to_png(mask)),
             "whole request": (lambda: before.request(data, voc), request)}
    ms = timed({(name, when): fn for name, pair in steps.items() for when, fn in zip(("before", "after"), pair)},
               repeat, warmup)
    return {"photo": "x".join(map(str, photo.size)), "megapixels": round(photo.size[0] * photo.size[1] / 1e6, 2),
            "bytes": len(data), "full_size": list(photo.size)[::-1], "decoded_at": list(photo.image.size)[::-1],
            "model_input_before": list(batch_full.shape[-2:]),
            "model_input": list(batch.shape[-2:]), "repeats": repeat, "whole_over_forward": {
                when: round(ms[("whole request", when)] / ms[("forward pass (the network's layers)", when)], 2)
                for when in ("before", "after")},
            "steps": [{"step": name, "before_ms": ms[(name, "before")], "after_ms": ms[(name, "after")]}
                      for name in steps]}


def agreement(a: np.ndarray, b: np.ndarray, classes: list[str]) -> dict:
    """Pixels that differ, and the IoU of each class found in either mask."""
    iou = {classes[c]: round(float(np.sum((a == c) & (b == c)) / np.sum((a == c) | (b == c))), 4)
           for c in np.union1d(np.unique(a), np.unique(b))}
    return {"pixels": int(a.size), "differ": int(np.sum(a != b)), "agree_pct": round(100 * float(np.mean(a == b)), 4),
            "iou": iou, "mean_iou": round(float(np.mean(list(iou.values()))), 4)}


def formats(voc, mask: np.ndarray, repeat: int) -> dict:
    png, js = voc.mask_to_png(mask), voc.mask_to_json(mask)
    assert np.array_equal(voc.mask_from_png(png), mask)
    ms = timed({"png": lambda: voc.mask_to_png(mask), "json": lambda: voc.mask_to_json(mask)}, repeat, warmup=False)
    return {"png_bytes": len(png), "json_bytes": len(js), "png_encode_ms": ms["png"], "json_encode_ms": ms["json"],
            "size_ratio_json_over_png": round(len(js) / len(png), 1),
            "time_ratio_json_over_png": round(ms["json"] / ms["png"], 1)}


def model(args, seg, voc) -> dict:
    photos, quick, out = json.loads(Path(args.photos).read_text()), args.quick, {}
    t0 = time.perf_counter()
    m = seg.load_model("random", "fp32")
    t1 = time.perf_counter()
    torch.save(m.net.state_dict(), args.weights_out)
    t2 = time.perf_counter()
    seg.load_model(args.weights_out, "fp32")
    out["builds"] = {"random_ms": round((t1 - t0) * 1000, 1),
                     "from_file_ms": round((time.perf_counter() - t2) * 1000, 1)}
    before = Before(m)
    out["profile"] = [profile(seg, voc, m, before, Path(p["path"]).read_bytes(), (1 if quick else 5)
                              if p["megapixels"] > 1 else (2 if quick else 15), not quick)
                      for p in photos if p["label"] in ("256x256", "12 MP")]

    # The same mask? Before vs after on the sample photos (pretrained weights too, when
    # torch's cache has them: never downloaded here); then layouts, precisions, batches.
    pretrained = seg.load_model(str(PRETRAINED), "fp32") if PRETRAINED.exists() else None
    weights = [("random", m, before)] + ([("pretrained", pretrained, Before(pretrained))] if pretrained else [])
    decoded = {name: (images.photo_bytes(name), seg.decode_image(images.photo_bytes(name), 10**8)) for name in SAMPLES}
    out["before_vs_after"] = [{"weights": label, "photo": name, **agreement(
        old.mask(data), seg.predict(mdl, photo), voc.CLASSES)} for label, mdl, old in weights
        for name, (data, photo) in decoded.items()]
    batch = m.preprocess(seg.decode_image(Path(photos[0]["path"]).read_bytes(), 10**8).image).unsqueeze(0)

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):  # this measures the CPU
            return m.net(batch)
    with torch.inference_mode():
        ms = timed({"contiguous": lambda: before.net(batch), "channels_last": lambda: m.net(batch), "bf16": bf16},
                   3 if quick else 15)
    out["layouts"] = {"input": list(batch.shape), "contiguous_ms": ms["contiguous"],
                      "channels_last_ms": ms["channels_last"],
                      "speedup": round(ms["contiguous"] / ms["channels_last"], 2)}
    rows = []
    for label, fp32, _ in weights:
        low = copy.copy(fp32)
        low.precision = "bf16"
        rows += [{"weights": label, "photo": name, **agreement(seg.predict(fp32, photo), seg.predict(low, photo),
                                                               voc.CLASSES)} for name, (_, photo) in decoded.items()]
    out["precision"] = {"input": list(batch.shape), "fp32_ms": ms["channels_last"], "bf16_ms": ms["bf16"],
                        "speedup": round(ms["channels_last"] / ms["bf16"], 2), "pretrained_available": bool(pretrained),
                        "agreement": rows}
    out["batching"] = []
    for threads in (1,) if quick else (1, os.cpu_count() or 1):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            for size in (1, 2, 4):
                b = batch.repeat(size, 1, 1, 1)
                per = timed({"f": lambda: m.net(b)}, 1 if quick else 6, not quick)["f"] / size
                out["batching"].append({"batch": size, "torch_threads": threads, "ms_per_image": round(per, 1)})
    torch.set_num_threads(1)

    # PNG vs the tutorial's JSON list: the cat at its own size (pretrained weights if cached),
    # a synthetic two-region mask of that size (what a trained model gives), every photo size.
    mask_model = pretrained or m
    cat = seg.predict(mask_model, decoded["chelsea"][1])
    out["mask_formats"] = {"image": f"scikit-image chelsea, {cat.shape[1]}x{cat.shape[0]}",
                           "mask_shape": list(cat.shape), "classes_in_mask": len(np.unique(cat)),
                           "weights": mask_model.weights, **formats(voc, cat, 3 if quick else 15),
                           "json_gzip_bytes": len(gzip.compress(voc.mask_to_json(cat)))}
    h, w = cat.shape
    yy, xx = np.mgrid[0:h, 0:w]
    synth = np.where(((yy - 0.55 * h) / (0.42 * h)) ** 2 + ((xx - 0.5 * w) / (0.33 * w)) ** 2 <= 1, 8, 0)
    out["mask_formats"]["synthetic_two_region"] = formats(voc, synth.astype(np.uint8), 3 if quick else 15)
    out["formats_by_size"] = [{"label": p["label"], "megapixels": p["megapixels"], **formats(voc, seg.predict(
        mask_model, seg.decode_image(Path(p["path"]).read_bytes(), 10**8)), 1 if p["megapixels"] > 1 else 3)}
        for p in photos]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cmd", choices=["limit", "model"])
    parser.add_argument("what", nargs="?", default="forward,pipeline", help="limit: forward, pipeline or both")
    parser.add_argument("--lessons", default=str(REFERENCE))
    for option in ("--image", "--signals", "--photos", "--weights-out"):
        parser.add_argument(option)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # before any torch work, as the app does
    seg = import_module(Path(args.lessons), "02_segmentation", "segmentation")
    voc = import_module(Path(args.lessons), "02_segmentation", "voc")
    if args.cmd == "limit":
        limit(args, seg, voc)
    else:
        print("RESULT " + json.dumps(model(args, seg, voc)), flush=True)


if __name__ == "__main__":
    main()
