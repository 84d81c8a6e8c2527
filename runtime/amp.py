"""The official AMP inference: every step under fp16 autocast.

Cutie's ``eval_vos.py`` with ``amp=True`` wraps each ``InferenceCore.step`` in
``torch.cuda.amp.autocast``; JointFormer's ``eval.py`` runs every frame under autocast unless
``--benchmark`` is given. These sessions are the eager fp16 baselines that vosrt's optimized
modes are compared with; create them with ``vosrt.load(..., amp=True)``.
"""
from __future__ import annotations

import torch

from .jointformer_session import JointFormerSession
from .session import CutieSession


class _AutocastSteps:
    """Runs the session's ``step`` under fp16 autocast on its graphs' device (CUDA from
    ``vosrt.load``); the models keep their official fp32 regions inside it."""

    def step(self, *args, **kwargs):
        with torch.autocast(self.graphs.device.type, dtype=torch.float16):
            return super().step(*args, **kwargs)


class AmpSession(_AutocastSteps, CutieSession):
    """A :class:`CutieSession` under the official AMP."""


class JointFormerAmpSession(_AutocastSteps, JointFormerSession):
    """A :class:`JointFormerSession` under the official AMP: its reference cache holds the fp16
    keys and values the joint blocks compute under autocast."""
