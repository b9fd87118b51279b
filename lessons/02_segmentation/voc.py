"""Pascal VOC class names and colours, and the two ways to send a mask.

Kept apart from the model code so that a client can decode and draw masks
without installing torch.
"""

import io
import json
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
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(mask).tobytes())
    img.putpalette(PALETTE)
    buf = io.BytesIO()
    # zlib's run-length strategy: a mask is long runs of one class id, which
    # this finds much faster than zlib's default search, at about the same size.
    img.save(buf, format="PNG", compress_type=zlib.Z_RLE)
    return buf.getvalue()


def mask_to_json(mask: np.ndarray) -> bytes:
    """The original tutorial's format: a list of rows of class ids."""
    return json.dumps(mask.tolist(), separators=(",", ":")).encode()


def mask_from_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def mask_from_json(data: bytes) -> np.ndarray:
    return np.asarray(json.loads(data), dtype=np.uint8)
