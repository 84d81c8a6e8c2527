"""One stage call for several streams: their inputs stacked on the stream axis, the outputs split back.

Every stage declares where its tensors carry the streams of a call (:data:`~.stages.STREAM_AXES`):
``B``, one row per stream, or ``BK``, each stream's object rows one stream after the other. A
*member* is what one stream gives a stage (its inputs with one row on ``B``, its objects on
``BK``); :meth:`StageBatcher.run` puts members whose tensors agree in every other dimension into
one call, at most one member of each stream per call and at most ``max_streams`` members, and
hands each member its rows of the outputs. A lone member is passed to the backend as it is, so a
session of one video calls its backend exactly as it would without this module.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from .backends.base import Backend
from .stages import StageSpec

if TYPE_CHECKING:
    from .buckets import Bucket

Member = tuple[Hashable, Mapping[str, torch.Tensor]]  # (stream, its inputs by name)


class StageBatcher:
    """Runs stages on ``backend`` for several streams at once, ``max_streams`` per call at most
    (None: no limit; TensorRT engines take the ``--max-streams`` of their profile).

    On a ``fixed_shapes`` backend (CUDA graphs, which key a graph by the address of the memory it
    reads) the stacked memory inputs go to staging buffers kept per shape, so that a call with the
    same streams' shapes reads memory at the same address every frame."""

    def __init__(self, backend: Backend, max_streams: int | None = None):
        if max_streams is not None and max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        self.backend = backend
        self.max_streams = max_streams
        self._staging: dict[tuple, torch.Tensor] = {}

    def memory_windows(self, buckets: Sequence["Bucket"], top_k: int) -> list[slice]:
        """The tokens each bucket's memory read takes: the whole buffers on a ``fixed_shapes`` backend,
        else :meth:`~.buckets.Bucket.tokens_to_read` (the tokens in use, at least ``top_k``).

        Reads of several streams share a call only when they have the same length (members are
        grouped by shape): a read extended over empty tokens to match a longer one would cost the
        padding."""
        return [slice(0, bucket.capacity) if self.backend.fixed_shapes else bucket.tokens_to_read(top_k)
                for bucket in buckets]

    def run(self, stage: str, members: Sequence[Member]) -> list[dict[str, torch.Tensor]]:
        """The outputs of ``stage`` for each member, in order, valid until ``stage`` runs again."""
        spec = self.backend.stages[stage]
        calls = self._calls(spec, members)
        outputs: list[dict[str, torch.Tensor] | None] = [None] * len(members)
        for number, call in enumerate(calls):
            results = self._call(spec, [members[i][1] for i in call])
            if number < len(calls) - 1:  # a backend may write the next call's outputs into the same buffers
                results = [{name: t.clone() for name, t in r.items()} for r in results]
            for i, result in zip(call, results):
                outputs[i] = result
        return outputs

    def _calls(self, spec: StageSpec, members: Sequence[Member]) -> list[list[int]]:
        """Member indices per backend call: members of the same :func:`_signature`, one per stream."""
        if any(t.stream_axis is None for t in spec.inputs):
            return [[i] for i in range(len(members))]
        groups: dict[tuple, list[list[int]]] = {}
        for i, (stream, inputs) in enumerate(members):
            calls = groups.setdefault(_signature(spec, inputs), [])
            call = next((c for c in calls if stream not in {members[j][0] for j in c}
                         and (self.max_streams is None or len(c) < self.max_streams)), None)
            if call is None:
                calls.append([i])
            else:
                call.append(i)
        return [call for calls in groups.values() for call in calls]

    def _call(self, spec: StageSpec, members: list[Mapping[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        if len(members) == 1:
            return [self.backend.run(spec.name, **members[0])]
        stacked = {t.name: self._stack(spec, t.name, [m[t.name] for m in members], t.stream_axis, t.memory)
                   for t in spec.inputs}
        outputs = self.backend.run(spec.name, **stacked)
        rows = {axis: [_rows(spec, m, axis) for m in members] for axis in ("B", "BK")}
        results: list[dict[str, torch.Tensor]] = [{} for _ in members]
        for t in spec.outputs:
            axis = t.stream_axis
            parts = outputs[t.name].split(rows[t.shape[axis]], dim=axis)
            for result, part in zip(results, parts):
                result[t.name] = part
        return results

    def _stack(self, spec: StageSpec, name: str, tensors: list[torch.Tensor], axis: int, memory: bool) -> torch.Tensor:
        if not (memory and self.backend.fixed_shapes):
            return torch.cat(tensors, dim=axis)
        shape = list(tensors[0].shape)
        shape[axis] = sum(t.shape[axis] for t in tensors)
        key = (spec.name, name, tuple(shape), tensors[0].dtype)
        if key not in self._staging:
            self._staging[key] = torch.empty(shape, dtype=tensors[0].dtype, device=tensors[0].device)
        return torch.cat(tensors, dim=axis, out=self._staging[key])


def _signature(spec: StageSpec, inputs: Mapping[str, torch.Tensor]) -> tuple:
    """What members of one call must share: every input's shape but its stream axis, and dtype;
    where a stage has both stream axes (its ``BK`` rows are ``B x K``), the object count too."""
    shapes = []
    for t in spec.inputs:
        x = inputs[t.name]
        shapes.append((*x.shape[:t.stream_axis], *x.shape[t.stream_axis + 1:], x.dtype))
    axes = {t.shape[t.stream_axis] for t in spec.inputs}
    return (*shapes, _rows(spec, inputs, "BK") if len(axes) > 1 else None)


def _rows(spec: StageSpec, inputs: Mapping[str, torch.Tensor], axis: str) -> int | None:
    """How many rows a member has on stream axis ``axis`` (None: no input has that axis)."""
    return next((inputs[t.name].shape[t.stream_axis] for t in spec.inputs if t.shape[t.stream_axis] == axis), None)
