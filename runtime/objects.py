"""Object ids and the rows they occupy in a session's per-object tensors."""
from __future__ import annotations

from collections.abc import Iterable
from numbers import Integral

MAX_OBJECT_ID = 255  # label maps are 8-bit PNGs


def object_ids(values: Iterable[int], what: str = "objects") -> list[int]:
    """``values`` as a list of distinct ids in 1..255 (ints or numpy integers), else ValueError
    naming ``what``."""
    ids = list(values) if not isinstance(values, (str, bytes)) and isinstance(values, Iterable) else None
    if ids is None or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in ids):
        raise ValueError(f"{what} must be a list of integer ids in 1..{MAX_OBJECT_ID}, got {values!r}")
    ids = [int(v) for v in ids]
    if any(not 1 <= v <= MAX_OBJECT_ID for v in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"{what} must be distinct ids in 1..{MAX_OBJECT_ID}, got {ids}")
    return ids


class ObjectManager:
    """The tracked object ids in memory order (order of arrival): row ``i`` of every per-object
    tensor of a session belongs to ``ids[i]``. Outputs list objects in id order instead."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, obj: int) -> bool:
        return obj in self.ids

    @property
    def sorted_ids(self) -> list[int]:
        return sorted(self.ids)

    def rows(self, ids: list[int]) -> list[int]:
        """Memory-order rows of ``ids`` (all tracked)."""
        index = {obj: row for row, obj in enumerate(self.ids)}
        return [index[obj] for obj in ids]

    def add(self, ids: list[int]) -> list[int]:
        """Track the ids of ``ids`` not tracked yet (appended in order) -> those new ids."""
        new = [obj for obj in ids if obj not in self.ids]
        self.ids += new
        return new

    def remove(self, ids: list[int]) -> list[int]:
        """Stop tracking ``ids`` (all tracked, else ValueError) -> the rows kept, in memory order."""
        ids = object_ids(ids, "object_ids")
        unknown = sorted(set(ids) - set(self.ids))
        if unknown:
            raise ValueError(f"cannot remove objects {unknown}: tracked objects are {self.sorted_ids}")
        keep = [row for row, obj in enumerate(self.ids) if obj not in ids]
        self.ids = [self.ids[row] for row in keep]
        return keep

    def output_order(self) -> list[int]:
        """Channels of a memory-order ``[K + 1, ...]`` probability map in output order: the
        background, then the objects by id."""
        return [0] + [1 + row for row in self.rows(self.sorted_ids)]
