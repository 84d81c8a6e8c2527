"""Working and long-term memory in preallocated buffers.

Memory is grouped in *buckets* as in the official implementation: objects that enter memory
in the same frame share a bucket, and every bucket has its own keys. A bucket keeps all its
tokens in one buffer of ``N = long_capacity + frames * hw`` tokens, allocated once:

* ``[0, long_capacity)``: the long-term memory (empty without ``use_long_term``); its
  ``long_size`` tokens in use are packed at the start;
* then ``frames`` working-memory slots of ``hw`` tokens: slot 0 is the bucket's first memory
  frame, kept permanently, the other slots hold the most recent frames. Without long-term
  memory the oldest frame makes room for a new one (FIFO); with it, the oldest frames are
  consolidated into long-term prototypes as soon as the slots are full (:mod:`.long_term`).

Tokens not in use are masked out by ``valid``. The readout reads the whole buffer, long-term
memory first as in the official concatenation, so every backend sees the same static shapes
for the whole session.
"""
from __future__ import annotations

import torch

from ..buckets import Bucket, BucketStore
from .config import LongTermPolicy
from .long_term import INITIAL_LIFE, consolidate, normalized_usage


class MemoryBucket(Bucket):
    """Memory of the objects ``object_ids``. Buffers: ``key`` ``[1, Ck, N]``, ``shrinkage``
    ``[1, 1, N]``, ``value`` ``[1, K_b, Cv, N]`` (objects in ``object_ids`` order), ``valid``
    ``[1, N]`` bool; with long-term memory also the working memory's ``selection``
    ``[1, Ck, frames * hw]`` and the usage counts ``use_count``/``life_count`` ``[1, N]`` fp32."""

    per_object = {"value": 1}

    def __init__(self, object_ids: list[int], hw: int, frames: int, long_capacity: int, key_dim: int,
                 value_dim: int, like: torch.Tensor, counts_usage: bool):
        super().__init__(object_ids)
        n = long_capacity + frames * hw
        alloc = dict(device=like.device, dtype=like.dtype)
        self.hw, self.frames, self.long_capacity = hw, frames, long_capacity
        self.key = torch.zeros(1, key_dim, n, **alloc)
        self.shrinkage = torch.ones(1, 1, n, **alloc)
        self.value = torch.zeros(1, len(object_ids), value_dim, n, **alloc)
        self.valid = torch.zeros(1, n, dtype=torch.bool, device=like.device)
        self.selection = torch.zeros(1, key_dim, frames * hw, **alloc) if counts_usage else None
        self.use_count = torch.zeros(1, n, device=like.device) if counts_usage else None
        self.life_count = torch.full((1, n), INITIAL_LIFE, device=like.device) if counts_usage else None
        self.has_permanent = False
        self.temporary: list[int] = []  # working slots of the non-permanent frames, oldest first
        self.long_size = 0

    def flat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(key ``[1, Ck, N]``, shrinkage ``[1, 1, N]``, value ``[1, K_b, Cv, N]``, valid ``[1, N]``)."""
        return self.key, self.shrinkage, self.value, self.valid

    def slot_tokens(self, slot: int) -> slice:
        start = self.long_capacity + slot * self.hw
        return slice(start, start + self.hw)

    def write_frame(self, key: torch.Tensor, shrinkage: torch.Tensor, selection: torch.Tensor | None,
                    value: torch.Tensor) -> None:
        """Memorise one frame: key/selection ``[1, Ck, hw]``, shrinkage ``[1, 1, hw]``, value ``[1, K_b, Cv, hw]``."""
        slot = self._next_slot()
        if slot is None:
            return
        tokens = self.slot_tokens(slot)
        self.key[:, :, tokens] = key
        self.shrinkage[:, :, tokens] = shrinkage
        self.value[:, :, :, tokens] = value
        self.valid[:, tokens] = True
        if self.selection is not None and slot > 0:
            self.selection[:, :, slot * self.hw:(slot + 1) * self.hw] = selection
            self._reset_counts(tokens)

    def _next_slot(self) -> int | None:
        """Slot 0 first; then a free slot, else the oldest temporary one (None when there are no temporary slots)."""
        if not self.has_permanent:
            self.has_permanent = True
            return 0
        if self.frames == 1:
            return None
        used = set(self.temporary)
        free = [s for s in range(1, self.frames) if s not in used]
        slot = free[0] if free else self.temporary.pop(0)
        self.temporary.append(slot)
        return slot

    def _reset_counts(self, tokens: slice) -> None:
        self.use_count[:, tokens] = 0
        self.life_count[:, tokens] = INITIAL_LIFE

    def record_usage(self, usage: torch.Tensor, count_long_term: bool) -> None:
        """Count one readout: usage ``[1, N]`` from the memory usage graph (the official
        ``update_bucket_usage`` of the working memory, and of the long-term memory if counted).
        Tokens not in use are counted too; their counts restart when they are written."""
        start = 0 if count_long_term else self.long_capacity
        self.use_count[:, start:] += usage[:, start:]
        self.life_count[:, start:] += 1

    def consolidate(self, policy: LongTermPolicy) -> None:
        """Move the oldest temporary frames, all but ``policy.keep_frames``, into long-term prototypes."""
        old_slots = self.temporary[:len(self.temporary) - policy.keep_frames]
        if not old_slots:
            return
        tokens = torch.cat([torch.arange(self.slot_tokens(s).start, self.slot_tokens(s).stop) for s in old_slots])
        tokens = tokens.to(self.key.device)
        if self.long_size >= policy.evict_at:
            self._evict(policy)
        prototypes = consolidate(self.key[:, :, tokens], self.shrinkage[:, :, tokens],
                                 self.selection[:, :, tokens - self.long_capacity], self.value[:, :, :, tokens],
                                 normalized_usage(self.use_count[:, tokens], self.life_count[:, tokens]),
                                 policy.num_prototypes)
        for slot in old_slots:
            self.valid[:, self.slot_tokens(slot)] = False
        self.temporary = self.temporary[len(old_slots):]
        self._append_long_term(*prototypes)

    def _evict(self, policy: LongTermPolicy) -> None:
        """Keep the ``policy.keep_after_eviction`` most used long-term tokens (the official
        ``remove_obsolete_features``), packed at the start; the newest without usage counts."""
        size, keep = self.long_size, policy.keep_after_eviction
        if policy.count_usage:
            usage = normalized_usage(self.use_count[0, :size], self.life_count[0, :size])
            survivors = torch.topk(usage, k=keep, sorted=True).indices
        else:
            survivors = torch.arange(size - keep, size, device=self.key.device)
        for buffer in (self.key, self.shrinkage, self.value, self.use_count, self.life_count):
            buffer[..., :keep] = buffer[..., survivors]
        self.valid[:, keep:size] = False
        self.long_size = keep

    def _append_long_term(self, key: torch.Tensor, shrinkage: torch.Tensor, value: torch.Tensor) -> None:
        tokens = slice(self.long_size, self.long_size + key.shape[-1])
        self.key[:, :, tokens] = key
        self.shrinkage[:, :, tokens] = shrinkage
        self.value[:, :, :, tokens] = value
        self.valid[:, tokens] = True
        self._reset_counts(tokens)
        self.long_size = tokens.stop


class MemoryStore(BucketStore[MemoryBucket]):
    """All buckets of one session: ``frames`` working-memory frames per bucket (the permanent
    first frame included) and, with ``long_term``, a long-term memory of its ``max_tokens``."""

    def __init__(self, frames: int, long_term: LongTermPolicy | None = None):
        super().__init__()
        if frames < 1:
            raise ValueError(f"max_mem_frames must be >= 1, got {frames}")
        self.frames = frames
        self.long_term = long_term

    @property
    def counts_usage(self) -> bool:
        """Whether readouts must report memory usage (:meth:`Bucket.record_usage`)."""
        return self.long_term is not None

    def add(self, key: torch.Tensor, shrinkage: torch.Tensor, selection: torch.Tensor, values: torch.Tensor,
            object_ids: list[int]) -> None:
        """Memorise one frame. key/selection ``[1, Ck, h, w]``, shrinkage ``[1, 1, h, w]``,
        values ``[1, K, Cv, h, w]`` for ``object_ids`` (all objects of the session). With
        long-term memory, buckets whose working memory is full are consolidated."""
        new_ids = self.untracked(object_ids)
        if new_ids:
            self.buckets.append(self._new_bucket(new_ids, key, values.shape[2]))
        index = {o: i for i, o in enumerate(object_ids)}
        for bucket in self.buckets:
            rows = [index[o] for o in bucket.object_ids]
            bucket.write_frame(key.flatten(2), shrinkage.flatten(2), selection.flatten(2), values[:, rows].flatten(3))
            if self.long_term is not None and len(bucket.temporary) >= self.frames - 1:
                bucket.consolidate(self.long_term)

    def record_usage(self, bucket: MemoryBucket, usage: torch.Tensor) -> None:
        """Count one readout of ``bucket``: usage ``[1, N]`` float32 from the memory usage graph."""
        bucket.record_usage(usage, count_long_term=self.long_term.count_usage)

    def _new_bucket(self, object_ids: list[int], key: torch.Tensor, value_dim: int) -> MemoryBucket:
        _, key_dim, h, w = key.shape
        long_capacity = self.long_term.max_tokens if self.long_term else 0
        return MemoryBucket(object_ids, h * w, self.frames, long_capacity, key_dim, value_dim, key,
                      counts_usage=self.long_term is not None)
