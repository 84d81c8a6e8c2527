"""JointFormer: the network, its top-K options and the stage functions the runtime calls."""
from .model import JointFormer, TopKConfig

MODEL_NAME = "jointformer"  # in vosrt.load, the weights registry and export manifests

__all__ = ["MODEL_NAME", "JointFormer", "TopKConfig"]
