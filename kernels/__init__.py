"""Top-K memory attention: torch references, the formulations the exported graphs use, Triton
kernels behind dispatchers, and the custom ONNX ops / TensorRT plugins built on them.

The functions here are the public interface the models, the runtime and the exporters use;
importing this package never imports triton (the dispatchers import :mod:`vosrt.kernels.triton`
when they first run a kernel).

* Cutie's readout (:mod:`.readout`): :func:`topk_readout` (kernel on CUDA; elsewhere the official
  similarity and top-k with the kept values gathered), :func:`topk_readout_with_usage` (readout and long-term-memory usage of one selection),
  :func:`topk_usage` (usage alone), the references :func:`topk_readout_reference` and
  :func:`topk_usage_reference`, the exported-graph formulations :func:`topk_readout_gather` and
  :func:`topk_usage_scatter`, and :func:`anisotropic_similarity`.
* JointFormer's joint attention (:mod:`.joint_attention`): :func:`topk_joint_attention`
  (kernel on CUDA, reference elsewhere) and :func:`topk_joint_attention_reference`.
"""
from .joint_attention import topk_joint_attention, topk_joint_attention_reference
from .readout import (anisotropic_similarity, topk_readout, topk_readout_gather, topk_readout_reference,
                      topk_readout_with_usage, topk_usage, topk_usage_reference, topk_usage_scatter)

__all__ = ["anisotropic_similarity", "topk_joint_attention", "topk_joint_attention_reference", "topk_readout",
           "topk_readout_gather", "topk_readout_reference", "topk_readout_with_usage", "topk_usage",
           "topk_usage_reference", "topk_usage_scatter"]
