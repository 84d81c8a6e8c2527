"""A video session: feeds frames through a backend and keeps the memory between them.

The step logic follows the official Cutie ``InferenceCore``: memory every ``mem_every``
frames and on every frame with a mask, staggered sensory updates, objects added by a mask
that holds only them, soft aggregation of all objects, and optionally the long-term memory
of the official ``MemoryManager`` (``use_long_term``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .graphs import CutieGraphs, ImageFeatures
from .long_term import LongTermPolicy
from .memory import MemoryStore
from .preprocess import FrameGeometry
from .video_session import VideoSession


@dataclass(frozen=True)
class InferenceConfig:
    """Inference settings (official ``eval_config.yaml`` defaults).

    ``max_mem_frames`` sizes the working memory without long-term memory; with
    ``use_long_term`` the ``long_term_*`` fields are the official ``long_term`` section.
    """

    mem_every: int = 5
    max_mem_frames: int = 5
    top_k: int = 30
    stagger_updates: int = 5
    chunk_size: int = -1
    max_internal_size: int = -1
    use_long_term: bool = False
    long_term_max_mem_frames: int = 10
    long_term_min_mem_frames: int = 5
    long_term_num_prototypes: int = 128
    long_term_max_num_tokens: int = 10000
    long_term_buffer_tokens: int = 2000
    long_term_count_usage: bool = True

    def __post_init__(self) -> None:
        for name in ("mem_every", "max_mem_frames", "top_k", "stagger_updates", "long_term_min_mem_frames",
                     "long_term_num_prototypes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.long_term_min_mem_frames >= self.long_term_max_mem_frames:
            raise ValueError(f"long_term_min_mem_frames ({self.long_term_min_mem_frames}) must be smaller than "
                             f"long_term_max_mem_frames ({self.long_term_max_mem_frames})")
        if self.long_term_buffer_tokens < 0 or \
                self.long_term_num_prototypes + self.long_term_buffer_tokens > self.long_term_max_num_tokens:
            raise ValueError("long_term_max_num_tokens must hold long_term_num_prototypes + long_term_buffer_tokens "
                             f"(buffer >= 0), got {self.long_term_max_num_tokens} < {self.long_term_num_prototypes} "
                             f"+ {self.long_term_buffer_tokens}")

    @property
    def memory_frames(self) -> int:
        """Working-memory frames per bucket, the permanent first frame included."""
        return self.long_term_max_mem_frames if self.use_long_term else self.max_mem_frames

    def long_term_policy(self) -> LongTermPolicy | None:
        """The long-term memory rules, or None without ``use_long_term``."""
        if not self.use_long_term:
            return None
        return LongTermPolicy(keep_frames=self.long_term_min_mem_frames - 1,
                              num_prototypes=self.long_term_num_prototypes,
                              max_tokens=self.long_term_max_num_tokens, buffer_tokens=self.long_term_buffer_tokens,
                              count_usage=self.long_term_count_usage)

    def stagger_steps(self) -> set[int]:
        """Frame distances from the last memory frame at which the sensory memory is updated."""
        if self.stagger_updates >= self.mem_every:
            return set(range(1, self.mem_every + 1))
        return set(np.round(np.linspace(1, self.mem_every, self.stagger_updates)).astype(int).tolist())


class CutieSession(VideoSession):
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
        self._memory = MemoryStore(self.config.memory_frames, self.config.long_term_policy())
        self._sensory: torch.Tensor | None = None  # [1, K, C, h, w]
        self._readout: torch.Tensor | None = None  # [1, K, C, h, w], rewritten by every readout
        self._obj_memory: torch.Tensor | None = None  # [1, K, Q, C + 1]
        self._last_mask: torch.Tensor | None = None  # [1, K, H, W]
        self._geometry: FrameGeometry | None = None

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
        image_t, geometry, labels, objects = self._prepare(image, mask, objects, self.config.max_internal_size,
                                                           self.graphs.device, self._memory.engaged)

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

    @torch.inference_mode()
    def remove_objects(self, object_ids: list[int]) -> None:
        """Stop tracking objects: they leave the memory and the output."""
        keep = self._drop_objects(object_ids)
        self._memory.remove_objects(object_ids)
        self._sensory, self._obj_memory, self._last_mask, self._readout = (
            t[:, keep] for t in (self._sensory, self._obj_memory, self._last_mask, self._readout))

    # -- internals -------------------------------------------------------------------------

    def _segment(self, feats: ImageFeatures, update_sensory: bool) -> torch.Tensor:
        """Memory readout + decoding for the objects already in memory -> ``[K + 1, H, W]``."""
        for bucket in self._memory.buckets:
            rows = [self._object_ids.index(o) for o in bucket.object_ids]
            memory_key, memory_shrinkage, memory_value, memory_valid = bucket.flat()
            if self._memory.counts_usage:
                self._memory.record_usage(bucket, self.graphs.memory_usage(
                    feats.key, feats.selection, memory_key, memory_shrinkage, memory_valid))
            chunk = self.config.chunk_size if self.config.chunk_size > 0 else len(rows)
            for start in range(0, len(rows), chunk):
                part = rows[start:start + chunk]
                readout = self.graphs.read_memory(
                    feats.key, feats.selection, feats.pix_feat, memory_key, memory_shrinkage,
                    memory_value[:, start:start + chunk], memory_valid, self._sensory[:, part],
                    self._last_mask[:, part], self._obj_memory[:, part])
                self._readout[:, part] = readout.to(self._readout.dtype)  # fp16 under autocast
        new_sensory, prob = self.graphs.decode(feats.f8, feats.f4, self._readout, self._sensory)
        if update_sensory:
            self._sensory.copy_(new_sensory)
        return prob[0]

    def _register(self, new_objects: list[int], size: torch.Size) -> None:
        """Append objects with empty sensory and object memory (and readout rows)."""
        if not new_objects:
            return
        self._object_ids += new_objects
        h, w = size[0] // 16, size[1] // 16
        g, k, device = self.graphs, len(new_objects), self.graphs.device
        sensory = torch.zeros(1, k, g.sensory_dim, h, w, device=device)
        obj_memory = torch.zeros(1, k, g.num_queries, g.value_dim + 1, device=device)
        self._sensory, self._obj_memory, self._readout = (
            new if old is None else torch.cat([old, new], 1)
            for old, new in ((self._sensory, sensory), (self._obj_memory, obj_memory),
                             (self._readout, torch.zeros_like(sensory))))

    def _add_memory(self, image: torch.Tensor, feats: ImageFeatures) -> None:
        value, sensory, summaries = self.graphs.encode_mask(image, feats.pix_feat, self._sensory, self._last_mask)
        self._memory.add(feats.key, feats.shrinkage, feats.selection, value, self._object_ids)
        self._obj_memory += summaries
        self._sensory.copy_(sensory)
        self._last_mem_index = self.frame_index
