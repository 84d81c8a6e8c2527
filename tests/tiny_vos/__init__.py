"""A third model family that lives entirely outside vosrt's folders, registered through the public
call (:func:`registered`): a tiny memory network (:mod:`.network`), its stages (:mod:`.family`) and
its session with its own memory (:mod:`.session`). ``tests/unit/test_third_model.py`` runs it
through every public path."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import vosrt
from vosrt.runtime.registry import MODELS

from .config import TinyConfig

NAME = "tiny-vos"
SPEC = vosrt.ModelSpec(NAME, TinyConfig, "tiny_vos.family", "default",
                       (vosrt.Checkpoint(NAME, "https://example.invalid/tiny-vos.pth"),))


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """``tiny-vos`` is a vosrt model within the block (the other tests see the official models only)."""
    vosrt.register_model(SPEC)
    try:
        yield
    finally:
        del MODELS[NAME]
