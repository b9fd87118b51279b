"""Benchmark-only variant of lesson 02's app for the torch and fork test (lesson 03).

The master imports the app with ONE torch thread (SEG_TORCH_THREADS=1, so no
thread pool exists when uWSGI forks); each worker then raises its own count
to BENCH_WORKER_THREADS in a @postfork hook. Served with lesson 03's run.sh:
    run.sh --wsgi-file /path/to/bench/postfork_app.py
"""

import os
import sys

import torch
from uwsgidecorators import postfork

sys.path.insert(0, os.getcwd())  # lesson 03's workers.ini chdirs into 02_segmentation
import inference  # noqa: E402  (lesson 02's app: builds the model in the master)

app = inference.app


@postfork
def worker_threads():
    torch.set_num_threads(int(os.environ.get("BENCH_WORKER_THREADS", "1")))
