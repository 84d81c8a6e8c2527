"""The ``trtexec`` command lines that build the same engines as :func:`~.tensorrt.build_engines`."""
from __future__ import annotations

from pathlib import Path

from vosrt.runtime.artifacts import ENGINE_DIR

from .profile import TIMING_CACHE, BuildOptions


def trtexec_commands(onnx_dir: str | Path, onnx_manifest: dict, options: BuildOptions,
                     engine_dir: str | Path | None = None) -> list[str]:
    """Shell commands that build the same engines as :func:`~.tensorrt.build_engines` with ``trtexec``: a
    ``mkdir`` of the engine directory, then one line per graph (for users who prefer trtexec;
    no vosrt manifest is written, so ``vosrt.load`` cannot run the result)."""
    if onnx_manifest["custom_ops"]:
        raise ValueError(f"{onnx_dir} uses custom ops ({', '.join(onnx_manifest['custom_ops'])}), whose TensorRT "
                         "plugin registers from Python: build its engines with export-engine --from-onnx, not trtexec")
    onnx_dir = Path(onnx_dir)
    engine_dir = Path(engine_dir) if engine_dir else onnx_dir / ENGINE_DIR
    shapes = options.input_shapes(onnx_manifest)
    precision = ["--stronglyTyped"]
    if options.dla_core is not None:
        precision = [f"--useDLACore={options.dla_core}", "--allowGPUFallback", "--fp16"]  # TensorRT 10 DLA recipe
    if not options.tf32:
        precision.append("--noTF32")
    commands = [f"mkdir -p {engine_dir}"]
    for stage, graph in onnx_manifest["graphs"].items():
        corners = [f"--{corner}Shapes=" + ",".join(f"{name}:{'x'.join(map(str, s[corner]))}"
                                                     for name, s in shapes[stage].items())
                   for corner in ("min", "opt", "max")]
        commands.append(" ".join(["trtexec", f"--onnx={onnx_dir / graph['file']}",
                                  f"--saveEngine={engine_dir / (stage + '.engine')}", *corners, *precision,
                                  f"--memPoolSize=workspace:{options.workspace}M",
                                  f"--timingCacheFile={engine_dir / TIMING_CACHE}"]))
    return commands
