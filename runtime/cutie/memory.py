"""Working and long-term memory in preallocated buffers.

Memory is grouped in *buckets* as in the official implementation: objects that enter memory
in the same frame share a bucket, and every bucket has its own keys. A bucket keeps all its
tokens in one buffer of ``N = long_capacity + frames * hw`` tokens, allocated once:

* ``[0, long_capacity)``: the long-term memory (empty without ``use_long_term``); its
  ``long_size`` tokens in use are packed at the END of that region;
* then ``frames`` working-memory slots of ``hw`` tokens: slot 0 is the bucket's first memory
  frame, kept permanently, the other slots hold the most recent frames, filled in order. Without
  long-term memory the oldest frame makes room for a new one (FIFO); with it, the oldest frames
  are consolidated into long-term prototypes as soon as the slots are full (:mod:`.long_term`)
  and the frames kept move down to slots 1, 2, ...

So the tokens in use are always one range, :attr:`MemoryBucket.active`, long-term memory first
as in the official concatenation. Backends that take any shape read only that range (the
readout costs what the memory holds); CUDA-graph replay reads the whole buffer (one graph per
bucket); tokens not in use are masked out by ``valid``.
"""
from __future__ import annotations

import torch

from ..buckets import Bucket, BucketStore, select_rows
from .config import LongTermPolicy
from .long_term import INITIAL_LIFE, consolidate, normalized_usage


class MemoryBucket(Bucket):
    """Memory of the objects ``object_ids``. Buffers: ``key`` ``[1, Ck, N]``, ``shrinkage``
    ``[1, 1, N]``, ``value`` ``[1, K_b, Cv, N]`` (objects in ``object_ids`` order), ``valid``
    ``[1, N]`` bool; with long-term memory also the working memory's ``selection``
    ``[1, Ck, frames * hw]`` and the usage counts ``use_count``/``life_count`` ``[1, N]`` fp32.

    ``slot_major_values``: ``value`` is a view of a slot-major ``[1, N, K_b, Cv]`` buffer, the
    layout the eager readout reads (one contiguous row of values per memory slot: the Triton
    kernels gather rows, the CPU path bags them), so a readout copies none of it; otherwise the
    buffer is ``[1, K_b, Cv, N]`` contiguous, the layout an exported graph takes."""

    per_object = {"value": 1}

    def __init__(self, object_ids: list[int], hw: int, frames: int, long_capacity: int, key_dim: int,
                 value_dim: int, like: torch.Tensor, counts_usage: bool, slot_major_values: bool = False):
        super().__init__(object_ids)
        n = long_capacity + frames * hw
        alloc = dict(device=like.device, dtype=like.dtype)
        self.hw, self.frames, self.long_capacity = hw, frames, long_capacity
        self.slot_major_values = slot_major_values
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

    @property
    def value(self) -> torch.Tensor:
        """The values ``[1, K_b, Cv, N]`` (a view of the slot-major buffer with ``slot_major_values``)."""
        return self._value

    @value.setter
    def value(self, value: torch.Tensor) -> None:
        """Store ``value`` ``[1, K_b, Cv, N]`` in the bucket's layout (a copy unless it is already in it)."""
        if self.slot_major_values:
            self._value = value.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
        else:
            self._value = value.contiguous()

    @property
    def long_start(self) -> int:
        """First token of the long-term memory in use."""
        return self.long_capacity - self.long_size

    @property
    def active(self) -> slice:
        """The tokens in use: the long-term memory, then the filled working slots."""
        working_frames = int(self.has_permanent) + len(self.temporary)
        return slice(self.long_start, self.long_capacity + working_frames * self.hw)

    def tokens_to_read(self, at_least: int) -> slice:
        """:attr:`active`, extended over empty tokens to ``at_least`` where the buffer has them (an
        exported top-k keeps a fixed k, so its graph needs k tokens; empty ones get no weight)."""
        start, stop = self.active.start, self.active.stop
        stop = min(max(stop, start + at_least), self.valid.shape[1])
        return slice(max(min(start, stop - at_least), 0), stop)

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

    def record_usage(self, usage: torch.Tensor, tokens: slice, count_long_term: bool) -> None:
        """Count one readout of ``tokens``: usage ``[1, len(tokens)]`` from the memory usage stage (the
        official ``update_bucket_usage`` of the working memory, and of the long-term memory if counted)."""
        skip = 0 if count_long_term else max(self.long_capacity - tokens.start, 0)
        counted = slice(tokens.start + skip, tokens.stop)
        self.use_count[:, counted] += usage[:, skip:]
        self.life_count[:, counted] += 1

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
        self.temporary = self.temporary[len(old_slots):]
        self._move_kept_frames_down()
        self._append_long_term(*prototypes)

    def _move_kept_frames_down(self) -> None:
        """Move the temporary frames left after a consolidation to slots 1, 2, ... (in order) and
        mark the slots above them empty, so that the working memory in use is one range again."""
        kept = len(self.temporary)
        source = torch.cat([torch.arange(self.slot_tokens(s).start, self.slot_tokens(s).stop) for s in self.temporary]
                           ) if kept else torch.zeros(0, dtype=torch.long)
        target = slice(self.slot_tokens(1).start, self.slot_tokens(1).start + kept * self.hw)
        source = source.to(self.key.device)
        for buffer in (self.key, self.shrinkage, self.value, self.valid, self.use_count, self.life_count):
            buffer[..., target] = buffer[..., source]
        self.selection[..., target.start - self.long_capacity:target.stop - self.long_capacity] = \
            self.selection[..., source - self.long_capacity]
        self.valid[:, target.stop:] = False
        self.temporary = list(range(1, kept + 1))

    def _evict(self, policy: LongTermPolicy) -> None:
        """Keep the ``policy.keep_after_eviction`` most used long-term tokens (the official
        ``remove_obsolete_features``), packed at the end of the region; the newest without usage counts."""
        start, keep = self.long_start, policy.keep_after_eviction
        if policy.count_usage:
            usage = normalized_usage(self.use_count[0, start:self.long_capacity],
                                     self.life_count[0, start:self.long_capacity])
            survivors = start + torch.topk(usage, k=keep, sorted=True).indices
        else:
            survivors = torch.arange(self.long_capacity - keep, self.long_capacity, device=self.key.device)
        target = slice(self.long_capacity - keep, self.long_capacity)
        for buffer in (self.key, self.shrinkage, self.value, self.use_count, self.life_count):
            buffer[..., target] = buffer[..., survivors]
        self.valid[:, start:target.start] = False
        self.long_size = keep

    def _append_long_term(self, key: torch.Tensor, shrinkage: torch.Tensor, value: torch.Tensor) -> None:
        """Add prototypes after the long-term tokens in use, which move down to make room: the
        region stays packed at its end, in the official order (oldest first; top-k ties keep the
        first of equal scores, so the order decides which)."""
        added, start = key.shape[-1], self.long_start
        if self.long_size:
            moved = slice(start - added, self.long_capacity - added)
            for buffer in (self.key, self.shrinkage, self.value, self.use_count, self.life_count):
                buffer[..., moved] = buffer[..., start:self.long_capacity].clone()
        tokens = slice(self.long_capacity - added, self.long_capacity)
        self.key[:, :, tokens] = key
        self.shrinkage[:, :, tokens] = shrinkage
        self.value[:, :, :, tokens] = value
        self.valid[:, start - added:self.long_capacity] = True
        self._reset_counts(tokens)
        self.long_size += added


class MemoryStore(BucketStore[MemoryBucket]):
    """All buckets of one session: ``frames`` working-memory frames per bucket (the permanent
    first frame included) and, with ``long_term``, a long-term memory of its ``max_tokens``;
    values slot-major with ``slot_major_values`` (see :class:`MemoryBucket`)."""

    def __init__(self, frames: int, long_term: LongTermPolicy | None = None, slot_major_values: bool = False):
        super().__init__()
        if frames < 1:
            raise ValueError(f"max_mem_frames must be >= 1, got {frames}")
        self.frames = frames
        self.long_term = long_term
        self.slot_major_values = slot_major_values

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
            bucket.write_frame(key.flatten(2), shrinkage.flatten(2), selection.flatten(2),
                               select_rows(values, rows, 1).flatten(3))
            if self.long_term is not None and len(bucket.temporary) >= self.frames - 1:
                bucket.consolidate(self.long_term)

    def record_usage(self, bucket: MemoryBucket, usage: torch.Tensor, tokens: slice) -> None:
        """Count one readout of ``bucket``'s ``tokens``: usage ``[1, len(tokens)]`` float32 from the memory usage stage."""
        bucket.record_usage(usage, tokens, count_long_term=self.long_term.count_usage)

    def _new_bucket(self, object_ids: list[int], key: torch.Tensor, value_dim: int) -> MemoryBucket:
        _, key_dim, h, w = key.shape
        long_capacity = self.long_term.max_tokens if self.long_term else 0
        return MemoryBucket(object_ids, h * w, self.frames, long_capacity, key_dim, value_dim, key,
                            counts_usage=self.long_term is not None, slot_major_values=self.slot_major_values)
