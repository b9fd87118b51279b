"""Lesson 02 client: send a photo to /infer, draw the mask over it.

    python client.py                          # the scikit-image cat, to 127.0.0.1:5000
    python client.py my_photo.jpg --out overlay.png
    python client.py --url http://127.0.0.1:8080/infer    # any later lesson's server

It asks for a PNG mask (a few KB) instead of the tutorial's JSON list (about
a megabyte for the same mask), then writes the photo with the mask over it.
"""

import argparse
import io
import time

import numpy as np
import requests
from PIL import Image, ImageDraw, ImageOps

from voc import CLASSES, PALETTE, mask_from_json, mask_from_png


def sample_photo(name: str = "chelsea") -> bytes:
    """A real photo that ships offline with scikit-image, as JPEG bytes."""
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(getattr(data, name)()).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def segment(url: str, image: bytes, fmt: str = "png") -> tuple[np.ndarray, requests.Response]:
    resp = requests.post(url, data=image, params={"format": fmt}, timeout=60)
    if not resp.ok:  # the server explains what was wrong in JSON
        raise SystemExit(f"HTTP {resp.status_code}: {resp.text.strip()}")
    mask = mask_from_png(resp.content) if fmt == "png" else mask_from_json(resp.content)
    return mask, resp


def overlay(image: bytes, mask: np.ndarray, alpha: int = 180) -> Image.Image:
    """The photo, each class painted in its fixed VOC colour, and a legend."""
    photo = ImageOps.exif_transpose(Image.open(io.BytesIO(image))).convert("RGBA")
    colours = np.asarray(PALETTE, dtype=np.uint8).reshape(-1, 3)[mask]
    paint = Image.fromarray(colours).convert("RGBA")
    # Background stays see-through; every other class gets the tutorial's alpha 180.
    paint.putalpha(Image.fromarray(np.where(mask > 0, alpha, 0).astype(np.uint8)))
    picture = Image.alpha_composite(photo, paint)
    draw = ImageDraw.Draw(picture)
    for row, class_id in enumerate(int(c) for c in np.unique(mask)):
        y = 8 + row * 18
        draw.rectangle([8, y, 22, y + 14], fill=tuple(PALETTE[3 * class_id:3 * class_id + 3]),
                       outline="white")
        draw.text((28, y + 1), CLASSES[class_id], fill="white", stroke_width=2, stroke_fill="black")
    return picture.convert("RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description="Segment a photo through /infer.")
    parser.add_argument("image", nargs="?", help="a photo (default: scikit-image's cat)")
    parser.add_argument("--url", default="http://127.0.0.1:5000/infer")
    parser.add_argument("--format", choices=["png", "json"], default="png")
    parser.add_argument("--out", default="overlay.png")
    args = parser.parse_args()

    image = open(args.image, "rb").read() if args.image else sample_photo()
    started = time.perf_counter()
    mask, resp = segment(args.url, image, args.format)
    elapsed_ms = (time.perf_counter() - started) * 1000
    overlay(image, mask).save(args.out)
    print(f"classes found: {', '.join(CLASSES[c] for c in np.unique(mask))}")
    print(f"mask {mask.shape[1]}x{mask.shape[0]}, {len(resp.content)} bytes as {args.format}, "
          f"round trip {elapsed_ms:.0f} ms, weights {resp.headers.get('X-Model-Weights')}, "
          f"worker pid {resp.headers.get('X-Worker-Pid')}")
    print(f"overlay written to {args.out}")


if __name__ == "__main__":
    main()
