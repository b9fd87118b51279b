"""The model side of lesson 02: build LRASPP once, turn bytes into a mask.

Nothing here knows about HTTP, so the same functions serve the Flask app,
the checks (which compare the server's answer with an in-process run) and
the benchmarks.
"""

from __future__ import annotations

import ctypes
import io
import logging
import os
import re
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as nnf
import torchvision.transforms.functional as F
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from torchvision.models.segmentation import (
    LRASPP_MobileNet_V3_Large_Weights as Weights,
    lraspp_mobilenet_v3_large,
)

from voc import CLASSES, classes_in

log = logging.getLogger("segmentation")

# voc.py holds the class names, colours and mask formats (no torch needed there,
# so the client stays light). Check they match the weights' own class list.
assert CLASSES[1:] == Weights.DEFAULT.meta["categories"][1:]

# The weights' transforms resize a photo's shorter side to this many pixels,
# then normalise each channel with this mean and standard deviation.
_TRANSFORMS = Weights.DEFAULT.transforms()
MODEL_SIDE = _TRANSFORMS.resize_size[0]
MEAN = torch.tensor(_TRANSFORMS.mean)
STD = torch.tensor(_TRANSFORMS.std)
# SEG_DEVICE: where the network runs. auto (the default) takes a CUDA GPU
# when one is usable, else the CPU; cpu, cuda and cuda:N insist. The model
# and every tensor of a request live there; the mask comes back to the CPU
# to be encoded.
DEVICES = "auto, cpu, cuda or cuda:N"
# SEG_PRECISION: fp32 (the default) or bf16, bfloat16 arithmetic where the
# CPU has it. bf16 is faster but not the same arithmetic: a few pixels near a
# tie between two classes change (the guide measures how many).
PRECISIONS = ("fp32", "bf16")
# The model scales the shorter side up to MODEL_SIDE: a 20000 x 2 strip of a
# few hundred bytes would become 5,200,000 x 520 pixels (gigabytes). Sides
# further apart than this are refused; a wide panorama is about 4:1.
MAX_ASPECT = 10


class BadImage(ValueError):
    """The upload is not something we can segment (the client's fault: 4xx)."""

    status = 400


class ImageTooLarge(BadImage):
    status = 413


@dataclass
class Model:
    net: torch.nn.Module
    weights: str          # "pretrained", "random" or "file:<name>": sent with every answer
    preprocess: object    # image -> input tensor, as the weights were trained (see preprocess)
    precision: str = "fp32"
    device: str = "cpu"   # where net is now: "cpu" or "cuda:N" (see to_device)


@dataclass
class Photo:
    """An upload, decoded: the pixels to segment and the size its mask must have."""

    image: Image.Image                 # upright RGB; a large JPEG is decoded smaller (see decode_image)
    size: tuple[int, int] | None = None  # (width, height) of the upload as displayed: the mask's size

    def __post_init__(self):
        self.size = self.size or self.image.size


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep the memory a forward pass frees, for the next one.

    A forward pass allocates tens of MB of activations (a few MB each) and
    frees them. By default glibc hands blocks that big back to the kernel
    (munmap, or trimming the heap's top), so the next request asks for them
    again and the kernel maps and zeroes each 4 KB page anew: thousands of
    page faults per 520x520 pass, which show as system time in the worker (or
    none at all in another process, whose heap happened to grow differently).
    Keeping them makes every request cost the same, and less. The price: a process
    holds on to its largest request's working memory (RSS stays at its peak).
    Returns False where the C library has no mallopt (musl, macOS): nothing changes.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    # Blocks up to 32 MB (glibc's largest threshold; a 520x520 pass's biggest is
    # 23 MB) come from the heap, not mmap; up to 128 MB free at its top stay.
    return bool(mallopt(M_MMAP_THRESHOLD, 32 * 2**20) and mallopt(M_TRIM_THRESHOLD, 128 * 2**20))


# Here, at import: Flask's server, uWSGI's master (its forked workers inherit
# the setting), the checks and the benchmark all run the model the same way.
keep_freed_memory()

# How many models this process has built. The checks read it from /readyz to
# prove the model is built once per process, never per request.
builds = 0


def choose_device(setting: str | None = None) -> str:
    """SEG_DEVICE -> "cpu" or "cuda:N", decided WITHOUT initialising CUDA.

    uWSGI's master calls this before it forks the workers. Any CUDA call
    there, even torch.cuda.is_available() (it starts the driver), leaves
    every forked worker with "Cannot re-initialize CUDA in forked
    subprocess" at its first CUDA call. So this only asks NVML, the
    driver's management library, how many GPUs there are: that starts no
    CUDA, and leaves nothing behind that a fork inherits.
    """
    setting = setting or os.environ.get("SEG_DEVICE", "auto")
    if setting == "cpu":
        return _chose("cpu", setting, "")
    if setting not in ("auto", "cuda") and not re.fullmatch(r"cuda:\d+", setting):
        raise SystemExit(f"SEG_DEVICE={setting}: use one of {DEVICES}")
    count, why_not = cuda_devices()
    if setting == "auto":
        return _chose("cuda:0" if count else "cpu", setting, why_not)
    # cuda or cuda:N: a GPU or nothing. Serving on the CPU instead would
    # hide the problem behind answers many times slower.
    if not count:
        raise SystemExit(f"SEG_DEVICE={setting}: no CUDA device is usable: {why_not}")
    index = int(setting.partition(":")[2] or 0)
    if index >= count:
        raise SystemExit(f"SEG_DEVICE={setting}: this machine has {count} CUDA device(s), "
                         f"cuda:0 to cuda:{count - 1}")
    return _chose(f"cuda:{index}", setting, "")


def cuda_devices() -> tuple[int, str]:
    """How many CUDA devices this process may use and, if none, why not. Starts no CUDA."""
    if torch.version.cuda is None:
        return 0, (f"this torch ({torch.__version__}) is a CPU-only build: "
                   "install the CUDA wheels (SEG_TORCH_BUILD=cuda ./workshop.sh setup)")
    # torch.cuda.device_count() asks NVML first too, but when NVML fails it
    # asks the CUDA runtime, which initialises CUDA. Ask NVML alone (it also
    # honours CUDA_VISIBLE_DEVICES); below 0 means NVML could not answer.
    count = torch.cuda._device_count_nvml()
    if count > 0:
        return count, ""
    if count == 0:
        return 0, "the NVIDIA driver sees no GPU (or CUDA_VISIBLE_DEVICES hides them all)"
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return 0, "no NVIDIA driver (libnvidia-ml.so.1, its NVML library, is not installed)"
    return 0, "the NVIDIA driver does not answer (NVML could not start)"


def _chose(device: str, setting: str, why_not: str) -> str:
    # One line in the start log: where this app will run, and why.
    because = f"; no GPU: {why_not}" if device == "cpu" and why_not else ""
    print(f"segmentation: device {device} (SEG_DEVICE={setting}{because})", file=sys.stderr, flush=True)
    return device


def to_device(model: Model, device: str) -> Model:
    """Move the network to `device`. On a GPU this initialises CUDA: under
    uWSGI it runs in each worker, after the fork, never in the master."""
    if device != model.device:
        if device.startswith("cuda") and model.precision == "fp32":
            # fp32 means fp32 here too: cuDNN would run the convolutions in
            # TF32 (a shorter mantissa, faster), and pixels near a tie would flip.
            torch.backends.cudnn.conv.fp32_precision = "ieee"
        try:
            model.net.to(device)
        except Exception as exc:  # the driver said yes, CUDA itself says no
            raise SystemExit(f"SEG_DEVICE: cannot use {device}: {exc}") from None
        model.device = device
    return model


def load_model(choice: str | None = None, precision: str | None = None) -> Model:
    """Build LRASPP MobileNetV3-Large with the weights SEG_WEIGHTS asks for,
    to run at the precision SEG_PRECISION asks for (fp32 or bf16). It is
    built on the CPU (safe before a fork); to_device moves it.

    auto     pretrained weights if they can be had, else random (with a warning)
    default  torchvision's pretrained weights (downloaded once, then cached)
    random   untrained weights, seeded, for offline use and tests
    PATH     a state dict saved with torch.save(model.state_dict(), PATH)
    """
    global builds
    choice = choice or os.environ.get("SEG_WEIGHTS", "auto")
    precision = precision or os.environ.get("SEG_PRECISION", "fp32")
    if precision not in PRECISIONS:
        raise SystemExit(f"SEG_PRECISION={precision}: use one of {', '.join(PRECISIONS)}")
    if choice == "auto":
        try:
            net, kind = _pretrained(), "pretrained"
        except Exception as exc:  # no network, no cache: keep teaching offline
            log.warning("!!! pretrained weights unavailable (%s): serving RANDOM "
                        "weights, masks will be meaningless. Set SEG_WEIGHTS to a "
                        ".pth file or 'default' once you are online.", exc)
            net, kind = _random(), "random"
    elif choice == "default":
        net, kind = _pretrained(), "pretrained"
    elif choice == "random":
        net, kind = _random(), "random"
    else:
        net, kind = _from_file(choice), f"file:{os.path.basename(choice)}"
    net.eval()  # inference behaviour for batch norm and dropout
    # channels_last stores each pixel's channels side by side, the layout the
    # CPU's convolution kernels work in: faster, and the same mask. Inputs
    # are converted by the first convolution.
    net.to(memory_format=torch.channels_last)
    builds += 1
    return Model(net=net, weights=kind, preprocess=preprocess, precision=precision)


def preprocess(image: Image.Image) -> torch.Tensor:
    """An RGB photo -> the (3, h, w) tensor the network wants: exactly what
    the weights' own transforms, Weights.DEFAULT.transforms(), give.

    Those resize the shorter side to MODEL_SIDE, then make a float copy,
    divide it by 255 into a new tensor, copy that, subtract the mean and
    divide by the std. Here the same arithmetic, in the same order, runs in
    place on one float copy: the same numbers to the last bit, in less time
    (each new tensor is memory to allocate and fill).
    """
    resized = F.resize(image, [MODEL_SIDE], interpolation=F.InterpolationMode.BILINEAR)
    pixels = torch.from_numpy(np.array(resized))  # (h, w, 3) uint8: each pixel's channels side by side
    x = pixels.to(torch.float32).div_(255)
    # A row in memory is r g b r g b ...: use the mean and std repeated along
    # a whole row rather than 3 values broadcast to every pixel. The same
    # numbers, but torch then runs down long rows instead of 3 values at a
    # time, several times faster.
    rows = x.view(resized.height, resized.width * 3)
    rows.sub_(MEAN.repeat(resized.width)).div_(STD.repeat(resized.width))
    # A view, no copy: (3, h, w) in the channels_last layout the network works in.
    return x.permute(2, 0, 1)


def _pretrained() -> torch.nn.Module:
    return lraspp_mobilenet_v3_large(weights=Weights.DEFAULT)


def _random() -> torch.nn.Module:
    # Seeded, so every process builds the same "random" model and the checks
    # can compare a server's mask with one computed in the test itself.
    torch.manual_seed(int(os.environ.get("SEG_SEED", "0")))
    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                    num_classes=len(CLASSES))
    # Freshly initialised batch-norm layers make every pixel the same class.
    # One pass over seeded noise in training mode gives them real statistics:
    # the masks then follow the shapes in the photo, though the labels mean nothing.
    for layer in net.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = None  # plain average over what it sees
    net.train()
    with torch.no_grad():
        net(torch.randn(4, 3, 224, 224))
    return net


def _from_file(path: str) -> torch.nn.Module:
    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                    num_classes=len(CLASSES))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)  # strict: a wrong file fails now, not later
    except FileNotFoundError:
        raise SystemExit(f"SEG_WEIGHTS={path}: no such file") from None
    except Exception as exc:
        raise SystemExit(f"SEG_WEIGHTS={path} is not a state dict for "
                         f"lraspp_mobilenet_v3_large: {exc}") from None
    return net


def decode_image(data: bytes, max_pixels: int) -> Photo:
    """Bytes from the client -> an upright RGB Photo, or BadImage."""
    if not data:
        raise BadImage("empty body: send the image bytes as the request body")
    try:
        img = Image.open(io.BytesIO(data))
        # Check the size from the header, before decoding a single pixel:
        # a tiny file can claim to be 50000 x 50000 (a decompression bomb).
        if img.width * img.height > max_pixels:
            raise ImageTooLarge(f"image is {img.width}x{img.height} pixels; "
                                f"the limit is {max_pixels} pixels")
        if max(img.size) > MAX_ASPECT * min(img.size):
            raise BadImage(f"image is {img.width}x{img.height} pixels; sides more than "
                           f"{MAX_ASPECT}:1 apart are refused")
        size = img.size
        # The model sees MODEL_SIDE pixels on the shorter side, whatever the
        # upload. A JPEG can be decoded straight at 1/2, 1/4 or 1/8 of its
        # size, much faster than in full: draft() picks the smallest scale
        # that keeps both sides >= MODEL_SIDE. Other formats ignore it.
        img.draft("RGB", (MODEL_SIDE, MODEL_SIDE))
        img.load()  # decode now, so a truncated file fails here as a 4xx
        # Phones store "rotate me" in EXIF: turn the pixels, and the mask's size with them.
        if img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):
            size = size[::-1]
        ImageOps.exif_transpose(img, in_place=True)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("the body is not an image PIL can read (JPEG, PNG, ...)") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    except Exception as exc:  # truncated or corrupt data
        raise BadImage(f"could not decode the image: {exc}") from None
    return Photo(to_rgb(img), size)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, 16-bit, float) -> 8-bit RGB."""
    if img.mode == "RGB":
        return img  # convert() would copy it
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # PIL cannot convert these to RGB directly: scale to 0..255 ourselves.
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        img = Image.fromarray(a.astype(np.uint8), "L")
    return img.convert("RGB")


def class_scores(net: torch.nn.Module, batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The network's 21 scores for each pixel, (21, h, w), at the size the mask needs.

    LRASPP's layers answer at 1/8 of their input (65 x 65 for 520 x 520), and
    its forward() then scales those scores up to the input's size, bilinear.
    This runs the same layers and the same scaling, but to the upload's size
    (`size`, width and height) when that is smaller than the input: a 256 x 256
    photo goes in at 520 x 520, and scoring and comparing 520 x 520 pixels only
    to shrink the mask to 256 x 256 afterwards did four times the work. A
    larger upload gets the input's size, exactly as forward() does, and its
    mask is scaled up (predict).
    """
    height, width = batch.shape[-2:]
    if size[1] < height:           # resized on its shorter side, so both sides are smaller
        width, height = size
    scores = net.classifier(net.backbone(batch))
    return nnf.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)[0]


@torch.inference_mode()  # no autograd bookkeeping: faster and lighter
def predict(model: Model, photo: Photo, return_classes: bool = False):
    """A decoded upload -> uint8 mask of class ids, the upload's own height and width.

    return_classes=True (like np.unique's return_counts) gives (mask, names of
    the classes in it), the names counted the cheap way (see below).
    """
    # autocast wants the kind of device ("cpu" or "cuda"), not its number.
    with torch.autocast(model.device.split(":")[0], dtype=torch.bfloat16, enabled=model.precision == "bf16"):
        # EXERCISE 02.2: preprocess the image and run the network
        # resize to 520, normalise, add the batch dim, then onto the model's device
        batch = model.preprocess(photo.image).unsqueeze(0).to(model.device)
        logits = class_scores(model.net, batch, photo.size)  # (21, h, w)
        # END EXERCISE
    # Two masks come out of this: `small`, at the size of the scores, and
    # `mask`, at the upload's size (the same array when the sizes match).
    # EXERCISE 02.3: one class id per pixel, at the photo's size
    # max(0) is argmax(0), on a faster kernel; .cpu() brings the mask back for the PNG
    small = logits.max(0).indices.to(torch.uint8).cpu().numpy()  # at the size of the scores
    mask = small
    width, height = photo.size
    if mask.shape != (height, width):
        # Scale the mask to the uploaded size so it lines up with the photo.
        # NEAREST keeps class ids intact (no blending of 8 and 15 into 11).
        mask = np.asarray(Image.fromarray(small).resize(photo.size, Image.NEAREST))
    # END EXERCISE
    if not return_classes:
        return mask
    # `mask` is `small`, or `small` scaled UP with NEAREST (class_scores never
    # gives more pixels than the upload has): every pixel of `small` lands on
    # at least one pixel of `mask` (from one output pixel to the next, the
    # input position moves by less than a pixel, so none is skipped). Both
    # hold the same class ids, and counting `small` is far cheaper than
    # counting a 12-megapixel mask.
    return mask, classes_in(small)
