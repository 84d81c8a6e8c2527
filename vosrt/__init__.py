"""vosrt: video object segmentation models (Cutie) for deployment.

>>> import vosrt
>>> session = vosrt.load("cutie-small", weights="cutie-small-mega.pth")
>>> prob = session.step(image, mask)          # first frame with its label map
>>> labels = session.to_mask(session.step(next_image))
"""
from vosrt.api import load

__version__ = "0.1.0"
__all__ = ["load", "__version__"]
