"""TensorRT engines from an ONNX export directory, one engine per stage, with a manifest.

The engine directory (by default ``<onnx dir>/tensorrt``) holds ``<stage>.engine`` for each
stage of the model, ``timing.cache`` (reused by the next build), a copy of the export's
constants (so it runs on its own) and ``manifest.json``, which records what the engines were
built with and for: the TensorRT version, the GPU and its compute capability, and the
optimization profile (object count, image size, memory size). Engines only run where they
were built; :func:`vosrt.runtime.artifacts.check_compatible` turns a mismatch into a message
that says how to rebuild.

Precision comes from the ONNX types (strongly typed network): an fp16 export gives fp16
engines with the fp32 islands the export kept; no precision builder flag is set (TensorRT 11
has none). The one exception is DLA on TensorRT 10, which only runs weakly typed fp16
networks. TensorRT lets fp32 convolutions and matrix products round their inputs to TF32
(10-bit mantissas, as fp16) unless its TF32 flag is cleared: it is cleared, so fp32 engines and
the fp32 islands of fp16 engines compute in fp32, unless ``BuildOptions.tf32`` (``--tf32``).

The builder calls follow the TensorRT 10 Python API; building needs TensorRT and an NVIDIA
GPU, everything else here (profiles, manifest checks, trtexec lines) does not.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch

from vosrt.runtime import artifacts
from vosrt.runtime.artifacts import ENGINE_DIR, ENGINE_FORMAT, ONNX_FORMAT, TensorRTEnvironment
from vosrt.runtime.export_check import check_graphs

from .profile import TIMING_CACHE, BuildOptions
from .trtexec import trtexec_commands

class BuildEnvironmentMissing(RuntimeError):
    """No TensorRT or no NVIDIA GPU here: engines are built on the target (the message says how)."""


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
    if onnx_manifest["custom_ops"]:
        raise BuildEnvironmentMissing(message)
    commands = "\n".join("  " + c for c in trtexec_commands(onnx_dir, onnx_manifest, options, engine_dir))
    raise BuildEnvironmentMissing(f"{message}, or\n{commands}")


def build_engines(onnx_dir: str | Path, output: str | Path | None = None, *, options: BuildOptions = BuildOptions(),
                  progress: Callable[[str], None] = print, check_files: bool = True) -> Path:
    """Build one engine per graph of the ONNX export ``onnx_dir`` into ``output`` (default
    ``<onnx_dir>/tensorrt``; replaced only once every engine is built, and only if it is empty or
    a vosrt export). Returns its path. ``check_files``: compare the graphs with the sha256 sums of
    the export's manifest first.

    The timing cache of a previous build in ``output`` is loaded first and the updated cache
    saved beside the engines, so rebuilding (another profile, another checkpoint) is fast.
    """
    onnx_dir = Path(onnx_dir)
    onnx_manifest = artifacts.read_manifest(onnx_dir, ONNX_FORMAT, check_files=check_files)
    check_graphs(onnx_dir, onnx_manifest)
    options = replace(options, profile=options.profile.for_export(onnx_manifest))
    if options.dla_core is not None and onnx_manifest["precision"] != "fp16":
        raise ValueError("DLA runs fp16 only: build DLA engines from an fp16 export (export-engine --fp16)")
    artifacts.check_export_destination(Path(output) if output else onnx_dir / ENGINE_DIR)
    trt = require_build_environment(onnx_dir, onnx_manifest, options, output)
    artifacts.register_custom_ops(onnx_manifest)
    output = Path(output) if output else onnx_dir / ENGINE_DIR
    timing_cache = (output / TIMING_CACHE).read_bytes() if (output / TIMING_CACHE).is_file() else b""
    shapes = options.input_shapes(onnx_manifest)
    logger = trt.Logger(trt.Logger.WARNING)
    with artifacts.staged_directory(output) as staging:
        engines = {}
        for stage, graph in onnx_manifest["graphs"].items():
            progress(f"building {stage} engine ({onnx_manifest['precision']}, "
                     f"{'DLA core %d' % options.dla_core if options.dla_core is not None else 'GPU'})")
            engine, timing_cache = _build_engine(trt, logger, onnx_dir / graph["file"], shapes[stage], options,
                                                 timing_cache)
            path = staging / f"{stage}.engine"
            path.write_bytes(engine)
            engines[stage] = artifacts.describe_file(path, onnx_sha256=graph["sha256"])
        (staging / TIMING_CACHE).write_bytes(timing_cache)
        for file in onnx_manifest["constants"].values():  # the engine directory runs on its own
            shutil.copy(onnx_dir / file, staging / file)
        manifest = _engine_manifest(onnx_manifest, onnx_dir, output, options, shapes, engines,
                                    TensorRTEnvironment.current(torch.cuda.current_device()))
        artifacts.write_manifest(staging, manifest)
    return output


def _engine_manifest(onnx_manifest: dict, onnx_dir: Path, output: Path, options: BuildOptions, shapes: dict,
                     engines: dict, environment: TensorRTEnvironment) -> dict:
    copied = ("model", "precision", "settings", "architecture", "checkpoint", "custom_ops", "constants")
    return {"format": ENGINE_FORMAT, **{key: onnx_manifest[key] for key in copied},
            "max_mem_frames": options.profile.max_mem_frames,
            "onnx_directory": os.path.relpath(onnx_dir.resolve(), output.resolve()),
            "environment": asdict(environment),
            "profile": asdict(options.profile), "input_shapes": shapes,
            "strongly_typed": not _weakly_typed_dla(options), "dla_core": options.dla_core, "tf32": options.tf32,
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
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}; export the graphs again")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace << 20)
    if not options.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
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
