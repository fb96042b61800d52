"""Half-precision copies of exported ONNX graphs, for FP16 TensorRT engines.

TensorRT builds strongly typed networks (TensorRT 11 builds nothing else: its FP16 builder flag
is gone): every layer runs in the type its ONNX tensors have. An FP16 engine is therefore built
from an FP16 graph, made here from the exported FP32 file.

Each node runs in FP16 or stays in FP32:

- a node stays FP32 when its op is in ``keep_fp32`` (the diffusion-time embedding's ``Sin`` and
  ``Cos`` read arguments up to 1000, where FP16's spacing is 0.5; ``LayerNormalization``'s
  variance), or when everything it makes feeds only such nodes (so the embedding's arguments,
  ``t * 1000 * freq``, are multiplied in FP32 too);
- every other node runs in FP16: its float initializers and constants become float16, and a
  cast to float32 casts to float16 instead;
- wherever a float tensor crosses between the two, one ``Cast`` converts it. The graph's
  inputs and output stay float32 with their names, so callers and manifests do not change.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
KEEP_FP32 = frozenset({"Sin", "Cos", "LayerNormalization"})
_SINUSOIDS = frozenset({"Sin", "Cos"})
_ARGUMENT_OPS = frozenset(
    {"Mul", "Add", "Sub", "Div", "Cast", "Unsqueeze", "Reshape", "Constant", "Concat"}
)
# ops that say their output type in an attribute, and which attribute (the rest follow inputs)
_TYPED_BY_ATTRIBUTE = {"Constant": "value", "ConstantOfShape": "value", "Cast": "to"}


def to_fp16(model: onnx.ModelProto, keep_fp32: frozenset[str] = KEEP_FP32) -> onnx.ModelProto:
    """A copy of ``model`` that computes in float16 but for the nodes kept in float32 (module
    docstring); float32 inputs and outputs, as before."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    floats = {
        v.name
        for v in (*graph.value_info, *graph.input, *graph.output)
        if v.type.tensor_type.elem_type == FLOAT
    } | {t.name for t in graph.initializer if t.data_type == FLOAT}

    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    consumers = _consumers(nodes)
    kept = _kept_in_fp32(nodes, consumers, keep_fp32, {o.name for o in out.graph.output})

    half: set[str] = set()  # float tensors that now hold float16
    for init in out.graph.initializer:
        if init.data_type == FLOAT and any(i not in kept for i in consumers[init.name]):
            init.CopyFrom(_as_half(init))
            half.add(init.name)
    for i, node in enumerate(nodes):
        if i in kept:
            continue
        _retype(node)
        half.update(o for o in node.output if o in floats)

    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}/as_{'fp16' if to == HALF else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=to,
                                              name=f"{casts[key]}_cast"))  # fmt: skip
        return casts[key]

    for i, node in enumerate(nodes):
        wants_half = i not in kept
        for k, name in enumerate(node.input):
            if name in floats and (name in half) != wants_half:
                node.input[k] = cast(name, HALF if wants_half else FLOAT)
        new_nodes.append(node)
    for output in out.graph.output:
        if output.name in half:  # the last node writes an FP16 copy; a cast restores the name
            inner = f"{output.name}/fp16"
            for node in new_nodes:
                for names in (node.input, node.output):
                    for k, name in enumerate(names):
                        if name == output.name:
                            names[k] = inner
            new_nodes.append(helper.make_node("Cast", [inner], [output.name], to=FLOAT,
                                              name=f"{output.name}/as_fp32_cast"))  # fmt: skip

    # (in order: each cast was placed just before the first node that reads it)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    del out.graph.value_info[:]
    onnx.checker.check_model(out)
    onnx.shape_inference.infer_shapes(out, check_type=True, strict_mode=True)
    return out


def half_fraction(model: onnx.ModelProto) -> float:
    """The share of the model's MatMul, Gemm and Conv weights held in float16."""
    inits = {t.name: t for t in model.graph.initializer}
    heavy = [
        inits[n]
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm", "Conv")
        for n in node.input
        if n in inits
    ]
    if not heavy:
        return 0.0
    sizes = [int(np.prod(t.dims)) for t in heavy]
    return sum(s for s, t in zip(sizes, heavy, strict=True) if t.data_type == HALF) / sum(sizes)


def _consumers(nodes: list[onnx.NodeProto]) -> dict[str, list[int]]:
    """The indices of the nodes that read each tensor."""
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers[name].append(i)
    return consumers


def _kept_in_fp32(
    nodes: list[onnx.NodeProto],
    consumers: dict[str, list[int]],
    ops: frozenset[str],
    outputs: set[str],
) -> set[int]:
    """Indices of the nodes that stay FP32: those of ``ops``, and, repeatedly, every cheap
    node (`_ARGUMENT_OPS`) all of whose outputs feed only a sinusoid or such a node (the
    arithmetic of a sinusoid's argument), and every constant that feeds only FP32 nodes; never
    a node that writes a graph output."""
    kept = {i for i, node in enumerate(nodes) if node.op_type in ops}
    arguments = {i for i in kept if nodes[i].op_type in _SINUSOIDS}
    changed = True
    while changed:
        changed = False
        for i, node in enumerate(nodes):
            if i in kept or set(node.output) & outputs:
                continue
            users = [u for o in node.output for u in consumers[o]]
            if not users:
                continue
            if node.op_type in _ARGUMENT_OPS and all(u in arguments for u in users):
                arguments.add(i)
            elif not (node.op_type == "Constant" and all(u in kept for u in users)):
                continue
            kept.add(i)
            changed = True
    return kept


def _retype(node: onnx.NodeProto) -> None:
    """A node that now runs in FP16: its constant values and cast targets float16."""
    attribute = _TYPED_BY_ATTRIBUTE.get(node.op_type)
    for attr in node.attribute:
        if attr.name != attribute:
            continue
        if node.op_type == "Cast" and attr.i == FLOAT:
            attr.i = HALF
        elif node.op_type != "Cast" and attr.t.data_type == FLOAT:
            attr.t.CopyFrom(_as_half(attr.t))


def _as_half(tensor: TensorProto) -> TensorProto:
    values = numpy_helper.to_array(tensor)
    if np.abs(values).max(initial=0.0) > np.finfo(np.float16).max:
        raise ValueError(f"{tensor.name}: values beyond float16's range")
    return numpy_helper.from_array(values.astype(np.float16), tensor.name)
