"""What a model's stateless stages take and return, declared once.

A :class:`StageSpec` names one stage (one ONNX graph, one TensorRT engine, one network
method), its inputs and outputs in order, their symbolic shapes and which inputs are the
session's memory (read in place). The ONNX export (names, dynamic axes, example inputs),
the ONNX Runtime and TensorRT bindings, the TensorRT profiles, the CUDA-graph keys and
``vosrt verify`` all read these declarations.

Shapes are tuples of integers and symbols. The frame symbols (:func:`frame_sizes`) vary with the
video: ``H x W`` padded frame (multiple of the stride), ``h x w`` its stride grid (``hw`` tokens),
``h8 x w8`` and ``h4 x w4`` the stride-8/4 grids, ``K`` objects (``K+1`` with the background);
a model family adds the symbol of its memory tokens (``ModelFamily.memory_symbol``). The *stream axes* (:data:`STREAM_AXES`) let one
call serve several videos (:mod:`.batch`): ``B`` streams, one row each (1 for a session of one
video), and ``BK`` their objects, stream after stream (where a stage also has a ``B`` axis every
stream has the same ``K`` objects and ``BK = B x K``; otherwise the rows are independent and a
stream may give any number). Every other symbol is fixed by the network architecture (channel
counts, blocks, heads): the model family's ``sizes`` resolve those, and every symbol they do not
resolve is a dynamic axis. No torch import: the command line reads this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping, Union

from .geometry import STRIDE

Dim = Union[int, str]
STREAM_AXES = ("B", "BK")


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output. ``values``: the range example inputs are drawn from (bool
    tensors mark the first ``frames - 1`` memory frames valid); ``memory``: the session's
    preallocated memory, which a backend reads in place."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"
    values: tuple[float, float] = (-0.5, 0.5)
    memory: bool = False

    def dynamic_axes(self, fixed: Collection[str]) -> dict[int, str]:
        """``{axis: symbol}`` of the axes whose symbol is not one of the architecture's ``fixed`` ones."""
        return {axis: dim for axis, dim in enumerate(self.shape) if isinstance(dim, str) and dim not in fixed}

    @property
    def stream_axis(self) -> int | None:
        """The axis that carries the streams of a call (``B`` or ``BK``), or None."""
        return next((axis for axis, dim in enumerate(self.shape) if dim in STREAM_AXES), None)

    def resolve(self, sizes: Mapping[str, int]) -> list[int]:
        """The concrete shape for ``sizes`` (every symbol of the shape -> its value)."""
        try:
            return [dim if isinstance(dim, int) else sizes[dim] for dim in self.shape]
        except KeyError as missing:
            raise KeyError(f"{self.name}: no size for symbol {missing}") from None


@dataclass(frozen=True)
class StageSpec:
    """One stateless stage: the network ``method`` called with the inputs in order (plus the
    stage options the model family gives it), returning the outputs in order. ``selects_top_k``:
    its outputs go through a top-K selection, which two correct implementations may make
    differently where two scores are within rounding of each other."""

    name: str
    method: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    selects_top_k: bool = False

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def dynamic_axes(self, fixed: Collection[str]) -> dict[str, dict[int, str]]:
        """``{tensor: {axis: symbol}}`` of the dynamic axes (the symbols not in ``fixed``), as
        ``torch.onnx.export`` takes them."""
        return {t.name: axes for t in (*self.inputs, *self.outputs) if (axes := t.dynamic_axes(fixed))}


def frame_sizes(height: int, width: int, objects: int, memory_frames: int, streams: int = 1) -> dict[str, int]:
    """Values of the frame symbols for a padded ``height x width`` frame (multiples of
    :data:`~.geometry.STRIDE`), ``objects`` objects per stream, ``streams`` streams in a call and
    (``frames``) a memory of ``memory_frames`` frames."""
    h, w = height // STRIDE, width // STRIDE
    return {"H": height, "W": width, "h": h, "w": w, "hw": h * w, "h8": 2 * h, "w8": 2 * w, "h4": 4 * h,
            "w4": 4 * w, "K": objects, "K+1": objects + 1, "B": streams, "BK": streams * objects,
            "frames": memory_frames}


def example_inputs(stage: StageSpec, sizes: Mapping[str, int], seed: int = 0) -> tuple:
    """Random inputs of ``stage`` for ``sizes`` (:func:`frame_sizes` and the architecture sizes),
    each drawn from its ``values`` range; bool inputs (memory validity) mark the tokens of the
    first ``max(1, frames - 1)`` memory frames valid along their last axis."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in stage.inputs:
        shape = spec.resolve(sizes)
        if spec.dtype == "bool":
            valid = torch.zeros(shape, dtype=torch.bool)
            valid[..., :max(1, sizes["frames"] - 1) * sizes["hw"]] = True
            tensors.append(valid)
        else:
            low, high = spec.values
            tensors.append(low + (high - low) * torch.rand(shape, generator=generator))
    return tuple(tensors)
