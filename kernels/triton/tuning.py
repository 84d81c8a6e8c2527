"""Launch helpers shared by the Triton kernels: tile configurations, dot operand types, block-size
and register limits, and a small autotuner."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import torch
import triton.language as tl

MIN_DOT_SIZE = 16  # Triton 3.6 rejects tl.dot with M, N or K below 16 on NVIDIA GPUs
REGISTERS_PER_SM = 65536  # sm_80 .. sm_90
_TUNED: dict[Hashable, object] = {}


@dataclass(frozen=True)
class TileConfig:
    """Launch parameters of a kernel that streams memory tiles past a block of queries:
    ``block_q`` queries per program, ``block_n`` memory slots (tokens) per tile, ``segments``
    winners per row and round of :func:`.select.add_tile` (a power of two dividing ``block_n``),
    ``num_warps`` and ``num_stages``."""

    block_q: int
    block_n: int
    segments: int
    num_warps: int
    num_stages: int = 2

    @property
    def maxnreg(self) -> int:
        """The register cap the launch passes: two blocks per SM (:func:`max_registers`)."""
        return max_registers(self.num_warps)


def dot_types(dtype: torch.dtype) -> dict:
    """The ``DOT_DTYPE`` and ``PRECISION`` constants of a kernel's dots for inputs of ``dtype``: fp16
    operands (``PRECISION`` then unused), or fp32 operands on tf32x3 (three tf32 tensor-core
    products, about fp32 accuracy)."""
    if dtype == torch.float16:
        return dict(DOT_DTYPE=tl.float16, PRECISION="ieee")
    if dtype == torch.float32:
        return dict(DOT_DTYPE=tl.float32, PRECISION="tf32x3")
    raise ValueError(f"the Triton kernels take float32 or float16 inputs, got {dtype}")


def operand_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype of a kernel's dot operands for its float inputs ``tensors`` (those entering the
    dots): fp16 when all are fp16, else fp32. Each input is read in its own dtype and converted in
    registers, so inputs of mixed dtypes are never copied. Raises ValueError for other dtypes."""
    for tensor in tensors:
        if tensor.dtype not in (torch.float16, torch.float32):
            raise ValueError(f"the Triton kernels take float32 or float16 inputs, got {tensor.dtype}")
    return torch.float16 if all(t.dtype == torch.float16 for t in tensors) else torch.float32


def check_dot_blocks(**sizes: int) -> None:
    """Raise ValueError unless every block size is a power of two >= ``MIN_DOT_SIZE`` (each is an
    M, N or K dimension of a ``tl.dot``)."""
    for name, size in sizes.items():
        if size < MIN_DOT_SIZE or size & (size - 1):
            raise ValueError(f"{name} must be a power of two >= {MIN_DOT_SIZE} (a tl.dot dimension), got {size}")


def max_registers(num_warps: int) -> int:
    """The register cap (ptxas ``.maxnreg``) with which two blocks of ``num_warps`` warps fit an SM.

    Without a cap ptxas trades registers for occupancy on its own and spills (Triton 3.6's ptxas
    held some of these kernels at 168 registers, three blocks of 4 warps, with up to 100 B of
    spills); with it, every config fits two blocks per SM by construction and spills only if the
    kernel cannot fit, which ``tools/compile_kernels.py`` reports."""
    return min(255, REGISTERS_PER_SM // (2 * 32 * num_warps))


def buffer_slots(valid: torch.Tensor) -> int:
    """The memory capacity behind a ``valid`` mask ``[B, N]``: the slots of the buffer it is a view
    of (a session passes the filled window ``valid[:, :n]`` of a preallocated ``[1, capacity]``
    buffer), at least ``N``. The autotuning key uses it instead of ``N``, so that a memory filling
    up frame after frame keeps its tuned config and never retunes mid-video."""
    batch, slots = valid.shape
    stored = (valid.untyped_storage().nbytes() // valid.element_size() - valid.storage_offset()) // max(batch, 1)
    return max(slots, stored)


def times_configs(device: torch.device) -> bool:
    """Whether :func:`autotuned` times the configs on ``device`` (CUDA devices only)."""
    return device.type == "cuda"


def autotuned(key: Hashable, configs: Sequence[TileConfig], run: Callable[[TileConfig], None],
              device: torch.device) -> TileConfig:
    """The fastest of ``configs`` for ``key``, timing ``run(config)`` with ``triton.testing.do_bench``
    the first time a key is seen on a CUDA device (the result is cached per process); the first
    config off a GPU. ``run`` may write the caller's outputs: the caller runs the chosen config after.
    A key holds shapes that are fixed for a whole video (memory capacity, not filled slots:
    :func:`buffer_slots`), so tuning happens at a session's first readout of a bucket only."""
    if not times_configs(device):
        return configs[0]
    if key not in _TUNED:
        import triton.testing

        timings = [triton.testing.do_bench(lambda c=c: run(c), return_mode="median") for c in configs]
        _TUNED[key] = configs[timings.index(min(timings))]
    return _TUNED[key]
