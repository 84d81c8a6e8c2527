"""What vosrt reports without stopping. No torch import."""
from __future__ import annotations


class VosrtWarning(UserWarning):
    """Something a user should know about a run that still goes on: a mask aligned to its frame, a
    video shorter than its header says. The command line prints each as one line."""
