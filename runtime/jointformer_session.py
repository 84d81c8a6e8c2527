"""A JointFormer video session: the official ``InferenceCore`` / ``MemoryManager`` semantics
over a per-block reference key/value cache.

Per frame: the frame's tokens run through the joint blocks reading every bucket's cache
(top-K), the decoder predicts all objects (soft aggregation), and the decoder features update
each object's compressed-memory token. Then, on a memory frame (every ``mem_every`` frames
or with a mask) and, with ``include_last``, on every other frame, the frame with its
predicted masks is encoded once into cache entries, which also updates the
compressed-memory token again. ``end=True`` (the video's last frame) skips that encoding.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from vosrt.models.jointformer import TopKConfig

from .jointformer_graphs import JointFormerGraphs
from .reference_cache import ReferenceCache
from .video_session import VideoSession


@dataclass(frozen=True)
class JointFormerConfig:
    """Inference settings: the official ``eval.py`` defaults."""

    mem_every: int = 5
    max_mem_frames: int = 5
    include_last: bool = True
    top_k: int = 30
    topk_range: str = "all_frames"
    topk_block: str = "all_blocks"
    topk_clstoken: bool = False
    max_internal_size: int = -1

    def __post_init__(self) -> None:
        for name in ("mem_every", "max_mem_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.topk()  # validates the top-K options

    def topk(self) -> TopKConfig:
        fields = asdict(self)
        return TopKConfig(**{name: fields[name] for name in TopKConfig.__dataclass_fields__})


class JointFormerSession(VideoSession):
    """Segments a video frame by frame with the API of :class:`vosrt.runtime.session.CutieSession`.
    Create it with ``vosrt.load("jointformer", ...)``."""

    def __init__(self, graphs: JointFormerGraphs, config: JointFormerConfig = JointFormerConfig()):
        self.graphs = graphs
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget the video: memory, objects and frame counter."""
        self.frame_index = -1
        self._last_mem_index = 0
        self._object_ids: list[int] = []  # in memory order (order of arrival)
        self._cache = ReferenceCache(self.config.max_mem_frames, self.config.include_last)
        self._summary: torch.Tensor | None = None  # compressed-memory tokens [K, 1, C]
        self._geometry = None

    @torch.inference_mode()
    def step(self, image: np.ndarray, mask: np.ndarray | None = None, objects: list[int] | None = None,
             *, end: bool = False) -> np.ndarray:
        """Process one frame: arguments, ``end`` and the float32 ``[num_objects + 1, H, W]`` result
        as in :meth:`vosrt.runtime.session.CutieSession.step`."""
        image_t, geometry, labels, objects = self._prepare(image, mask, objects, self.config.max_internal_size,
                                                           self.graphs.device, self._cache.engaged)

        self.frame_index += 1
        is_mem_frame = (self.frame_index - self._last_mem_index >= self.config.mem_every
                        or labels is not None) and not end
        covers_all = labels is not None and set(self._object_ids) <= set(objects)
        prob = self._segment(image_t) if self._cache.engaged and not covers_all else None
        if labels is not None:
            prob = self._merge_mask(prob, labels, objects)
            self._register([o for o in objects if o not in self._object_ids])
        if (is_mem_frame or self.config.include_last) and not end:
            self._memorise(image_t, prob[1:], is_mem_frame)
        return self._output(prob, geometry)

    @torch.inference_mode()
    def remove_objects(self, object_ids: list[int]) -> None:
        """Stop tracking objects: they leave the memory and the output."""
        keep = self._drop_objects(object_ids)
        self._cache.remove_objects(object_ids)
        self._summary = self._summary[keep]

    # -- internals -------------------------------------------------------------------------

    def _segment(self, image: torch.Tensor) -> torch.Tensor:
        """Propagate every bucket's objects, decode them together -> ``[K + 1, H, W]``; updates
        the compressed-memory tokens."""
        f8, f4, tokens = self.graphs.encode_query(image)
        f16 = torch.empty(len(self._object_ids), *tokens.shape[1:], device=tokens.device, dtype=tokens.dtype)
        for bucket in self._cache.buckets:
            rows = [self._object_ids.index(o) for o in bucket.object_ids]
            f16[rows] = self.graphs.propagate(tokens, *bucket.flat())
        prob, self._summary = self.graphs.decode(f16, f8, f4, self._summary)
        return prob

    def _register(self, new_objects: list[int]) -> None:
        """Append objects with the initial compressed-memory token."""
        if not new_objects:
            return
        self._object_ids += new_objects
        summary = self.graphs.initial_summary(len(new_objects))
        self._summary = summary if self._summary is None else torch.cat([self._summary, summary])

    def _memorise(self, image: torch.Tensor, masks: torch.Tensor, is_mem_frame: bool) -> None:
        keys, values, self._summary = self.graphs.encode_reference(image, masks, self._summary)
        self._cache.add(keys, values, self._object_ids, is_mem_frame)
        if is_mem_frame:
            self._last_mem_index = self.frame_index
