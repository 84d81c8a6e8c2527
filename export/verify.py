"""Per-stage comparison of an ONNX export with the eager model, and of TensorRT engines with their
ONNX graphs, through Polygraphy."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vosrt.runtime import artifacts
from vosrt.runtime.artifacts import ENGINE_FORMAT, ONNX_FORMAT
from vosrt.runtime.backends.onnxruntime import create_session
from vosrt.runtime.registry import MODELS
from vosrt.runtime.stages import StageSpec, example_inputs

from .onnx import stage_modules


# A stage whose outputs go through a top-K selection may keep another element than the reference
# where two scores are within rounding of each other (random inputs have such near ties), and in
# JointFormer a flip in one block spreads to every token of the next blocks. Such a stage passes when
# its mean error is within the tolerance and its largest within FLIP_TOL x scale.
FLIP_TOL = 2e-2


@dataclass(frozen=True)
class GraphCheck:
    """One output of one stage call: ``max_abs_error``, ``mean_abs_error`` and ``scale`` (max
    |reference|), and the share of elements whose error exceeds ``rel_tol x scale``."""

    graph: str
    size: tuple[int, int]
    num_objects: int
    output: str
    max_abs_error: float
    mean_abs_error: float
    scale: float
    share_above_tol: float
    passed: bool

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / max(self.scale, 1e-12)


def check_output(stage: StageSpec, output: str, got: np.ndarray, reference: np.ndarray, rel_tol: float, size,
                 num_objects: int) -> GraphCheck:
    """Compare one output with its reference: every element within ``rel_tol x max |reference|``;
    for a top-K stage the mean error within that and the largest within :data:`FLIP_TOL` x scale."""
    error = np.abs(got.astype(np.float64) - reference.astype(np.float64)).ravel()
    if error.size == 0:
        return GraphCheck(stage.name, tuple(size), num_objects, output, 0.0, 0.0, 0.0, 0.0, True)
    scale = float(np.abs(reference).max())
    max_error, mean_error = float(error.max()), float(error.mean())
    if stage.selects_top_k:
        passed = mean_error <= rel_tol * scale and max_error <= max(FLIP_TOL, rel_tol) * scale
    else:
        passed = max_error <= rel_tol * scale
    return GraphCheck(stage.name, tuple(size), num_objects, output, max_error, mean_error, scale,
                      float((error > rel_tol * scale).mean()), passed)


def compare_with_eager(export_dir: str | Path, network: nn.Module, sizes=((128, 192), (240, 320)), objects=(1, 3),
                       rel_tol: float = 1e-4, graphs: tuple[str, ...] | None = None) -> list[GraphCheck]:
    """Run each of ``graphs`` (default all) on ONNX Runtime (CPU) and eagerly, with the official
    top-K formulation, on the same random inputs at each image size and object count; an output
    passes when max |ort - eager| <= rel_tol * max |eager| (top-K stages: see :func:`check_output`).
    Polygraphy's ``OnnxrtRunner`` runs the graphs."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator

    export_dir = Path(export_dir)
    manifest = artifacts.read_manifest(export_dir, ONNX_FORMAT)
    family = MODELS[manifest["model"]].family
    modules = stage_modules(family, network, manifest["settings"], "reference")
    frames = family.memory_frames(manifest["max_mem_frames"])
    checks = []
    for name in graphs or tuple(family.stages):
        stage = family.stages[name]
        session = create_session(export_dir / manifest["graphs"][name]["file"], ["CPUExecutionProvider"],
                                 manifest["custom_ops"])
        for size in sizes:
            for k in objects:
                inputs = example_inputs(stage, family.example_sizes(manifest["architecture"], *size, k, frames))
                with torch.inference_mode():
                    eager = dict(zip(stage.output_names, (t.float().numpy() for t in modules[name](*inputs))))
                feed = {n: x.numpy() for n, x in zip(stage.input_names, inputs)}
                ((_, (outputs,)),) = Comparator.run([OnnxrtRunner(session, name="onnxruntime")], data_loader=[feed])
                checks += [check_output(stage, o, np.asarray(outputs[o]), eager[o], rel_tol, size, k)
                           for o in stage.output_names]
    return checks


# max |engine - onnxruntime| / max |onnxruntime| allowed by default: fp32 engines may use TF32
# (TensorRT's default), fp16 engines compute most layers in fp16.
ENGINE_REL_TOL = {"fp32": 1e-2, "fp16": 5e-2}


def compare_engines_with_onnxruntime(engine_dir: str | Path, objects: tuple[int, ...] | None = None,
                                     rel_tol: float | None = None) -> list[GraphCheck]:
    """Run every TensorRT engine of ``engine_dir`` and its ONNX graph on ONNX Runtime (CPU) on the
    same random inputs at the engines' resolution, for 1 and ``max_objects`` objects (or
    ``objects``); an output passes when max |trt - ort| <= rel_tol * max |ort| (default
    :data:`ENGINE_REL_TOL` for the engines' precision; top-K stages as in :func:`check_output`).
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
    rel_tol = ENGINE_REL_TOL[manifest["precision"]] if rel_tol is None else rel_tol
    objects = objects or tuple(sorted({1, manifest["profile"]["max_objects"]}))
    size = tuple(manifest["profile"]["resolution"])
    family = MODELS[manifest["model"]].family
    frames = family.memory_frames(manifest["max_mem_frames"])
    checks = []
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
            checks += [check_output(stage, o, np.asarray(engine[o], dtype=np.float32),
                                    np.asarray(reference[o], dtype=np.float32), rel_tol, size, k)
                       for o in stage.output_names]
    return checks
