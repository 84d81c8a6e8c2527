"""AOTInductor packages of a model's stages: ``export-engine MODEL --format aoti``.

Each stage is exported with ``torch.export`` and compiled by
``torch._inductor.aoti_compile_and_package`` into ``<stage>.pt2``, a package that runs without
the model's Python code (:class:`vosrt.runtime.backends.aoti.AotiBackend` loads them). The
axes the stage specs declare as varying within a video (memory tokens, objects, streams:
:attr:`vosrt.runtime.family.ModelFamily.video_symbols`) are dynamic, found by export
(``Dim.AUTO``, so that ``BK = B x K`` and the like are derived, not declared); the frame size
is fixed at export (``--resolution``, padded to multiples of 16, as TensorRT engines fix their
profile). The top-K attention goes in as the torch library ops of :mod:`vosrt.kernels.torch_ops`,
decomposed into the package (the torch formulation on the CPU, the Triton kernel on CUDA).

AOTInductor compiles for the machine it runs on (its CPU's instruction set, its GPU): build
packages where they will run. The directory holds the packages, the constants a session needs
and ``manifest.json`` (:mod:`vosrt.runtime.artifacts`: sha256 of every file, model, vosrt
version, device, precision, the compile seconds of each stage); it is written to a temporary
sibling and moved into place only when every stage compiled.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from vosrt.runtime import artifacts
from vosrt.runtime.backends.compiled import use_vosrt_inductor_cache
from vosrt.runtime.config import SessionConfig
from vosrt.runtime.registry import model_spec
from vosrt.runtime.stages import StageSpec, example_inputs

from .onnx import EXPORT_OBJECTS, stage_modules

EXAMPLE_MEMORY_FRAMES = 2  # not 1: a memory axis of one frame's tokens would tie N to hw
# Packages take one stream per call: exported with two, the stream axis came out fixed at 2 (a package
# then returned two rows for one stream), so it is exported at 1 and load_batch calls it per stream.
PACKAGE_STREAMS = 1


def dynamic_shapes(stage: StageSpec, video_symbols: frozenset[str]) -> tuple:
    """``torch.export``'s ``dynamic_shapes`` of ``stage``'s inputs: ``Dim.AUTO`` on the axes that
    vary within a video (``video_symbols``), static elsewhere."""
    return tuple({axis: torch.export.Dim.AUTO for axis, dim in enumerate(spec.shape) if dim in video_symbols}
                 or None for spec in stage.inputs)


def export_aoti(network: nn.Module, model: str, output: str | Path, *, config: SessionConfig | None = None,
                checkpoint: str | Path | None = None, device: str = "cpu", fp16: bool = False,
                resolution: tuple[int, int] = (480, 864),
                progress: Callable[[str], None] = print) -> Path:
    """Compile every stage of ``network`` (model ``model``) into ``output`` (replaced if it is a
    vosrt export) for ``device`` and a padded frame of ``resolution`` (multiples of 16). ``fp16``:
    fp16 weights and inputs where the stage takes floats (the network keeps its fp32 regions).
    Returns the directory."""
    spec = model_spec(model)
    family, config = spec.family, config or spec.config_type()
    height, width = resolution
    if height % 16 or width % 16:
        raise ValueError(f"the resolution {height}x{width} must be multiples of 16 (the padded frame)")
    settings = config.export_settings()
    family.check_export(settings, custom_ops=False)
    device = torch.device(device)
    if fp16 and device.type != "cuda":
        raise ValueError("--fp16 packages run fp16 kernels on an NVIDIA GPU: pass --device cuda")
    use_vosrt_inductor_cache()
    import vosrt.kernels.torch_ops  # noqa: F401  (the vosrt:: ops the stages call)

    output = Path(output)
    network = network.to(device)
    architecture = family.architecture(network)
    sizes = family.example_sizes(architecture, height, width, EXPORT_OBJECTS,
                                 EXAMPLE_MEMORY_FRAMES, PACKAGE_STREAMS)
    modules = stage_modules(family, network.half() if fp16 else network, settings, "compiled")
    with artifacts.staged_directory(output) as staging:
        packages = {}
        for name, module in modules.items():
            progress(f"compiling {name} ({device.type}, {'fp16' if fp16 else 'fp32'}, {height}x{width})")
            start = time.perf_counter()
            stage = family.stages[name]
            inputs = tuple(x.to(device, torch.float16 if fp16 and x.is_floating_point() else x.dtype)
                           for x in example_inputs(stage, sizes))
            path = staging / f"{name}.pt2"
            _compile_stage(module, stage, inputs, path, family.video_symbols)
            seconds = round(time.perf_counter() - start, 1)
            progress(f"  {name}: {seconds} s")
            packages[name] = artifacts.describe_file(path, compile_seconds=seconds)
        manifest = {
            "format": artifacts.AOTI_FORMAT, "model": model, "vosrt_version": artifacts.vosrt_version(),
            "torch_version": torch.__version__, "device": device.type,
            "device_name": artifacts.device_name(device), "precision": "fp16" if fp16 else "fp32",
            "resolution": [height, width], "settings": settings, "max_mem_frames": config.max_mem_frames,
            "architecture": architecture,
            "checkpoint": ({"path": str(Path(checkpoint).resolve()), "sha256": artifacts.sha256(checkpoint)}
                           if checkpoint else None),
            "packages": packages, "custom_ops": [],
            "constants": artifacts.save_constants(staging, family.constants(network)),
        }
        artifacts.write_manifest(staging, manifest)
    return output


def _compile_stage(module: nn.Module, stage: StageSpec, inputs: tuple, path: Path,
                   video_symbols: frozenset[str]) -> None:
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        # the stage module takes *inputs: export binds them as one tuple argument
        program = torch.export.export(module, inputs, dynamic_shapes=(dynamic_shapes(stage, video_symbols),))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
