"""A third model family that lives entirely outside vosrt's folders, registered through the public
call (:func:`register`): a tiny memory network (:mod:`.network`), its stages (:mod:`.family`) and
its session with its own memory (:mod:`.session`). ``tests/unit/test_third_model.py`` runs it
through every public path."""
from __future__ import annotations

import vosrt
from vosrt.runtime.registry import MODELS

from .config import TinyConfig

NAME = "tiny-vos"
SPEC = vosrt.ModelSpec(NAME, TinyConfig, "tiny_vos.family", "default",
                       (vosrt.Checkpoint(NAME, "https://example.invalid/tiny-vos.pth"),))


def register() -> None:
    """Make ``tiny-vos`` a vosrt model (once per process)."""
    if NAME not in MODELS:
        vosrt.register_model(SPEC)
