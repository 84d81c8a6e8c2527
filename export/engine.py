"""TensorRT engines from an ONNX export directory, one engine per graph, with a manifest.

The engine directory (by default ``<onnx dir>/tensorrt``) holds ``<graph>.engine`` for each
graph of the model's ``SPECS`` (:data:`~vosrt.export.cutie_graphs.SPECS`,
:data:`~vosrt.export.jointformer_graphs.SPECS`), ``timing.cache`` (reused by the next build),
``manifest.json``, which records what the engines were built with and for: the TensorRT
version, the GPU and its compute capability, and the optimization profile (object count,
image size, memory size), and for JointFormer a copy of the export's initial
compressed-memory token. Engines only run where they were built; :func:`check_compatible`
turns a mismatch into a message that says how to rebuild.

Precision comes from the ONNX types (strongly typed network): an fp16 export gives fp16
engines with the fp32 islands the export kept; no precision builder flag is set (TensorRT 11
has none). The one exception is DLA on TensorRT 10, which only runs weakly typed fp16
networks. The builder calls follow the TensorRT 10 Python API; building needs TensorRT and an
NVIDIA GPU, everything else here (profiles, manifest checks, trtexec lines) does not.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from vosrt.models.jointformer import MODEL_NAME as JOINTFORMER
from vosrt.runtime.preprocess import FrameGeometry
from vosrt.runtime.reference_cache import ReferenceCache

from .onnx_export import MANIFEST, graph_family, read_manifest, sha256, staged_directory

ENGINE_FORMAT = "vosrt-tensorrt/1"
ENGINE_DIR = "tensorrt"  # default engine directory inside an ONNX export directory
TIMING_CACHE = "timing.cache"
DEFAULT_RESOLUTION = (480, 854)
DEFAULT_MAX_OBJECTS = 4
WORKSPACE_MIB = 4096  # builder scratch memory on a workstation GPU
SMALL_WORKSPACE_MIB = 1024  # on Jetson and for DLA builds (shared, smaller memory)


def memory_capacity(model_name: str, max_mem_frames: int) -> int:
    """Frames of ``h*w`` tokens in the memory a session with ``max_mem_frames`` reads: Cutie's
    working memory frames; JointFormer's reference-cache slots, the ``include_last`` slot
    counted (:meth:`~vosrt.runtime.reference_cache.ReferenceCache.slot_count`)."""
    if model_name == JOINTFORMER:
        return ReferenceCache.slot_count(max_mem_frames, include_last=True)
    return max_mem_frames


def is_jetson() -> bool:
    """True on an NVIDIA Jetson board (aarch64 with the L4T release file)."""
    return platform.machine() == "aarch64" and Path("/etc/nv_tegra_release").exists()


@dataclass(frozen=True)
class EngineProfile:
    """What the engines accept: 1..``max_objects`` objects per graph call, frames of
    ``resolution`` (H, W, padded to multiples of 16 here) and the memory of sessions with up to
    ``max_mem_frames`` (None: the ONNX export's ``max_mem_frames``) per bucket."""

    max_objects: int = DEFAULT_MAX_OBJECTS
    resolution: tuple[int, int] = DEFAULT_RESOLUTION
    max_mem_frames: int | None = None

    def __post_init__(self) -> None:
        if self.max_objects < 1:
            raise ValueError(f"--max-objects must be >= 1, got {self.max_objects}")
        if len(self.resolution) != 2 or min(self.resolution) < 16:
            raise ValueError(f"--resolution must be HxW with both sides >= 16, got {self.resolution}")
        if self.max_mem_frames is not None and self.max_mem_frames < 1:
            raise ValueError(f"--max-mem-frames must be >= 1, got {self.max_mem_frames}")
        padded = FrameGeometry.for_size(tuple(int(s) for s in self.resolution), max_internal_size=-1).padded
        object.__setattr__(self, "resolution", padded)

    def for_export(self, onnx_manifest: dict) -> "EngineProfile":
        """This profile with ``max_mem_frames`` filled in from the ONNX manifest when None."""
        return replace(self, max_mem_frames=self.max_mem_frames or onnx_manifest["max_mem_frames"])

    def symbols(self, objects: int, capacity: int) -> dict[str, int]:
        """Values of the dynamic-axis symbols of both models' ``SPECS`` for a graph call with a memory of
        ``capacity`` frames (N: Cutie's memory tokens, M: JointFormer's reference tokens)."""
        height, width = self.resolution
        h, w = height // 16, width // 16
        return {"H": height, "W": width, "h": h, "w": w, "hw": h * w, "h8": 2 * h, "w8": 2 * w, "h4": 4 * h,
                "w4": 4 * w, "K": objects, "N": capacity * h * w, "M": capacity * h * w}

    def input_shapes(self, onnx_manifest: dict) -> dict[str, dict[str, dict[str, list[int]]]]:
        """``{graph: {input: {"min"|"opt"|"max": shape}}}`` from the ONNX manifest's symbolic shapes.

        min: one object, one memory frame; opt and max: ``max_objects`` objects and a full
        memory (:func:`memory_capacity`). The image size is fixed, so TensorRT tunes for exactly
        the frames it will see.
        """
        capacity = memory_capacity(onnx_manifest["model"], self.for_export(onnx_manifest).max_mem_frames)
        corners = {"min": self.symbols(1, 1), "opt": self.symbols(self.max_objects, capacity),
                   "max": self.symbols(self.max_objects, capacity)}
        shapes = {}
        for graph in graph_family(onnx_manifest["model"]).SPECS:
            shapes[graph] = {
                tensor["name"]: {corner: [values[d] if isinstance(d, str) else d for d in tensor["shape"]]
                                 for corner, values in corners.items()}
                for tensor in onnx_manifest["graphs"][graph]["inputs"]}
        return shapes


@dataclass(frozen=True)
class TensorRTEnvironment:
    """What an engine is tied to: the TensorRT version and the GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor"

    @classmethod
    def current(cls, device: torch.device | str | int = 0) -> "TensorRTEnvironment":
        """This machine's TensorRT and the GPU ``device``."""
        trt = import_tensorrt()
        major, minor = torch.cuda.get_device_capability(device)
        return cls(trt.__version__, torch.cuda.get_device_name(device), f"{major}.{minor}")


def import_tensorrt(why: str = "TensorRT engines need"):
    """The ``tensorrt`` module, or a RuntimeError that says how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise RuntimeError(f"{why} the tensorrt package, which is not installed "
                           "(pip install 'vosrt[gpu]' on a machine with an NVIDIA GPU)") from None
    return tensorrt


def check_compatible(manifest: dict, current: TensorRTEnvironment, engine_dir: str | Path) -> None:
    """Raise RuntimeError unless the engines of ``manifest`` were built with ``current``'s
    TensorRT version on the same GPU model; the message says how to rebuild them."""
    built = TensorRTEnvironment(**manifest["environment"])
    mismatches = [f"{what} {getattr(built, field)} (here: {getattr(current, field)})"
                  for field, what in (("tensorrt_version", "TensorRT"), ("gpu_name", "GPU"),
                                      ("compute_capability", "compute capability"))
                  if getattr(built, field) != getattr(current, field)]
    if mismatches:
        onnx_dir = Path(engine_dir) / manifest["onnx_directory"]
        raise RuntimeError(f"the engines in {engine_dir} were built for {', '.join(mismatches)}; TensorRT engines "
                           f"only run where they were built: rebuild them here with "
                           f"export-engine --from-onnx {onnx_dir}")


def engine_directory(directory: str | Path) -> Path:
    """``directory`` itself when it holds engines, else its ``tensorrt`` subdirectory."""
    directory = Path(directory)
    return directory if is_engine_dir(directory) else directory / ENGINE_DIR


def is_engine_dir(directory: str | Path) -> bool:
    """Whether ``directory`` is an engine directory (its manifest says so)."""
    path = Path(directory) / MANIFEST
    return path.is_file() and json.loads(path.read_text()).get("format") == ENGINE_FORMAT


def read_engine_manifest(directory: str | Path) -> dict:
    """The manifest of an engine directory (or of an ONNX directory's ``tensorrt`` engines),
    with a clear error when there are none or some engine file is missing."""
    engine_dir = engine_directory(directory)
    if not is_engine_dir(engine_dir):
        raise FileNotFoundError(f"no TensorRT engines in {directory}; build them with "
                                f"export-engine --from-onnx {directory}")
    manifest = json.loads((engine_dir / MANIFEST).read_text())
    missing = [g for g in graph_family(manifest["model"]).SPECS
               if not (engine_dir / manifest["engines"].get(g, {}).get("file", "?")).is_file()]
    if missing:
        raise FileNotFoundError(f"{engine_dir} lacks the engine(s) {', '.join(missing)}; build them again")
    return manifest


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings. ``workspace_mib`` None: :data:`WORKSPACE_MIB`, or
    :data:`SMALL_WORKSPACE_MIB` on Jetson or with a DLA core."""

    profile: EngineProfile = EngineProfile()
    workspace_mib: int | None = None
    dla_core: int | None = None

    def __post_init__(self) -> None:
        if self.dla_core is not None and self.dla_core < 0:
            raise ValueError(f"--dla-core must be >= 0, got {self.dla_core}")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise ValueError(f"--workspace must be >= 1 MiB, got {self.workspace_mib}")

    @property
    def workspace(self) -> int:
        """Workspace limit in MiB."""
        if self.workspace_mib is not None:
            return self.workspace_mib
        return SMALL_WORKSPACE_MIB if self.dla_core is not None or is_jetson() else WORKSPACE_MIB


def trtexec_commands(onnx_dir: str | Path, onnx_manifest: dict, options: BuildOptions,
                     engine_dir: str | Path | None = None) -> list[str]:
    """Shell commands that build the same engines as :func:`build_engines` with ``trtexec``: a
    ``mkdir`` of the engine directory, then one line per graph (for users who prefer trtexec;
    no vosrt manifest is written, so ``vosrt.load`` cannot run the result)."""
    if onnx_manifest.get("custom_ops"):
        raise ValueError(f"{onnx_dir} uses custom ops ({', '.join(onnx_manifest['custom_ops'])}), whose TensorRT "
                         "plugin registers from Python: build its engines with export-engine --from-onnx, not trtexec")
    onnx_dir = Path(onnx_dir)
    engine_dir = Path(engine_dir) if engine_dir else onnx_dir / ENGINE_DIR
    shapes = options.profile.input_shapes(onnx_manifest)
    precision = ["--stronglyTyped"]
    if options.dla_core is not None:
        precision = [f"--useDLACore={options.dla_core}", "--allowGPUFallback", "--fp16"]  # TensorRT 10 DLA recipe
    commands = [f"mkdir -p {engine_dir}"]
    for graph in graph_family(onnx_manifest["model"]).SPECS:
        corners = [f"--{corner}Shapes=" + ",".join(f"{name}:{'x'.join(map(str, s[corner]))}"
                                                     for name, s in shapes[graph].items())
                   for corner in ("min", "opt", "max")]
        commands.append(" ".join(["trtexec", f"--onnx={onnx_dir / onnx_manifest['graphs'][graph]['file']}",
                                  f"--saveEngine={engine_dir / (graph + '.engine')}", *corners, *precision,
                                  f"--memPoolSize=workspace:{options.workspace}M",
                                  f"--timingCacheFile={engine_dir / TIMING_CACHE}"]))
    return commands


def require_build_environment(onnx_dir: str | Path, onnx_manifest: dict, options: BuildOptions,
                              engine_dir: str | Path | None = None):
    """The tensorrt module when TensorRT and a CUDA GPU are here; otherwise a RuntimeError that
    says what is missing and lists the trtexec commands to run on the target instead."""
    missing = []
    try:
        import tensorrt
    except ImportError:
        tensorrt = None
        missing.append("the tensorrt package (pip install 'vosrt[gpu]')")
    if not torch.cuda.is_available():
        missing.append("an NVIDIA GPU")
    if not missing:
        return tensorrt
    message = (f"building TensorRT engines needs {' and '.join(missing)}, which this machine lacks. Engines must "
               f"be built on the target GPU: copy {onnx_dir} there and run export-engine --from-onnx {onnx_dir}")
    if onnx_manifest.get("custom_ops"):
        raise RuntimeError(message)
    commands = "\n".join("  " + c for c in trtexec_commands(onnx_dir, onnx_manifest, options, engine_dir))
    raise RuntimeError(f"{message}, or\n{commands}")


def build_engines(onnx_dir: str | Path, output: str | Path | None = None, *, options: BuildOptions = BuildOptions(),
                  progress: Callable[[str], None] = print) -> Path:
    """Build one engine per graph of the ONNX export ``onnx_dir`` into ``output`` (default
    ``<onnx_dir>/tensorrt``; replaced only once every engine is built). Returns its path.

    The timing cache of a previous build in ``output`` is loaded first and the updated cache
    saved beside the engines, so rebuilding (another profile, another checkpoint) is fast.
    """
    onnx_dir = Path(onnx_dir)
    onnx_manifest = read_manifest(onnx_dir)
    options = replace(options, profile=options.profile.for_export(onnx_manifest))
    if options.dla_core is not None and onnx_manifest["precision"] != "fp16":
        raise ValueError("DLA runs fp16 only: build DLA engines from an fp16 export (export-engine --fp16)")
    trt = require_build_environment(onnx_dir, onnx_manifest, options, output)
    register_custom_ops(onnx_manifest)
    output = Path(output) if output else onnx_dir / ENGINE_DIR
    timing_cache = (output / TIMING_CACHE).read_bytes() if (output / TIMING_CACHE).is_file() else b""
    shapes = options.profile.input_shapes(onnx_manifest)
    logger = trt.Logger(trt.Logger.WARNING)
    with staged_directory(output) as staging:
        engines = {}
        for graph in graph_family(onnx_manifest["model"]).SPECS:
            progress(f"building {graph} engine ({onnx_manifest['precision']}, "
                     f"{'DLA core %d' % options.dla_core if options.dla_core is not None else 'GPU'})")
            onnx_path = onnx_dir / onnx_manifest["graphs"][graph]["file"]
            engine, timing_cache = _build_engine(trt, logger, onnx_path, shapes[graph], options, timing_cache)
            path = staging / f"{graph}.engine"
            path.write_bytes(engine)
            engines[graph] = {"file": path.name, "sha256": sha256(path),
                              "onnx_sha256": onnx_manifest["graphs"][graph]["sha256"]}
        (staging / TIMING_CACHE).write_bytes(timing_cache)
        if "initial_summary" in onnx_manifest:  # JointFormer: the engine directory runs on its own
            shutil.copy(onnx_dir / onnx_manifest["initial_summary"], staging / onnx_manifest["initial_summary"])
        manifest = _engine_manifest(onnx_manifest, onnx_dir, output, options, shapes, engines,
                                    TensorRTEnvironment.current(torch.cuda.current_device()))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return output


def _engine_manifest(onnx_manifest: dict, onnx_dir: Path, output: Path, options: BuildOptions, shapes: dict,
                     engines: dict, environment: TensorRTEnvironment) -> dict:
    copied = ("model", "precision", "top_k", "topk", "architecture", "checkpoint", "custom_ops", "initial_summary")
    return {"format": ENGINE_FORMAT, **{key: onnx_manifest[key] for key in copied if key in onnx_manifest},
            "max_mem_frames": options.profile.max_mem_frames,
            "onnx_directory": os.path.relpath(onnx_dir.resolve(), output.resolve()),
            "environment": asdict(environment),
            "profile": asdict(options.profile), "input_shapes": shapes,
            "strongly_typed": not _weakly_typed_dla(options), "dla_core": options.dla_core,
            "workspace_mib": options.workspace, "engines": engines}


def _weakly_typed_dla(options: BuildOptions) -> bool:
    """DLA on TensorRT 10 runs weakly typed fp16 networks (BuilderFlag.FP16); 11.4+ is strongly typed."""
    if options.dla_core is None:
        return False
    import tensorrt

    return int(tensorrt.__version__.split(".")[0]) < 11


def _build_engine(trt, logger, onnx_path: Path, shapes: dict, options: BuildOptions,
                  timing_cache: bytes) -> tuple[bytes, bytes]:
    """One serialized engine and the updated timing cache (TensorRT 10 Python API)."""
    builder = trt.Builder(logger)
    weakly_typed = _weakly_typed_dla(options)
    flags = 0 if weakly_typed else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace << 20)
    profile = builder.create_optimization_profile()
    for name, corner in shapes.items():
        profile.set_shape(name, corner["min"], corner["opt"], corner["max"])
    config.add_optimization_profile(profile)
    if not config.set_timing_cache(config.create_timing_cache(timing_cache), ignore_mismatch=False):
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)  # from another GPU / version
    if options.dla_core is not None:
        if options.dla_core >= builder.num_DLA_cores:
            raise ValueError(f"--dla-core {options.dla_core}: this device has {builder.num_DLA_cores} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        if weakly_typed:
            config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the messages above)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def register_custom_ops(manifest: dict) -> None:
    """Register the TensorRT plugins of vosrt's custom ops when a manifest lists some (``custom_ops``),
    before its graphs are parsed or its engines deserialised."""
    if manifest.get("custom_ops"):
        from vosrt.kernels import trt_plugin

        trt_plugin.register()
