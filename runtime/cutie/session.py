"""Cutie's session: the official ``InferenceCore`` step over any backend.

Memory every ``mem_every`` frames and on every frame with a mask, staggered sensory updates,
objects added by a mask that holds only them, soft aggregation of all objects, and optionally
the long-term memory of the official ``MemoryManager`` (``use_long_term``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..stage_batcher import StageBatcher
from ..buckets import select_rows, write_rows
from ..session import Frame, Session
from .config import CutieSessionConfig
from .memory import MemoryStore


class CutieSession(Session):
    """A :class:`~vosrt.runtime.session.Session` of Cutie (small or base)."""

    config: CutieSessionConfig

    def __init__(self, backend, config: CutieSessionConfig = CutieSessionConfig(), *, amp: bool = False):
        self._stagger = config.stagger_steps()
        super().__init__(backend, config, amp=amp)

    def _reset_memory(self) -> None:
        self._memory = MemoryStore(self.config.memory_frames, self.config.long_term_policy(),
                                   slot_major_values=self.backend.slot_major_values)
        self._sensory: torch.Tensor | None = None  # [1, K, C, h, w]
        self._readout: torch.Tensor | None = None  # [1, K, C, h, w], rewritten by every readout
        self._obj_memory: torch.Tensor | None = None  # [1, K, Q, C + 1]

    @property
    def _has_memory(self) -> bool:
        return self._memory.engaged

    @classmethod
    def _encode(cls, steps: Sequence[tuple["CutieSession", Frame]], batcher: StageBatcher) -> list[dict]:
        """Every frame's image features (the readout's query and the memory's key)."""
        return batcher.run("image_encoder", [(s, {"image": frame.image}) for s, frame in steps])

    def _memory_tokens(self, frame_tokens: int) -> int:
        long_term = self.config.long_term_max_num_tokens if self.config.use_long_term else 0
        return self.config.memory_frames * frame_tokens + long_term

    def _keep_rows(self, rows: list[int], removed: list[int]) -> None:
        self._memory.remove_objects(removed)
        self._sensory, self._obj_memory, self._readout = (
            t[:, rows] for t in (self._sensory, self._obj_memory, self._readout))

    @classmethod
    def _predict(cls, streams: list[tuple["CutieSession", Frame, dict[str, torch.Tensor]]],
                 batcher: StageBatcher) -> list[torch.Tensor]:
        """Memory readout + decoding of the objects already in memory -> per stream ``[K + 1, H, W]``."""
        cls._read_memory([(s, features) for s, _, features in streams], batcher)
        decoded = batcher.run("mask_decoder", [
            (s, dict(f8=features["f8"], f4=features["f4"], readout=s._readout, sensory=s._sensory))
            for s, _, features in streams])
        for (s, frame, _), outputs in zip(streams, decoded):
            if frame.since_memory in s._stagger and not frame.last:
                s._sensory.copy_(outputs["new_sensory"])
        return [outputs["prob"][0] for outputs in decoded]

    @classmethod
    def _read_memory(cls, streams: list[tuple["CutieSession", dict[str, torch.Tensor]]], batcher: StageBatcher) -> None:
        """Every bucket's readout (in chunks of ``chunk_size`` objects) into each session's ``_readout``,
        after the memory usage it counts with long-term memory."""
        reads = [(s, features, bucket) for s, features in streams for bucket in s._memory.buckets]
        if not reads:
            return
        session = streams[0][0]
        windows = batcher.memory_windows([bucket for _, _, bucket in reads], session.config.top_k)
        memory = [dict(memory_key=bucket.key[:, :, tokens], memory_shrinkage=bucket.shrinkage[:, :, tokens],
                       memory_valid=bucket.valid[:, tokens]) for (_, _, bucket), tokens in zip(reads, windows)]
        queries = [{name: features[name] for name in ("key", "selection")} for _, features, _ in reads]
        if session._memory.counts_usage:
            usage = batcher.run("memory_usage", [(s, q | m) for (s, _, _), q, m in zip(reads, queries, memory)])
            for (s, _, bucket), tokens, outputs in zip(reads, windows, usage):
                s._memory.record_usage(bucket, outputs["memory_usage"], tokens)
        parts = [(s, features, bucket, tokens, q | m, s.objects.rows(bucket.object_ids)[start:start + chunk], start)
                 for (s, features, bucket), tokens, q, m in zip(reads, windows, queries, memory)
                 for chunk in [s._chunk(bucket)] for start in range(0, len(bucket.object_ids), chunk)]
        readouts = batcher.run("memory_readout", [
            (s, query | dict(pix_feat=features["pix_feat"], sensory=select_rows(s._sensory, rows, 1),
                             memory_value=bucket.value[:, start:start + len(rows), :, tokens],
                             last_mask=select_rows(s._last_masks[None], rows, 1), obj_memory=select_rows(s._obj_memory, rows, 1)))
            for s, features, bucket, tokens, query, rows, start in parts])
        for (s, _, _, _, _, rows, _), outputs in zip(parts, readouts):
            write_rows(s._readout, rows, 1, outputs["readout"].to(s._readout.dtype))  # fp16 under autocast

    def _chunk(self, bucket) -> int:
        """Objects of ``bucket`` read from memory in one call (``chunk_size``; all without it)."""
        return self.config.chunk_size if self.config.chunk_size > 0 else len(bucket.object_ids)

    def _register_objects(self, new_objects: list[int]) -> None:
        """Zero sensory, object memory and readout rows for newly tracked objects."""
        if not new_objects:
            return
        k = len(new_objects)
        sensory, readout = self._new_state("mask_decoder", "sensory", k), self._new_state("mask_decoder", "readout", k)
        obj_memory = self._new_state("memory_readout", "obj_memory", k)
        self._sensory, self._obj_memory, self._readout = (
            new if old is None else torch.cat([old, new], 1)
            for old, new in ((self._sensory, sensory), (self._obj_memory, obj_memory), (self._readout, readout)))

    @classmethod
    def _memorise(cls, streams: list[tuple["CutieSession", Frame, dict[str, torch.Tensor]]],
                  batcher: StageBatcher) -> None:
        """Encode each stream's frame with its last masks and memorise it."""
        encoded = batcher.run("mask_encoder", [
            (s, dict(image=frame.image, pix_feat=features["pix_feat"], sensory=s._sensory, masks=s._last_masks[None]))
            for s, frame, features in streams])
        for (s, _, features), outputs in zip(streams, encoded):
            s._memory.add(features["key"], features["shrinkage"], features["selection"], outputs["mask_value"],
                          s.objects.ids)
            s._obj_memory += outputs["obj_summaries"]
            s._sensory.copy_(outputs["new_sensory"])
