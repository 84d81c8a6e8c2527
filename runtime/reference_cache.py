"""JointFormer's reference memory as a per-block key/value cache in preallocated buffers.

A reference frame's tokens never attend to the current frame, so the keys and values every
joint block reads from it are computed once, when the frame enters memory
(``JointFormer.encode_reference``), and kept here. As in the official ``MemoryStore``:

* objects that enter memory on the same frame share a *bucket* (the same reference frames);
* slot 0 holds the bucket's first frame for good;
* memory frames (every ``mem_every`` frames, or with a mask) go to a FIFO of
  ``max_mem_frames - 1`` slots (with ``max_mem_frames == 1`` they replace the last-frame slot);
* with ``include_last`` every other processed frame replaces a "last frame" slot.

Buffers are ``[L, K_b, Hd, S, hw, D]`` (blocks, objects of the bucket, heads, slots, tokens,
head channels) with a slot validity mask, so shapes stay fixed for the whole video.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ReferenceBucket:
    object_ids: list[int]
    keys: torch.Tensor
    values: torch.Tensor
    fifo_slots: int
    fifo_written: int = 0
    slot_valid: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.slot_valid = torch.zeros(self.keys.shape[3], dtype=torch.bool, device=self.keys.device)

    def write(self, slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """keys/values ``[L, K_b, Hd, hw, D]`` of this bucket's objects into ``slot``."""
        self.keys[:, :, :, slot] = keys
        self.values[:, :, :, slot] = values
        self.slot_valid[slot] = True

    def memory_slot(self) -> int:
        """Where the next memory frame goes: the oldest FIFO slot, else the last-frame slot."""
        if self.fifo_slots == 0:
            return self.keys.shape[3] - 1
        slot = 1 + self.fifo_written % self.fifo_slots
        self.fifo_written += 1
        return slot

    def flat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keys, values ``[L, K_b, Hd, S * hw, D]``, valid ``[K_b, S * hw]``), frame after frame."""
        n_layers, k, heads, slots, hw, d = self.keys.shape
        valid = self.slot_valid.repeat_interleave(hw).expand(k, -1)
        return (self.keys.view(n_layers, k, heads, slots * hw, d), self.values.view(n_layers, k, heads, slots * hw, d),
                valid)


class ReferenceCache:
    """The buckets of one video."""

    def __init__(self, max_mem_frames: int, include_last: bool):
        if max_mem_frames < 1:
            raise ValueError(f"max_mem_frames must be >= 1, got {max_mem_frames}")
        self.fifo_slots = max_mem_frames - 1
        self.has_last_slot = include_last or max_mem_frames == 1
        self.buckets: list[ReferenceBucket] = []

    @staticmethod
    def slot_count(max_mem_frames: int, include_last: bool) -> int:
        """Slots of every bucket's buffers: the first frame, the FIFO of ``max_mem_frames - 1``,
        and the last-frame slot (with ``include_last``, or when ``max_mem_frames == 1``)."""
        return max_mem_frames + int(include_last or max_mem_frames == 1)

    @property
    def slots(self) -> int:
        return self.slot_count(self.fifo_slots + 1, self.has_last_slot)

    @property
    def engaged(self) -> bool:
        return bool(self.buckets)

    def add(self, keys: torch.Tensor, values: torch.Tensor, object_ids: list[int], is_mem_frame: bool) -> None:
        """Store one frame. keys/values ``[L, K, Hd, hw, D]`` for ``object_ids`` (all objects of the
        session, in that order). Objects not in any bucket start a new one with this frame."""
        index = {o: i for i, o in enumerate(object_ids)}
        for bucket in self.buckets:
            if not is_mem_frame and not self.has_last_slot:
                continue
            slot = bucket.memory_slot() if is_mem_frame else self.slots - 1
            rows = [index[o] for o in bucket.object_ids]
            bucket.write(slot, keys[:, rows], values[:, rows])
        known = {o for b in self.buckets for o in b.object_ids}
        new_ids = [o for o in object_ids if o not in known]
        if new_ids:
            rows = [index[o] for o in new_ids]
            bucket = self._new_bucket(new_ids, keys)
            bucket.write(0, keys[:, rows], values[:, rows])
            self.buckets.append(bucket)

    def _new_bucket(self, object_ids: list[int], like: torch.Tensor) -> ReferenceBucket:
        n_layers, _, heads, hw, d = like.shape
        shape = (n_layers, len(object_ids), heads, self.slots, hw, d)
        return ReferenceBucket(list(object_ids), like.new_zeros(shape), like.new_zeros(shape), self.fifo_slots)

    def remove_objects(self, object_ids: list[int]) -> None:
        """Forget objects; buckets left without objects are dropped."""
        for bucket in self.buckets:
            keep = [i for i, o in enumerate(bucket.object_ids) if o not in object_ids]
            if len(keep) < len(bucket.object_ids):
                bucket.keys, bucket.values = bucket.keys[:, keep].contiguous(), bucket.values[:, keep].contiguous()
                bucket.object_ids = [bucket.object_ids[i] for i in keep]
        self.buckets = [b for b in self.buckets if b.object_ids]
