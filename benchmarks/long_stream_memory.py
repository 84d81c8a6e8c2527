"""Memory over a long stream: does a session's memory stay flat for 10,000 frames?

Feeds a synthetic stream (a disc moving over a fixed noise background, one object, a mask
only on frame 0) through ``vosrt.load(...)`` once with the long-term memory
(``use_long_term=True``, official defaults) and once with the FIFO working memory, and
records at checkpoint frames:

* host RSS (``/proc/self/status`` VmRSS) of this process;
* torch memory: ``torch.cuda.memory_allocated()`` on CUDA; on the CPU, which has no
  allocator statistics, the bytes of every tensor the session holds (memory buffers,
  sensory, object memory, last mask, readout);
* the memory tokens in use (long-term and working) of the object's bucket.

The result passes when both memory figures at the last checkpoint are within
``--tolerance`` (5 %) of those at ``--reference-frame`` (1,000). Run from the repository
root, e.g.::

    python benchmarks/long_stream_memory.py --weights W.pth --frames 10000 \\
        --output benchmarks/results/long-stream-memory-cpu.md

The frame size must give at least 128 / 5 tokens per frame at stride 16 for the official
consolidation (128 prototypes out of 5 frames); the default 80x96 gives 30. Exit status 1
when a figure grows by more than the tolerance.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import vosrt


def synthetic_frame(index: int, size: tuple[int, int], background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``index`` (``HxWx3`` uint8) and its label map: a disc circling over ``background``."""
    h, w = size
    angle = 2 * np.pi * index / 200
    cy, cx = h / 2 + 0.25 * h * np.sin(angle), w / 2 + 0.25 * w * np.cos(angle)
    yy, xx = np.mgrid[:h, :w]
    labels = (((yy - cy) ** 2 + (xx - cx) ** 2) < (0.15 * min(h, w)) ** 2).astype(np.int64)
    image = background.copy()
    image[labels == 1] = (230, 60, 40)
    return image, labels


def host_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (this benchmark reads Linux's process status)")


def held_tensor_bytes(session) -> int:
    """Bytes of the tensors a session holds (its own attributes and its memory buckets)."""
    owners = [session, *session._memory.buckets]
    tensors = {id(t): t for owner in owners for t in vars(owner).values() if isinstance(t, torch.Tensor)}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def torch_bytes(session, device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else held_tensor_bytes(session)


def run_stream(args, use_long_term: bool) -> list[dict]:
    """Segment ``args.frames`` frames; one record per checkpoint frame (1-based frame counts)."""
    session = vosrt.load(args.model, weights=args.weights, device=args.device, use_long_term=use_long_term)
    device = torch.device(args.device)
    background = np.random.default_rng(0).integers(0, 256, (*args.size, 3), dtype=np.uint8)
    checkpoints = sorted({args.reference_frame, args.frames, *range(args.every, args.frames + 1, args.every)})
    records = []
    name = "long-term" if use_long_term else "FIFO"
    start = time.perf_counter()
    for index in tqdm(range(args.frames), desc=name, unit="frame", mininterval=5):
        image, labels = synthetic_frame(index, args.size, background)
        session.step(image, labels if index == 0 else None)
        if index + 1 in checkpoints:
            bucket = session._memory.buckets[0]
            records.append({"frame": index + 1, "rss": host_rss_bytes(), "torch": torch_bytes(session, device),
                            "long_tokens": bucket.long_size, "working_tokens": int(bucket.valid.sum()) - bucket.long_size,
                            "seconds": time.perf_counter() - start})
            tqdm.write(f"{name} {_row(records[-1])}")
    return records


def _row(record: dict) -> str:
    return (f"| {record['frame']} | {record['rss'] / 2**20:.1f} | {record['torch'] / 2**20:.2f} | "
            f"{record['long_tokens']} | {record['working_tokens']} | {record['seconds']:.0f} |")


def growth(records: list[dict], reference_frame: int, key: str) -> float:
    """Relative change of ``key`` from ``reference_frame`` to the last record."""
    first = next(r for r in records if r["frame"] == reference_frame)
    return records[-1][key] / first[key] - 1


def report(args, results: dict[str, list[dict]]) -> tuple[str, bool]:
    lines = [f"# Memory over a {args.frames:,}-frame stream", "",
             f"Command: `python {' '.join(sys.argv)}`", "",
             f"{args.model}, device {args.device}, {args.size[0]}x{args.size[1]} synthetic frames, one object, "
             f"mask on frame 0 only; torch {torch.__version__}, {torch.get_num_threads()} thread(s). "
             f"torch memory: {'torch.cuda.memory_allocated' if args.device.startswith('cuda') else 'bytes of the tensors the session holds'}.",
             ""]
    passed = True
    for name, records in results.items():
        lines += [f"## {name}", "", "| frame | host RSS (MiB) | torch (MiB) | long-term tokens | working tokens | s |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [_row(r) for r in records]
        changes = {key: growth(records, args.reference_frame, key) for key in ("rss", "torch")}
        ok = all(abs(c) < args.tolerance for c in changes.values())
        passed &= ok
        lines += ["", f"frame {args.reference_frame} -> {records[-1]['frame']}: host RSS {changes['rss']:+.2%}, "
                      f"torch {changes['torch']:+.2%} -> {'PASS' if ok else 'FAIL'} (|change| < {args.tolerance:.0%})", ""]
    return "\n".join(lines), passed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cutie-small")
    p.add_argument("--weights", help="checkpoint (default: the official one, downloaded once)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--frames", type=int, default=10_000)
    p.add_argument("--size", type=int, nargs=2, default=(80, 96), metavar=("H", "W"))
    p.add_argument("--reference-frame", type=int, default=1_000)
    p.add_argument("--every", type=int, default=1_000, help="checkpoint every N frames")
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--modes", default="long-term,fifo", help="long-term, fifo or both (comma-separated)")
    p.add_argument("--output", help="write the markdown report here too")
    args = p.parse_args()
    if args.reference_frame > args.frames:
        p.error("--reference-frame must not exceed --frames")
    modes = {"long-term": True, "fifo": False}
    unknown = set(args.modes.split(",")) - set(modes)
    if unknown:
        p.error(f"unknown mode(s) {sorted(unknown)}; choose from {sorted(modes)}")
    results = {f"{mode} memory": run_stream(args, modes[mode]) for mode in args.modes.split(",")}
    text, passed = report(args, results)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
