"""Which ONNX graphs interprune can prune after conversion: a list of operators and a rule per operator.

Channel pruning removes output channels of Conv/Gemm layers and the matching inputs of what consumes them. That
is only sound when every operator between them treats channels one by one (activations, pools), couples them
visibly (Add, Mul of two activations, Concat on channels), or owns its per-channel tensors (Conv, BatchNorm,
Gemm with constant weights, which onnx2torch turns into nn.Conv2d / nn.BatchNorm2d / nn.Linear). A constant with
one value per channel elsewhere (``Add(x, bias[C,1,1])``) or a reshape to a fixed size would not shrink with the
channels, so such graphs are refused, naming the operator and node.

``pruning_problems(model)`` is pure: it reads the ModelProto and returns the problems (empty = prunable).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto, TensorProto

ELEMENTWISE = frozenset({"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
                         "Softplus", "Mish", "Identity", "Dropout", "Constant"})
POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})
LAYERS = frozenset({"Conv", "BatchNormalization", "Gemm"})
COUPLING = frozenset({"Add", "Mul", "Concat", "Flatten", "ReduceMean"})
SUPPORTED = ELEMENTWISE | POOLS | LAYERS | COUPLING


def _attribute(node: NodeProto, name: str, default=None):
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _constants(model: ModelProto) -> dict[str, TensorProto]:
    """Name -> tensor of every initializer and Constant output."""
    tensors = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensors[node.output[0]] = node.attribute[0].t
    return tensors


def _size(tensor: TensorProto) -> int:
    return int(math.prod(tensor.dims))


def _weights_constant(node: NodeProto, constants: dict, first: int) -> str | None:
    dynamic = [name for name in node.input[first:] if name and name not in constants]
    return f"its parameters ({', '.join(dynamic)}) are computed, not constant" if dynamic else None


def _no_channel_constants(node: NodeProto, constants: dict) -> str | None:
    wide = [name for name in node.input if name in constants and _size(constants[name]) > 1]
    return f"it applies a constant tensor ({wide[0]}) that would not shrink with the channels" if wide else None


def _channel_axis(node: NodeProto, constants: dict) -> str | None:
    axis = _attribute(node, "axis", 1)
    return None if axis in (1, -3) else f"axis={axis}; only concatenation along channels (axis 1) is supported"


def _flatten_axis(node: NodeProto, constants: dict) -> str | None:
    axis = _attribute(node, "axis", 1)
    return None if axis == 1 else f"axis={axis}; only Flatten(axis=1) before a Gemm is supported"


def _gemm(node: NodeProto, constants: dict) -> str | None:
    if _attribute(node, "transA", 0):
        return "transA=1 is not supported"
    return _weights_constant(node, constants, 1)


def _spatial_mean(node: NodeProto, constants: dict) -> str | None:
    from onnx import numpy_helper

    axes = _attribute(node, "axes")
    if axes is None and len(node.input) > 1:
        axes = numpy_helper.to_array(constants[node.input[1]]).ravel().tolist() if node.input[1] in constants \
            else None
    if axes is None or any(int(a) in (0, 1, -3, -4) for a in axes):
        return "only a mean over the spatial axes (2, 3) is supported"
    return None


RULES: dict[str, Callable[[NodeProto, dict], str | None]] = {
    "Conv": lambda node, constants: _weights_constant(node, constants, 1),
    "BatchNormalization": lambda node, constants: _weights_constant(node, constants, 1),
    "Gemm": _gemm,
    "Add": _no_channel_constants,
    "Mul": _no_channel_constants,
    "Concat": _channel_axis,
    "Flatten": _flatten_axis,
    "ReduceMean": _spatial_mean,
}


def pruning_problems(model: ModelProto) -> list[str]:
    """One line per operator interprune cannot prune through: ``Resize (node /up/Resize): not supported``."""
    constants = _constants(model)
    problems, seen = [], set()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            reason = f"custom operator of domain {node.domain!r}"
        elif node.op_type not in SUPPORTED:
            reason = "this operator is not supported for pruning"
        else:
            rule = RULES.get(node.op_type)
            reason = rule(node, constants) if rule else None
        if reason and (node.op_type, reason) not in seen:
            seen.add((node.op_type, reason))
            problems.append(f"{node.op_type} (node {node.name or '?'}): {reason}")
    return problems


def describe_problems(file_name: str, problems: list[str]) -> str:
    hint = ""
    if any(p.startswith(("Reshape", "Shape")) for p in problems):
        hint = " (flatten with torch.flatten(x, 1) or nn.Flatten() before exporting, not x.view(x.size(0), -1))"
    return (f"{file_name} cannot be pruned: {'; '.join(problems[:8])}{hint}. Supported operators: "
            f"{', '.join(sorted(SUPPORTED - {'Constant'}))}")
