"""MACs and parameters of a model as a function of the widths its channel groups keep — the counter's own numbers.

``pruning.measure.count_cost`` counts with Torch-Pruning's op counter, which charges, per forward at batch 1:

- conv: k x k x C_in x C_out / groups per output position, + C_out per position with a bias;
- linear: C_in x C_out per position (every axis between batch and features is a position), + C_out with a bias;
- batch / group / layer / instance norm: 2 per element (affine), 1 otherwise;
- ReLU-family activations, pooling, upsampling: 1 per element (of the output; pooling: of the input).

``CostModel`` reproduces that as a function of the widths: convs and linears from their in / out widths, norms
from their own width, and every other counted module (an activation, a pool) from the width of the conv / linear
/ norm whose output it reads (followed through the forward pass; one record per call, so a ReLU module used
twice counts twice). What it cannot attribute stays in a constant anchored to the exact count of the unpruned
model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch_pruning.utils.op_counter import MODULES_MAPPING

from pruning.measure import counter_flops

_WIDTH = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class _Layer:
    name: str
    kind: str            # conv | linear | norm | follow (counted module scaled by ``name``'s output width)
    out: int
    inp: int
    groups: int
    kernel: int          # kh * kw
    spatial: int         # output positions (H * W for a conv, the middle axes for a linear)
    bias: bool
    flops: float = 0.0   # norm / follow: the counter's figure at full width
    # conv / linear geometry (``pruning.latency_model`` rebuilds the layer from it): (kh, kw), stride, padding,
    # dilation, and the input's (H, W) (a linear: (positions, 1))
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    in_size: tuple[int, int] = (1, 1)


class CostModel:
    """MACs and parameters of a model as a function of the widths its channel groups keep."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int], exact_macs: int, exact_params: int):
        self.layers = _layer_shapes(model, input_shape)
        self._anchor = {"macs": exact_macs - self._total("macs", {}), "params": exact_params - self._total("params", {})}

    def cost(self, metric: str, removed: dict[tuple[str, str], float]) -> float:
        """Cost with ``removed[name, side]`` channels gone from each (module, side) (see ``widths_removed``)."""
        return self._anchor[metric] + self._total(metric, removed)

    def _total(self, metric: str, removed: dict) -> float:
        total = 0.0
        for layer in self.layers:
            out = layer.out - removed.get((layer.name, "out"), 0)
            if layer.kind in ("norm", "follow"):
                share = out / max(layer.out, 1)
                if metric == "macs":
                    total += layer.flops * share
                elif layer.kind == "norm" and layer.bias:
                    total += 2 * out
                continue
            inp = layer.inp - removed.get((layer.name, "in"), 0)
            depthwise = layer.groups > 1 and layer.groups == layer.inp
            weights = out * (1 if depthwise else inp / layer.groups) * layer.kernel
            if metric == "macs":
                total += weights * layer.spatial + (out * (layer.spatial if layer.kind == "conv" else 1)
                                                    if layer.bias else 0)
            else:
                total += weights + (out if layer.bias else 0)
        return total


def _layer_shapes(model: nn.Module, input_shape: tuple[int, int, int]) -> list[_Layer]:
    """One forward at batch 1: the shape of every conv / linear / norm and the counted modules that follow them."""
    names = {module: name for name, module in model.named_modules()}
    producer: dict[int, tuple[str, torch.Tensor]] = {}      # id(tensor) -> (width module, tensor kept alive)
    layers: list[_Layer] = []

    def on_output(module, inputs, output):
        if not isinstance(output, torch.Tensor) or module not in names:
            return
        name = names[module]
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if isinstance(module, _WIDTH):
            layers.append(_describe(name, module, x, output))
            producer[id(output)] = (name, output)
        elif type(module) in MODULES_MAPPING and x is not None and id(x) in producer:
            source = producer[id(x)][0]
            layers.append(_Layer(source, "follow", _width(model.get_submodule(source)), 0, 1, 1, 1, False,
                                 counter_flops(module, inputs, output)))
            producer[id(output)] = (source, output)

    handles = [m.register_forward_hook(on_output) for m in model.modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return layers


def _describe(name: str, module: nn.Module, x: torch.Tensor | None, output: torch.Tensor) -> _Layer:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        in_size = tuple(x.shape[-2:]) if x is not None else tuple(output.shape[-2:])
        return _Layer(name, "conv", module.out_channels, module.in_channels, module.groups, kh * kw,
                      output.shape[-1] * output.shape[-2], module.bias is not None, kernel_size=(kh, kw),
                      stride=tuple(module.stride), padding=_padding(module), dilation=tuple(module.dilation),
                      in_size=(int(in_size[0]), int(in_size[1])))
    if isinstance(module, nn.Linear):
        positions = int(torch.tensor(output.shape[1:-1]).prod()) if output.dim() > 2 else 1
        return _Layer(name, "linear", module.out_features, module.in_features, 1, 1, positions,
                      module.bias is not None, in_size=(positions, 1))
    affine = bool(getattr(module, "affine", False) or getattr(module, "elementwise_affine", False))
    return _Layer(name, "norm", _width(module), _width(module), 1, 1, 1, affine,
                  counter_flops(module, (x,), output) if x is not None else 0.0)


def _padding(conv: nn.Conv2d) -> tuple[int, int]:
    """Explicit (ph, pw) of a conv; "same" as the symmetric padding that keeps the size (odd kernels)."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size))
    return tuple(int(p) for p in conv.padding)


def _width(module: nn.Module) -> int:
    for attr in ("out_channels", "out_features", "num_features", "num_channels"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return int(module.normalized_shape[-1])
