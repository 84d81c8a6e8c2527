"""A video session: feeds frames through a backend and keeps the memory between them.

The step logic follows the official Cutie ``InferenceCore``: memory every ``mem_every``
frames and on every frame with a mask, staggered sensory updates, objects added by a mask
that holds only them, and soft aggregation of all objects.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vosrt.models.cutie.transformer import aggregate

from .graphs import CutieGraphs, ImageFeatures
from .memory import WorkingMemory
from .preprocess import FrameGeometry, prepare_image, prepare_mask


@dataclass(frozen=True)
class InferenceConfig:
    """Inference settings (official ``eval_config.yaml`` defaults)."""

    mem_every: int = 5
    max_mem_frames: int = 5
    top_k: int = 30
    stagger_updates: int = 5
    chunk_size: int = -1
    max_internal_size: int = -1

    def __post_init__(self) -> None:
        for name in ("mem_every", "max_mem_frames", "top_k", "stagger_updates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def stagger_steps(self) -> set[int]:
        """Frame distances from the last memory frame at which the sensory memory is updated."""
        if self.stagger_updates >= self.mem_every:
            return set(range(1, self.mem_every + 1))
        return set(np.round(np.linspace(1, self.mem_every, self.stagger_updates)).astype(int).tolist())


class CutieSession:
    """Segments a video frame by frame. Create it with :func:`vosrt.load`.

    >>> prob = session.step(image, mask, objects=[1, 2])   # first frame: a label map
    >>> prob = session.step(next_image)                    # later frames: propagated
    >>> labels = session.to_mask(prob)
    """

    def __init__(self, graphs: CutieGraphs, config: InferenceConfig = InferenceConfig()):
        self.graphs = graphs
        self.config = config
        self._stagger = config.stagger_steps()
        self.reset()

    def reset(self) -> None:
        """Forget the video: memory, objects and frame counter."""
        self.frame_index = -1
        self._last_mem_index = 0
        self._object_ids: list[int] = []  # in memory order (order of arrival)
        self._memory = WorkingMemory(self.config.max_mem_frames)
        self._sensory: torch.Tensor | None = None  # [1, K, C, h, w]
        self._obj_memory: torch.Tensor | None = None  # [1, K, Q, C + 1]
        self._last_mask: torch.Tensor | None = None  # [1, K, H, W]
        self._geometry: FrameGeometry | None = None

    @property
    def object_ids(self) -> list[int]:
        """Ids of the tracked objects, sorted: channel i + 1 of ``step``'s output is ``object_ids[i]``."""
        return sorted(self._object_ids)

    @torch.inference_mode()
    def step(self, image: np.ndarray, mask: np.ndarray | None = None, objects: list[int] | None = None,
             *, end: bool = False) -> np.ndarray:
        """Process one frame.

        image: ``HxWx3`` RGB, uint8 or float in [0, 1]. mask: ``HxW`` integer label map (0 =
        background) or None; ``objects``: the labels it gives (default: every label in it);
        objects already tracked but absent from ``objects`` keep being propagated. ``end``:
        the last frame of the video (nothing is memorised).
        Returns float32 ``[num_objects + 1, H, W]``: background, then objects in id order.
        """
        image_t, geometry = prepare_image(image, self.config.max_internal_size, self.graphs.device)
        self._check_geometry(geometry)
        labels, objects = (None, None) if mask is None else prepare_mask(mask, objects, geometry, self.graphs.device)
        if labels is None and not self._memory.engaged:
            raise ValueError("the first frame needs a mask: pass step(image, mask) with the objects to track")

        self.frame_index += 1
        since_mem = self.frame_index - self._last_mem_index
        is_mem_frame = (since_mem >= self.config.mem_every or labels is not None) and not end
        update_sensory = since_mem in self._stagger and not end
        need_segment = labels is None or (bool(self._object_ids) and set(objects) != set(self._object_ids))

        feats = self.graphs.encode_image(image_t)
        prob = self._segment(feats, update_sensory) if need_segment else None
        if labels is not None:
            prob = self._merge_mask(prob, labels, objects)
            self._register([o for o in objects if o not in self._object_ids], labels.shape)
        self._last_mask = prob[1:].unsqueeze(0)
        if is_mem_frame:
            self._add_memory(image_t, feats)
        return self._output(prob, geometry)

    def to_mask(self, prob: np.ndarray) -> np.ndarray:
        """``step`` output -> ``HxW`` uint8 label map (argmax, then channel -> object id)."""
        lut = np.array([0, *self.object_ids], dtype=np.uint8)
        return lut[np.argmax(prob, axis=0)]

    @torch.inference_mode()
    def remove_objects(self, object_ids: list[int]) -> None:
        """Stop tracking objects: they leave the memory and the output."""
        unknown = set(object_ids) - set(self._object_ids)
        if unknown:
            raise ValueError(f"cannot remove objects {sorted(unknown)}: tracked objects are {self.object_ids}")
        keep = [i for i, o in enumerate(self._object_ids) if o not in object_ids]
        self._object_ids = [self._object_ids[i] for i in keep]
        self._memory.remove_objects(object_ids)
        self._sensory, self._obj_memory, self._last_mask = (
            t[:, keep] for t in (self._sensory, self._obj_memory, self._last_mask))

    # -- internals -------------------------------------------------------------------------

    def _check_geometry(self, geometry: FrameGeometry) -> None:
        if self._geometry is None:
            self._geometry = geometry
        elif geometry != self._geometry:
            raise ValueError(f"frame size changed from {self._geometry.size} to {geometry.size} within a video; "
                             "call reset() before starting another video")

    def _segment(self, feats: ImageFeatures, update_sensory: bool) -> torch.Tensor:
        """Memory readout + decoding for the objects already in memory -> ``[K + 1, H, W]``."""
        readout = torch.zeros_like(self._sensory)
        for bucket in self._memory.buckets:
            rows = [self._object_ids.index(o) for o in bucket.object_ids]
            memory_key, memory_shrinkage, memory_value, memory_valid = bucket.flat()
            chunk = self.config.chunk_size if self.config.chunk_size > 0 else len(rows)
            for start in range(0, len(rows), chunk):
                part = rows[start:start + chunk]
                readout[:, part] = self.graphs.read_memory(
                    feats.key, feats.selection, feats.pix_feat, memory_key, memory_shrinkage,
                    memory_value[:, start:start + chunk], memory_valid, self._sensory[:, part],
                    self._last_mask[:, part], self._obj_memory[:, part])
        new_sensory, prob = self.graphs.decode(feats.f8, feats.f4, readout, self._sensory)
        if update_sensory:
            self._sensory.copy_(new_sensory)
        return prob[0]

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

    def _register(self, new_objects: list[int], size: torch.Size) -> None:
        """Append objects with empty sensory and object memory."""
        if not new_objects:
            return
        self._object_ids += new_objects
        h, w = size[0] // 16, size[1] // 16
        g, k, device = self.graphs, len(new_objects), self.graphs.device
        sensory = torch.zeros(1, k, g.sensory_dim, h, w, device=device)
        obj_memory = torch.zeros(1, k, g.num_queries, g.value_dim + 1, device=device)
        self._sensory = sensory if self._sensory is None else torch.cat([self._sensory, sensory], 1)
        self._obj_memory = obj_memory if self._obj_memory is None else torch.cat([self._obj_memory, obj_memory], 1)

    def _add_memory(self, image: torch.Tensor, feats: ImageFeatures) -> None:
        value, sensory, summaries = self.graphs.encode_mask(image, feats.pix_feat, self._sensory, self._last_mask)
        self._memory.add(feats.key, feats.shrinkage, value, self._object_ids)
        self._obj_memory += summaries
        self._sensory.copy_(sensory)
        self._last_mem_index = self.frame_index

    def _output(self, prob: torch.Tensor, geometry: FrameGeometry) -> np.ndarray:
        prob = geometry.restore(prob)
        order = [0] + [1 + self._object_ids.index(o) for o in self.object_ids]
        return prob[order].float().cpu().numpy()
