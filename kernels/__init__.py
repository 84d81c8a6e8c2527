"""Top-K memory attention: torch references, the formulations the exported graphs use, Triton
kernels behind dispatchers, and the custom ONNX ops / TensorRT plugins built on them.

The functions here are the public interface the models, the runtime and the exporters use.
"""
from .joint_attention import topk_joint_attention, topk_joint_attention_reference
from .readout import (anisotropic_similarity, topk_readout, topk_readout_gather, topk_readout_reference,
                      topk_usage_reference, topk_usage_scatter)

__all__ = ["anisotropic_similarity", "topk_joint_attention", "topk_joint_attention_reference", "topk_readout",
           "topk_readout_gather", "topk_readout_reference", "topk_usage_reference", "topk_usage_scatter"]
