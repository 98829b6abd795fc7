"""Graph rewrites that make an ONNX export prunable without changing what it computes.

``reshapes_to_flatten``: the torch.export-based exporter (``torch.onnx.export``'s default since PyTorch 2.9) writes
``torch.flatten(x, 1)`` and ``x.view(x.size(0), -1)`` as ``Reshape(x, shape)`` with a constant ``shape`` such as
``[1, 32]`` (the batch of the example input baked in). A constant shape names the channel count, so it cannot
survive pruning, and onnx2torch keeps it as a fixed reshape. When the input is [N, C, H, W] with C, H and W known
from shape inference and ``shape`` is ``[N | -1 | 0, C*H*W | -1]`` (not both -1; no 0 under ``allowzero=1``), the
Reshape is exactly ``Flatten(axis=1)``, which interprune prunes through (the flattened features follow their
channel).

Example::

    proto = reshapes_to_flatten(onnx.load("model.onnx"))     # Reshape [1, 32] after a global pool -> Flatten
"""
from __future__ import annotations

from onnx import ModelProto, helper, numpy_helper, shape_inference


def _dims(value_info) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def _is_flatten(input_dims: list[int | None], shape: list[int]) -> bool:
    """Whether ``Reshape(x, shape)`` (allowzero 0) equals ``Flatten(x, axis=1)`` for x of ``input_dims``."""
    if len(input_dims) != 4 or len(shape) != 2 or any(d is None for d in input_dims[1:]) or shape == [-1, -1]:
        return False
    batch, features = input_dims[0], input_dims[1] * input_dims[2] * input_dims[3]
    return shape[0] in (-1, 0, batch) and shape[1] in (-1, features)


def reshapes_to_flatten(proto: ModelProto) -> ModelProto:
    """A copy of ``proto`` with every Reshape that is a flatten at axis 1 (module docstring) made a Flatten; the
    proto itself when there is none."""
    constants = {t.name: t for t in proto.graph.initializer}
    if not any(n.op_type == "Reshape" and len(n.input) == 2 and n.input[1] in constants for n in proto.graph.node):
        return proto                                   # no shape inference for graphs without a candidate
    inferred = shape_inference.infer_shapes(proto)
    dims = {v.name: _dims(v) for v in (*inferred.graph.value_info, *inferred.graph.input)}
    replace = {}
    for index, node in enumerate(proto.graph.node):
        if node.op_type != "Reshape" or len(node.input) != 2 or node.input[1] not in constants:
            continue
        shape = [int(s) for s in numpy_helper.to_array(constants[node.input[1]]).ravel().tolist()]
        if 0 in shape and any(a.name == "allowzero" and a.i for a in node.attribute):
            continue                                   # allowzero: a 0 is an empty axis, not "copy the input's"
        if node.input[0] in dims and _is_flatten(dims[node.input[0]], shape):
            replace[index] = helper.make_node("Flatten", [node.input[0]], list(node.output), name=node.name, axis=1)
    if not replace:
        return proto
    out = ModelProto()
    out.CopyFrom(proto)
    for index, node in replace.items():
        out.graph.node[index].CopyFrom(node)
    used = {name for node in out.graph.node for name in node.input}
    unused = [t for t in out.graph.initializer if t.name not in used]
    for tensor in unused:                              # the shape constants only the replaced Reshapes read
        out.graph.initializer.remove(tensor)
    names = {t.name for t in unused}
    for value in [v for v in out.graph.input if v.name in names]:     # IR < 4 lists initializers as inputs too
        out.graph.input.remove(value)
    return out
