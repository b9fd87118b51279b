"""A tripwire for CUDA in uWSGI's master, for checks/test_03_fork_rule.py.

That check puts this folder on PYTHONPATH, so Python imports this file at
start-up (site.py's `sitecustomize`), in uWSGI's master and in the checks'
own helpers alike. It does nothing unless CUDA_GUARD_LOG names a file.

Why: CUDA started in uWSGI's master before it forks is inherited broken by
every worker, whose first CUDA call then fails with "Cannot re-initialize
CUDA in forked subprocess". Even torch.cuda.is_available() starts the
driver. A machine without a GPU never sees that error, so the rule needs a
tripwire to be checkable there.

What it does, once torch.cuda is imported: it wraps the calls through which
CUDA starts, torch._C._cuda_getDeviceCount (torch.cuda.is_available(), and
device_count() when NVML cannot answer; this is the call that marks every
later fork as poisoned), torch._C._cuda_init and torch.cuda._lazy_init (any
tensor or model put on a GPU). Each call (the first per process, and every
one in the master) is appended to $CUDA_GUARD_LOG as a JSON line: the call,
the pid, whether this process is uWSGI's master, where the call came from.
In the master the call then raises, unless CUDA_GUARD=record. After each
fork the child notes whether torch sees it as forked from a process that
had started CUDA (torch._C._cuda_isInBadFork): that is the breakage itself,
visible without a GPU.
"""

import importlib.abc
import importlib.machinery
import json
import os
import sys
import traceback

LOG = os.environ.get("CUDA_GUARD_LOG")
RAISE = os.environ.get("CUDA_GUARD", "raise") != "record"
_seen: set[tuple[int, str]] = set()


def _in_uwsgi_master() -> bool:
    try:
        import uwsgi
    except ImportError:
        return False
    return uwsgi.worker_id() == 0 and uwsgi.mule_id() == 0


def _write(entry: dict) -> None:
    with open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")


def _tripwire(name: str, fn, only_if=lambda: True):
    def guarded(*args, **kwargs):
        master = _in_uwsgi_master()
        if only_if() and (master or (os.getpid(), name) not in _seen):
            _seen.add((os.getpid(), name))
            _write({"event": "cuda", "call": name, "pid": os.getpid(), "master": master,
                    "stack": "".join(traceback.format_stack(limit=8)[:-1])})
            if master and RAISE:
                raise RuntimeError(f"cuda guard: {name}() in uWSGI's master (pid {os.getpid()}): "
                                   "CUDA started before the fork breaks every worker")
        return fn(*args, **kwargs)
    return guarded


def _wrap(cuda) -> None:
    c = sys.modules["torch._C"]
    for name in ("_cuda_getDeviceCount", "_cuda_init"):
        if hasattr(c, name):
            setattr(c, name, _tripwire(f"torch._C.{name}", getattr(c, name)))
    # _lazy_init returns at once when CUDA is up already: only the first real one counts.
    cuda._lazy_init = _tripwire("torch.cuda._lazy_init", cuda._lazy_init,
                                only_if=lambda: not cuda.is_initialized())
    _write({"event": "armed", "pid": os.getpid(), "master": _in_uwsgi_master()})


class _WrapTorchCuda(importlib.abc.MetaPathFinder):
    """Finds torch.cuda as usual, and wraps its calls once it has run."""

    def find_spec(self, name, path, target=None):
        if name != "torch.cuda":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def run_then_wrap(module):
            run(module)
            _wrap(module)
        spec.loader.exec_module = run_then_wrap
        return spec


def _after_fork() -> None:
    torch_c = sys.modules.get("torch._C")
    if torch_c is not None and hasattr(torch_c, "_cuda_isInBadFork"):
        _write({"event": "fork", "pid": os.getpid(), "parent": os.getppid(),
                "bad_fork": bool(torch_c._cuda_isInBadFork())})


if LOG:
    sys.meta_path.insert(0, _WrapTorchCuda())
    os.register_at_fork(after_in_child=_after_fork)
