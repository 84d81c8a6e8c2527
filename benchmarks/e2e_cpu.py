"""End-to-end latency of a backend on the DAVIS judo clip (854x480), CPU.

    python benchmarks/e2e_cpu.py --weights W.pth --backends torch,onnxruntime --frames 12

Random (seeded) weights are fine for timing: the work per frame does not depend on them.
Prints one JSON line per backend: median / p90 ms per frame after one warm-up frame.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import vosrt
from vosrt import io

CLIP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis-examples"


def run(backend: str, weights: str, frames: int, model: str, fp16: bool) -> dict:
    session = vosrt.load(model, weights=weights, backend=backend, fp16=fp16)
    paths = io.list_frames(CLIP / "images" / "judo")[:frames]
    mask, _ = io.read_label_map(CLIP / "masks" / "judo" / "00000.png")
    times = []
    for i, path in enumerate(paths):
        image = io.read_rgb(path)
        start = time.perf_counter()
        session.step(image, mask if i == 0 else None)
        times.append(time.perf_counter() - start)
    steady = np.array(times[2:]) * 1000  # after the mask frame and one warm-up frame
    return {"backend": backend + ("-fp16" if fp16 else ""), "model": model, "size": "480x854",
            "frames": len(steady), "median_ms": round(float(np.median(steady)), 1),
            "p90_ms": round(float(np.percentile(steady, 90)), 1), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--model", default="cutie-small")
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--fp16", action="store_true", help="fp16 graphs for onnxruntime")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        print(json.dumps(run(backend, args.weights, args.frames, args.model, args.fp16 and backend != "torch")),
              flush=True)


if __name__ == "__main__":
    main()
