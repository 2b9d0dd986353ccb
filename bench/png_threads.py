"""PNG encoding of one batch: in a row (the baseline) against ``PngEncoder``'s threads, on render-like images.

    .venv/bin/python bench/png_threads.py            # 8 images of 512x512, 3 rounds each

Prints one JSON line: seconds per batch for both and their ratio (threads / in a row; lower is better).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.worker.images import PngEncoder, png_bytes


def render_like(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    """Smooth regions plus fine noise: compresses like a diffusion image, unlike pure noise or a flat colour."""
    rng = np.random.default_rng(seed)
    block = size // 64
    images = []
    for _ in range(count):
        coarse = np.kron(rng.integers(0, 255, (64, 64, 3)), np.ones((block, block, 1))) * 0.8
        images.append(Image.fromarray((coarse + rng.integers(0, 50, (size, size, 3))).astype(np.uint8)))
    return images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    items = [(image, "parameters") for image in render_like(args.images, args.size)]
    encoder = PngEncoder()
    ways = {"in_a_row_s": lambda: [png_bytes(image, text) for image, text in items],
            "threads_s": lambda: encoder.encode(items)}
    out: dict[str, object] = {"bench": "png_threads", "images": args.images, "size": args.size,
                              "threads": encoder.threads, "cpus": os.cpu_count()}
    for name, run in ways.items():
        run()  # warm
        started = time.perf_counter()
        for _ in range(args.rounds):
            run()
        out[name] = round((time.perf_counter() - started) / args.rounds, 4)
    out["ratio_threads_vs_in_a_row"] = round(float(out["threads_s"]) / float(out["in_a_row_s"]), 3)  # type: ignore[arg-type]
    out["command"] = "bench/png_threads.py " + " ".join(sys.argv[1:])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
