"""Memory kept per *bucket*, as in the official memory stores: the objects that enter memory on
the same frame share a bucket (the same memory frames); each model's store says what a bucket
holds. This module holds the bookkeeping they share."""
from __future__ import annotations

from typing import Generic, TypeVar

import torch


class Bucket:
    """A bucket's objects. Subclasses keep per-object buffers in ``object_ids`` order and say
    which ones they are (``per_object``: attribute name -> the object axis), and a ``valid`` mask
    whose last axis is the bucket's memory tokens."""

    per_object: dict[str, int] = {}
    valid: torch.Tensor

    def __init__(self, object_ids: list[int]):
        self.object_ids = list(object_ids)

    @property
    def capacity(self) -> int:
        """Memory tokens of the bucket's buffers."""
        return self.valid.shape[-1]

    def tokens_to_read(self, at_least: int) -> slice:
        """The tokens in use, extended over empty ones to ``at_least`` where the buffers have them."""
        raise NotImplementedError

    def keep_objects(self, keep: list[int]) -> None:
        """Keep the objects at positions ``keep`` (in order) in ``object_ids`` and every per-object buffer."""
        self.object_ids = [self.object_ids[i] for i in keep]
        for name, axis in self.per_object.items():
            buffer: torch.Tensor = getattr(self, name)
            index = torch.tensor(keep, dtype=torch.long, device=buffer.device)
            setattr(self, name, buffer.index_select(axis, index).contiguous())


B = TypeVar("B", bound=Bucket)


def select_rows(tensor: torch.Tensor, rows: list[int], dim: int) -> torch.Tensor:
    """The entries ``rows`` of ``tensor`` along ``dim``: a view when they are consecutive (as the
    objects of a bucket are), so that no index is copied to the device and nothing waits for it."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return tensor.narrow(dim, rows[0], len(rows))
    return tensor.index_select(dim, torch.tensor(rows, device=tensor.device))


def write_rows(tensor: torch.Tensor, rows: list[int], dim: int, values: torch.Tensor) -> None:
    """``tensor``'s entries ``rows`` along ``dim`` = ``values`` (in place; see :func:`select_rows`)."""
    if rows == list(range(rows[0], rows[0] + len(rows))):
        tensor.narrow(dim, rows[0], len(rows)).copy_(values)
    else:
        tensor.index_copy_(dim, torch.tensor(rows, device=tensor.device), values.to(tensor.dtype))


class BucketStore(Generic[B]):
    """The buckets of one session, in order of arrival."""

    def __init__(self) -> None:
        self.buckets: list[B] = []

    @property
    def engaged(self) -> bool:
        """Whether anything is in memory (a frame without a mask needs memory to be propagated from)."""
        return bool(self.buckets)

    def untracked(self, object_ids: list[int]) -> list[int]:
        """The ids of ``object_ids`` that are in no bucket yet."""
        known = {obj for bucket in self.buckets for obj in bucket.object_ids}
        return [obj for obj in object_ids if obj not in known]

    def remove_objects(self, object_ids: list[int]) -> None:
        """Forget objects; buckets left without objects are dropped."""
        for bucket in self.buckets:
            keep = [i for i, obj in enumerate(bucket.object_ids) if obj not in object_ids]
            if len(keep) < len(bucket.object_ids):
                bucket.keep_objects(keep)
        self.buckets = [b for b in self.buckets if b.object_ids]
