"""Working memory in preallocated buffers.

Memory is grouped in *buckets* as in the official implementation: objects that enter memory
in the same frame share a bucket, and every bucket has its own keys. A bucket holds
``capacity`` frame slots: slot 0 is the bucket's first memory frame, kept permanently; the
other ``capacity - 1`` slots form a FIFO ring. Slots hold ``hw`` tokens each; a slot that
was never written is masked out by ``valid``. Shapes stay fixed for the whole session, so
every backend sees static memory tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Bucket:
    """Memory of one bucket. ``key`` ``[1, Ck, S, hw]``, ``shrinkage`` ``[1, 1, S, hw]``,
    ``value`` ``[1, K_b, Cv, S, hw]`` (objects in ``object_ids`` order), ``token_valid`` ``[1, S * hw]``."""

    object_ids: list[int]
    key: torch.Tensor
    shrinkage: torch.Tensor
    value: torch.Tensor
    frames_written: int = 0
    token_valid: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.token_valid = torch.zeros(1, self.key.shape[2] * self.key.shape[3], dtype=torch.bool,
                                       device=self.key.device)

    @property
    def capacity(self) -> int:
        return self.key.shape[2]

    def next_slot(self) -> int | None:
        """Slot for the next frame: 0 first, then a FIFO over 1..S-1 (None when there is no FIFO)."""
        if self.frames_written == 0:
            return 0
        if self.capacity == 1:
            return None
        return 1 + (self.frames_written - 1) % (self.capacity - 1)

    def flat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(key ``[1, Ck, N]``, shrinkage ``[1, 1, N]``, value ``[1, K_b, Cv, N]``, valid ``[1, N]``), N = S * hw."""
        return self.key.flatten(2), self.shrinkage.flatten(2), self.value.flatten(3), self.token_valid


class WorkingMemory:
    """All buckets of one session, with room for ``capacity`` frames per bucket."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"max_mem_frames must be >= 1, got {capacity}")
        self.capacity = capacity
        self.buckets: list[Bucket] = []

    @property
    def engaged(self) -> bool:
        return bool(self.buckets)

    def bucket_of(self, obj_id: int) -> Bucket | None:
        return next((b for b in self.buckets if obj_id in b.object_ids), None)

    def add(self, key: torch.Tensor, shrinkage: torch.Tensor, values: torch.Tensor, object_ids: list[int]) -> None:
        """Memorise one frame. key ``[1, Ck, h, w]``, shrinkage ``[1, 1, h, w]``,
        values ``[1, K, Cv, h, w]`` for ``object_ids`` (all objects of the session)."""
        new_ids = [o for o in object_ids if self.bucket_of(o) is None]
        if new_ids:
            self.buckets.append(self._new_bucket(new_ids, key, values.shape[2]))
        index = {o: i for i, o in enumerate(object_ids)}
        for bucket in self.buckets:
            slot = bucket.next_slot()
            bucket.frames_written += 1
            if slot is None:
                continue
            rows = [index[o] for o in bucket.object_ids]
            bucket.key[:, :, slot] = key.flatten(2)
            bucket.shrinkage[:, :, slot] = shrinkage.flatten(2)
            bucket.value[:, :, :, slot] = values[:, rows].flatten(3)
            hw = bucket.key.shape[3]
            bucket.token_valid[:, slot * hw:(slot + 1) * hw] = True

    def _new_bucket(self, object_ids: list[int], key: torch.Tensor, value_dim: int) -> Bucket:
        _, ck, h, w = key.shape
        s, k = self.capacity, len(object_ids)
        like = dict(device=key.device, dtype=key.dtype)
        return Bucket(object_ids=list(object_ids),
                      key=torch.zeros(1, ck, s, h * w, **like),
                      shrinkage=torch.ones(1, 1, s, h * w, **like),
                      value=torch.zeros(1, k, value_dim, s, h * w, **like))

    def remove_objects(self, object_ids: list[int]) -> None:
        """Forget objects; buckets left without objects are dropped."""
        for bucket in self.buckets:
            keep = [i for i, o in enumerate(bucket.object_ids) if o not in object_ids]
            if len(keep) < len(bucket.object_ids):
                bucket.value = bucket.value[:, keep].contiguous()
                bucket.object_ids = [bucket.object_ids[i] for i in keep]
        self.buckets = [b for b in self.buckets if b.object_ids]
