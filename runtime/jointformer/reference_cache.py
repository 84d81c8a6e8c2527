"""JointFormer's reference memory as a per-block key/value cache in preallocated buffers.

A reference frame's tokens never attend to the current frame, so the keys and values every
joint block reads from it are computed once, when the frame enters memory
(``JointFormer.encode_reference``), and kept here. As in the official ``MemoryStore``:

* objects that enter memory on the same frame share a *bucket* (the same reference frames);
* slot 0 holds the bucket's first frame for good;
* with ``include_last`` every processed frame that is not a memory frame replaces a "last
  frame" slot, slot 1;
* memory frames (every ``mem_every`` frames, or with a mask) go to a FIFO of
  ``max_mem_frames - 1`` slots after it (with ``max_mem_frames == 1`` they replace the
  last-frame slot).

Buffers are ``[L, K_b, Hd, S * hw, D]`` (blocks, objects of the bucket, heads, slots x tokens,
head channels), frame after frame, with a validity mask ``[K_b, S * hw]``, allocated once.
Slots fill from the start, so the frames in memory are the first :attr:`ReferenceBucket.filled`
slots (with at most the empty last-frame slot among them, when ``mem_every=1`` never leaves a
frame for it): backends that take any shape read only those.
"""
from __future__ import annotations

import torch

from ..buckets import Bucket, BucketStore, select_rows

LAST_SLOT = 1  # the last processed frame's slot, when there is one


class ReferenceBucket(Bucket):
    """The cache of ``object_ids``: ``keys``/``values`` ``[L, K_b, Hd, S * hw, D]``, ``valid`` ``[K_b, S * hw]``."""

    per_object = {"keys": 1, "values": 1, "valid": 0}

    def __init__(self, object_ids: list[int], like: torch.Tensor, slots: int, fifo_slots: int):
        super().__init__(object_ids)
        n_layers, _, heads, hw, d = like.shape
        self.hw, self.slots, self.fifo_slots = hw, slots, fifo_slots
        self.fifo_written = 0
        self.filled = 0  # slots from the start that hold a frame (or the empty last-frame slot)
        self.keys = like.new_zeros(n_layers, len(object_ids), heads, slots * hw, d)
        self.values = torch.zeros_like(self.keys)
        self.valid = torch.zeros(len(object_ids), slots * hw, dtype=torch.bool, device=like.device)

    def write(self, slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """keys/values ``[L, K_b, Hd, hw, D]`` of this bucket's objects into ``slot``."""
        tokens = slice(slot * self.hw, (slot + 1) * self.hw)
        self.keys[:, :, :, tokens] = keys
        self.values[:, :, :, tokens] = values
        self.valid[:, tokens] = True
        self.filled = max(self.filled, slot + 1)

    def memory_slot(self) -> int:
        """Where the next memory frame goes: the oldest FIFO slot, else the last-frame slot."""
        if self.fifo_slots == 0:
            return LAST_SLOT
        slot = self.slots - self.fifo_slots + self.fifo_written % self.fifo_slots
        self.fifo_written += 1
        return slot

    def tokens_to_read(self, at_least: int) -> slice:
        """The tokens of the filled slots, extended over empty ones to ``at_least`` where the buffer
        has them (an exported top-K keeps a fixed k)."""
        return slice(0, min(max(self.filled * self.hw, at_least), self.slots * self.hw))


class ReferenceCache(BucketStore[ReferenceBucket]):
    """The buckets of one video."""

    def __init__(self, max_mem_frames: int, include_last: bool):
        super().__init__()
        if max_mem_frames < 1:
            raise ValueError(f"max_mem_frames must be >= 1, got {max_mem_frames}")
        self.fifo_slots = max_mem_frames - 1
        self.has_last_slot = include_last or max_mem_frames == 1
        self.slots = self.slot_count(max_mem_frames, include_last)

    @staticmethod
    def slot_count(max_mem_frames: int, include_last: bool) -> int:
        """Slots of every bucket's buffers: the first frame, the FIFO of ``max_mem_frames - 1``,
        and the last-frame slot (with ``include_last``, or when ``max_mem_frames == 1``)."""
        return max_mem_frames + int(include_last or max_mem_frames == 1)

    def add(self, keys: torch.Tensor, values: torch.Tensor, object_ids: list[int], is_mem_frame: bool) -> None:
        """Store one frame. keys/values ``[L, K, Hd, hw, D]`` for ``object_ids`` (all objects of the
        session, in that order). Objects not in any bucket start a new one with this frame."""
        index = {o: i for i, o in enumerate(object_ids)}
        for bucket in self.buckets:
            if not is_mem_frame and not self.has_last_slot:
                continue
            slot = bucket.memory_slot() if is_mem_frame else LAST_SLOT
            rows = [index[o] for o in bucket.object_ids]
            bucket.write(slot, select_rows(keys, rows, 1), select_rows(values, rows, 1))
        new_ids = self.untracked(object_ids)
        if new_ids:
            rows = [index[o] for o in new_ids]
            bucket = ReferenceBucket(new_ids, keys, self.slots, self.fifo_slots)
            bucket.write(0, select_rows(keys, rows, 1), select_rows(values, rows, 1))
            self.buckets.append(bucket)
