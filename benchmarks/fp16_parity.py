"""fp16 graphs against fp32 ones on a real clip (no timing).

For a Cutie model's fp32 and fp16 ONNX exports (``export-engine MODEL --format onnx [--fp16]``,
same settings) and a DAVIS-style clip (``images/CLIP`` and ``masks/CLIP``, masks on the frames
that add objects), reports:

* one ONNX Runtime (CPU) session on each export over the clip: per frame the largest
  |fp16 prob - fp32 prob| and the mIoU of the two label maps;
* the fp16 ``memory_readout`` graph fed the inputs of every readout of the fp32 session (the
  clip's keys and memory): the share of queries whose top-K set differs from the eager fp32
  model's, and the largest |readout error| / max |readout|.

Run from the repository root, e.g.::

    python benchmarks/fp16_parity.py cutie-small --weights W.pth --fp32 cutie-small-fp32 \\
        --fp16 cutie-small-fp16 --clip ../shared/data/davis-examples --name judo
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

import vosrt
from vosrt.api import build_network
from vosrt.export.onnx import stage_modules
from vosrt.export.verify import GraphWithTopK, run_eager, topk_differ
from vosrt.runtime import artifacts
from vosrt.runtime.registry import MODELS


def read_clip(root: Path, name: str) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(RGB frame, label map or None) per frame; a mask a pixel off the frame size is resized."""
    masks = {p.stem: p for p in (root / "masks" / name).glob("*.png")}
    clip = []
    for path in sorted((root / "images" / name).glob("*.jpg")):
        image = Image.open(path).convert("RGB")
        mask = Image.open(masks[path.stem]).resize(image.size, Image.NEAREST) if path.stem in masks else None
        clip.append((np.asarray(image), None if mask is None else np.asarray(mask).astype(np.int64)))
    return clip


def mean_iou(a: np.ndarray, b: np.ndarray) -> float:
    labels = np.union1d(np.unique(a), np.unique(b))
    return float(np.mean([((a == v) & (b == v)).sum() / ((a == v) | (b == v)).sum() for v in labels]))


def record_readouts(session) -> list[dict]:
    """Make ``session``'s backend keep a copy of the inputs of every memory_readout call."""
    calls, run = [], session.backend.run

    def recording(stage, **inputs):
        if stage == "memory_readout":
            calls.append({name: x.clone() for name, x in inputs.items()})
        return run(stage, **inputs)

    session.backend.run = recording
    return calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", choices=[m for m in MODELS if m.startswith("cutie")])
    p.add_argument("--weights", required=True)
    p.add_argument("--fp32", required=True, help="the fp32 ONNX export")
    p.add_argument("--fp16", required=True, help="the fp16 ONNX export (same settings)")
    p.add_argument("--clip", required=True, type=Path, help="folder with images/NAME and masks/NAME")
    p.add_argument("--name", default="judo")
    args = p.parse_args()

    manifest = artifacts.read_manifest(args.fp16)
    settings = dict(top_k=manifest["settings"]["top_k"], max_mem_frames=manifest["max_mem_frames"])
    sessions = {fp16: vosrt.load(args.model, backend="onnxruntime", export_dir=d, fp16=fp16, **settings)
                for fp16, d in ((False, args.fp32), (True, args.fp16))}
    readouts = record_readouts(sessions[False])
    clip = read_clip(args.clip, args.name)
    print(f"{args.model} on {args.name}: fp16 vs fp32 ONNX Runtime sessions, {len(clip)} frames")
    dprobs, ious = [], []
    for i, (image, mask) in enumerate(clip):
        probs = {fp16: s.step(image, mask, end=i == len(clip) - 1) for fp16, s in sessions.items()}
        dprobs.append(float(np.abs(probs[True] - probs[False]).max()))  # NaN if fp16 gave NaN
        ious.append(mean_iou(*(sessions[fp16].to_mask(probs[fp16]) for fp16 in (True, False))))
        print(f"  frame {i:3d}: max |dprob| {dprobs[-1]:.2e}  mIoU {ious[-1]:.4f}")
    print(f"  worst: max |dprob| {np.max(dprobs):.2e}, mIoU {min(ious):.4f}")

    family = MODELS[args.model].family
    stage = family.stages["memory_readout"]
    eager = stage_modules(family, build_network(args.model, args.weights), manifest["settings"], "reference")
    graph = GraphWithTopK(Path(args.fp16) / manifest["graphs"]["memory_readout"]["file"], manifest["custom_ops"])
    differ, errors = [], []
    for call in readouts:
        inputs = [call[name] for name in stage.input_names]
        (got,), indices = graph.run(stage, inputs)
        (expected,), eager_indices = run_eager(eager["memory_readout"], inputs)
        differ.append(topk_differ(indices, graph.topk_axes, eager_indices))
        errors.append(float(np.abs(got - expected).max() / np.abs(expected).max()))
    shares = [d for d in differ if d is not None]
    print(f"fp16 memory_readout on the {len(readouts)} readouts of the clip: max |error| / scale {max(errors):.2e}; "
          + (f"top-{manifest['settings']['top_k']} sets differing from eager fp32: mean {np.mean(shares):.2%}, "
             f"worst {max(shares):.2%} of queries" if shares else "no TopK node (custom op)"))


if __name__ == "__main__":
    main()
