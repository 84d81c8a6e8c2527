"""Per-graph comparison of an ONNX export with the eager model, through Polygraphy."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vosrt.models.cutie import Cutie

from .cutie_graphs import SPECS, example_inputs, graph_modules
from .onnx_export import read_manifest


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


def compare_with_eager(export_dir: str | Path, model: Cutie, sizes=((128, 192), (240, 320)), objects=(1, 3),
                       rel_tol: float = 1e-4) -> list[GraphCheck]:
    """Run every graph on ONNX Runtime (CPU) and eagerly on the same random inputs, at each
    image size and object count; an output passes when max |ort - eager| <= rel_tol * max |eager|.
    The comparison itself is Polygraphy's ``Comparator.compare_accuracy``."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, SimpleCompareFunc
    from polygraphy.comparator.struct import IterationResult, RunResults

    manifest = read_manifest(export_dir)
    modules = graph_modules(model.eval(), manifest["top_k"])
    checks = []
    for name, spec in SPECS.items():
        onnx_path = str(Path(export_dir) / manifest["graphs"][name]["file"])
        for size in sizes:
            for k in objects:
                inputs = example_inputs(model, name, size, k, manifest["max_mem_frames"])
                feed = {n: x.numpy() for n, x in zip(spec.inputs, inputs)}
                with torch.inference_mode():
                    eager = modules[name](*inputs)
                eager = dict(zip(spec.outputs, (t.float().numpy() for t in (eager if isinstance(eager, tuple) else (eager,)))))
                results = Comparator.run([OnnxrtRunner(SessionFromOnnx(onnx_path), name="onnxruntime")], data_loader=[feed])
                results.append(("eager", [IterationResult(eager, runner_name="eager")]))
                atol = {o: rel_tol * float(np.abs(v).max()) for o, v in eager.items()}
                accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=0.0))
                ((_, (per_output,)),) = accuracy[0].items()  # one compare function, one runner pair
                checks += [GraphCheck(name, tuple(size), k, o, float(r.max_absdiff), float(np.abs(eager[o]).max()),
                                      bool(r)) for o, r in per_output.items()]
    return checks
