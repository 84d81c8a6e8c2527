"""vosrt: video object segmentation models (Cutie, JointFormer) for deployment.

>>> import vosrt
>>> session = vosrt.load("cutie-small", weights="cutie-small-mega.pth")
>>> prob = session.step(image, mask)          # first frame with its label map
>>> labels = session.to_mask(session.step(next_image))
>>> batch = vosrt.load_batch("cutie-small", weights="cutie-small-mega.pth")   # several videos at once
>>> probs = batch.step({"cam0": (image0, mask0), "cam1": (image1, mask1)})
>>> streams = vosrt.connect("127.0.0.1:8001", "cutie-small")   # the same interface, on Triton servers

``import vosrt`` is cheap: torch and the models are imported when ``vosrt.load`` is first used.
"""
from __future__ import annotations

from importlib import metadata

__version__ = metadata.version("vosrt")
__all__ = ["load", "load_batch", "connect", "register_model", "ModelSpec", "Checkpoint", "__version__"]


def __getattr__(name: str):
    if name in ("load", "load_batch"):
        from vosrt import api

        return getattr(api, name)
    if name == "connect":  # streams on Triton Inference Server (docs/serving.md)
        from vosrt.serving.client import connect

        return connect
    if name in ("register_model", "ModelSpec", "Checkpoint"):
        from vosrt.runtime import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'vosrt' has no attribute {name!r}")
