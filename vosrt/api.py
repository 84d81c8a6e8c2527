"""``vosrt.load``: one entry point for every model and backend."""
from __future__ import annotations

from pathlib import Path

import torch

from vosrt import weights as wts
from vosrt.models.cutie import CONFIGS, Cutie
from vosrt.runtime.graphs import TorchGraphs
from vosrt.runtime.session import CutieSession, InferenceConfig

MODELS = tuple(CONFIGS)
BACKENDS = ("torch",)


def build_model(name: str, weights: str | Path | None = None) -> Cutie:
    """A Cutie network with official weights: ``weights`` (a file) or the registry's default
    checkpoint for ``name`` (downloaded on first use)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    path = Path(weights) if weights is not None else wts.fetch(wts.CHECKPOINTS[wts.DEFAULT_CHECKPOINT[name]])
    model = Cutie(CONFIGS[name])
    wts.load_strict(model, wts.read_state_dict(path), str(path))
    return model.eval()


def resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA GPU is available; use device='cpu'")
    return device


def load(name: str, weights: str | Path | None = None, *, backend: str = "torch", device: str = "cpu",
         **options) -> CutieSession:
    """Create a segmentation session.

    name: ``cutie-small`` or ``cutie-base``. weights: a checkpoint file; None downloads the
    official one. backend: ``torch``. options: :class:`InferenceConfig` fields
    (``mem_every``, ``max_mem_frames``, ``top_k``, ``stagger_updates``, ``chunk_size``,
    ``max_internal_size``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    unknown = set(options) - set(InferenceConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; valid: {sorted(InferenceConfig.__dataclass_fields__)}")
    config = InferenceConfig(**options)
    graphs = TorchGraphs(build_model(name, weights), resolve_device(device), config.top_k)
    return CutieSession(graphs, config)
