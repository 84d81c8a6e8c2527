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

import torch

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

    def _step(self, frame: Frame) -> torch.Tensor:
        covers_all = frame.labels is not None and set(self.objects.ids) <= set(frame.objects)
        prob = self._segment(frame.image) if self._cache.engaged and not covers_all else None
        if frame.labels is not None:
            prob = self._merge_mask(prob, frame.labels, frame.objects)
            self._register(self.objects.add(frame.objects))
        if (frame.memorise or self.config.include_last) and not frame.last:
            self._memorise(frame.image, prob[1:], frame.memorise)
        return prob

    def _memory_tokens(self, frame_tokens: int) -> int:
        """The cache slots of every joint block, and the frame's own tokens (joint attention)."""
        return (ReferenceCache.slot_count(self.config.max_mem_frames, self.config.include_last) + 1) * frame_tokens

    def _keep_rows(self, rows: list[int], removed: list[int]) -> None:
        self._cache.remove_objects(removed)
        self._summary = self._summary[rows]

    def _segment(self, image: torch.Tensor) -> torch.Tensor:
        """Propagate every bucket's objects, decode them together -> ``[K + 1, H, W]``; updates
        the compressed-memory tokens."""
        query = self.backend.run("query_encoder", image=image)
        tokens = query["tokens"]
        f16 = torch.empty(len(self.objects), *tokens.shape[1:], device=tokens.device, dtype=tokens.dtype)
        for bucket in self._cache.buckets:
            read = slice(None) if self.backend.fixed_shapes else bucket.tokens_to_read(self.config.top_k)
            f16[self.objects.rows(bucket.object_ids)] = self.backend.run(
                "joint_propagation", tokens=tokens, ref_keys=bucket.keys[:, :, :, read],
                ref_values=bucket.values[:, :, :, read], ref_valid=bucket.valid[:, read])["f16"]
        decoded = self.backend.run("decoder", f16=f16, f8=query["f8"], f4=query["f4"], summary=self._summary)
        self._summary = decoded["new_summary"].clone()  # a backend may reuse its output buffer
        return decoded["prob"]

    def _register(self, new_objects: list[int]) -> None:
        """Append the initial compressed-memory token for newly tracked objects."""
        if not new_objects:
            return
        summary = self.backend.constants["initial_summary"].expand(len(new_objects), -1, -1)
        self._summary = summary.clone() if self._summary is None else torch.cat([self._summary, summary])

    def _memorise(self, image: torch.Tensor, masks: torch.Tensor, is_mem_frame: bool) -> None:
        encoded = self.backend.run("reference_encoder", image=image, masks=masks, summary=self._summary)
        self._cache.add(encoded["ref_keys"], encoded["ref_values"], self.objects.ids, is_mem_frame)
        self._summary = encoded["new_summary"].clone()
