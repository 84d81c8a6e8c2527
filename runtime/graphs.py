"""The stateless stages of Cutie as the runtime calls them, and the eager torch backend.

Every backend (eager torch, ONNX Runtime, TensorRT) implements :class:`CutieGraphs` over
torch tensors on its device; the session's memory logic is shared by all of them.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Protocol

import torch

from vosrt.kernels import topk_usage_reference
from vosrt.models.cutie import Cutie


class ImageFeatures(NamedTuple):
    """Output of the image encoder (B = 1): f8 ``[1, C8, 2h, 2w]``, f4 ``[1, C4, 4h, 4w]``, pix_feat ``[1, C, h, w]``, key/selection ``[1, Ck, h, w]``,
    shrinkage ``[1, 1, h, w]``."""

    f8: torch.Tensor
    f4: torch.Tensor
    pix_feat: torch.Tensor
    key: torch.Tensor
    shrinkage: torch.Tensor
    selection: torch.Tensor


class CutieGraphs(Protocol):
    """What a backend provides. Shapes as in :class:`vosrt.models.cutie.Cutie`'s stage methods.

    A backend may return the same output buffers on every call of a stage (TensorRT, CUDA
    graphs): an output is valid until the next call of that stage; copy what must outlive it.
    """

    device: torch.device
    num_queries: int
    value_dim: int
    sensory_dim: int

    def encode_image(self, image: torch.Tensor) -> ImageFeatures: ...

    def encode_mask(self, image: torch.Tensor, pix_feat: torch.Tensor, sensory: torch.Tensor,
                    masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def read_memory(self, key: torch.Tensor, selection: torch.Tensor, pix_feat: torch.Tensor,
                    memory_key: torch.Tensor, memory_shrinkage: torch.Tensor, memory_value: torch.Tensor,
                    memory_valid: torch.Tensor, sensory: torch.Tensor, last_mask: torch.Tensor,
                    obj_memory: torch.Tensor) -> torch.Tensor: ...

    def memory_usage(self, key: torch.Tensor, selection: torch.Tensor, memory_key: torch.Tensor,
                     memory_shrinkage: torch.Tensor, memory_valid: torch.Tensor) -> torch.Tensor:
        """Usage ``[1, N]`` float32 of each memory token by the top-k readout (long-term memory only)."""
        ...

    def decode(self, f8: torch.Tensor, f4: torch.Tensor, readout: torch.Tensor,
               sensory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def _stage(method):
    """Run a :class:`TorchGraphs` stage in inference mode, under fp16 autocast when ``fp16``."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16,
                                                    cache_enabled=False):
            return method(self, *args, **kwargs)

    return run


class TorchGraphs:
    """Eager PyTorch backend: the stages run directly on a :class:`Cutie` module.

    ``fp16``: each stage runs under fp16 autocast (CUDA only); the parts the official code
    keeps out of autocast (similarity/top-k/softmax, sensory updates, object summaries, the
    final logits) stay fp32 inside the model.
    """

    def __init__(self, model: Cutie, device: torch.device | str, top_k: int, fp16: bool = False):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.fp16 = fp16
        self.top_k = top_k
        self.num_queries = model.cfg.num_queries
        self.value_dim = model.cfg.value_dim
        self.sensory_dim = model.cfg.sensory_dim

    @_stage
    def encode_image(self, image):
        return ImageFeatures(*self.model.encode_image(image))

    @_stage
    def encode_mask(self, image, pix_feat, sensory, masks):
        return self.model.encode_mask(image, pix_feat, sensory, masks)

    @_stage
    def read_memory(self, key, selection, pix_feat, memory_key, memory_shrinkage, memory_value, memory_valid,
                    sensory, last_mask, obj_memory):
        return self.model.read_memory(key, selection, pix_feat, memory_key, memory_shrinkage, memory_value,
                                      memory_valid, sensory, last_mask, obj_memory, self.top_k)

    @torch.inference_mode()
    def memory_usage(self, key, selection, memory_key, memory_shrinkage, memory_valid):
        return topk_usage_reference(key.flatten(2), selection.flatten(2), memory_key, memory_shrinkage, memory_valid,
                                    self.top_k)

    @_stage
    def decode(self, f8, f4, readout, sensory):
        return self.model.decode(f8, f4, readout, sensory)
