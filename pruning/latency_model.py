"""Latency of a model on a target as a function of the widths its channel groups keep (latency-aware allocation, as
HALP does: Shen et al. 2022, "Structural Pruning via Latency-Saliency Knapsack", arXiv:2210.06659).

The model is a sum over its convs and linears of a per-layer latency, each looked up in a table measured on the
target (``layer_latency(LayerShape) -> ms``; ``pipeline.latency_table`` measures it with ONNX Runtime), plus a
constant anchored so that the unpruned prediction equals a measured whole-model latency, as ``CostModel`` anchors
to the exact MAC count. The constant holds what the layer sum does not (pooling, residual adds, the runtime's
per-call overhead, minus the per-call overhead every layer measurement carries).

The table is measured on a grid only: widths in multiples of ``grid_step`` plus the full width, per side. Other
widths are interpolated bilinearly in (in, out) between the four grid points around them, so a job measures a few
shapes per layer instead of every width the allocator may visit. A grid point that was not measured in advance is
measured the first time it is needed (``layer_latency`` is called then, and the figure is kept).

Example::

    table = LatencyModel(model, (3, 32, 32), batch=64, layer_latency=measure, measured_total_ms=12.5, grid_step=8)
    table.cost("latency", {("layer1.0.conv1", "out"): 8, ("layer1.0.conv2", "in"): 8})   # ms after the cut
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable, Collection

import torch.nn as nn

from pruning.cost_model import CostModel, _Layer, _layer_shapes
from pruning.errors import SpecError


@dataclass(frozen=True)
class LayerShape:
    """One conv (+ its BatchNorm and ReLU, fused by the runtime) or linear layer at one batch: what a latency table
    is keyed by. ``height`` / ``width`` are the input's spatial size (a linear: its positions and 1)."""

    kind: str                          # conv | linear
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    height: int = 1
    width: int = 1
    batch: int = 1
    bias: bool = False
    dilation: tuple[int, int] = (1, 1)

    def key(self) -> str:
        """A stable text key (the on-disk cache's)."""
        return (f"{self.kind}:i{self.in_channels}:o{self.out_channels}:k{self.kernel[0]}x{self.kernel[1]}"
                f":s{self.stride[0]}x{self.stride[1]}:p{self.padding[0]}x{self.padding[1]}"
                f":d{self.dilation[0]}x{self.dilation[1]}:g{self.groups}:hw{self.height}x{self.width}"
                f":b{self.batch}:bias{int(self.bias)}")


LayerLatency = Callable[[LayerShape], float]


@dataclass(frozen=True)
class _Row:
    """A conv / linear of the model and the widths its table is measured at."""

    layer: _Layer
    depthwise: bool
    multiple: int                      # widths stay multiples of this (the conv's groups, 1 when depthwise)
    ins: tuple[float, ...]             # grid of input widths (depthwise: of the width), ascending
    outs: tuple[float, ...]            # grid of output widths (depthwise: unused)


class LatencyModel:
    """Predicted latency (ms) of ``model`` at ``batch`` with channels removed; "macs" / "params" go to
    ``cost_model`` so that it can stand in for a ``CostModel``."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int], batch: int,
                 layer_latency: LayerLatency, measured_total_ms: float, *, grid_step: int = 8,
                 cost_model: CostModel | None = None, prunable: Collection[tuple[str, str]] | None = None):
        """``grid_step``: widths measured per side (multiples of it, plus the full width); ``prunable``: the
        (module, side) pairs that may lose channels (default: every side); the others keep one grid point."""
        if batch < 1 or grid_step < 1:
            raise SpecError(f"latency model: batch and grid_step must be >= 1, got {batch} and {grid_step}")
        if not math.isfinite(measured_total_ms) or measured_total_ms <= 0:
            raise SpecError(f"latency model: the measured whole-model latency must be a positive number of ms, "
                            f"got {measured_total_ms}")
        layers = cost_model.layers if cost_model is not None else _layer_shapes(model, input_shape)
        self.batch = batch
        self.grid_step = grid_step
        self.cost_model = cost_model
        self._latency = layer_latency
        self._measured: dict[LayerShape, float] = {}
        self._rows = [self._row(layer, prunable) for layer in layers if layer.kind in ("conv", "linear")]
        self.layer_sum_ms = self._total({})          # the unpruned layers' sum
        self.constant_ms = measured_total_ms - self.layer_sum_ms
        self.scale = 1.0                             # layer figures' multiplier (``scaled_to``)

    def cost(self, metric: str, removed: dict[tuple[str, str], float]) -> float:
        """Cost with ``removed[name, side]`` channels gone from each (module, side) (see ``widths_removed``):
        "latency" in ms; "macs" / "params" from the wrapped ``CostModel``."""
        if metric == "latency":
            return self.constant_ms + self.scale * self._total(removed)
        if self.cost_model is None:
            raise SpecError(f"this latency model has no CostModel to count {metric!r}; pass cost_model=")
        return self.cost_model.cost(metric, removed)

    def anchored(self, measured_total_ms: float) -> LatencyModel:
        """The same table anchored to another whole-model figure (e.g. p90 instead of p50)."""
        other = object.__new__(LatencyModel)
        other.__dict__.update(self.__dict__)
        other.constant_ms = measured_total_ms - self.scale * self.layer_sum_ms
        return other

    def scaled_to(self, measured_total_ms: float) -> LatencyModel:
        """The same table with every layer figure multiplied so that they add up to ``measured_total_ms``, with no
        constant. For a table whose layers add up to more than the whole model measures (each one-layer model
        pays the runtime's per-call overhead, the whole model pays it once): anchored by a constant, it would
        predict negative latencies at small widths; scaled, it keeps the layers' relative costs."""
        other = self.anchored(measured_total_ms)
        other.scale = measured_total_ms / self.layer_sum_ms if self.layer_sum_ms > 0 else 1.0
        other.constant_ms = 0.0
        return other

    def grid_shapes(self) -> list[LayerShape]:
        """Every distinct shape on the grid, in layer order: what a table measures in advance."""
        shapes: dict[LayerShape, None] = {}
        for row in self._rows:
            for i, o in zip(*_pairs(row.ins, row.outs, row.depthwise)):
                shapes[self._shape(row, i, o)] = None
        return list(shapes)

    def layer_ms(self, name: str, removed: dict[tuple[str, str], float] | None = None) -> float:
        """Predicted latency of one conv / linear with ``removed`` channels gone (interpolated)."""
        for row in self._rows:
            if row.layer.name == name:
                return self.scale * self._row_ms(row, removed or {})
        raise KeyError(name)

    @property
    def measured_shapes(self) -> dict[LayerShape, float]:
        """The shapes whose latency this model has asked for, with their figures (ms)."""
        return dict(self._measured)

    def lookup(self, shape: LayerShape) -> float:
        """``layer_latency(shape)``, asked once per shape (what ``pipeline.latency_table`` calls to fill the grid)."""
        if shape not in self._measured:
            ms = float(self._latency(shape))
            if not math.isfinite(ms) or ms < 0:
                raise SpecError(f"layer latency of {shape.key()} is {ms} ms; a table needs finite, non-negative "
                                "figures")
            self._measured[shape] = ms
        return self._measured[shape]

    # -- internals

    def _row(self, layer: _Layer, prunable) -> _Row:
        return _make_row(layer, prunable, self.grid_step)

    def _total(self, removed: dict) -> float:
        return sum(self._row_ms(row, removed) for row in self._rows)

    def _row_ms(self, row: _Row, removed: dict) -> float:
        layer = row.layer
        if row.depthwise:                    # one width: the input's (the output is a multiple of it)
            cut = removed.get((layer.name, "in"), removed.get((layer.name, "out"), 0) * layer.inp / layer.out)
            if layer.inp - cut < 0.5:
                return 0.0
            return max(0.0, _interp1(row.ins, layer.inp - cut, lambda w: self._at(row, w, w)))
        inp = layer.inp - removed.get((layer.name, "in"), 0)
        out = layer.out - removed.get((layer.name, "out"), 0)
        if inp < 0.5 or out < 0.5:           # no channels left on a side: the layer is gone (a removed block)
            return 0.0
        return max(0.0, _interp1(row.ins, inp, lambda i: _interp1(row.outs, out, lambda o: self._at(row, i, o))))

    def _at(self, row: _Row, inp: float, out: float) -> float:
        return self.lookup(self._shape(row, inp, out))

    def _shape(self, row: _Row, inp: float, out: float) -> LayerShape:
        return _make_shape(row, inp, out, self.batch)


def grid_step_for(layers: list[_Layer], prunable: Collection[tuple[str, str]] | None, round_to: int,
                  max_shapes: int = 256) -> int:
    """The finest grid step (``round_to`` x 1, 2, 4, ...) whose grid has at most ``max_shapes`` distinct shapes
    (``layers``: ``CostModel.layers``). A network of 16-64 channel layers keeps every multiple of ``round_to``;
    wide layers (VGG's 512) get a coarser grid and are interpolated in between."""
    rows = [layer for layer in layers if layer.kind in ("conv", "linear")]
    step = max(1, round_to)
    widest = max([max(layer.inp, layer.out) for layer in rows] or [1])
    while step < widest:
        shapes = set()
        for layer in rows:
            row = _make_row(layer, prunable, step)
            shapes.update(_make_shape(row, i, o, 1) for i, o in zip(*_pairs(row.ins, row.outs, row.depthwise)))
        if len(shapes) <= max_shapes:
            break
        step *= 2
    return step


def _make_row(layer: _Layer, prunable, grid_step: int) -> _Row:
    depthwise = layer.kind == "conv" and layer.groups > 1 and layer.groups == layer.inp
    multiple = 1 if depthwise else layer.groups
    step = _lcm(grid_step, multiple)

    def axis(full: int, *sides: str) -> tuple[float, ...]:
        if prunable is not None and not any((layer.name, side) in prunable for side in sides):
            return (float(full),)
        return tuple(float(w) for w in (*range(step, full, step), full))

    if depthwise:                        # one width moves both sides
        return _Row(layer, True, multiple, axis(layer.inp, "in", "out"), ())
    return _Row(layer, False, multiple, axis(layer.inp, "in"), axis(layer.out, "out"))


def _make_shape(row: _Row, inp: float, out: float, batch: int) -> LayerShape:
    layer = row.layer
    inp, out = int(round(inp)), int(round(out))
    if row.depthwise:
        out = inp * (layer.out // layer.inp)
    groups = inp if row.depthwise else layer.groups
    return LayerShape(layer.kind, inp, out, layer.kernel_size, layer.stride, layer.padding, groups,
                      layer.in_size[0], layer.in_size[1], batch, layer.bias, layer.dilation)


def _pairs(ins: tuple[float, ...], outs: tuple[float, ...], depthwise: bool) -> tuple[list, list]:
    if depthwise:
        return list(ins), list(ins)
    return [i for i in ins for _ in outs], [o for _ in ins for o in outs]


def _interp1(grid: tuple[float, ...], x: float, value: Callable[[float], float]) -> float:
    """``value`` at ``x``, linear between the grid points around it (past either end: the nearest segment's line;
    a one-point grid: proportional to ``x``). Calls ``value`` at grid points only."""
    if len(grid) == 1:
        return value(grid[0]) * x / grid[0]
    k = bisect.bisect_left(grid, x)
    if k < len(grid) and grid[k] == x:
        return value(x)
    k = min(max(k, 1), len(grid) - 1)
    lo, hi = grid[k - 1], grid[k]
    t = (x - lo) / (hi - lo)
    return value(lo) * (1 - t) + value(hi) * t


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


__all__ = ["LayerLatency", "LayerShape", "LatencyModel", "grid_step_for"]
