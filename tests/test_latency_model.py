"""LatencyModel (pruning/latency_model.py) with a fake per-layer latency, and the measuring side
(pipeline/latency_table.py): cache round-trip, one real measurement."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from pipeline import latency_table
from pipeline.latency_table import LayerLatencyTable, layer_module, marginal, measure_layer_table
from pruning.cost_model import CostModel
from pruning.errors import SpecError
from pruning.latency_model import LatencyModel, LayerShape
from pruning.measure import count_cost

INPUT = (3, 8, 8)
BATCH = 4


class TinyNet(nn.Module):
    """conv 3->16 (8x8) -> conv 16->32 stride 2 (8x8 in) -> depthwise 32 (4x4) -> pool -> linear 32->10."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = self.dw(torch.relu(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def fake(shape: LayerShape) -> float:
    """ms proportional to the MACs of the layer at its batch (in / groups x out x k x input H x W x batch)."""
    kh, kw = shape.kernel
    return 1e-3 * shape.in_channels / shape.groups * shape.out_channels * kh * kw * shape.height * shape.width \
        * shape.batch


class Counting:
    def __init__(self, fn=fake):
        self.fn, self.calls = fn, []

    def __call__(self, shape):
        self.calls.append(shape)
        return self.fn(shape)


def full_sum() -> float:
    return 1e-3 * BATCH * (3 * 16 * 9 * 64 + 16 * 32 * 9 * 64 + 1 * 32 * 9 * 16 + 32 * 10)


def test_unpruned_prediction_is_the_anchor_and_shapes_are_read_from_the_forward_pass():
    calls = Counting()
    model = LatencyModel(TinyNet(), INPUT, BATCH, calls, measured_total_ms=100.0, grid_step=8)
    assert model.layer_sum_ms == pytest.approx(full_sum())
    assert model.constant_ms == pytest.approx(100.0 - full_sum())
    assert model.cost("latency", {}) == pytest.approx(100.0)
    shapes = {s.kind + str(s.in_channels) + "-" + str(s.out_channels): s for s in calls.calls}
    c2 = shapes["conv16-32"]
    assert (c2.stride, c2.padding, c2.height, c2.width, c2.batch, c2.bias) == ((2, 2), (1, 1), 8, 8, BATCH, False)
    dw = shapes["conv32-32"]
    assert (dw.groups, dw.height, dw.bias) == (32, 4, True)
    assert shapes["linear32-10"].kernel == (1, 1) and shapes["linear32-10"].height == 1


def test_removing_channels_gives_the_exact_sum_on_grid_points_and_lowers_the_cost():
    model = LatencyModel(TinyNet(), INPUT, BATCH, fake, measured_total_ms=100.0, grid_step=8)
    removed = {("c1", "out"): 8, ("b1", "out"): 8, ("c2", "in"): 8}
    expected = 100.0 - full_sum() + 1e-3 * BATCH * (3 * 8 * 9 * 64 + 8 * 32 * 9 * 64 + 32 * 9 * 16 + 320)
    assert model.cost("latency", removed) == pytest.approx(expected)
    assert model.cost("latency", removed) < model.cost("latency", {})
    # the depthwise conv keeps groups = width: 32 -> 16 channels costs half
    assert model.layer_ms("dw", {("dw", "in"): 16, ("dw", "out"): 16}) == pytest.approx(
        model.layer_ms("dw") / 2)
    assert model.layer_ms("dw", {("c2", "out"): 16}) == pytest.approx(model.layer_ms("dw"))


def test_off_grid_widths_are_bilinear_between_the_measured_points():
    calls = Counting(lambda s: float(s.in_channels ** 2 * s.out_channels + s.out_channels ** 2))   # not bilinear
    model = LatencyModel(TinyNet(), INPUT, BATCH, calls, measured_total_ms=50.0, grid_step=8)
    # c2 is 16 -> 32 with grid ins (8, 16), outs (8, 16, 24, 32); in = 12, out = 20 lies in the cell [8,16]x[16,24]
    got = model.layer_ms("c2", {("c2", "in"): 4, ("c2", "out"): 12})
    f = lambda i, o: i ** 2 * o + o ** 2                                            # noqa: E731
    expected = 0.25 * (f(8, 16) + f(16, 16) + f(8, 24) + f(16, 24))
    assert got == pytest.approx(expected)
    assert got != pytest.approx(f(12, 20))          # the grid is coarse on purpose: interpolated, not measured
    assert all(s.in_channels % 8 == 0 and s.out_channels % 8 == 0 for s in calls.calls
               if s.kind == "conv" and s.in_channels != 3)


def test_grid_shapes_cover_multiples_of_the_step_and_prunable_limits_them():
    model = LatencyModel(TinyNet(), INPUT, BATCH, fake, measured_total_ms=10.0, grid_step=8)
    c2 = {(s.in_channels, s.out_channels) for s in model.grid_shapes() if s.stride == (2, 2)}
    assert c2 == {(i, o) for i in (8, 16) for o in (8, 16, 24, 32)}
    dw = {(s.in_channels, s.groups) for s in model.grid_shapes() if s.groups > 1}
    assert dw == {(8, 8), (16, 16), (24, 24), (32, 32)}
    narrow = LatencyModel(TinyNet(), INPUT, BATCH, fake, 10.0, grid_step=16, prunable={("c2", "out")})
    assert {(s.in_channels, s.out_channels) for s in narrow.grid_shapes() if s.stride == (2, 2)} == {(16, 16),
                                                                                                      (16, 32)}


def test_anchored_and_metrics_passed_to_the_cost_model():
    net = TinyNet()
    exact = count_cost(net, INPUT)
    costs = CostModel(net, INPUT, exact.macs, exact.params)
    model = LatencyModel(net, INPUT, BATCH, fake, 100.0, cost_model=costs)
    removed = {("c1", "out"): 8, ("b1", "out"): 8, ("c2", "in"): 8}
    assert model.cost("macs", removed) == costs.cost("macs", removed)
    assert model.cost("params", {}) == exact.params
    p90 = model.anchored(130.0)
    assert p90.cost("latency", removed) - model.cost("latency", removed) == pytest.approx(30.0)
    # layers that add up to more than the whole model: scaled instead of a negative constant
    small = LatencyModel(net, INPUT, BATCH, fake, 0.5 * full_sum())
    assert small.constant_ms < 0
    scaled = small.scaled_to(0.5 * full_sum())
    assert (scaled.constant_ms, scaled.scale) == (0.0, pytest.approx(0.5))
    assert scaled.cost("latency", {}) == pytest.approx(0.5 * full_sum())
    assert scaled.cost("latency", removed) == pytest.approx(0.5 * model.layer_sum_ms - 0.5 * (
        model.cost("latency", {}) - model.cost("latency", removed)))
    assert scaled.layer_ms("c2") == pytest.approx(0.5 * model.layer_ms("c2"))
    with pytest.raises(SpecError):
        LatencyModel(net, INPUT, BATCH, fake, 10.0).cost("macs", {})
    with pytest.raises(SpecError):
        LatencyModel(net, INPUT, BATCH, fake, float("nan"))


class FakeMeasure:
    """Stands in for ONNX Runtime: counts the layers and whole models it is asked to time."""

    def __init__(self):
        self.layers, self.models = 0, 0

    def install(self, monkeypatch):
        def measure(table, module, input_shape, batch, settings):
            self.layers += 1
            return {"p50_ms": 0.01 * sum(p.numel() for p in module.parameters()), "p90_ms": 1.0, "min_ms": 0.5,
                    "stable": True}

        def run(table, path, input_shape, batch, settings):
            self.models += 1
            return {"p50_ms": 20.0, "p90_ms": 25.0, "min_ms": 19.0, "stable": True}
        monkeypatch.setattr(LayerLatencyTable, "_measure", measure)
        monkeypatch.setattr(LayerLatencyTable, "_run", run)


def test_cache_round_trip_measures_nothing_the_second_time(tmp_path, monkeypatch):
    fake_ort = FakeMeasure()
    fake_ort.install(monkeypatch)
    first = measure_layer_table(TinyNet(), INPUT, BATCH, round_to=8, cache_dir=tmp_path, threads=2)
    assert fake_ort.layers == len(first.grid_shapes()) > 0 and fake_ort.models == 1
    assert first.cost("latency", {}) == pytest.approx(20.0)
    files = list(tmp_path.glob("local-cpu-*.json"))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())
    assert stored["key"]["threads"] == 2 and stored["key"]["target"] == "local:cpu"
    assert set(stored["key"]) >= {"onnxruntime", "device"}
    fake_ort.layers = fake_ort.models = 0
    second = measure_layer_table(TinyNet(), INPUT, BATCH, round_to=8, cache_dir=tmp_path, threads=2,
                                 anchor="p90")
    assert (fake_ort.layers, fake_ort.models) == (0, 0)
    assert second.layer_sum_ms == pytest.approx(first.layer_sum_ms)
    assert second.cost("latency", {}) == pytest.approx(25.0)
    # another thread count is another table
    measure_layer_table(TinyNet(), INPUT, BATCH, round_to=8, cache_dir=tmp_path, threads=1)
    assert fake_ort.layers == len(first.grid_shapes()) and len(list(tmp_path.glob("*.json"))) == 2


def test_targets_without_a_table_are_refused():
    with pytest.raises(SpecError, match="local:cpu"):
        LayerLatencyTable("agent:phone", cache_dir=None)
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(SpecError, match="onnxruntime-gpu"):
            LayerLatencyTable("local:cuda", cache_dir=None)


def test_layer_modules_have_the_shape_they_stand_for():
    conv, shape_in = layer_module(LayerShape("conv", 8, 16, (3, 3), (2, 2), (1, 1), 1, 10, 10, 2))
    assert conv(torch.zeros(2, *shape_in)).shape == (2, 16, 5, 5)
    lin, lin_in = layer_module(LayerShape("linear", 32, 10, batch=2))
    assert lin(torch.zeros(2, *lin_in)).shape == (2, 10)


def test_copies_read_one_input_and_sum_and_the_marginal_figure_is_their_difference():
    shape = LayerShape("conv", 8, 16, (3, 3), (1, 1), (1, 1), 1, 6, 6, 2)
    torch.manual_seed(0)
    four, shape_in = layer_module(shape, copies=4)
    x = torch.randn(2, *shape_in)
    branches = four[0].branches
    assert len(branches) == 4
    with torch.no_grad():
        assert torch.allclose(four.eval()(x), torch.relu(sum(b.eval()(x) for b in branches)))
    lin, lin_in = layer_module(LayerShape("linear", 32, 10, batch=2), copies=3)
    assert lin(torch.zeros(2, *lin_in)).shape == (2, 10) and len(lin[1].branches) == 3
    one = {"p50_ms": 3.0, "p90_ms": 4.0, "min_ms": 2.5, "stable": True}
    many = {"p50_ms": 9.0, "p90_ms": 10.0, "min_ms": 2.6, "stable": False}
    got = marginal(one, many, copies=4)
    assert got["p50_ms"] == pytest.approx(2.0) and got["p90_ms"] == pytest.approx(2.0)
    assert got["min_ms"] == pytest.approx(0.05 * 2.5)            # noise: never below a floor of the one-layer figure
    assert got["stable"] is False and got["alone_p50_ms"] == 3.0


def test_a_marginal_table_times_two_models_per_shape_and_is_cached_apart(tmp_path, monkeypatch):
    sizes = []

    def measure(table, module, input_shape, batch, settings):
        copies = len(module[0].branches) if isinstance(module[0], latency_table._Summed) else 1
        sizes.append(copies)
        return {"p50_ms": 1.0 + 2.0 * copies, "p90_ms": 2.0 + 2.0 * copies, "min_ms": 0.5 + copies, "stable": True}
    monkeypatch.setattr(LayerLatencyTable, "_measure", measure)
    shape = LayerShape("conv", 8, 8, (3, 3), (1, 1), (1, 1), 1, 16, 16, 2)
    table = LayerLatencyTable("local:cpu", threads=1, cache_dir=tmp_path, method="marginal", copies=4)
    assert table(shape) == pytest.approx(2.0) and sizes == [1, 4]
    alone = LayerLatencyTable("local:cpu", threads=1, cache_dir=tmp_path)
    assert alone(shape) == pytest.approx(3.0) and sizes == [1, 4, 1]
    assert table.path != alone.path and len(list(tmp_path.glob("*.json"))) == 2
    with pytest.raises(SpecError, match="method"):
        LayerLatencyTable("local:cpu", cache_dir=None, method="chain")


def test_one_real_conv_is_timed_in_onnx_runtime(tmp_path, monkeypatch):
    monkeypatch.setattr(latency_table, "LAYER_PROTOCOL", dict(warmup_seconds=0.01, min_runs=5,
                                                              min_seconds_per_batch=0.01, max_seconds_per_batch=0.2))
    table = LayerLatencyTable("local:cpu", threads=1, cache_dir=tmp_path, scratch=tmp_path / "scratch")
    ms = table(LayerShape("conv", 8, 8, (3, 3), (1, 1), (1, 1), 1, 16, 16, 2))
    assert math.isfinite(ms) and 0 < ms < 1000
    assert table.measurements == 1
    summed = LayerLatencyTable("local:cpu", threads=1, cache_dir=tmp_path, scratch=tmp_path / "scratch",
                               method="marginal", copies=2)
    ms = summed(LayerShape("conv", 8, 8, (3, 3), (1, 1), (1, 1), 1, 16, 16, 2))
    assert math.isfinite(ms) and 0 < ms < 1000 and summed.measurements == 2


def test_a_table_without_a_scratch_folder_leaves_no_temporary_folder(tmp_path, monkeypatch):
    import gc
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    table = LayerLatencyTable("local:cpu", threads=1, cache_dir=None)
    assert [p.name.startswith("interprune-latency-") for p in tmp_path.iterdir()] == [True]
    del table
    gc.collect()
    assert list(tmp_path.iterdir()) == []
