"""An export's manifest is a claim about its graphs: checked against the graphs before anything runs.

:func:`check_graphs` reads every graph of an ONNX export (its structure; no session is made) and
refuses the export, with one line, when

- a graph's inputs or outputs (names in order, the sizes the graph fixes) are not those of its stage
  (:mod:`.stages`) for the model the manifest names: an entry swapped with another's, or graphs
  of another model (``cutie-base`` on ``cutie-small`` graphs);
- the graphs compute another top-K than the manifest's ``top_k`` (the ``K`` of their ``TopK``
  nodes);
- the graphs are of another precision than the manifest's ``precision`` (fp16 graphs hold
  float16 tensors, fp32 graphs none).

:func:`check_checkpoint` binds an export to the checkpoint it was exported from (the sha256 the
manifest records).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .artifacts import ArtifactError, sha256
from .registry import MODELS


def check_checkpoint(manifest: Mapping[str, Any], checkpoint: str | Path, directory: str | Path) -> None:
    """ArtifactError when ``directory``'s export records the sha256 of another checkpoint than the
    file ``checkpoint`` (an export that records none is not checked)."""
    recorded = (manifest.get("checkpoint") or {}).get("sha256")
    if recorded is not None and recorded != sha256(checkpoint):
        raise ArtifactError(f"{directory} was exported from another checkpoint (sha256 {recorded[:16]}...), not "
                            f"{checkpoint}: export again from it, or leave out the weights to run the export as it is")


def check_graphs(directory: str | Path, manifest: Mapping[str, Any]) -> None:
    """ArtifactError unless the graphs of the ONNX export ``directory`` are what its (read and
    checked: :func:`.artifacts.read_manifest`) ``manifest`` says they are (see the module docstring)."""
    import onnx

    directory = Path(directory)
    spec = MODELS[manifest["model"]]
    sizes = spec.family.sizes(_variant_architecture(spec))
    top_ks, fp16 = set(), False
    for name, stage in spec.family.stages.items():
        path = directory / manifest["graphs"][name]["file"]
        graph = onnx.load(str(path), load_external_data=False).graph
        _check_tensors(graph.input, stage.inputs, sizes, f"{path}: the inputs of {manifest['model']}'s {name} stage")
        _check_tensors(graph.output, stage.outputs, sizes, f"{path}: the outputs of {manifest['model']}'s {name} stage")
        top_ks |= _top_ks(graph)
        fp16 = fp16 or _holds_float16(graph)
    precision = "fp16" if fp16 else "fp32"
    if manifest["precision"] != precision:
        raise ArtifactError(f"{directory}/manifest.json says precision {manifest['precision']}, but its graphs are "
                            f"{precision}: export again")
    top_k = manifest["settings"].get("top_k")
    if top_k is not None and top_ks and top_ks != {top_k}:
        raise ArtifactError(f"{directory}/manifest.json says top_k {top_k}, but its graphs select the top "
                            f"{', '.join(map(str, sorted(top_ks)))}: export again with the top_k you want")


def _variant_architecture(spec) -> dict:
    """The architecture the model ``spec`` names (built on the meta device: no memory, no weights)."""
    import torch

    with torch.device("meta"):
        return spec.family.architecture(spec.family.build_network(spec.variant))


def _check_tensors(found, declared, sizes: Mapping[str, int], what: str) -> None:
    names = [t.name for t in found]
    if names != [t.name for t in declared]:
        raise ArtifactError(f"{what} should be {', '.join(t.name for t in declared)}, the graph has "
                            f"{', '.join(names)}: its manifest entry names another graph or another model; export again")
    for tensor, spec in zip(found, declared):
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.type.tensor_type.shape.dim]
        expected = [dim if isinstance(dim, int) else sizes.get(dim, dim) for dim in spec.shape]  # unsized: dynamic
        fixed_differ = any(isinstance(d, int) and isinstance(e, int) and d != e for d, e in zip(dims, expected))
        if len(dims) != len(expected) or fixed_differ:
            raise ArtifactError(f"{what}: {spec.name} has the shape {dims}, not {expected}: graphs of another model "
                                "than the manifest names; export again")


def _top_ks(graph) -> set[int]:
    """The ``K`` of each ``TopK`` node whose K is a constant of the graph."""
    from onnx import numpy_helper

    constants = {init.name: init for init in graph.initializer}
    constants |= {node.output[0]: attr.t for node in graph.node if node.op_type == "Constant"
                  for attr in node.attribute if attr.name == "value"}
    return {int(numpy_helper.to_array(constants[node.input[1]]).reshape(-1)[0])
            for node in graph.node if node.op_type == "TopK" and node.input[1] in constants}


def _holds_float16(graph) -> bool:
    from onnx import TensorProto

    typed = (*graph.input, *graph.output, *graph.value_info)
    return (any(init.data_type == TensorProto.FLOAT16 for init in graph.initializer)
            or any(v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in typed)
            or any(attr.t.data_type == TensorProto.FLOAT16 for node in graph.node for attr in node.attribute
                   if attr.HasField("t")))
