"""Per-graph comparison of an ONNX export with the eager model, through Polygraphy."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vosrt.kernels import topk_readout_reference, topk_usage_reference
from vosrt.models.cutie import Cutie, CutieConfig
from vosrt.models.jointformer import MODEL_NAME as JOINTFORMER
from vosrt.models.jointformer import JointFormer, TopKConfig
from vosrt.runtime.onnxruntime_graphs import create_session

from .cutie_graphs import graph_modules
from .onnx_export import graph_family, read_manifest


@dataclass(frozen=True)
class GraphCheck:
    graph: str
    size: tuple[int, int]
    num_objects: int
    output: str
    max_abs_error: float
    scale: float  # max |eager output|
    passed: bool

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / max(self.scale, 1e-12)


def compare_with_eager(export_dir: str | Path, model: Cutie | JointFormer, sizes=((128, 192), (240, 320)),
                       objects=(1, 3), rel_tol: float = 1e-4, graphs: tuple[str, ...] | None = None) -> list[GraphCheck]:
    """Run each of ``graphs`` on ONNX Runtime (CPU) and eagerly on the same random inputs, at each
    image size and object count; an output passes when max |ort - eager| <= rel_tol * max |eager|.
    The comparison itself is Polygraphy's ``Comparator.compare_accuracy``. ``graphs``: default all."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator
    from polygraphy.comparator.struct import IterationResult

    manifest = read_manifest(export_dir)
    family = graph_family(manifest["model"])
    if "topk" in manifest:  # JointFormer
        modules = family.graph_modules(model.eval(), TopKConfig(**manifest["topk"]))
    else:
        # Against the official formulation of the top-k readout and usage, not the exported one.
        modules = graph_modules(model.eval(), manifest["top_k"], topk_readout_reference, topk_usage_reference)
    checks = []
    for name in graphs or tuple(family.SPECS):
        spec = family.SPECS[name]
        session = create_session(Path(export_dir) / manifest["graphs"][name]["file"], ["CPUExecutionProvider"],
                                 manifest.get("custom_ops", []))
        for size in sizes:
            for k in objects:
                inputs = family.example_inputs(model, name, size, k, manifest["max_mem_frames"])
                feed = {n: x.numpy() for n, x in zip(spec.inputs, inputs)}
                with torch.inference_mode():
                    eager = modules[name](*inputs)
                eager = dict(zip(spec.outputs, (t.float().numpy() for t in (eager if isinstance(eager, tuple) else (eager,)))))
                results = Comparator.run([OnnxrtRunner(session, name="onnxruntime")], data_loader=[feed])
                results.append(("eager", [IterationResult(eager, runner_name="eager")]))
                checks += _check_outputs(results, eager, rel_tol, name, size, k)
    return checks


# max |engine - onnxruntime| / max |onnxruntime| allowed by default: fp32 engines may use TF32
# (TensorRT's default), fp16 engines compute most layers in fp16.
ENGINE_REL_TOL = {"fp32": 1e-2, "fp16": 5e-2}


def compare_engines_with_onnxruntime(engine_dir: str | Path, objects: tuple[int, ...] | None = None,
                                     rel_tol: float | None = None) -> list[GraphCheck]:
    """Run every TensorRT engine of ``engine_dir`` and its ONNX graph on ONNX Runtime (CPU) on the
    same random inputs at the engines' resolution, for 1 and ``max_objects`` objects (or
    ``objects``); an output passes when max |trt - ort| <= rel_tol * max |ort| (default
    :data:`ENGINE_REL_TOL` for the engines' precision). Polygraphy's ``TrtRunner`` and
    ``OnnxrtRunner`` run them, ``Comparator.compare_accuracy`` compares. Needs TensorRT and the GPU
    the engines were built for."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator

    from .engine import TensorRTEnvironment, check_compatible, engine_directory, memory_capacity, \
        read_engine_manifest, register_custom_ops

    engine_dir = engine_directory(engine_dir)
    manifest = read_engine_manifest(engine_dir)
    check_compatible(manifest, TensorRTEnvironment.current(), engine_dir)
    register_custom_ops(manifest)
    onnx_dir = engine_dir / manifest["onnx_directory"]
    onnx_manifest = read_manifest(onnx_dir)
    rel_tol = ENGINE_REL_TOL[manifest["precision"]] if rel_tol is None else rel_tol
    objects = objects or tuple(sorted({1, manifest["profile"]["max_objects"]}))
    size = tuple(manifest["profile"]["resolution"])
    family = graph_family(manifest["model"])
    shapes_of = _shape_model(manifest)
    capacity = memory_capacity(manifest["model"], manifest["max_mem_frames"])
    checks = []
    for name, spec in family.SPECS.items():
        session = create_session(onnx_dir / onnx_manifest["graphs"][name]["file"], ["CPUExecutionProvider"],
                                 onnx_manifest.get("custom_ops", []))
        runners = [OnnxrtRunner(session, name="onnxruntime"),
                   TrtRunner(EngineFromBytes(BytesFromPath(str(engine_dir / manifest["engines"][name]["file"]))),
                             name="tensorrt")]
        for k in objects:
            inputs = family.example_inputs(shapes_of, name, size, k, capacity)
            feed = {n: x.numpy() for n, x in zip(spec.inputs, inputs)}
            results = Comparator.run(runners, data_loader=[feed])
            reference = {o: np.asarray(v, dtype=np.float32) for o, v in results[0][1][0].items()}
            checks += _check_outputs(results, reference, rel_tol, name, size, k)
    return checks


def _shape_model(manifest: dict) -> Cutie | JointFormer:
    """The network of a manifest's ``architecture`` on the meta device: what ``example_inputs``
    reads (sizes only), without initialising any weights."""
    with torch.device("meta"):
        if manifest["model"] == JOINTFORMER:
            return JointFormer(**manifest["architecture"])
        return Cutie(CutieConfig(**manifest["architecture"]))


def _check_outputs(results, reference: dict[str, np.ndarray], rel_tol: float, graph: str, size, num_objects: int
                   ) -> list[GraphCheck]:
    """Polygraphy's comparison of the two runners of ``results``, with atol = rel_tol * max |reference|."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    atol = {o: rel_tol * float(np.abs(v).max()) for o, v in reference.items()}
    accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=0.0))
    ((_, (per_output,)),) = accuracy[0].items()  # one compare function, one runner pair
    return [GraphCheck(graph, tuple(size), num_objects, o, float(r.max_absdiff), float(np.abs(reference[o]).max()),
                       bool(r)) for o, r in per_output.items()]
