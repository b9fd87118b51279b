"""./workshop.sh demo: the workshop's main stack segments a sample photo.

Starts the stack with the lesson's own run.sh, sends scikit-image's cat
through it with lesson 02's client code, writes the overlay, shows which
process answered, and stops everything again.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

from .harness import lesson_server
from .lessons import REFERENCE, ROOT, import_module

STACK = "05_multi_upstream"   # nginx -> two uWSGI upstreams (unix socket + TCP)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", help="a photo to segment (default: the cat)")
    parser.add_argument("--out", default=str(ROOT / "out" / "demo-overlay.png"))
    parser.add_argument("--requests", type=int, default=20, help="extra requests to show who answers")
    args = parser.parse_args()

    client = import_module(REFERENCE, "02_segmentation", "client")
    image = Path(args.image).read_bytes() if args.image else client.sample_photo()
    weights = os.environ.get("SEG_WEIGHTS", "auto")  # pretrained where they can be had
    print(f"[demo] starting lessons/{STACK} (SEG_WEIGHTS={weights}) ...")
    with lesson_server(REFERENCE, STACK, env={"SEG_WEIGHTS": weights}) as stack:
        url = stack.url + "/infer"
        started = time.perf_counter()
        mask, resp = client.segment(url, image)
        elapsed = (time.perf_counter() - started) * 1000
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        client.overlay(image, mask).save(args.out)
        who = collections.Counter()
        for _ in range(args.requests):
            _, r = client.segment(url, image)
            who[r.headers.get("X-Upstream") or f"pid {r.headers['X-Worker-Pid']}"] += 1
    print(f"[demo] weights: {resp.headers['X-Model-Weights']}; classes found: "
          f"{resp.headers['X-Classes']}; first answer in {elapsed:.0f} ms")
    print(f"[demo] {args.requests} more requests were answered by:")
    for name, count in who.most_common():
        print(f"         {count:3d}  {name}")
    if resp.headers["X-Model-Weights"] == "random":
        print("[demo] note: the pretrained weights could not be had here, so the model is untrained:\n"
              "       the colours follow the photo's shapes but the class names mean nothing.\n"
              "       Online, SEG_WEIGHTS=default downloads them; or SEG_WEIGHTS=/path/to/file.pth")
    print(f"[demo] overlay written to {args.out}")
    print("[demo] everything it started has stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
