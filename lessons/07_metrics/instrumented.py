"""Lesson 07: the lesson-02 app, measured. uWSGI loads this file instead of inference.py.

Nothing in lesson 02 changes. This module wraps it from the outside, the way
auto-instrumentation libraries (OpenTelemetry's, for instance) do it:

- the functions the app calls through its modules (segmentation.decode_image,
  segmentation.predict, voc.mask_to_png / mask_to_json) are replaced by timed
  versions *before* the app is imported, so its every call goes through them;
- a WSGI middleware around the Flask app counts and times every request.

Each uWSGI process writes its numbers to its own files in
PROMETHEUS_MULTIPROC_DIR (metrics.ini sets one directory per upstream);
metrics_mule.py adds them up when Prometheus asks. A plain per-process
registry would instead answer with the numbers of whichever process
happened to take the scrape: they would jump up and down between scrapes.
"""

import contextvars
import functools
import glob
import os
import time

import torch
from prometheus_client import Counter, Gauge, Histogram, multiprocess

import segmentation
import voc

# Seconds: a stage takes from a millisecond (encode a PNG) to a second or more
# (the model on a busy machine); a request may wait up to harakiri (20 s).
# Quantiles are read from these buckets: finer where the answers are.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
           1, 1.5, 2, 3, 5, 10, 30)
# Routes get a label of their own; any other path counts as "other", so that a
# scanner asking for a thousand URLs cannot make a thousand series.
ROUTES = {"/infer", "/healthz", "/readyz"}

REQUESTS = Counter("seg_requests_total", "Requests answered, by route and HTTP status.",
                   ["route", "status"])
LATENCY = Histogram("seg_request_duration_seconds", "Time in the app, from request to answer.",
                    ["route"], buckets=BUCKETS)
STAGES = Histogram("seg_stage_duration_seconds", "Time in each stage of POST /infer.",
                   ["stage"], buckets=BUCKETS)
IMAGE_BYTES = Histogram("seg_image_bytes", "Size of the images POSTed to /infer.",
                        buckets=(1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7))
# Gauges need a rule for adding up processes: livesum = the sum over the
# processes alive now (a dead worker's last value must not stay in).
IN_FLIGHT = Gauge("seg_requests_in_flight", "Requests being answered right now.",
                  multiprocess_mode="livesum")
MODEL = Gauge("seg_model_info", "The model served (always 1: the labels say which).",
              ["weights", "precision", "device", "torch_threads"], multiprocess_mode="livemax")
BUILDS = Counter("seg_model_builds_total", "Models built. One per upstream: the master builds "
                 "it, the workers share it (lesson 03).")

in_request = contextvars.ContextVar("in_request", default=False)


def timed(stage: str, fn):
    """fn, timing its calls made while answering a request (not the warm-up's)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not in_request.get():
            return fn(*args, **kwargs)
        with STAGES.labels(stage).time():
            return fn(*args, **kwargs)
    return wrapper


def counted(fn):
    """load_model, counting the models this process builds."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        model = fn(*args, **kwargs)
        BUILDS.inc()
        return model
    return wrapper


segmentation.load_model = counted(segmentation.load_model)
segmentation.decode_image = timed("decode", segmentation.decode_image)
segmentation.predict = timed("model", segmentation.predict)
voc.mask_to_png = timed("encode", voc.mask_to_png)
voc.mask_to_json = timed("encode", voc.mask_to_json)

import inference  # noqa: E402  (lesson 02's app: imported after the wrapping, it calls the timed versions)


def measured(wsgi_app):
    """WSGI middleware: count, time and track every request the app answers."""
    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        route = path if path in ROUTES else "other"
        status = "500"   # unless the app says otherwise

        def remember_status(code, headers, exc_info=None):
            nonlocal status
            status = code.split(" ", 1)[0]
            return start_response(code, headers, exc_info)

        if route == "/infer":
            IMAGE_BYTES.observe(int(environ.get("CONTENT_LENGTH") or 0))
        # EXERCISE 07.2: count, time and track every request
        # STUB: return wsgi_app(environ, start_response)
        started = time.perf_counter()
        token = in_request.set(True)
        IN_FLIGHT.inc()
        try:
            # Flask builds the whole answer before it returns: counted here, a
            # request is in the numbers before its client has the answer.
            return wsgi_app(environ, remember_status)
        finally:
            in_request.reset(token)
            IN_FLIGHT.dec()
            LATENCY.labels(route).observe(time.perf_counter() - started)
            REQUESTS.labels(route, status).inc()
        # END EXERCISE
    return app


def forget_dead_processes():
    """mark_process_dead for every process that left gauge files and is gone.

    A worker killed with SIGKILL leaves its files behind. Its counters must
    stay (the requests it answered happened), but a live gauge must drop it:
    its last "1 request in flight" would otherwise stay in the sum forever.
    uWSGI runs no Python in the master when a worker dies; the replacement
    worker's post-fork hook is the first Python that runs after, so it does it.
    """
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "gauge_live*_*.db")):
        pid = int(path.rsplit("_", 1)[1].removesuffix(".db"))
        try:
            os.kill(pid, 0)  # signal 0 only asks: does this process exist?
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid)


model = inference.model
MODEL.labels(model.weights, model.precision, inference.DEVICE, str(torch.get_num_threads())).set(1)

app = inference.app
app.wsgi_app = measured(app.wsgi_app)   # Flask's way to add WSGI middleware

uwsgi = inference.uwsgi
if uwsgi is not None and uwsgi.worker_id() == 0:
    # Prefork: the master imported us. After each fork (a worker, a respawned
    # worker, the metrics mule), forget the dead, then lesson 02's warm-up.
    # The mule serves no requests: it skips the warm-up.
    warm_up = uwsgi.post_fork_hook

    def after_fork():
        forget_dead_processes()
        if uwsgi.mule_id() == 0:
            warm_up()

    uwsgi.post_fork_hook = after_fork
else:
    forget_dead_processes()
