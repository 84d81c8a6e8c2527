"""JointFormer's session: the official ``InferenceCore`` / ``MemoryManager`` over a per-block
reference key/value cache.

Per frame: the frame's tokens run through the joint blocks reading every bucket's cache
(top-K), the decoder predicts all objects (soft aggregation), and the decoder features update
each object's compressed-memory token. Then, on a memory frame (every ``mem_every`` frames
or with a mask) and, with ``include_last``, on every other frame, the frame with its
predicted masks is encoded once into cache entries, which also updates the
compressed-memory token again. ``end=True`` (the video's last frame) skips that encoding.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..stage_batcher import StageBatcher
from ..buckets import write_rows
from ..session import Frame, Session
from .config import JointFormerSessionConfig
from .reference_cache import ReferenceCache


class JointFormerSession(Session):
    """A :class:`~vosrt.runtime.session.Session` of JointFormer. How it follows the official code:
    a reference frame's keys/values are computed once, when it enters memory, and cached per
    joint block (the official code recomputes them every frame; the result is the same)."""

    config: JointFormerSessionConfig

    def _reset_memory(self) -> None:
        self._cache = ReferenceCache(self.config.max_mem_frames, self.config.include_last)
        self._summary: torch.Tensor | None = None  # compressed-memory tokens [K, 1, C]

    @property
    def _has_memory(self) -> bool:
        return self._cache.engaged

    def _memory_tokens(self, frame_tokens: int) -> int:
        """The cache slots of every joint block, and the frame's own tokens (joint attention)."""
        return (ReferenceCache.slot_count(self.config.max_mem_frames, self.config.include_last) + 1) * frame_tokens

    def _memorises(self, frame: Frame) -> bool:
        """Memory frames, and with ``include_last`` every other frame but the video's last."""
        return (frame.memorise or self.config.include_last) and not frame.last

    def _keep_rows(self, rows: list[int], removed: list[int]) -> None:
        self._cache.remove_objects(removed)
        self._summary = self._summary[rows]

    @classmethod
    def _predict(cls, steps: list[tuple["JointFormerSession", Frame, None]], batcher: StageBatcher) -> list[torch.Tensor]:
        """Propagate every bucket's objects, decode each stream's objects together -> per stream
        ``[K + 1, H, W]``; updates the compressed-memory tokens."""
        if not steps:
            return []
        queries = batcher.run("query_encoder", [(s, {"image": frame.image}) for s, frame, _ in steps])
        reads = [(s, query["tokens"], bucket) for (s, _, _), query in zip(steps, queries) for bucket in s._cache.buckets]
        session = steps[0][0]
        windows = batcher.memory_windows([bucket for _, _, bucket in reads], session.config.top_k)
        propagated = batcher.run("joint_propagation", [
            (s, dict(tokens=tokens.expand(len(bucket.object_ids), -1, -1), ref_keys=bucket.keys[:, :, :, read],
                     ref_values=bucket.values[:, :, :, read], ref_valid=bucket.valid[:, read]))
            for (s, tokens, bucket), read in zip(reads, windows)])
        f16 = {s: torch.empty(len(s.objects), *query["tokens"].shape[1:], device=query["tokens"].device,
                              dtype=query["tokens"].dtype) for (s, _, _), query in zip(steps, queries)}
        for (s, _, bucket), outputs in zip(reads, propagated):
            write_rows(f16[s], s.objects.rows(bucket.object_ids), 0, outputs["f16"])
        decoded = batcher.run("decoder", [(s, dict(f16=f16[s], f8=query["f8"], f4=query["f4"], summary=s._summary))
                                          for (s, _, _), query in zip(steps, queries)])
        for (s, _, _), outputs in zip(steps, decoded):
            s._summary = outputs["new_summary"].clone()  # a backend may reuse its output buffer
        return [outputs["prob"][0] for outputs in decoded]

    def _register_objects(self, new_objects: list[int]) -> None:
        """Append the initial compressed-memory token for newly tracked objects."""
        if not new_objects:
            return
        summary = self.backend.constants["initial_summary"].expand(len(new_objects), -1, -1)
        self._summary = summary.clone() if self._summary is None else torch.cat([self._summary, summary])

    @classmethod
    def _memorise(cls, streams: list[tuple["JointFormerSession", Frame, None]], batcher: StageBatcher) -> None:
        """Encode each stream's frame with its masks ``[K, H, W]`` into cache entries."""
        encoded = batcher.run("reference_encoder", [
            (s, dict(image=frame.image, masks=s._last_masks[None], summary=s._summary)) for s, frame, _ in streams])
        for (s, frame, _), outputs in zip(streams, encoded):
            s._cache.add(outputs["ref_keys"], outputs["ref_values"], s.objects.ids, frame.memorise)
            s._summary = outputs["new_summary"].clone()
