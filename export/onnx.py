"""Export a model's stages to ONNX, one graph per stage, with a manifest, checked by ``onnx.checker``.

The output directory holds ``<stage>.onnx`` for each stage of the model's family, the
constants a session needs (``<name>.npy``) and ``manifest.json``
(:mod:`vosrt.runtime.artifacts`). It is written to a temporary sibling directory first and
moved into place only when every graph has been exported and checked, so a failure leaves
nothing.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import onnx
import torch
from torch import nn

from vosrt.kernels.custom_ops import DOMAIN
from vosrt.runtime import artifacts
from vosrt.runtime.config import SessionConfig
from vosrt.runtime.family import ModelFamily, stage_method
from vosrt.runtime.registry import model_spec
from vosrt.runtime.stages import StageSpec, example_inputs

from .fp16 import convert_to_fp16
from .opset import DEFAULT_OPSET, check_opset

EXPORT_SIZE = (128, 192)  # any multiple of 16 works: H and W are dynamic axes
EXPORT_OBJECTS = 2
EXPORT_STREAMS = 2  # not 1: the tracer would take a stream axis of 1 for a constant


class StageModule(nn.Module):
    """One stage of a shared network as a module (what ``torch.onnx.export`` traces)."""

    def __init__(self, network: nn.Module, stage: StageSpec, options: Mapping[str, Any]):
        super().__init__()
        self.network = network
        self._run = stage_method(network, stage, options)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._run(*inputs)


def stage_modules(family: ModelFamily, network: nn.Module, settings: Mapping[str, Any],
                  formulation: str) -> dict[str, StageModule]:
    """Every stage of ``family`` over one shared ``network`` (in eval mode: an exporter restores
    the wrappers' mode afterwards, which would otherwise switch BatchNorm to training)."""
    options = family.stage_options(settings, formulation)
    network.eval()
    return {name: StageModule(network, stage, options.get(name, {})).eval() for name, stage in family.stages.items()}


def export_onnx(network: nn.Module, model: str, output: str | Path, *, config: SessionConfig | None = None,
                checkpoint: str | Path | None = None, fp16: bool = False, opset: int = DEFAULT_OPSET,
                custom_ops: bool = False, progress: Callable[[str], None] = print) -> Path:
    """Export ``network`` (model ``model``) to the directory ``output`` (replaced if it is a vosrt
    export: :func:`vosrt.runtime.artifacts.check_export_destination`) with ONNX ``opset`` (:data:`.opset.OPSETS`).
    Returns its path.

    ``config``: the session settings the graphs are for (default: the model's official ones);
    what an export fixes (:meth:`SessionConfig.export_settings`, e.g. ``top_k``) is recorded in
    the manifest, and ``max_mem_frames`` is recorded for the engines built from it (the memory
    axes are dynamic). ``custom_ops``: each top-K attention becomes one ``vosrt::`` node (see
    :mod:`vosrt.kernels.custom_ops`) instead of standard ops; the manifest's ``custom_ops`` lists
    the custom ops the graphs hold, which a loader must register. ``fp16``: fp16 weights and
    activations, with what the official code keeps in fp32 kept in fp32 (:mod:`.fp16`).
    """
    check_opset(opset)
    spec = model_spec(model)
    family, config = spec.family, config or spec.config_type()
    settings = config.export_settings()
    family.check_export(settings, custom_ops)
    output = Path(output)
    architecture = family.architecture(network)
    sizes = family.example_sizes(architecture, *EXPORT_SIZE, EXPORT_OBJECTS,
                                 family.memory_frames(config.max_mem_frames), EXPORT_STREAMS)
    modules = stage_modules(family, network, settings, "custom_ops" if custom_ops else "graph")
    with artifacts.staged_directory(output) as staging:
        graphs, used_ops = {}, set()
        for name, module in modules.items():
            progress(f"exporting {name} ({'fp16' if fp16 else 'fp32'}, opset {opset})")
            stage = family.stages[name]
            path = staging / f"{name}.onnx"
            _export_graph(module, stage, example_inputs(stage, sizes), path, opset, family.sizes(architecture))
            if fp16:
                convert_to_fp16(path, family.fp16_policy)
            onnx.checker.check_model(str(path), full_check=True)
            graphs[name], graph_ops = _describe(path, stage, family.sizes(architecture))
            used_ops |= graph_ops
        manifest = {
            "format": artifacts.ONNX_FORMAT, "model": model, "vosrt_version": artifacts.vosrt_version(),
            "torch_version": torch.__version__, "onnx_version": onnx.__version__, "opset": opset,
            "precision": "fp16" if fp16 else "fp32", "settings": settings, "max_mem_frames": config.max_mem_frames,
            "architecture": architecture,
            "checkpoint": ({"path": str(Path(checkpoint).resolve()), "sha256": artifacts.sha256(checkpoint)}
                           if checkpoint else None),
            "graphs": graphs, "custom_ops": sorted(used_ops),
            "constants": artifacts.save_constants(staging, family.constants(network)),
        }
        artifacts.write_manifest(staging, manifest)
    return output


def _export_graph(module: nn.Module, stage: StageSpec, inputs: tuple, path: Path, opset: int,
                  fixed: Mapping[str, int]) -> None:
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic, expected here
        torch.onnx.export(module, inputs, str(path), input_names=list(stage.input_names),
                          output_names=list(stage.output_names), dynamic_axes=stage.dynamic_axes(fixed),
                          opset_version=opset, dynamo=False)


def _describe(path: Path, stage: StageSpec, sizes: Mapping[str, int]) -> tuple[dict, set[str]]:
    """The manifest entry of the graph saved at ``path`` (its tensors as the stage declares them,
    architecture sizes filled in) and the qualified names of the custom ops it holds."""
    graph = onnx.load(str(path), load_external_data=False).graph
    names = ([v.name for v in graph.input], [v.name for v in graph.output])
    if names != (list(stage.input_names), list(stage.output_names)):
        raise RuntimeError(f"the exported {stage.name} graph has inputs/outputs {names}, not the declared ones")
    dtypes = {v.name: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
              for v in (*graph.input, *graph.output)}

    def tensor(spec):
        shape = [dim if isinstance(dim, int) or dim not in sizes else sizes[dim] for dim in spec.shape]
        return {"name": spec.name, "shape": shape, "dtype": dtypes[spec.name]}

    entry = artifacts.describe_file(path, inputs=[tensor(t) for t in stage.inputs],
                                    outputs=[tensor(t) for t in stage.outputs])
    return entry, {f"{DOMAIN}::{n.op_type}" for n in graph.node if n.domain == DOMAIN}
