"""Lesson 03 on a GPU: two uWSGI workers, each with its own CUDA context, serve the CPU's masks.

These checks run wherever torch.cuda.is_available() is true, and are skipped
elsewhere with the reason (no driver, no device, a CPU-only torch). The fork
rule itself (the master never starts CUDA) is checked on every machine by
checks/test_03_fork_rule.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from workshop import images
from workshop.harness import concurrently, lesson_server, readyz_of_every_worker, uwsgi_stats

from checks.utils import mask_of, segment

LESSON = "03_uwsgi"
WORKERS = 2
# The GPU's kernels sum in another order than the CPU's: a pixel whose two best
# classes tie to the last digits may flip (the untrained weights of the checks
# make many such ties). Everything else must agree.
AGREE = 0.995


@pytest.fixture(scope="module")
def gpu(reference):
    import torch

    segmentation, _ = reference
    if not torch.cuda.is_available():
        count, why_not = segmentation.cuda_devices()
        pytest.skip(f"no usable CUDA device here ({why_not or 'torch.cuda.is_available() is False'}): "
                    "these checks run on a machine with an NVIDIA GPU")
    return torch.cuda.get_device_name(0)


@pytest.fixture(scope="module")
def gpu_server(lessons, gpu):
    with lesson_server(lessons, LESSON, args=["--processes", str(WORKERS)],
                       env={"SEG_DEVICE": "cuda"}, timeout=180) as server:
        yield server


def test_two_workers_serve_on_the_gpu(gpu_server, gpu):
    replies = concurrently(lambda: segment(gpu_server), times=8 * WORKERS, at_once=2 * WORKERS)
    assert [r.status_code for r in replies] == [200] * len(replies)
    assert {r.headers.get("X-Model-Device") for r in replies} == {"cuda:0"}, \
        "every answer should say X-Model-Device: cuda:0 with SEG_DEVICE=cuda"
    workers = {w["pid"] for w in uwsgi_stats(gpu_server.run_dir / "stats.sock")["workers"]}
    assert {int(r.headers["X-Worker-Pid"]) for r in replies} == workers, \
        "both workers should answer, each from its own CUDA context"
    for info in readyz_of_every_worker(gpu_server, WORKERS).values():
        assert info["device"] == "cuda:0" and info["gpu"]["name"] == gpu, info
        assert info["gpu"]["memory_allocated_mb"] > 0, f"worker {info['pid']} holds nothing on the GPU: {info}"


@pytest.mark.parametrize("name", ["chelsea", "astronaut", "coffee"])
def test_the_gpu_mask_equals_the_cpu_mask(gpu_server, reference, name, record_property):
    segmentation, model = reference   # on the CPU, in this process
    photo = images.photo_bytes(name)
    expected = segmentation.predict(model, segmentation.decode_image(photo, 10**8))
    served = mask_of(segment(gpu_server, photo))
    assert served.shape == expected.shape
    agree = float((served == expected).mean())
    record_property("gpu_cpu_agreement", agree)
    print(f"{name}: {agree:.4%} of the GPU's mask agrees with the CPU's "
          f"({int((served != expected).sum())} of {served.size} pixels differ)")
    assert agree >= AGREE, \
        f"only {agree:.2%} of the GPU's mask agrees with the CPU's: more than near-tie rounding " \
        "(is the batch normalised as on the CPU, fp32 kept as fp32?)"
    assert set(np.unique(served)) <= set(range(len(segmentation.CLASSES)))
