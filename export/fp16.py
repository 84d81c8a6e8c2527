"""fp16 graphs that round to fp16 only what the official code computes in fp16.

:func:`convert_to_fp16` gives every node of a stage's fp32 graph one precision, by the first of
these rules that applies:

1. **fp32 islands** (:func:`fp32_islands`) run in fp32:

   * what the model computes from its own ``.float()`` casts alone: the regions the code runs
     with autocast off (Cutie's ``fp32_region`` blocks and top-K readout and usage, the soft
     aggregation of both models), whose ``.float()`` calls the fp32 graph keeps as
     float-to-float Casts;
   * the scores of the family's :class:`~vosrt.runtime.family.Fp16Policy` (JointFormer: every
     attention's scores from their q.k MatMul on, and the soft aggregation from the decoder's
     last conv on);
   * custom ops (``vosrt::``), whose kernels take fp32.

2. :data:`FP32_OPS` run in fp32: what autocast runs in fp32 (softmax, normalisations,
   exp/log/pow, sums, means and products).
3. :data:`FP16_OPS` run in fp16: convolutions and matrix products, autocast's fp16 ops.
4. Any other op runs in the widest precision of its activation inputs (autocast's type
   promotion): an fp32 value stays fp32 until an fp16 op reads it. An op that reads no
   activation (positional encodings, masks built from shapes) runs in fp32.

Casts go where a node reads an activation produced in the other precision: one Cast per value
and precision, right after the value's producer, named ``fp16_policy/<value>/to_<precision>``.
Constants (weights, biases, scalars) are stored in the precision of the nodes that read them
(fp16 copies clipped to the fp16 range). Graph inputs and outputs stay fp32.

:func:`check_fp32_islands` checks a converted graph: every island node and every
:data:`FP32_OPS` node computes in fp32, and no Cast to fp16 sits between two of them. The export
runs it on every fp16 graph.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vosrt.runtime.family import Fp16Policy

FP32, FP16 = TensorProto.FLOAT, TensorProto.FLOAT16
PRECISION_NAMES = {FP32: "fp32", FP16: "fp16"}
FP16_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum"})
FP32_OPS = frozenset({"Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization", "InstanceNormalization",
                      "Exp", "Log", "Pow", "Reciprocal", "Softplus", "CumSum", "ReduceSum", "ReduceMean",
                      "ReduceProd", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp"})
# Ops that move or select values without arithmetic: a Cast to fp16 on a path of these between
# two fp32 nodes is a round trip, not an fp16 computation.
DATA_MOVEMENT = frozenset({"Cast", "Concat", "Expand", "Flatten", "Gather", "GatherElements", "GatherND", "Identity",
                           "Pad", "Reshape", "Slice", "Split", "Squeeze", "Tile", "Transpose", "Unsqueeze"})
CAST_PREFIX = "fp16_policy/"
STANDARD_DOMAINS = ("", "ai.onnx")
_FP16_MAX = float(np.finfo(np.float16).max)


def convert_to_fp16(path: Path, policy: Fp16Policy) -> None:
    """Rewrite the fp32 graph at ``path`` in fp16 by the module's rules; RuntimeError if the
    result fails :func:`check_fp32_islands`."""
    model = onnx.load(str(path))
    _name_nodes(model)
    graph = _Graph(model)
    nodes, values = _precisions(graph, _islands(graph, policy))
    _rewrite(model, graph, nodes, values)
    problems = check_fp32_islands(model, policy)
    if problems:
        raise RuntimeError(f"the fp16 {Path(path).stem} graph rounds fp32 island values to fp16: "
                           + "; ".join(problems))
    onnx.save(model, str(path))


def fp32_islands(model: onnx.ModelProto, policy: Fp16Policy) -> set[str]:
    """Names of the nodes of ``model`` (an fp32 graph, or one converted by :func:`convert_to_fp16`)
    in its fp32 islands (rule 1 of the module docstring). Casts belong to no island."""
    return _islands(_Graph(model), policy)


def node_precisions(model: onnx.ModelProto, policy: Fp16Policy) -> dict[str, int]:
    """``{node name: FP32 | FP16}``: what :func:`convert_to_fp16` makes each node of the fp32
    graph ``model`` compute in (rules 1-4 of the module docstring)."""
    graph = _Graph(model)
    return _precisions(graph, _islands(graph, policy))[0]


def check_fp32_islands(model: onnx.ModelProto, policy: Fp16Policy) -> list[str]:
    """What is wrong with the fp32 islands of the fp16 graph ``model``: island and
    :data:`FP32_OPS` nodes that compute in fp16, and Casts to fp16 between two of them (through
    :data:`DATA_MOVEMENT` ops only). Empty when nothing is."""
    graph = _Graph(model)
    fp32_ops = {node.name for node in graph.nodes if node.op_type in FP32_OPS}
    return _violations(graph, _islands(graph, policy) | fp32_ops)


def _islands(graph: _Graph, policy: Fp16Policy) -> set[str]:
    custom = {node.name for node in graph.nodes if node.domain not in STANDARD_DOMAINS}
    return _model_regions(graph) | _scores(graph, policy) | custom


def _violations(graph: _Graph, fp32_nodes: set[str]) -> list[str]:
    problems = []
    for node in graph.nodes:
        if node.name in fp32_nodes:
            rounded = [value for value in sum(graph.ports(node), []) if graph.dtype.get(value) == FP16]
            if rounded:
                problems.append(f"{node.name} ({node.op_type}) computes in fp16 ({', '.join(rounded)})")
            problems += [f"{node.name} -> {end} through a Cast to fp16"
                         for end in _round_trips(graph, node, fp32_nodes)]
    return problems


def _round_trips(graph: _Graph, start: onnx.NodeProto, fp32_nodes: set[str]) -> list[str]:
    """The ``fp32_nodes`` that read ``start``'s outputs through data movement that includes a Cast to fp16."""
    pending = [(value, False) for value in start.output if graph.is_float(value)]
    seen: set[tuple[str, bool]] = set()
    ends: list[str] = []
    while pending:
        value, rounded = pending.pop()
        for node in graph.consumers.get(value, []):
            if node.name in fp32_nodes:
                if rounded and node.name not in ends:
                    ends.append(node.name)
            elif node.op_type in DATA_MOVEMENT and (node.name, rounded) not in seen:
                seen.add((node.name, rounded))
                to_fp16 = node.op_type == "Cast" and _cast_target(node) == FP16
                pending += [(out, rounded or to_fp16) for out in node.output if graph.is_float(out)]
    return ends


class _Graph:
    """What the rules read off one graph: producers, consumers, value types and shapes,
    constants, activations (float values computed from a float graph input) and each node's
    ports (its float inputs and outputs of its compute type)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.nodes = list(model.graph.node)
        inferred = onnx.shape_inference.infer_shapes(model).graph
        self.value_infos = {v.name: v for v in (*inferred.value_info, *model.graph.value_info,
                                                *model.graph.input, *model.graph.output)}
        self.dtype = {name: v.type.tensor_type.elem_type for name, v in self.value_infos.items()}
        self.dtype |= {t.name: t.data_type for t in model.graph.initializer}
        self.opset = next(o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS)
        self.producer = {value: node for node in self.nodes for value in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for value in node.input:
                self.consumers[value].append(node)
        self.constants = {t.name for t in model.graph.initializer}
        self.constants |= {node.output[0] for node in self.nodes if node.op_type == "Constant"}
        self.activations = {v.name for v in model.graph.input if self.is_float(v.name)}
        for node in self.nodes:
            if any(value in self.activations for value in node.input):
                self.activations.update(value for value in node.output if self.is_float(value))
        self._ports: dict[str, tuple[list[str], list[str]]] = {}

    def is_float(self, value: str) -> bool:
        return self.dtype.get(value) in (FP32, FP16)

    def ports(self, node: onnx.NodeProto) -> tuple[list[str], list[str]]:
        """``node``'s float inputs and outputs of its compute type: the schema type of its first
        float output (else of its first float input); every float one of a custom op."""
        if node.name not in self._ports:
            self._ports[node.name] = self._typed_ports(node)
        return self._ports[node.name]

    def _typed_ports(self, node: onnx.NodeProto) -> tuple[list[str], list[str]]:
        if node.op_type == "Cast":  # reads any type; its output's is its attribute
            return [], [v for v in node.output if self.is_float(v)]
        inputs = [(v, t) for v, t in zip(node.input, self._type_strings(node, "inputs")) if v and self.is_float(v)]
        outputs = [(v, t) for v, t in zip(node.output, self._type_strings(node, "outputs")) if v and self.is_float(v)]
        if node.domain not in STANDARD_DOMAINS:
            return [v for v, _ in inputs], [v for v, _ in outputs]
        compute = next((t for _, t in (*outputs, *inputs)), None)
        if compute is None or compute.startswith("tensor("):  # a fixed type: no precision to choose
            return [], []
        return [v for v, t in inputs if t == compute], [v for v, t in outputs if t == compute]

    def _type_strings(self, node: onnx.NodeProto, side: str) -> list[str | None]:
        """The schema's type string of each of ``node``'s inputs or outputs (None for a custom op)."""
        count = len(node.input if side == "inputs" else node.output)
        if node.domain not in STANDARD_DOMAINS:
            return [None] * count
        formal = list(getattr(onnx.defs.get_schema(node.op_type, self.opset, node.domain), side))
        variadic = bool(formal) and formal[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic
        return [formal[i].type_str if i < len(formal) else (formal[-1].type_str if variadic else None)
                for i in range(count)]

    def source(self, value: str) -> onnx.NodeProto | None:
        """The node that computes ``value``, looking through Casts."""
        node = self.producer.get(value)
        while node is not None and node.op_type == "Cast":
            node = self.producer.get(node.input[0])
        return node


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name (the rules key nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _cast_target(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def _is_model_cast(graph: _Graph, node: onnx.NodeProto) -> bool:
    """A ``.float()`` of the model on an activation: a Cast to fp32 that this module did not insert."""
    return (node.op_type == "Cast" and not node.name.startswith(CAST_PREFIX) and _cast_target(node) == FP32
            and node.input[0] in graph.activations)


def _model_regions(graph: _Graph) -> set[str]:
    """The nodes whose activation inputs all come from the model's ``.float()`` casts, directly
    or through other such nodes: what the code computes with autocast off."""
    values: set[str] = set()
    nodes: set[str] = set()
    for node in graph.nodes:
        if node.op_type == "Cast":
            if node.input[0] in values or _is_model_cast(graph, node):
                values.add(node.output[0])
            continue
        activations = [value for value in node.input if value in graph.activations]
        if activations and all(value in values for value in activations):
            nodes.add(node.name)
            values.update(value for value in node.output if graph.is_float(value))
    return nodes


def _scores(graph: _Graph, policy: Fp16Policy) -> set[str]:
    """The ``policy.scores_of`` nodes and the nodes computing their inputs, walking up through
    activations (and Casts) to the ``policy.scores_from`` nodes, included."""
    pending = [node for node in graph.nodes if node.op_type in policy.scores_of]
    found: set[str] = set()
    while pending:
        node = pending.pop()
        if node.name in found:
            continue
        found.add(node.name)
        if node.op_type not in policy.scores_from:
            inputs, _ = graph.ports(node)
            pending += [source for value in inputs
                        if value in graph.activations and (source := graph.source(value)) is not None]
    return found


def _precisions(graph: _Graph, islands: set[str]) -> tuple[dict[str, int], dict[str, int]]:
    """The precision each node computes in (rules 1-4 of the module docstring) and the precision
    each float value is produced in: ``({node name: FP32 | FP16}, {value name: FP32 | FP16})``."""
    nodes: dict[str, int] = {}
    values = {v.name: FP32 for v in graph.model.graph.input if graph.is_float(v.name)}
    for node in graph.nodes:
        inputs, outputs = graph.ports(node)
        nodes[node.name] = _node_precision(graph, node, inputs, islands, values)
        values.update({value: nodes[node.name] for value in outputs})
        values.update({value: graph.dtype[value] for value in node.output
                       if graph.is_float(value) and value not in outputs})
    return nodes, values


def _node_precision(graph: _Graph, node: onnx.NodeProto, inputs: list[str], islands: set[str],
                    values: dict[str, int]) -> int:
    if node.op_type == "Cast":
        return _cast_target(node)
    activations = [value for value in inputs if value in graph.activations]
    if node.name in islands or node.op_type in FP32_OPS or not activations:
        return FP32
    if node.op_type in FP16_OPS:
        return FP16
    return FP32 if any(values[value] == FP32 for value in activations) else FP16


def _rewrite(model: onnx.ModelProto, graph: _Graph, nodes: dict[str, int], values: dict[str, int]) -> None:
    """Make ``model`` compute in ``nodes``' precisions: inputs read through casts or as fp16
    constants, fp16 graph outputs cast to fp32, value types updated."""
    versions = _Versions(model, graph, values)
    for output in model.graph.output:
        if values.get(output.name) == FP16:
            versions.produce_output_in_fp32(output.name)
    for node in graph.nodes:
        inputs, _ = graph.ports(node)
        node.input[:] = [versions.read(value, nodes[node.name]) if value in inputs else value for value in node.input]
    versions.finish()


class _Versions:
    """The name of each value in each precision it is read in: as produced, a Cast of it, or a
    constant stored in that precision. Adds those casts and constants to ``model``."""

    def __init__(self, model: onnx.ModelProto, graph: _Graph, values: dict[str, int]):
        self.model, self.graph, self.values = model, graph, values
        self.names = {(value, precision): value for value, precision in values.items()}
        self.casts: dict[str, list[onnx.NodeProto]] = defaultdict(list)  # by the value they read
        self.new_values: dict[str, tuple[str, int]] = {}  # name -> (value whose shape it has, type)

    def read(self, value: str, precision: int) -> str:
        """The name of ``value`` in ``precision``, made if needed."""
        if value in self.graph.constants:
            return value if self.graph.dtype[value] == precision else self._constant(value, precision)
        if (value, precision) not in self.names:
            self._cast(value, precision, self.names[value, self.values[value]], f"{value}/{PRECISION_NAMES[precision]}")
        return self.names[value, precision]

    def produce_output_in_fp32(self, output: str) -> None:
        """Graph output ``output``, computed in fp16, is produced under another name and cast to fp32."""
        renamed = f"{output}/fp16"
        producer = self.graph.producer[output]
        producer.output[list(producer.output).index(output)] = renamed
        self.names[output, FP16] = renamed
        self.new_values[renamed] = (output, FP16)
        self._cast(output, FP32, renamed, output)

    def _cast(self, value: str, precision: int, source: str, target: str) -> None:
        name = f"{CAST_PREFIX}{value}/to_{PRECISION_NAMES[precision]}"
        self.casts[source].append(helper.make_node("Cast", [source], [target], name=name, to=precision))
        self.names[value, precision] = target
        self.new_values.setdefault(target, (value, precision))

    def _constant(self, value: str, precision: int) -> str:
        if (value, precision) not in self.names:
            array = _constant_array(self.model, value)
            if precision == FP16:
                array = np.where(np.isfinite(array), np.clip(array, -_FP16_MAX, _FP16_MAX), array)
            name = f"{value}/{PRECISION_NAMES[precision]}"
            self.model.graph.initializer.append(numpy_helper.from_array(array.astype(_NUMPY[precision]), name))
            self.names[value, precision] = name
        return self.names[value, precision]

    def finish(self) -> None:
        """Put the casts after the producers of what they read, drop the constants nothing reads
        any more, and set the value types."""
        nodes = [cast for value in self.model.graph.input for cast in self.casts.pop(value.name, [])]
        for node in self.graph.nodes:
            nodes += [node, *(cast for value in node.output for cast in self.casts.pop(value, []))]
        del self.model.graph.node[:]
        self.model.graph.node.extend(nodes)
        _drop_unread_constants(self.model)
        self._set_value_types()

    def _set_value_types(self) -> None:
        boundary = {v.name for v in (*self.model.graph.input, *self.model.graph.output)}
        infos = []
        for name, info in self.graph.value_infos.items():
            if name not in boundary and name not in self.graph.constants:
                infos.append(_typed_info(info, name, self.values.get(name, info.type.tensor_type.elem_type)))
        for name, (like, precision) in self.new_values.items():
            if name not in boundary and like in self.graph.value_infos:
                infos.append(_typed_info(self.graph.value_infos[like], name, precision))
        del self.model.graph.value_info[:]
        self.model.graph.value_info.extend(infos)


_NUMPY = {FP32: np.float32, FP16: np.float16}


def _typed_info(info: onnx.ValueInfoProto, name: str, elem_type: int) -> onnx.ValueInfoProto:
    typed = onnx.ValueInfoProto()
    typed.CopyFrom(info)
    typed.name = name
    typed.type.tensor_type.elem_type = elem_type
    return typed


def _constant_array(model: onnx.ModelProto, value: str) -> np.ndarray:
    """The array of the initializer or Constant node ``value``."""
    for tensor in model.graph.initializer:
        if tensor.name == value:
            return numpy_helper.to_array(tensor)
    node = next(node for node in model.graph.node if node.op_type == "Constant" and node.output[0] == value)
    return np.asarray(helper.get_attribute_value(node.attribute[0]) if node.attribute[0].name != "value"
                      else numpy_helper.to_array(node.attribute[0].t), dtype=np.float32)


def _drop_unread_constants(model: onnx.ModelProto) -> None:
    read = {value for node in model.graph.node for value in node.input} | {v.name for v in model.graph.output}
    kept = [t for t in model.graph.initializer if t.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    unread = [node for node in model.graph.node if node.op_type == "Constant" and node.output[0] not in read]
    for node in unread:
        model.graph.node.remove(node)
