"""Reference data access and metrics shared by the tests."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

# ../shared beside the checkout, or VOSRT_SHARED (the GPU acceptance run, where only the repository travels).
SHARED = Path(os.environ.get("VOSRT_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
REFERENCE = SHARED / "reference"
SYNTHETIC = SHARED / "data" / "synthetic-shapes"
SYNTHETIC_LONG = SHARED / "data" / "synthetic-long"
DAVIS = SHARED / "data" / "davis-examples"
GOLDEN_CONFIG = dict(mem_every=3, max_mem_frames=3, top_k=30, stagger_updates=5, chunk_size=-1, max_internal_size=-1)
JOINTFORMER_GOLDEN_CONFIG = dict(mem_every=3, max_mem_frames=2, top_k=30)  # ../shared/reference/README.md
LONG_TERM_GOLDEN_CONFIG = dict(use_long_term=True, mem_every=1, long_term_max_mem_frames=4, long_term_min_mem_frames=2,
                               long_term_num_prototypes=64, long_term_max_num_tokens=250, long_term_buffer_tokens=50)

# Largest |dprob| against the official golden outputs a backend may show over a clip: about 3x
# what it measured (in the comment), per golden clip and backend (fp32, CPU).
GOLDEN_MAX_DPROB = {
    ("cutie-small", "torch"): 8e-3,  # 2.7e-3 (frame 34; the official code 1 vs 2 threads: 2.7e-3)
    ("cutie-base", "torch"): 5e-3,  # 8.6e-4
    ("cutie-small", "onnxruntime"): 6e-3,  # 2.1e-3
    ("cutie-base", "onnxruntime"): 5e-3,  # 1.5e-3
    ("jointformer", "torch"): 2e-3,  # 6.7e-4
    ("jointformer", "onnxruntime"): 2e-3,  # 6.5e-4
    ("cutie-small-lt-evict", "torch"): 2e-3,  # 2.4e-4 (first 8 frames)
    ("cutie-small-lt-evict", "onnxruntime"): 2e-3,  # 5.7e-4 (first 8 frames)
}
# Not measured yet (nothing has run on a GPU): the noise floor of the official code (../shared/reference/README.md).
GPU_MAX_DPROB = 2e-2


def require_shared() -> None:
    """Skip (or, with ``VOSRT_REQUIRE_SHARED=1``, fail) when the reference data is missing."""
    if not REFERENCE.is_dir():
        reason = f"reference data not found at {SHARED} (CI checks it out beside the repository)"
        if os.environ.get("VOSRT_REQUIRE_SHARED") == "1":
            pytest.fail(f"{reason}, and VOSRT_REQUIRE_SHARED=1 asks for every parity test to run")
        pytest.skip(reason)


def synthetic_frame(index: int) -> np.ndarray:
    return np.asarray(Image.open(SYNTHETIC / "images" / f"{index:05d}.png").convert("RGB"))


def synthetic_mask(index: int) -> np.ndarray:
    return np.asarray(Image.open(SYNTHETIC / "masks" / f"{index:05d}.png")).astype(np.int64)


TIE_MARGIN = 1e-4


def mean_iou(pred: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Mean IoU over the labels (background included) present in either label map,
    leaving out the pixels where ``ignore`` is True."""
    if ignore is not None:
        pred, truth = pred[~ignore], truth[~ignore]
    labels = np.union1d(np.unique(pred), np.unique(truth))
    return float(np.mean([((pred == v) & (truth == v)).sum() / ((pred == v) | (truth == v)).sum() for v in labels]))


def near_ties(prob: np.ndarray, margin: float = TIE_MARGIN) -> np.ndarray:
    """Pixels whose two most likely labels are within ``margin``: fp32 noise decides them."""
    top2 = np.partition(prob, -2, axis=0)[-2:]
    return (top2[1] - top2[0]) < margin


def run_golden_clip(session, model: str, num_frames: int = 40) -> list[tuple[int, float, float, float, float]]:
    """The golden protocol of ../shared/reference/README.md on ``session`` (synthetic-shapes, object 3
    added on frame 15).

    Returns per frame: (frame, max |dprob| at the golden pixels, mIoU of the label map,
    mIoU without the near-tie pixels of :func:`near_ties`, fraction of pixels left out). With
    random weights some objects are a dozen pixels wide, so one pixel decided by a 1e-6
    difference moves the raw mIoU.
    """
    def frames():
        for i in range(num_frames):
            masks = {0: (synthetic_mask(0), [1, 2]), 15: (synthetic_mask(15), [3])}
            yield (synthetic_frame(i), *masks.get(i, (None, None)))

    return _compare_with_golden(session, REFERENCE / f"golden-{model}-synthetic-seed1.npz", frames())


def run_long_term_golden_clip(session, num_frames: int = 12) -> list[tuple[int, float, float, float, float]]:
    """The long-term memory golden protocol of ../shared/reference/README.md (12 frames of
    synthetic-long, a mask on frame 0 only; ``session`` made with :data:`LONG_TERM_GOLDEN_CONFIG`)."""
    def frames():
        for i in range(num_frames):
            image = np.asarray(Image.open(SYNTHETIC_LONG / "images" / f"{i:05d}.png").convert("RGB"))
            mask = np.asarray(Image.open(SYNTHETIC_LONG / "masks" / "00000.png")).astype(np.int64) if i == 0 else None
            yield image, mask, [1, 2, 3] if i == 0 else None

    return _compare_with_golden(session, REFERENCE / "golden-cutie-small-lt-evict-seed1.npz", frames())


def _compare_with_golden(session, golden_path, frames) -> list[tuple[int, float, float, float, float]]:
    """Per frame of ``frames`` ((image, mask, objects)): (frame, max |dprob| at the golden pixels,
    mIoU, mIoU without near ties, fraction of near-tie pixels)."""
    golden = np.load(golden_path)
    pixels = golden["pixel_index"]
    results = []
    for i, (image, mask, objects) in enumerate(frames):
        prob = session.step(image, mask, objects=objects)
        expected = golden[f"prob_{i:05d}.png"].astype(np.float32)
        assert prob.shape[0] == expected.shape[0], f"frame {i}: {prob.shape[0]} channels, golden {expected.shape[0]}"
        dprob = float(np.abs(prob.reshape(prob.shape[0], -1)[:, pixels] - expected).max())
        labels, expected_labels = session.to_mask(prob), golden[f"mask_{i:05d}.png"]
        ties = near_ties(prob)
        results.append((i, dprob, mean_iou(labels, expected_labels),
                        mean_iou(labels, expected_labels, ignore=ties), float(ties.mean())))
    return results


def assert_golden(results, max_dprob: float, min_iou: float = 0.98, ignore_ties: bool = False,
                  max_ties: float = 0.01) -> None:
    """Every frame within ``max_dprob`` and ``min_iou`` (raw mIoU, or tie-excluded with
    ``ignore_ties``, which may leave out at most ``max_ties`` of a frame's pixels)."""
    worst_d = max(results, key=lambda r: r[1])
    worst_raw = min(results, key=lambda r: r[2])
    worst_tie = min(results, key=lambda r: r[3])
    print(f"max |dprob| {worst_d[1]:.2e} (frame {worst_d[0]}); worst mIoU {worst_raw[2]:.4f} (frame {worst_raw[0]}), "
          f"{worst_tie[3]:.4f} without near ties (frame {worst_tie[0]})")
    assert worst_d[1] <= max_dprob, f"frame {worst_d[0]}: max |dprob| {worst_d[1]:.3e} > {max_dprob}"
    column = 3 if ignore_ties else 2
    worst = min(results, key=lambda r: r[column])
    assert worst[column] >= min_iou, f"frame {worst[0]}: mIoU {worst[column]:.4f} < {min_iou}"
    most_ties = max(results, key=lambda r: r[4])
    assert not ignore_ties or most_ties[4] <= max_ties, f"frame {most_ties[0]}: {most_ties[4]:.1%} near-tie pixels"

@contextlib.contextmanager
def layer_output_dtypes(network) -> Iterator[dict[str, set]]:
    """While open, records the dtypes the outputs of every conv and linear layer of ``network``
    ran in: ``{module name: {dtype, ...}}`` (layers that did not run are absent)."""
    from torch import nn

    dtypes: dict[str, set] = {}
    hooks = [module.register_forward_hook(lambda _, __, out, name=name: dtypes.setdefault(name, set()).add(out.dtype))
             for name, module in network.named_modules() if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    try:
        yield dtypes
    finally:
        for hook in hooks:
            hook.remove()
