"""``vosrt.load`` (one video) and ``vosrt.load_batch`` (several at once): one entry point for every
model and backend."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from vosrt import cache
from vosrt import weights as wts
from vosrt.runtime import artifacts
from vosrt.runtime.backends import BACKENDS
from vosrt.runtime.backends.base import Backend
from vosrt.runtime.config import SessionConfig
from vosrt.runtime.export_check import check_checkpoint
from vosrt.runtime.registry import ModelSpec, model_spec
from vosrt.runtime.session import Session

if TYPE_CHECKING:
    from vosrt.runtime.streams import BatchSession


def build_network(name: str, weights: str | Path | None = None) -> nn.Module:
    """The network of model ``name`` with official weights: ``weights`` (a file) or the
    registry's default checkpoint for ``name`` (downloaded on first use), loaded strictly."""
    spec = model_spec(name)
    path = wts.checkpoint_for(name, weights)
    state_dict = wts.read_state_dict(path)
    network = spec.family.build_network(spec.variant, state_dict)
    wts.load_strict(network, state_dict, str(path))
    return network.eval()


def resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA GPU is available; use device='cpu'")
    return device


def load(name: str, weights: str | Path | None = None, *, backend: str | None = None, device: str = "cpu",
         export_dir: str | Path | None = None, fp16: bool = False, amp: bool = False, cuda_graph: bool = False,
         check_files: bool = True, compile: bool = False, **options) -> Session:
    """Create a segmentation session.

    name: ``cutie-small``, ``cutie-base`` or ``jointformer``. weights: a checkpoint file; None downloads the
    official one. backend: ``torch`` (eager), ``onnxruntime``, ``tensorrt`` or ``aoti`` (AOTInductor packages); None: the one
    ``export_dir``'s manifest is for (:func:`backend_for`), ``torch`` without ``export_dir``.
    export_dir: onnxruntime: a directory written by ``export-engine --format onnx`` (None:
    the graphs are exported once into the cache); tensorrt (required): a directory written by
    ``export-engine`` (ONNX graphs with engines in ``tensorrt/``) or its engine directory.
    fp16: torch (Cutie, CUDA): fp16 autocast in every stage, fp32 where the official code keeps it;
    onnxruntime: fp16 graphs; tensorrt: asserts the engines are fp16 (they fix the precision).
    amp (torch, CUDA): the official AMP, the whole step under autocast (eager baseline).
    cuda_graph (torch or tensorrt, CUDA): replay each stage as a CUDA graph per input shapes.
    compile (torch): each stage through ``torch.compile`` (:mod:`vosrt.runtime.backends.compiled`);
    ``session.backend.compilations`` counts the compilations per stage. With ``cuda_graph`` the
    compiled stages are captured as CUDA graphs.
    check_files: compare every file of ``export_dir`` with the sha256 its manifest records
    (False for graphs edited on purpose). The manifest is checked against the graphs either way
    (:func:`vosrt.runtime.export_check.check_graphs`), and with ``weights`` it must record that
    checkpoint's sha256 (a cached export of other weights is exported again).
    options: the fields of the model's settings (``model_spec(name).config_type``): ``mem_every``,
    ``max_mem_frames``, ``top_k``, ``max_internal_size`` for every model; Cutie's
    ``stagger_updates``, ``chunk_size``, ``use_long_term`` and ``long_term_*``; JointFormer's
    ``include_last``, ``topk_range``, ``topk_block``, ``topk_clstoken``.
    """
    spec, config, runner = _backend(name, weights, backend, device, export_dir, fp16, amp, cuda_graph, check_files,
                                    compile, options)
    return spec.family.new_session(runner, config, amp=amp)


def load_batch(name: str, weights: str | Path | None = None, *, backend: str | None = None, device: str = "cpu",
               export_dir: str | Path | None = None, fp16: bool = False, amp: bool = False, cuda_graph: bool = False,
               check_files: bool = True, compile: bool = False, **options) -> BatchSession:
    """Create a session for several videos at once (:class:`~vosrt.runtime.streams.BatchSession`):
    ``batch.step({stream: frame})`` runs each stage once for all streams where their shapes allow.
    Arguments as in :func:`load`. TensorRT engines take at most the ``--max-streams`` of their
    profile in one call."""
    from vosrt.runtime.streams import BatchSession

    spec, config, runner = _backend(name, weights, backend, device, export_dir, fp16, amp, cuda_graph, check_files,
                                    compile, options)
    return BatchSession(spec.family, runner, config, amp=amp, max_streams=_max_streams(runner))


def backend_for(export_dir: str | Path | None) -> str:
    """The backend an export directory is for: ``tensorrt`` for an engine directory, else
    ``onnxruntime``; ``torch`` without one."""
    if export_dir is None:
        return "torch"
    if artifacts.is_aoti_dir(export_dir):
        return "aoti"
    return "tensorrt" if artifacts.is_engine_dir(export_dir) else "onnxruntime"


def _backend(name: str, weights, backend: str | None, device: str, export_dir, fp16: bool, amp: bool,
             cuda_graph: bool, check_files: bool, compile: bool,
             options: dict) -> tuple[ModelSpec, SessionConfig, Backend]:
    """The model, its settings and the backend of :func:`load` and :func:`load_batch`."""
    if export_dir is not None and not Path(export_dir).is_dir():
        raise FileNotFoundError(f"export directory {export_dir} does not exist: export-engine makes it (TensorRT "
                                "engines only on a machine with TensorRT and an NVIDIA GPU; see vosrt doctor)")
    backend = backend or backend_for(export_dir)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    spec = model_spec(name)
    config = spec.config_type.from_options(name, options)
    _check_gpu_options(spec, backend, torch.device(device), fp16, amp, cuda_graph)
    if compile and backend != "torch":
        raise ValueError(f"compile=True compiles the torch backend's stages; backend={backend!r} runs its own "
                         "artifacts (for compiled packages: export-engine --format aoti, backend='aoti')")
    device = resolve_device(device)
    if backend == "torch":
        runner = _torch_backend(spec, weights, config, device, fp16, compile)
    elif backend == "aoti":
        runner = _aoti_backend(spec, config, device, export_dir, fp16, check_files)
    elif backend == "onnxruntime":
        runner = _onnxruntime_backend(spec, weights, config, device, export_dir, fp16, check_files)
    else:
        runner = _tensorrt_backend(spec, config, device, export_dir, fp16, check_files)
    if cuda_graph:
        from vosrt.runtime.backends.cuda_graphs import CudaGraphBackend

        runner = CudaGraphBackend(runner)
    return spec, config, runner


def _max_streams(runner: Backend) -> int | None:
    """Most streams per stage call: TensorRT engines' ``--max-streams``; any number elsewhere."""
    manifest = getattr(getattr(runner, "inner", runner), "manifest", None)
    if manifest is not None and manifest["format"] == artifacts.AOTI_FORMAT:
        return 1  # export/aoti.py: packages take one stream per call
    if manifest is None or manifest["format"] != artifacts.ENGINE_FORMAT:
        return None
    return manifest["profile"]["max_streams"]


def _check_gpu_options(spec: ModelSpec, backend: str, device: torch.device, fp16: bool, amp: bool,
                       cuda_graph: bool) -> None:
    """ValueError for options asked for where they cannot apply."""
    if fp16 and backend == "torch" and not spec.family.torch_fp16:
        raise ValueError(f"{spec.name} has no torch fp16 mode in this version; fp16=True runs fp16 graphs "
                         "(backend='onnxruntime') or engines (backend='tensorrt'), amp=True the official AMP")
    gpu_only = {"backend='tensorrt'": backend == "tensorrt",
                "fp16=True with backend='torch'": fp16 and backend == "torch",
                "amp=True": amp, "cuda_graph=True": cuda_graph}
    asked = [option for option, value in gpu_only.items() if value]
    if asked and device.type != "cuda":
        raise ValueError(f"{asked[0]} needs an NVIDIA GPU: pass device='cuda'")
    if amp and backend != "torch":
        raise ValueError("amp=True is the official eager AMP of backend='torch'")
    if amp and cuda_graph:
        raise ValueError("amp=True is the eager AMP baseline; for fp16 with CUDA graphs use fp16=True, cuda_graph=True "
                         "(jointformer: with backend='tensorrt')")
    if cuda_graph and backend in ("onnxruntime", "aoti"):
        raise ValueError("cuda_graph=True applies to backend='torch' or 'tensorrt'")
    if asked and not torch.cuda.is_available():
        raise ValueError(f"{asked[0]} needs an NVIDIA GPU, and no CUDA GPU is available here")


def _torch_backend(spec: ModelSpec, weights, config: SessionConfig, device: torch.device, fp16: bool,
                   compile: bool = False) -> Backend:
    from vosrt.runtime.backends.compiled import CompiledTorchBackend
    from vosrt.runtime.backends.torch import TorchBackend

    backend_type = CompiledTorchBackend if compile else TorchBackend
    return backend_type(spec.family, build_network(spec.name, weights), config.export_settings(), device, fp16=fp16)


def _onnxruntime_backend(spec: ModelSpec, weights, config: SessionConfig, device: torch.device, export_dir,
                         fp16: bool, check_files: bool) -> Backend:
    from vosrt.runtime.backends.onnxruntime import OnnxRuntimeBackend

    given = export_dir is not None
    if not given:
        export_dir = _cached_export(spec, weights, config, fp16)  # checked against the weights there
    with artifacts.load_errors(export_dir):
        runner = OnnxRuntimeBackend(export_dir, device, check_files=check_files)
    artifacts.check_fits(runner.manifest, spec, config, fp16, export_dir)
    if given and weights is not None and Path(weights).is_file():  # the graphs need no checkpoint: an absent one
        check_checkpoint(runner.manifest, weights, export_dir)      # is no matter, another one is refused
    return runner


def _cached_export(spec: ModelSpec, weights, config: SessionConfig, fp16: bool) -> Path:
    """The export of these weights and settings in the cache, written on first use and written
    again when the one there records another checkpoint (its sha256) or cannot be read."""
    from vosrt.export.onnx import export_onnx

    path = wts.checkpoint_for(spec.name, weights)
    settings = "-".join(str(v) for v in config.export_settings().values())
    export_dir = wts.cache_dir() / "onnx" / f"{spec.name}-{artifacts.sha256(path)[:16]}-{settings}-" \
                                            f"{'fp16' if fp16 else 'fp32'}"
    if not _cached_export_fits(export_dir, path):
        export_onnx(build_network(spec.name, path), spec.name, export_dir, config=config, checkpoint=path, fp16=fp16)
        print(cache.export_note(export_dir), file=sys.stderr)
    return export_dir


def _cached_export_fits(export_dir: Path, checkpoint: Path) -> bool:
    """Whether the cached export ``export_dir`` is whole (its manifest and files check) and was
    exported from ``checkpoint``."""
    try:
        manifest = artifacts.read_manifest(export_dir)
        check_checkpoint(manifest, checkpoint, export_dir)
    except artifacts.ArtifactError:
        return False
    return manifest.get("checkpoint") is not None


def _aoti_backend(spec: ModelSpec, config: SessionConfig, device: torch.device, export_dir, fp16: bool,
                  check_files: bool) -> Backend:
    from vosrt.runtime.backends.aoti import AotiBackend

    if export_dir is None:
        raise ValueError(f"backend='aoti' needs export_dir: a directory written by export-engine {spec.name} "
                         "--format aoti on this machine")
    manifest = artifacts.read_manifest(export_dir, artifacts.AOTI_FORMAT, check_files=check_files)
    artifacts.check_fits(manifest, spec, config, fp16, export_dir)
    return AotiBackend(export_dir, device, check_files=check_files)


def _tensorrt_backend(spec: ModelSpec, config: SessionConfig, device: torch.device, export_dir, fp16: bool,
                      check_files: bool) -> Backend:
    from vosrt.runtime.backends.tensorrt import TensorRTBackend

    if export_dir is None:
        raise ValueError("backend='tensorrt' needs export_dir: a directory built by export-engine for this GPU "
                         "(engines are built for an image size and object count)")
    engine_dir = artifacts.engine_directory(export_dir)
    manifest = artifacts.read_manifest(engine_dir, artifacts.ENGINE_FORMAT, check_files=check_files)
    artifacts.check_fits(manifest, spec, config, fp16, export_dir)
    config.check_engine_memory(manifest["max_mem_frames"], export_dir, static=manifest["dla_core"] is not None)
    return TensorRTBackend(engine_dir, device, manifest=manifest)  # read and its files hashed once, above
