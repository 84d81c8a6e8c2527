"""The ONNX opsets an export is made with. No torch import (the command line reads it)."""
from __future__ import annotations

DEFAULT_OPSET = 17
OPSETS = range(14, 21)  # 14 brings scaled_dot_product_attention; 20 is the newest of torch's TorchScript exporter


def check_opset(opset: int) -> None:
    """ValueError for an opset outside :data:`OPSETS`."""
    if opset not in OPSETS:
        raise ValueError(f"opset {opset}: vosrt exports with opsets {OPSETS[0]}..{OPSETS[-1]} "
                         f"(default {DEFAULT_OPSET})")
