"""Lesson 02: a Flask app that segments the image you POST to /infer.

The model is built ONCE, when this module is imported, never inside a
request: building it costs far more than using it. Lessons 03-06 serve this
very file with uWSGI and nginx.

Run it:  python inference.py          (listens on 127.0.0.1:5000)
"""

import os
import time

import torch
from flask import Flask, Response, jsonify, request
from PIL import Image
from werkzeug.exceptions import HTTPException

import segmentation
import voc

# -- settings (environment variables, so uWSGI/Docker can set them too) --
MAX_BYTES = int(os.environ.get("SEG_MAX_BYTES", 10 * 1024 * 1024))   # body size limit
MAX_PIXELS = int(os.environ.get("SEG_MAX_PIXELS", 40_000_000))       # decoded size limit
# One torch thread per process by default: uWSGI runs one process per core,
# and more threads than cores makes them fight (lesson 03 measures it).
# It must be set before any torch work, or forked workers can hang.
torch.set_num_threads(int(os.environ.get("SEG_TORCH_THREADS", "1")))
DEBUG_DELAY = os.environ.get("SEG_DEBUG_DELAY") == "1"  # enables ?delay=S (lesson 03's harakiri demo)

app = Flask(__name__)
app.config["MAX_CONTENT_LENGTH"] = MAX_BYTES  # Flask answers 413 above this

# SEG_DEVICE (auto, cpu, cuda, cuda:N), decided here without starting CUDA.
DEVICE = segmentation.choose_device()
# EXERCISE 02.1: build the model once per process
model = segmentation.load_model()  # once per process, at import time
# END EXERCISE
served = 0                          # requests this process has answered
warmed_up = False                   # has this process run the model once?


def warm_up():
    """Onto the device, then one small forward pass, so the first real
    request is not the slow one."""
    global warmed_up
    segmentation.to_device(model, DEVICE)  # on a GPU: this process's first CUDA call
    segmentation.predict(model, segmentation.Photo(Image.new("RGB", (64, 64))))
    warmed_up = True


try:
    import uwsgi  # only importable inside uWSGI
except ImportError:
    uwsgi = None
if uwsgi is not None and uwsgi.worker_id() == 0:
    # uWSGI's master imports us before it forks the workers (prefork).
    # Warm up in each worker after the fork, never in the master: torch
    # work in the master can leave state that hangs forked workers, and
    # CUDA started in the master fails in every worker ("Cannot
    # re-initialize CUDA in forked subprocess"). So on a GPU each worker
    # moves its copy of the model there itself.
    uwsgi.post_fork_hook = warm_up
else:
    warm_up()  # Flask's server, or a uWSGI worker that imported us itself (lazy-apps)


@app.post("/infer")
def infer():
    global served
    fmt = response_format()
    started = time.perf_counter()
    photo = segmentation.decode_image(request.get_data(), MAX_PIXELS)
    if DEBUG_DELAY and "delay" in request.args:
        time.sleep(float(request.args["delay"]))
    mask, classes = segmentation.predict(model, photo, return_classes=True)
    body = voc.mask_to_png(mask) if fmt == "png" else voc.mask_to_json(mask)
    served += 1
    resp = Response(body, mimetype="image/png" if fmt == "png" else "application/json")
    resp.headers["X-Classes"] = ",".join(classes)
    resp.headers["X-Inference-Ms"] = f"{(time.perf_counter() - started) * 1000:.1f}"
    return resp


def response_format() -> str:
    """?format=png|json wins; otherwise the Accept header; JSON by default."""
    fmt = request.args.get("format")
    if fmt is None:
        best = request.accept_mimetypes.best_match(["application/json", "image/png"])
        fmt = "png" if best == "image/png" else "json"
    if fmt not in ("png", "json"):
        raise segmentation.BadImage(f"unknown format {fmt!r}: use format=png or format=json")
    return fmt


@app.before_request
def chunked_upload():
    """A body sent with Transfer-Encoding: chunked (no Content-Length up front)."""
    env = request.environ
    if env.get("HTTP_TRANSFER_ENCODING", "").lower() != "chunked" or env.get("wsgi.input_terminated"):
        return None  # not chunked, or the server decodes it for us (Flask's own server does)
    if env.get("CONTENT_LENGTH"):
        # nginx read the whole body and passed its length on; uWSGI still hands us
        # the client's "chunked", and Flask would then read no body at all.
        del env["HTTP_TRANSFER_ENCODING"]
        return None
    # uWSGI's http-socket (lesson 03) does not decode chunked bodies.
    return jsonify(error="chunked upload: send a Content-Length, or go through nginx"), 411


@app.after_request
def say_who_answered(resp):
    # Which process and which weights produced this answer: this is how you
    # *see* uWSGI's workers and nginx's round-robin in later lessons.
    resp.headers["X-Worker-Pid"] = str(os.getpid())
    resp.headers["X-Model-Weights"] = model.weights
    resp.headers["X-Model-Device"] = model.device   # cpu, or cuda:0 ...
    return resp


@app.get("/healthz")
def healthz():
    return jsonify(status="alive", pid=os.getpid())


@app.get("/readyz")
def readyz():
    # Ready once this process holds its model; the counters let you check
    # that the model was built once (model_builds) however many requests came.
    if not warmed_up:
        return jsonify(status="warming up", pid=os.getpid()), 503
    return jsonify(status="ready", pid=os.getpid(), weights=model.weights,
                   precision=model.precision, torch_threads=torch.get_num_threads(),
                   model_builds=segmentation.builds, requests_served=served,
                   device=model.device, **gpu_memory())


def gpu_memory() -> dict:
    """On a GPU: its name and the memory this process holds there, in MB."""
    if model.device == "cpu":
        return {}
    mb = 1024 * 1024
    return {"gpu": {"name": torch.cuda.get_device_name(model.device),
                    "memory_allocated_mb": round(torch.cuda.memory_allocated(model.device) / mb, 1),
                    "memory_reserved_mb": round(torch.cuda.memory_reserved(model.device) / mb, 1)}}


# -- errors: always JSON, always the right status, never a stack trace --
@app.errorhandler(segmentation.BadImage)
def bad_image(exc):
    return jsonify(error=str(exc)), exc.status


@app.errorhandler(HTTPException)
def http_error(exc):
    # 404, 405, 413 from Flask itself, as JSON like our own errors.
    return jsonify(error=exc.description, status=exc.code), exc.code


if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "127.0.0.1"),
            port=int(os.environ.get("PORT", "5000")))
