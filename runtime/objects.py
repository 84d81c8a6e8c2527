"""Object ids and the rows they occupy in a session's per-object tensors."""
from __future__ import annotations


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
