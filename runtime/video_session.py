"""What every model's session shares: frame/mask preparation, object-id bookkeeping, merging
a given mask with the prediction, and the output in object-id order."""
from __future__ import annotations

import numpy as np
import torch

from vosrt.models.cutie.transformer import aggregate

from .preprocess import FrameGeometry, prepare_image, prepare_mask


class VideoSession:
    """Base of the model sessions. Subclasses keep ``_object_ids`` (memory order, i.e. order
    of arrival) and call :meth:`_prepare` / :meth:`_merge_mask` / :meth:`_output` from ``step``."""

    _object_ids: list[int]
    _geometry: FrameGeometry | None

    @property
    def object_ids(self) -> list[int]:
        """Ids of the tracked objects, sorted: channel i + 1 of ``step``'s output is ``object_ids[i]``."""
        return sorted(self._object_ids)

    def to_mask(self, prob: np.ndarray) -> np.ndarray:
        """``step`` output -> ``HxW`` uint8 label map (argmax, then channel -> object id)."""
        lut = np.array([0, *self.object_ids], dtype=np.uint8)
        return lut[np.argmax(prob, axis=0)]

    def _prepare(self, image: np.ndarray, mask: np.ndarray | None, objects: list[int] | None, max_internal_size: int,
                 device: torch.device, has_memory: bool
                 ) -> tuple[torch.Tensor, FrameGeometry, torch.Tensor | None, list[int] | None]:
        """Validate and convert a frame -> (image ``[1, 3, H', W']``, geometry, labels ``[H', W']`` or
        None, object ids or None). The frame size must stay the same within a video, and a
        frame without a mask needs memory (``has_memory``) to be propagated from."""
        image_t, geometry = prepare_image(image, max_internal_size, device)
        self._check_geometry(geometry)
        labels, objects = (None, None) if mask is None else prepare_mask(mask, objects, geometry, device)
        if labels is None and not has_memory:
            raise ValueError("the first frame needs a mask: pass step(image, mask) with the objects to track")
        return image_t, geometry, labels, objects

    def _drop_objects(self, object_ids: list[int]) -> list[int]:
        """Forget ``object_ids`` (all tracked, else ValueError) -> the memory-order rows kept."""
        unknown = set(object_ids) - set(self._object_ids)
        if unknown:
            raise ValueError(f"cannot remove objects {sorted(unknown)}: tracked objects are {self.object_ids}")
        keep = [i for i, o in enumerate(self._object_ids) if o not in object_ids]
        self._object_ids = [self._object_ids[i] for i in keep]
        return keep

    def _check_geometry(self, geometry: FrameGeometry) -> None:
        if self._geometry is None:
            self._geometry = geometry
        elif geometry != self._geometry:
            raise ValueError(f"frame size changed from {self._geometry.size} to {geometry.size} within a video; "
                             "call reset() before starting another video")

    def _merge_mask(self, prob: torch.Tensor | None, labels: torch.Tensor, objects: list[int]) -> torch.Tensor:
        """Combine a label map with the prediction for the tracked objects (if any) -> ``[K' + 1, H, W]``.

        Labelled pixels override the prediction; objects not yet tracked are appended in order.
        """
        if prob is None:
            known = torch.zeros(len(self._object_ids), *labels.shape, device=labels.device)
        else:
            known = prob[1:]
            known[:, labels > 0] = 0
        for o in objects:
            if o in self._object_ids:
                known[self._object_ids.index(o)] = (labels == o).float()
        added = [(labels == o).float() for o in objects if o not in self._object_ids]
        masks = torch.cat([known, torch.stack(added)]) if added else known
        return torch.softmax(aggregate(masks, dim=0), dim=0)

    def _output(self, prob: torch.Tensor, geometry: FrameGeometry) -> np.ndarray:
        """Network-size ``[K + 1, H', W']`` in memory order -> frame-size float32 numpy in id order."""
        prob = geometry.restore(prob)
        order = [0] + [1 + self._object_ids.index(o) for o in self.object_ids]
        return prob[order].float().cpu().numpy()
