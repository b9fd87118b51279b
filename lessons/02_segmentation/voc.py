"""Pascal VOC class names and colours, and the two ways to send a mask.

Kept apart from the model code so that a client can decode and draw masks
without installing torch.
"""

import io
import json
import struct
import zlib

import numpy as np
from PIL import Image

CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
    "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]


# The standard VOC colour map: the same class always gets the same colour.
def _voc_palette() -> list[int]:
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


PALETTE = _voc_palette()


def classes_in(mask: np.ndarray) -> list[str]:
    # PIL counts the pixel values in one pass; np.unique would sort them all.
    counts = Image.fromarray(mask).histogram()
    return [name for name, n in zip(CLASSES, counts) if n]


def mask_to_png(mask: np.ndarray) -> bytes:
    """A palette PNG: pixel value = class id, and it also looks right in a viewer."""
    h, w = mask.shape
    # A PNG is a signature, then chunks: the size and kind of image (IHDR),
    # its colours (PLTE), its rows compressed with zlib (IDAT), the end (IEND).
    # Written here rather than by PIL to choose zlib's settings, which PIL
    # does not let us: a large mask then takes clearly less time, at the same size.
    rows = np.zeros((h, w + 1), np.uint8)
    rows[:, 1:] = mask  # each row starts with its filter type: 0, the row as it is
    # zlib's run-length strategy: a mask is long runs of one class id, which
    # this finds much faster than zlib's default search, at about the same
    # size. memLevel 8 is zlib's default; PIL asks for 9, whose larger
    # buffers measured slower on a 12-megapixel mask.
    z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    pixels = z.compress(rows) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0)  # 8 bits a pixel, palette, deflate, filters, no interlace
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"PLTE", bytes(PALETTE)) + \
        _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: its length, its type, the data, a CRC of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def mask_to_json(mask: np.ndarray) -> bytes:
    """The original tutorial's format: a list of rows of class ids."""
    return json.dumps(mask.tolist(), separators=(",", ":")).encode()


def mask_from_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def mask_from_json(data: bytes) -> np.ndarray:
    return np.asarray(json.loads(data), dtype=np.uint8)
