"""``vosrt.load``: one entry point for every model and backend."""
from __future__ import annotations

from pathlib import Path

import torch

from vosrt import weights as wts
from vosrt.models.cutie import CONFIGS, Cutie
from vosrt.runtime.graphs import TorchGraphs
from vosrt.runtime.session import CutieSession, InferenceConfig

MODELS = tuple(CONFIGS)
BACKENDS = ("torch", "onnxruntime")


def build_model(name: str, weights: str | Path | None = None) -> Cutie:
    """A Cutie network with official weights: ``weights`` (a file) or the registry's default
    checkpoint for ``name`` (downloaded on first use)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    path = wts.checkpoint_for(name, weights)
    model = Cutie(CONFIGS[name])
    wts.load_strict(model, wts.read_state_dict(path), str(path))
    return model.eval()


def resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA GPU is available; use device='cpu'")
    return device


def load(name: str, weights: str | Path | None = None, *, backend: str = "torch", device: str = "cpu",
         export_dir: str | Path | None = None, fp16: bool = False, **options) -> CutieSession:
    """Create a segmentation session.

    name: ``cutie-small`` or ``cutie-base``. weights: a checkpoint file; None downloads the
    official one. backend: ``torch`` (eager) or ``onnxruntime``. export_dir (onnxruntime): a
    directory written by ``export-engine --format onnx``; None exports the graphs once into
    the cache. fp16 (onnxruntime): use fp16 graphs. options: :class:`InferenceConfig` fields
    (``mem_every``, ``max_mem_frames``, ``top_k``, ``stagger_updates``, ``chunk_size``,
    ``max_internal_size``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    unknown = set(options) - set(InferenceConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; valid: {sorted(InferenceConfig.__dataclass_fields__)}")
    config = InferenceConfig(**options)
    device = resolve_device(device)
    if backend == "torch":
        return CutieSession(TorchGraphs(build_model(name, weights), device, config.top_k), config)
    return CutieSession(_onnxruntime_graphs(name, weights, device, export_dir, fp16, config), config)


def _onnxruntime_graphs(name, weights, device, export_dir, fp16, config):
    from vosrt.export.onnx_export import export_onnx, read_manifest, sha256
    from vosrt.runtime.onnxruntime_graphs import OnnxRuntimeGraphs

    if export_dir is None:
        path = wts.checkpoint_for(name, weights)
        precision = "fp16" if fp16 else "fp32"
        export_dir = wts.cache_dir() / "onnx" / f"{name}-{sha256(path)[:16]}-k{config.top_k}-{precision}"
        if not (export_dir / "manifest.json").is_file():
            export_onnx(build_model(name, path), name, export_dir, checkpoint=path, top_k=config.top_k,
                        max_mem_frames=config.max_mem_frames, fp16=fp16)
    manifest = read_manifest(export_dir)
    if manifest["model"] != name:
        raise ValueError(f"{export_dir} holds {manifest['model']}, not {name}")
    if manifest["top_k"] != config.top_k:
        raise ValueError(f"{export_dir} was exported with top_k={manifest['top_k']}; "
                         f"pass top_k={manifest['top_k']} or export again with --top-k {config.top_k}")
    return OnnxRuntimeGraphs(export_dir, device)
