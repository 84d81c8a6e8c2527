"""Cutie's session: the official ``InferenceCore`` step over any backend.

Memory every ``mem_every`` frames and on every frame with a mask, staggered sensory updates,
objects added by a mask that holds only them, soft aggregation of all objects, and optionally
the long-term memory of the official ``MemoryManager`` (``use_long_term``).
"""
from __future__ import annotations

import torch

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
        self._memory = MemoryStore(self.config.memory_frames, self.config.long_term_policy())
        self._sensory: torch.Tensor | None = None  # [1, K, C, h, w]
        self._readout: torch.Tensor | None = None  # [1, K, C, h, w], rewritten by every readout
        self._obj_memory: torch.Tensor | None = None  # [1, K, Q, C + 1]
        self._last_mask: torch.Tensor | None = None  # [1, K, H, W]

    @property
    def _has_memory(self) -> bool:
        return self._memory.engaged

    def _step(self, frame: Frame) -> torch.Tensor:
        update_sensory = frame.since_memory in self._stagger and not frame.last
        tracked = set(self.objects.ids)
        propagate = frame.labels is None or (bool(tracked) and set(frame.objects) != tracked)
        features = self.backend.run("image_encoder", image=frame.image)
        prob = self._segment(features, update_sensory) if propagate else None
        if frame.labels is not None:
            prob = self._merge_mask(prob, frame.labels, frame.objects)
            self._register(self.objects.add(frame.objects), frame.labels.shape)
        self._last_mask = prob[1:].unsqueeze(0)
        if frame.memorise:
            self._add_memory(frame.image, features)
        return prob

    def _memory_tokens(self, frame_tokens: int) -> int:
        long_term = self.config.long_term_max_num_tokens if self.config.use_long_term else 0
        return self.config.memory_frames * frame_tokens + long_term

    def _keep_rows(self, rows: list[int], removed: list[int]) -> None:
        self._memory.remove_objects(removed)
        self._sensory, self._obj_memory, self._last_mask, self._readout = (
            t[:, rows] for t in (self._sensory, self._obj_memory, self._last_mask, self._readout))

    def _segment(self, features: dict[str, torch.Tensor], update_sensory: bool) -> torch.Tensor:
        """Memory readout + decoding for the objects already in memory -> ``[K + 1, H, W]``."""
        query = {name: features[name] for name in ("key", "selection")}
        for bucket in self._memory.buckets:
            rows = self.objects.rows(bucket.object_ids)
            tokens = slice(0, bucket.valid.shape[1]) if self.backend.fixed_shapes else \
                bucket.tokens_to_read(self.config.top_k)
            memory = dict(memory_key=bucket.key[:, :, tokens], memory_shrinkage=bucket.shrinkage[:, :, tokens],
                          memory_valid=bucket.valid[:, tokens])
            if self._memory.counts_usage:
                usage = self.backend.run("memory_usage", **query, **memory)["memory_usage"]
                self._memory.record_usage(bucket, usage, tokens)
            chunk = self.config.chunk_size if self.config.chunk_size > 0 else len(rows)
            for start in range(0, len(rows), chunk):
                part = rows[start:start + chunk]
                readout = self.backend.run(
                    "memory_readout", **query, pix_feat=features["pix_feat"], **memory,
                    memory_value=bucket.value[:, start:start + chunk, :, tokens], sensory=self._sensory[:, part],
                    last_mask=self._last_mask[:, part], obj_memory=self._obj_memory[:, part])["readout"]
                self._readout[:, part] = readout.to(self._readout.dtype)  # fp16 under autocast
        decoded = self.backend.run("mask_decoder", f8=features["f8"], f4=features["f4"], readout=self._readout,
                                   sensory=self._sensory)
        if update_sensory:
            self._sensory.copy_(decoded["new_sensory"])
        return decoded["prob"][0]

    def _register(self, new_objects: list[int], size: torch.Size) -> None:
        """Zero sensory, object memory and readout rows for newly tracked objects."""
        if not new_objects:
            return
        architecture, k, device = self.backend.architecture, len(new_objects), self.backend.device
        h, w = size[0] // 16, size[1] // 16
        sensory = torch.zeros(1, k, architecture["sensory_dim"], h, w, device=device)
        obj_memory = torch.zeros(1, k, architecture["num_queries"], architecture["embed_dim"] + 1, device=device)
        readout = torch.zeros(1, k, architecture["embed_dim"], h, w, device=device)
        self._sensory, self._obj_memory, self._readout = (
            new if old is None else torch.cat([old, new], 1)
            for old, new in ((self._sensory, sensory), (self._obj_memory, obj_memory), (self._readout, readout)))

    def _add_memory(self, image: torch.Tensor, features: dict[str, torch.Tensor]) -> None:
        encoded = self.backend.run("mask_encoder", image=image, pix_feat=features["pix_feat"], sensory=self._sensory,
                                   masks=self._last_mask)
        self._memory.add(features["key"], features["shrinkage"], features["selection"], encoded["mask_value"],
                         self.objects.ids)
        self._obj_memory += encoded["obj_summaries"]
        self._sensory.copy_(encoded["new_sensory"])
