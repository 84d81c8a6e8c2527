"""Per-stage comparison of an ONNX export with the eager fp32 model, and of TensorRT engines with
their ONNX graphs (through Polygraphy).

Tolerances (max |error| / max |reference|, per output) follow the precision of what is checked:

* fp32 graphs against eager fp32: :data:`FP32_REL_TOL`;
* fp16 graphs against eager fp32: the family's measured :attr:`Fp16Policy.tolerances
  <vosrt.runtime.family.Fp16Policy.tolerances>`;
* engines against their graphs on ONNX Runtime: :data:`ENGINE_REL_TOL`.

Stages that select the top K of some scores also report the share of queries (rows of a TopK)
whose kept set differs from the eager fp32 model's.
"""
from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from vosrt.runtime import artifacts
from vosrt.runtime.artifacts import ENGINE_FORMAT, ONNX_FORMAT
from vosrt.runtime.backends.onnxruntime import create_session
from vosrt.runtime.registry import MODELS
from vosrt.runtime.stages import StageSpec, example_inputs

from .onnx import stage_modules

DEFAULT_SIZES = ((128, 192), (240, 320))
DEFAULT_OBJECTS = (1, 3)
FP32_REL_TOL = 1e-4
# An fp32 stage whose outputs go through a top-K selection may keep another element than the
# reference where two scores are within rounding of each other (random inputs have such near
# ties), and in JointFormer a flip in one block spreads to every token of the next blocks. Such a
# stage passes when its mean error is within the tolerance and its largest within FLIP_TOL x
# scale. fp16 tolerances are measured with their flips.
FLIP_TOL = 2e-2
# max |engine - onnxruntime| / max |onnxruntime| allowed by default: fp32 engines sum in other
# orders than ONNX Runtime (and round to TF32 when built with --tf32); fp16 engines compute most
# layers in fp16. Not measured on a GPU yet.
ENGINE_REL_TOL = {"fp32": 1e-2, "fp16": 5e-2}


@dataclass(frozen=True)
class GraphCheck:
    """One output of one stage call: ``max_abs_error``, ``mean_abs_error``, ``scale`` (max
    |reference|), the ``tolerance`` it was held to (relative to ``scale``) and, for a stage with
    TopK nodes, ``topk_differ``: the share of queries whose kept set differs from the
    reference's (None where not measured)."""

    graph: str
    size: tuple[int, int]
    num_objects: int
    output: str
    max_abs_error: float
    mean_abs_error: float
    scale: float
    tolerance: float
    passed: bool
    topk_differ: float | None = None

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / max(self.scale, 1e-12)


def compare_output(stage: StageSpec, output: str, got: np.ndarray, reference: np.ndarray, tolerance: float,
                 size: Sequence[int], num_objects: int, *, flips: bool = False,
                 topk_differ: float | None = None) -> GraphCheck:
    """Compare one output with its reference: max |error| within ``tolerance x max |reference|``;
    with ``flips`` (an fp32 top-K stage, see :data:`FLIP_TOL`) the mean error within that and the
    largest within ``FLIP_TOL x scale``."""
    error = np.abs(got.astype(np.float64) - reference.astype(np.float64)).ravel()
    if error.size == 0:
        return GraphCheck(stage.name, tuple(size), num_objects, output, 0.0, 0.0, 0.0, tolerance, True, topk_differ)
    scale = float(np.abs(reference).max())
    max_error, mean_error = float(error.max()), float(error.mean())
    if flips and stage.selects_top_k:
        passed = mean_error <= tolerance * scale and max_error <= max(FLIP_TOL, tolerance) * scale
    else:
        passed = max_error <= tolerance * scale
    return GraphCheck(stage.name, tuple(size), num_objects, output, max_error, mean_error, scale, tolerance, passed,
                      topk_differ)


def default_tolerances(manifest: dict) -> dict[str, float]:
    """``{"stage.output": tolerance}`` of an ONNX export against the eager fp32 model, for its precision."""
    family = MODELS[manifest["model"]].family
    if manifest["precision"] == "fp32":
        return {f"{name}.{output}": FP32_REL_TOL
                for name, stage in family.stages.items() for output in stage.output_names}
    return dict(family.fp16_policy.tolerances)


def compare_with_eager(export_dir: str | Path, network: nn.Module, sizes=DEFAULT_SIZES, objects=DEFAULT_OBJECTS,
                       rel_tol: float | None = None, graphs: tuple[str, ...] | None = None) -> list[GraphCheck]:
    """Run each of ``graphs`` (default all) on ONNX Runtime (CPU) and the eager fp32 model with the
    official top-K formulation on the same random inputs, at each image size and object count.
    Each output is held to ``rel_tol``, or by default to :func:`default_tolerances`."""
    export_dir = Path(export_dir)
    manifest = artifacts.read_manifest(export_dir, ONNX_FORMAT)
    family = MODELS[manifest["model"]].family
    tolerances = default_tolerances(manifest)
    modules = stage_modules(family, network, manifest["settings"], "reference")
    frames = family.memory_frames(manifest["max_mem_frames"])
    checks = []
    for name in graphs or tuple(family.stages):
        stage = family.stages[name]
        graph = GraphWithTopK(export_dir / manifest["graphs"][name]["file"], manifest["custom_ops"])
        for size in sizes:
            for k in objects:
                inputs = example_inputs(stage, family.example_sizes(manifest["architecture"], *size, k, frames))
                outputs, indices = graph.run(stage, inputs)
                eager, eager_indices = run_eager(modules[name], inputs)
                differ = topk_differ(indices, graph.topk_axes, eager_indices)
                checks += [compare_output(stage, output, got, expected, rel_tol or tolerances[f"{name}.{output}"],
                                        size, k, flips=manifest["precision"] == "fp32", topk_differ=differ)
                           for output, got, expected in zip(stage.output_names, outputs, eager)]
    return checks


class GraphWithTopK:
    """One exported graph on ONNX Runtime (CPU) that also returns the indices each of its TopK
    nodes keeps (``topk_axes``: the axis of each)."""

    def __init__(self, path: str | Path, custom_ops: list[str]):
        model = onnx.load(str(path))
        topks = [node for node in model.graph.node if node.op_type == "TopK"]
        self.topk_axes = [next((a.i for a in node.attribute if a.name == "axis"), -1) for node in topks]
        model.graph.output.extend(onnx.helper.make_tensor_value_info(node.output[1], onnx.TensorProto.INT64, None)
                                  for node in topks)
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / Path(path).name
            onnx.save(model, str(copy))
            self.session = create_session(copy, ["CPUExecutionProvider"], custom_ops)

    def run(self, stage: StageSpec, inputs: Sequence[torch.Tensor]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(``stage``'s outputs, the indices of each TopK) for ``inputs`` in ``stage``'s order."""
        results = self.session.run(None, {n: x.cpu().numpy() for n, x in zip(stage.input_names, inputs)})
        return results[:len(stage.output_names)], results[len(stage.output_names):]


def run_eager(module: nn.Module,
              inputs: Sequence[torch.Tensor]) -> tuple[list[np.ndarray], list[tuple[torch.Tensor, int]]]:
    """(``module``'s outputs in fp32, the indices and dim of each ``torch.topk`` it called)."""
    calls: list[tuple[torch.Tensor, int]] = []

    class RecordTopK(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            if func in (torch.topk, torch.Tensor.topk):
                calls.append((result.indices, (kwargs or {}).get("dim", args[2] if len(args) > 2 else -1)))
            return result

    with torch.inference_mode(), RecordTopK():
        outputs = [t.float().cpu().numpy() for t in module(*inputs)]
    return outputs, calls


def topk_differ(graph_indices: list[np.ndarray], axes: list[int],
                eager: list[tuple[torch.Tensor, int]]) -> float | None:
    """The share of rows (all axes but the TopK's) whose set of kept indices differs between a
    graph's TopK nodes and the eager ``torch.topk`` calls, matched in order; None unless they
    match one to one."""
    if not graph_indices or len(graph_indices) != len(eager):
        return None
    differ = total = 0
    for got, axis, (expected, dim) in zip(graph_indices, axes, eager):
        got = np.sort(np.moveaxis(got, axis, -1), axis=-1)
        expected = np.sort(np.moveaxis(expected.cpu().numpy(), dim, -1), axis=-1)
        if got.shape != expected.shape:
            return None
        rows = (got != expected).any(axis=-1)
        differ, total = differ + int(rows.sum()), total + rows.size
    return differ / total


@contextlib.contextmanager
def _quiet_polygraphy() -> Iterator[None]:
    """Polygraphy's runners log every inference (inputs, outputs, timings) at INFO: errors only,
    uncoloured (no note about the missing ``colored`` module either)."""
    from polygraphy.logger import G_LOGGER

    colors, G_LOGGER.colors = G_LOGGER.colors, False
    try:
        with G_LOGGER.verbosity(G_LOGGER.ERROR):
            yield
    finally:
        G_LOGGER.colors = colors


def compare_engines_with_onnxruntime(engine_dir: str | Path, objects: tuple[int, ...] | None = None,
                                     rel_tol: float | None = None) -> list[GraphCheck]:
    """Run every TensorRT engine of ``engine_dir`` and its ONNX graph on ONNX Runtime (CPU) on the
    same random inputs at the engines' resolution, for 1 and ``max_objects`` objects (or
    ``objects``); an output passes when max |trt - ort| <= rel_tol * max |ort| (default
    :data:`ENGINE_REL_TOL` for the engines' precision; fp32 top-K stages as in :func:`compare_output`).
    Polygraphy's ``TrtRunner`` and ``OnnxrtRunner`` run them. Needs TensorRT and the GPU the engines
    were built for."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator

    engine_dir = artifacts.engine_directory(engine_dir)
    manifest = artifacts.read_manifest(engine_dir, ENGINE_FORMAT)
    artifacts.check_compatible(manifest, artifacts.TensorRTEnvironment.current(), engine_dir)
    artifacts.register_custom_ops(manifest)
    onnx_dir = engine_dir / manifest["onnx_directory"]
    onnx_manifest = artifacts.read_manifest(onnx_dir, ONNX_FORMAT)
    rel_tol = rel_tol or ENGINE_REL_TOL[manifest["precision"]]
    objects = objects or tuple(sorted({1, manifest["profile"]["max_objects"]}))
    size = tuple(manifest["profile"]["resolution"])
    family = MODELS[manifest["model"]].family
    frames = family.memory_frames(manifest["max_mem_frames"])
    checks = []
    with _quiet_polygraphy():
        for name, stage in family.stages.items():
            session = create_session(onnx_dir / onnx_manifest["graphs"][name]["file"], ["CPUExecutionProvider"],
                                     onnx_manifest["custom_ops"])
            runners = [OnnxrtRunner(session, name="onnxruntime"),
                       TrtRunner(EngineFromBytes(BytesFromPath(str(engine_dir / manifest["engines"][name]["file"]))),
                                 name="tensorrt")]
            for k in objects:
                inputs = example_inputs(stage, family.example_sizes(manifest["architecture"], *size, k, frames))
                feed = {n: x.numpy() for n, x in zip(stage.input_names, inputs)}
                (_, (reference,)), (_, (engine,)) = Comparator.run(runners, data_loader=[feed])
                checks += [compare_output(stage, o, np.asarray(engine[o], dtype=np.float32),
                                        np.asarray(reference[o], dtype=np.float32), rel_tol, size, k,
                                        flips=manifest["precision"] == "fp32")
                           for o in stage.output_names]
    return checks
