"""``vosrt.load``: one entry point for every model and backend."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from vosrt import weights as wts
from vosrt.models.cutie import CONFIGS, Cutie
from vosrt.models.jointformer import MODEL_NAME as JOINTFORMER
from vosrt.models.jointformer import JointFormer
from vosrt.runtime.graphs import TorchGraphs
from vosrt.runtime.jointformer_graphs import TorchJointFormerGraphs
from vosrt.runtime.jointformer_session import JointFormerConfig, JointFormerSession
from vosrt.runtime.session import CutieSession, InferenceConfig

# Each model's inference settings: the dataclass whose fields are the options of `load` and the CLI.
CONFIG_TYPES: dict[str, type[InferenceConfig] | type[JointFormerConfig]] = {
    **dict.fromkeys(CONFIGS, InferenceConfig), JOINTFORMER: JointFormerConfig}
MODELS = tuple(CONFIG_TYPES)
BACKENDS = ("torch", "onnxruntime", "tensorrt")


def build_model(name: str, weights: str | Path | None = None) -> Cutie | JointFormer:
    """A Cutie or JointFormer network with official weights: ``weights`` (a file) or the
    registry's default checkpoint for ``name`` (downloaded on first use)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    path = wts.checkpoint_for(name, weights)
    state_dict = wts.read_state_dict(path)
    model = JointFormer.for_state_dict(state_dict) if name == JOINTFORMER else Cutie(CONFIGS[name])
    wts.load_strict(model, state_dict, str(path))
    return model.eval()


def resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA GPU is available; use device='cpu'")
    return device


def load(name: str, weights: str | Path | None = None, *, backend: str = "torch", device: str = "cpu",
         export_dir: str | Path | None = None, fp16: bool = False, amp: bool = False, cuda_graph: bool = False,
         **options) -> CutieSession | JointFormerSession:
    """Create a segmentation session.

    name: ``cutie-small``, ``cutie-base`` or ``jointformer``. weights: a checkpoint file; None downloads the
    official one. backend: ``torch`` (eager), ``onnxruntime`` or ``tensorrt``.
    export_dir: onnxruntime: a directory written by ``export-engine --format onnx`` (None:
    the graphs are exported once into the cache); tensorrt (required): a directory written by
    ``export-engine`` (ONNX graphs with engines in ``tensorrt/``) or its engine directory.
    fp16: torch (Cutie): fp16 autocast in every stage, fp32 where the official code keeps it (CUDA);
    onnxruntime: fp16 graphs; tensorrt: asserts the engines are fp16 (they fix the precision).
    amp (torch, CUDA): the official AMP, the whole step under autocast (eager baseline).
    cuda_graph (torch or tensorrt, CUDA): replay each stage as a CUDA graph per input shapes.
    options: :class:`InferenceConfig` fields (``mem_every``, ``max_mem_frames``, ``top_k``,
    ``stagger_updates``, ``chunk_size``, ``max_internal_size``); for ``jointformer`` (no
    torch fp16 in this version) the :class:`JointFormerConfig` fields (``mem_every``,
    ``max_mem_frames``, ``include_last``, ``top_k``, ``topk_range``, ``topk_block``,
    ``topk_clstoken``, ``max_internal_size``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if name == JOINTFORMER:
        return _load_jointformer(weights, backend, device, export_dir, fp16, amp, cuda_graph, options)
    unknown = set(options) - set(InferenceConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; valid: {sorted(InferenceConfig.__dataclass_fields__)}")
    config = InferenceConfig(**options)
    _check_gpu_options(backend, torch.device(device), fp16, amp, cuda_graph)
    device = resolve_device(device)
    if backend == "torch":
        graphs = TorchGraphs(build_model(name, weights), device, config.top_k, fp16=fp16)
    elif backend == "onnxruntime":
        graphs = _onnxruntime_graphs(name, weights, device, export_dir, fp16, config)
    else:
        graphs = _tensorrt_graphs(name, device, export_dir, fp16, config)
    if cuda_graph:
        from vosrt.runtime.cuda_graphs import CUTIE_MEMORY_INPUTS, CudaGraphs

        graphs = CudaGraphs(graphs, CUTIE_MEMORY_INPUTS)
    if amp:
        from vosrt.runtime.amp import AmpSession

        return AmpSession(graphs, config)
    return CutieSession(graphs, config)


def _load_jointformer(weights, backend: str, device: str, export_dir, fp16: bool, amp: bool, cuda_graph: bool,
                      options: dict) -> JointFormerSession:
    """A JointFormer session: eager torch (fp32, or the official AMP), ONNX Runtime or TensorRT
    (fp16: fp16 graphs or engines); CUDA-graph replay on torch or TensorRT."""
    if fp16 and backend == "torch":
        raise ValueError("jointformer has no torch fp16 mode in this version; fp16=True runs fp16 graphs "
                         "(backend='onnxruntime') or engines (backend='tensorrt'), amp=True the official AMP")
    unknown = set(options) - set(JointFormerConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)} for jointformer; "
                        f"valid: {sorted(JointFormerConfig.__dataclass_fields__)}")
    config = JointFormerConfig(**options)
    _check_gpu_options(backend, torch.device(device), fp16, amp, cuda_graph)
    device = resolve_device(device)
    if backend == "torch":
        graphs = TorchJointFormerGraphs(build_model(JOINTFORMER, weights), device, config.topk())
    elif backend == "onnxruntime":
        graphs = _onnxruntime_graphs(JOINTFORMER, weights, device, export_dir, fp16, config)
    else:
        graphs = _tensorrt_graphs(JOINTFORMER, device, export_dir, fp16, config)
    if cuda_graph:
        from vosrt.runtime.cuda_graphs import JOINTFORMER_MEMORY_INPUTS, CudaGraphs

        graphs = CudaGraphs(graphs, JOINTFORMER_MEMORY_INPUTS)
    if amp:
        from vosrt.runtime.amp import JointFormerAmpSession

        return JointFormerAmpSession(graphs, config)
    return JointFormerSession(graphs, config)


def _check_gpu_options(backend: str, device: torch.device, fp16: bool, amp: bool, cuda_graph: bool) -> None:
    """ValueError for GPU-only options asked for where they cannot apply."""
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
    if cuda_graph and backend == "onnxruntime":
        raise ValueError("cuda_graph=True applies to backend='torch' or 'tensorrt'")


def _check_export(manifest: dict, name: str, config: InferenceConfig | JointFormerConfig,
                  export_dir: str | Path, fp16: bool) -> None:
    """ValueError unless an export (or engine) directory fits the session asked for."""
    if manifest["model"] != name:
        raise ValueError(f"{export_dir} holds {manifest['model']}, not {name}")
    if name == JOINTFORMER and manifest["topk"] != asdict(config.topk()):
        raise ValueError(f"{export_dir} was exported with the top-K options {manifest['topk']}; "
                         "pass those or export again")
    if manifest["top_k"] != config.top_k:
        raise ValueError(f"{export_dir} was exported with top_k={manifest['top_k']}; "
                         f"pass top_k={manifest['top_k']} or export again with --top-k {config.top_k}")
    if fp16 and manifest["precision"] != "fp16":
        raise ValueError(f"fp16=True but {export_dir} holds {manifest['precision']} graphs")


def _tensorrt_graphs(name, device, export_dir, fp16, config):
    from vosrt.export.engine import read_engine_manifest
    from vosrt.runtime.tensorrt_graphs import TensorRTGraphs, TensorRTJointFormerGraphs

    if export_dir is None:
        raise ValueError("backend='tensorrt' needs export_dir: a directory built by export-engine for this GPU "
                         "(engines are built for an image size and object count)")
    manifest = read_engine_manifest(export_dir)
    _check_export(manifest, name, config, export_dir, fp16)
    if isinstance(config, InferenceConfig) and config.use_long_term:
        raise ValueError("backend='tensorrt' engines are built for the working memory only; "
                         "use_long_term needs backend='torch' or 'onnxruntime' in this version")
    if config.max_mem_frames > manifest["max_mem_frames"]:
        raise ValueError(f"the engines in {export_dir} hold at most max_mem_frames={manifest['max_mem_frames']}; "
                         f"pass max_mem_frames <= {manifest['max_mem_frames']} or rebuild with --max-mem-frames")
    if name == JOINTFORMER:
        return TensorRTJointFormerGraphs(export_dir, device)
    return TensorRTGraphs(export_dir, device)


def _onnxruntime_graphs(name, weights, device, export_dir, fp16, config):
    from vosrt.export.onnx_export import export_onnx, read_manifest, sha256
    from vosrt.runtime.onnxruntime_graphs import OnnxRuntimeGraphs

    if export_dir is None:
        path = wts.checkpoint_for(name, weights)
        precision = "fp16" if fp16 else "fp32"
        topk = config.topk() if name == JOINTFORMER else None
        options = "-".join(str(v) for v in asdict(topk).values()) if topk else f"k{config.top_k}"
        export_dir = wts.cache_dir() / "onnx" / f"{name}-{sha256(path)[:16]}-{options}-{precision}"
        if not (export_dir / "manifest.json").is_file():
            export_onnx(build_model(name, path), name, export_dir, checkpoint=path, top_k=config.top_k,
                        max_mem_frames=config.max_mem_frames, fp16=fp16, topk=topk)
    manifest = read_manifest(export_dir)
    _check_export(manifest, name, config, export_dir, fp16)
    if name == JOINTFORMER:
        from vosrt.runtime.onnxruntime_jointformer import OnnxRuntimeJointFormerGraphs

        return OnnxRuntimeJointFormerGraphs(export_dir, device)
    return OnnxRuntimeGraphs(export_dir, device)
