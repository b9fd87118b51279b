"""Sample photos (offline, from scikit-image) and broken uploads for the checks."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo(name: str = "chelsea") -> Image.Image:
    """chelsea (a cat), astronaut, coffee: real photos that ship with scikit-image."""
    from skimage import data

    return Image.fromarray(getattr(data, name)())


def encode(img: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def photo_bytes(name: str = "chelsea") -> bytes:
    return encode(photo(name), "JPEG", quality=92)


def truncated(name: str = "chelsea") -> bytes:
    data = photo_bytes(name)
    return data[: len(data) // 2]


def pixel_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A small PNG file whose header claims a huge image (400 megapixels)."""
    return encode(Image.new("1", (width, height)), "PNG", optimize=True)


def with_exif_rotation(img: Image.Image, orientation: int = 6) -> bytes:
    """A JPEG whose pixels are stored sideways and EXIF says how to turn them."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif.tobytes())


def in_mode(img: Image.Image, mode: str) -> bytes:
    """The photo converted to an unusual PIL mode, as PNG or TIFF bytes."""
    if mode == "I;16":
        wide = (np.asarray(img.convert("L"), dtype=np.uint16) * 257)
        return encode(Image.fromarray(wide), "PNG")
    converted = img.convert(mode)
    return encode(converted, "TIFF" if mode == "CMYK" else "PNG")
