"""Sample photos (offline, from scikit-image) and broken uploads for the checks."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def photo(name: str = "chelsea") -> Image.Image:
    """chelsea (a cat), astronaut, coffee: real photos that ship with scikit-image."""
    from skimage import data

    return Image.fromarray(getattr(data, name)())


def photo_at(width: int, height: int, name: str = "chelsea") -> Image.Image:
    """A sample photo stretched to any size, e.g. 4000 x 3000 for a 12-megapixel upload."""
    return photo(name).resize((width, height), Image.BICUBIC)


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


# The upload formats the checks fuzz, each with the options that make the
# decoder run its real code: TIFF compressed (libtiff), WebP lossy (libwebp).
FORMATS = {"JPEG": {"quality": 90}, "PNG": {}, "GIF": {}, "WEBP": {"quality": 80},
           "TIFF": {"compression": "tiff_lzw"}}


def every_format(img: Image.Image | None = None) -> dict[str, bytes]:
    """The photo (the cat unless told) as a file of each format: {"JPEG": b"...", ...}."""
    img = img if img is not None else photo()
    return {fmt: encode(img, fmt, **options) for fmt, options in FORMATS.items()}


def claiming_size(data: bytes, width: int, height: int) -> bytes:
    """The same file with a header that claims width x height pixels (the pixels stay)."""
    out = bytearray(data)
    if data.startswith(b"\x89PNG"):           # IHDR: width, height, then a CRC over it
        struct.pack_into(">II", out, 16, width, height)
        struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])))
    elif data.startswith(b"GIF"):             # the screen, then the first frame
        struct.pack_into("<HH", out, 6, min(width, 0xFFFF), min(height, 0xFFFF))
        table = 3 << ((out[10] & 7) + 1) if out[10] & 0x80 else 0
        frame = out.index(b"\x2c", 13 + table)
        struct.pack_into("<HH", out, frame + 5, min(width, 0xFFFF), min(height, 0xFFFF))
    elif data.startswith(b"\xff\xd8"):        # JPEG: walk the segments to the start of frame
        pos = 2
        while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
            pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
        struct.pack_into(">HH", out, pos + 5, min(height, 0xFFFF), min(width, 0xFFFF))
    elif data[8:12] == b"WEBP":               # a lossy VP8 frame: 14 bits each
        vp8 = data.index(b"\x9d\x01\x2a") + 3
        struct.pack_into("<HH", out, vp8, min(width, 0x3FFF), min(height, 0x3FFF))
    elif data[:2] in (b"II", b"MM"):          # TIFF: tags 256/257 of the first IFD
        order = "<" if data[:2] == b"II" else ">"
        ifd = struct.unpack_from(order + "I", data, 4)[0]
        for i in range(struct.unpack_from(order + "H", data, ifd)[0]):
            entry = ifd + 2 + 12 * i
            tag = struct.unpack_from(order + "H", data, entry)[0]
            if tag in (256, 257):             # as LONGs, so they may exceed 65535
                struct.pack_into(order + "HHII", out, entry, tag, 4, 1, width if tag == 256 else height)
    else:
        raise ValueError("not a JPEG, PNG, GIF, WebP or TIFF file")
    return bytes(out)
