"""Allocation "latency" (pruning/latency_alloc.py, allocate mode "latency"): the knapsack by loss per predicted ms,
the budget loop, and the spec / CLI / wire checks. Every layer latency here is a fake, deterministic function of the
shape, so nothing depends on timing."""
from __future__ import annotations

import argparse
import copy
from types import SimpleNamespace

import pytest
import torch

from pipeline.flags import add_spec_arguments, argv_from_spec, spec_from_args
from pipeline.report import latency_allocation_line, latency_allocation_section
from pipeline.spec import JobSpec
from pruning import allocate, surgery, zoo
from pruning.compress import CompressSpec, ModelSpec, PruneSpec, compress
from pruning.errors import SpecError
from pruning.latency_alloc import CLOSE, Candidate, bisect_aim, closest, latency_allocation, next_aim, pick
from pruning.latency_model import LatencyModel, LayerShape, grid_step_for
from pruning.measure import count_cost
from pruning.plan import PruningPlan
from pruning.result import StageRunner
from pruning.sensitivity import SensitivityCurve
from pruning.spec import check_allocation
from service.core.wire import spec_to_dict, spec_to_proto
from tests.resnet20_parts import resnet20_parts

BATCH = 8


@pytest.fixture(scope="module")
def resnet20():
    parts = resnet20_parts()
    parts.scores = {g.name: torch.arange(g.size, dtype=torch.float32) for g in parts.groups}
    return parts


def macs_ms(shape: LayerShape) -> float:
    """A layer's ms proportional to its MACs at the batch (1 ms per 10^7)."""
    kh, kw = shape.kernel
    positions = shape.height * shape.width // (shape.stride[0] * shape.stride[1])
    return 1e-7 * shape.batch * shape.in_channels / shape.groups * shape.out_channels * kh * kw * positions


def slow_stage(stage: int, factor: float):
    """``macs_ms``, except that the 16-channel stage-``stage`` convs (32x32 / 16x16 / 8x8 inputs) are ``factor``
    times slower: what a runtime with a poor kernel for that shape would show."""
    size = {1: 32, 2: 16, 3: 8}[stage]

    def ms(shape: LayerShape) -> float:
        return macs_ms(shape) * (factor if shape.height == size and shape.stride == (1, 1) else 1.0)
    return ms


def table(net, layer_ms, constant_ms=0.0) -> LatencyModel:
    """The LatencyModel of ``layer_ms``, anchored to its layer sum + ``constant_ms``."""
    prunable = {m for g in net.groups for m in g.members}
    latency = LatencyModel(net.model, net.entry.input_shape, BATCH, layer_ms, 1.0, grid_step=8,
                           cost_model=net.costs, prunable=prunable)
    return latency.anchored(latency.layer_sum_ms + constant_ms)


def linear_curves(groups) -> dict:
    """The same loss per removed unit in every group: only the cost side decides."""
    return {g.name: SensitivityCurve(g.name, (0, g.size), (0.0, 1.0)) for g in groups}


def kept_fraction(result, net, prefix: str) -> float:
    names = [g.name for g in net.groups if g.name.startswith(prefix)]
    return sum(len(result.kept[n]) for n in names) / sum(result.original[n] for n in names)


# --- the knapsack -------------------------------------------------------------------------------------------

def test_the_chunks_with_the_most_ms_saved_per_loss_go_first(resnet20):
    net = resnet20
    latency = table(net, slow_stage(2, 20.0))
    target = allocate.Target("latency", 0.05)
    first = allocate.allocate(net.groups, net.scores, latency, target, latency.layer_sum_ms, mode="latency",
                              round_to=8, curves=linear_curves(net.groups))
    cut = {name for name, kept in first.kept.items() if len(kept) < first.original[name]}
    assert cut and all(name.startswith("layer2.") for name in cut)
    # stage 2 a hundred times as fragile: 5x the loss per ms saved of the others, so its chunks go last
    fragile = {g.name: SensitivityCurve(g.name, (0, g.size), (0.0, 100.0 if g.name.startswith("layer2.") else 1.0))
               for g in net.groups}
    second = allocate.allocate(net.groups, net.scores, latency, target, latency.layer_sum_ms, mode="latency",
                               round_to=8, curves=fragile)
    cut = {name for name, kept in second.kept.items() if len(kept) < second.original[name]}
    assert cut and not any(name.startswith("layer2.") for name in cut)


def test_an_expensive_layer_is_cut_more_than_macs_targeted_pruning_cuts_it(resnet20):
    """Stage 1 loses 4x the loss per channel of the others, so the MACs knapsack spares it; its convs are 20x slower
    than their MACs say, so the latency knapsack cuts it anyway and spares stages 2 and 3."""
    net = resnet20
    curves = {g.name: SensitivityCurve(g.name, (0, g.size), (0.0, 4.0 if g.name.startswith("layer1.") else 1.0))
              for g in net.groups}
    by_macs = allocate.allocate(net.groups, net.scores, net.costs, allocate.Target("macs", 0.3), net.base.macs,
                                mode="sensitivity", round_to=8, curves=curves)
    latency = table(net, slow_stage(1, 20.0), constant_ms=5.0)
    base_ms = latency.cost("latency", {})
    by_ms = allocate.allocate(net.groups, net.scores, latency, allocate.Target("latency", 0.3), base_ms,
                              mode="latency", round_to=8, curves=curves)
    assert kept_fraction(by_macs, net, "layer1.") == 1.0 and kept_fraction(by_ms, net, "layer1.") < 0.7
    for stage in ("layer2.", "layer3."):
        assert kept_fraction(by_ms, net, stage) > kept_fraction(by_macs, net, stage) + 0.25
    assert abs(by_ms.achieved_reduction - 0.3) < 0.02                      # of the predicted latency
    removed = allocate.widths_removed(net.groups, {n: by_ms.original[n] - len(k) for n, k in by_ms.kept.items()})
    assert latency.cost("latency", removed) == pytest.approx(base_ms * (1 - by_ms.achieved_reduction))
    plan = PruningPlan("cifar/resnet20", 10, net.entry.input_shape, by_ms.kept, by_ms.original)
    surgery.apply_plan(copy.deepcopy(net.model), plan)                     # a valid plan


def test_a_latency_table_proportional_to_macs_plans_like_the_macs_knapsack(resnet20):
    net = resnet20
    curves = {g.name: SensitivityCurve(g.name, (0, g.size), (0.0, 1.0 + i % 5)) for i, g in enumerate(net.groups)}
    by_macs = allocate.allocate(net.groups, net.scores, net.costs, allocate.Target("macs", 0.4), net.base.macs,
                                mode="sensitivity", round_to=8, curves=curves)
    latency = table(net, macs_ms)                           # nothing but the convs: ms = MACs x a constant
    by_ms = allocate.allocate(net.groups, net.scores, latency, allocate.Target("latency", 0.4), latency.layer_sum_ms,
                              mode="latency", round_to=8, curves=curves)
    differ = [n for n in by_ms.kept if len(by_ms.kept[n]) != len(by_macs.kept[n])]
    assert len(differ) <= 2, differ


def test_modes_and_metrics_must_match(resnet20):
    net = resnet20
    with pytest.raises(SpecError, match="targets latency"):
        allocate.allocate(net.groups, net.scores, net.costs, allocate.Target("macs", 0.3), net.base.macs,
                          mode="latency", curves=linear_curves(net.groups))
    with pytest.raises(SpecError, match="targets latency"):
        allocate.allocate(net.groups, net.scores, table(net, macs_ms), allocate.Target("latency", 0.3), 5.0,
                          mode="uniform")
    with pytest.raises(SpecError, match="curve for every group"):
        allocate.allocate(net.groups, net.scores, table(net, macs_ms), allocate.Target("latency", 0.3), 5.0,
                          mode="latency")


def test_the_grid_is_coarsened_for_wide_layers_only():
    vgg = zoo.create_model("cifar/vgg16_bn")
    resnet = zoo.create_model("cifar/resnet56")
    entry = zoo.get_entry("cifar/resnet56")
    exact = count_cost(resnet, entry.input_shape)
    layers = allocate.CostModel(resnet, entry.input_shape, exact.macs, exact.params).layers
    assert grid_step_for(layers, None, 8, max_shapes=256) == 8
    assert grid_step_for(layers, None, 8, max_shapes=40) > 8
    exact = count_cost(vgg, (3, 32, 32))
    wide = allocate.CostModel(vgg, (3, 32, 32), exact.macs, exact.params).layers
    assert grid_step_for(wide, None, 8, max_shapes=256) >= 32


# --- the budget loop ----------------------------------------------------------------------------------------

def test_next_aim_follows_the_line_through_the_nearest_measurements_and_pick():
    # the table predicts half the saving the probe measures: unpruned 100/100, a candidate 80 predicted -> 60 measured
    assert next_aim([(100.0, 100.0), (80.0, 60.0)], goal_ms=70.0) == pytest.approx(85.0)
    # none under the goal yet: extrapolate from the two nearest above it
    assert next_aim([(100.0, 100.0), (90.0, 95.0)], goal_ms=70.0) == pytest.approx(40.0)
    # the nearest on each side wins over older points
    assert next_aim([(100.0, 100.0), (60.0, 50.0), (85.0, 75.0), (70.0, 65.0)], goal_ms=70.0) == pytest.approx(77.5)
    # a measurement that rose as the prediction fell (noise) has no slope: scale the nearest point
    assert next_aim([(100.0, 100.0), (90.0, 101.0)], goal_ms=80.0) == pytest.approx(100.0 * 80.0 / 100.0)
    assert bisect_aim([(100.0, 100.0), (80.0, 75.0), (70.0, 60.0)], goal_ms=70.0) == pytest.approx(75.0)
    assert bisect_aim([(100.0, 100.0), (80.0, 75.0)], goal_ms=70.0) is None
    tried = [Candidate(0.4, 60.0, 95.0), Candidate(0.5, 50.0, 80.0), Candidate(0.45, 55.0, 88.0)]
    assert pick(tried, goal_ms=90.0) == tried[2]                 # meets the goal with the least pruning
    assert pick(tried, goal_ms=70.0) is None


def _job(net, **prune):
    spec = CompressSpec(ModelSpec("cifar/resnet20"), prune=PruneSpec(
        allocation="latency", latency_batch=BATCH, round_to=8, **prune))
    result = SimpleNamespace(scores=SimpleNamespace(channels=net.scores), warnings=[], latency_search=[],
                             latency_allocation=None,
                             sensitivity=SimpleNamespace(curves=linear_curves(net.groups)))

    def build(allocation):
        plan = PruningPlan("cifar/resnet20", 10, net.entry.input_shape, allocation.kept, allocation.original)
        return surgery.apply_plan(copy.deepcopy(net.model), plan)
    return spec, result, build


def probe_by_macs(ms_per_mmac: float, constant_ms: float):
    """A 'measured' p90 that is linear in the model's MACs (the table below under-predicts what pruning saves)."""
    calls = []

    def probe(model, input_shape, batch):
        calls.append(batch)
        return constant_ms + ms_per_mmac * count_cost(model, input_shape).macs / 1e6
    probe.calls = calls
    return probe


def test_a_budget_is_met_by_measuring_and_correcting_the_aim(resnet20):
    net = resnet20
    spec, result, build = _job(net, latency_budget_ms=30.0, latency_margin=0.0)
    probe = probe_by_macs(1.0, 5.0)                       # unpruned: 5 + 40.6 ms
    half_table = lambda s: 0.5 * macs_ms(s)               # noqa: E731 - the table sees half of what pruning saves
    allocation, target = latency_allocation(spec, StageRunner(None, None), result, net.model, net.groups,
                                            net.entry.input_shape, net.base, probe, half_table, build)
    steps = result.latency_search
    # aimed at 30 ms predicted, the first candidate measures far under it (the table sees half the saving); the
    # second, corrected along the line through the unpruned model and the first, lands within CLOSE of the goal
    assert [s["meets_goal"] for s in steps] == [True, True] and steps[0]["latency_ms"] < 25.0
    assert all(s["metric"] == "latency" for s in steps)
    chosen = result.latency_allocation
    assert chosen["targeted"] == "budget" and 30.0 * (1 - CLOSE) <= chosen["measured_ms"] <= 30.0
    assert chosen["measured_ms"] == pytest.approx(probe(build(allocation), net.entry.input_shape, BATCH))
    assert target.metric == "latency" and target.reduction == pytest.approx(chosen["reduction"])
    # the least pruning that met the goal won
    meeting = [s for s in steps if s["meets_goal"]]
    assert chosen["predicted_ms"] == max(s["predicted_ms"] for s in meeting)
    assert chosen["original_ms"] == pytest.approx(5.0 + net.base.macs / 1e6)


def test_a_plan_measured_already_is_not_measured_again(resnet20):
    net = resnet20
    spec, result, build = _job(net, latency_budget_ms=25.0, latency_margin=0.0)
    probe = probe_by_macs(1.0, 5.0)
    latency_allocation(spec, StageRunner(None, None), result, net.model, net.groups, net.entry.input_shape,
                       net.base, probe, lambda s: 0.5 * macs_ms(s), build)
    steps = result.latency_search
    assert len(probe.calls) == 1 + len(steps) and len({s["predicted_ms"] for s in steps}) == len(steps)
    assert result.latency_allocation["measured_ms"] == max(s["latency_ms"] for s in steps if s["meets_goal"])


def test_an_unreachable_budget_names_the_fastest_candidate(resnet20):
    net = resnet20
    spec, result, build = _job(net, latency_budget_ms=6.0)
    with pytest.raises(SpecError, match="unreachable with allocation 'latency'.*measured"):
        latency_allocation(spec, StageRunner(None, None), result, net.model, net.groups, net.entry.input_shape,
                           net.base, probe_by_macs(1.0, 5.0), macs_ms, build)


def test_a_latency_fraction_is_of_the_measured_p90_the_aim_corrected_when_the_table_is_off(resnet20):
    net = resnet20
    spec, result, build = _job(net, target_metric="latency", target_reduction=0.3)
    probe = probe_by_macs(1.0, 5.0)                       # unpruned: 5 + 40.6 ms
    half_table = lambda s: 0.5 * macs_ms(s)               # noqa: E731 - the table sees half of what pruning saves
    allocation, target = latency_allocation(spec, StageRunner(None, None), result, net.model, net.groups,
                                            net.entry.input_shape, net.base, probe, half_table, build)
    chosen, steps = result.latency_allocation, result.latency_search
    assert (target.metric, target.reduction, chosen["targeted"]) == ("latency", 0.3, "reduction")
    goal = chosen["original_ms"] * 0.7
    assert chosen["goal_ms"] == pytest.approx(goal)
    # aimed by the table alone, the first plan removes far more than 30% of what the probe measures; the corrected
    # one lands within CLOSE of the goal, and is what the job keeps
    assert steps[0]["latency_ms"] < goal * (1 - CLOSE) and not steps[0]["meets_goal"]
    assert abs(chosen["measured_ms"] - goal) <= CLOSE * goal and steps[-1]["meets_goal"]
    assert chosen["measured_ms"] == pytest.approx(probe(build(allocation), net.entry.input_shape, BATCH))
    assert chosen["measured_reduction"] == pytest.approx(1 - chosen["measured_ms"] / chosen["original_ms"])
    # the anchor, each candidate and the unpruned model measured right after it, and this test's own probe
    assert chosen["candidates"] == len(steps) == (len(probe.calls) - 2) // 2 and result.warnings == []
    assert chosen["unpruned_beside_ms"] == pytest.approx(chosen["original_ms"])
    section = latency_allocation_section(chosen, [{"target": "local:cpu", "model": "compressed",
                                                   "batch_size": BATCH, "p90_ms": 33.0}])
    assert section["final_p90_ms"] == 33.0
    line = latency_allocation_line(section)
    assert "-30.0% of the measured p90" in line and f"{len(steps)} measured candidate(s)" in line
    assert "final benchmark 33 ms" in line


def test_a_latency_fraction_is_measured_beside_the_unpruned_model_so_a_slow_first_probe_does_not_move_it(resnet20):
    net = resnet20
    spec, result, build = _job(net, target_metric="latency", target_reduction=0.3)
    steady = probe_by_macs(1.0, 5.0)
    first = []

    def drifting(model, input_shape, batch):      # the job's first probe (the anchor) is 20% slow, as seen here
        ms = steady(model, input_shape, batch)
        first.append(ms)
        return ms * 1.2 if len(first) == 1 else ms
    allocation, _ = latency_allocation(spec, StageRunner(None, None), result, net.model, net.groups,
                                       net.entry.input_shape, net.base, drifting, macs_ms, build)
    chosen = result.latency_allocation
    true_cut = 1 - steady(build(allocation), net.entry.input_shape, BATCH) / steady(net.model, net.entry.input_shape,
                                                                                  BATCH)
    assert abs(true_cut - 0.3) <= CLOSE and chosen["measured_reduction"] == pytest.approx(true_cut)
    # against the slow first probe alone, the plan would have been cut 20% less deep: 1 - 0.7 x 1.2 = 0.16
    assert chosen["original_ms"] == pytest.approx(1.2 * chosen["unpruned_beside_ms"])


def test_a_probe_that_measures_in_turns_gives_the_cut_from_the_medians(resnet20):
    net = resnet20
    spec, result, build = _job(net, target_metric="latency", target_reduction=0.3)
    steady = probe_by_macs(1.0, 5.0)
    pairs = []

    def in_turns(model, other, input_shape, batch):     # medians steady, p90s swinging 25% either way
        a, b = steady(model, input_shape, batch), steady(other, input_shape, batch)
        pairs.append((a, b))
        return (a, a * (1.25 if len(pairs) % 2 else 0.75)), (b, b)
    steady.in_turns = in_turns
    allocation, _ = latency_allocation(spec, StageRunner(None, None), result, net.model, net.groups,
                                       net.entry.input_shape, net.base, steady, macs_ms, build)
    chosen = result.latency_allocation
    assert len(pairs) == chosen["candidates"] and len(steady.calls) == 1 + 2 * len(pairs)   # the anchor alone
    assert abs(chosen["measured_reduction"] - 0.3) <= CLOSE
    assert chosen["measured_reduction"] == pytest.approx(1 - pairs[-1][0] / pairs[-1][1])
    assert chosen["unpruned_beside_ms"] == pytest.approx(pairs[-1][1])


def test_a_noisy_probe_never_calls_a_reachable_fraction_unreachable(resnet20):
    # measurements off by -20..+25%: the search may end off the goal (a warning), but it refused 16 of 36 such jobs
    # as unreachable while its own widest plan had measured a deeper cut than asked
    import random

    from pruning.errors import TargetUnreachable

    net = resnet20
    for seed in range(8):
        rnd, steady = random.Random(seed), probe_by_macs(1.0, 5.0)
        noisy = lambda m, s, b: steady(m, s, b) * rnd.uniform(0.8, 1.25)  # noqa: E731
        spec, result, build = _job(net, target_metric="latency", target_reduction=0.45)
        try:
            latency_allocation(spec, StageRunner(None, None), result, net.model, net.groups, net.entry.input_shape,
                               net.base, noisy, lambda s: 0.6 * macs_ms(s), build)
        except TargetUnreachable as exc:          # only when the widest plan measured short of the cut asked
            assert exc.reachable < 0.45
        else:
            assert result.latency_allocation["candidates"] >= 1


def test_a_latency_fraction_the_widths_cannot_reach_is_refused_or_warned(resnet20):
    net = resnet20
    spec, result, build = _job(net, target_metric="latency", target_reduction=0.98)
    with pytest.raises(SpecError, match="target latency reduction 98.0% is unreachable.*allow_shortfall"):
        latency_allocation(spec, StageRunner(None, None), result, net.model, net.groups, net.entry.input_shape,
                           net.base, probe_by_macs(1.0, 5.0), macs_ms, build)
    spec, result, build = _job(net, target_metric="latency", target_reduction=0.98, allow_shortfall=True)
    latency_allocation(spec, StageRunner(None, None), result, net.model, net.groups, net.entry.input_shape,
                       net.base, probe_by_macs(1.0, 5.0), macs_ms, build)
    assert len(result.warnings) == 1 and "unreachable" in result.warnings[0] and "pruned to it" in result.warnings[0]
    chosen = result.latency_allocation
    assert chosen["measured_reduction"] < 0.98 - CLOSE
    assert chosen["measured_ms"] == min(s["latency_ms"] for s in result.latency_search)


# --- spec, CLI, wire ----------------------------------------------------------------------------------------

def parse(argv: list[str]) -> JobSpec:
    parser = argparse.ArgumentParser()
    add_spec_arguments(parser)
    return spec_from_args(parser.parse_args(["--arch", "cifar/resnet20", *argv]))


@pytest.mark.parametrize("argv, metric, budget", [
    (["--allocation", "latency", "--target-latency", "0.3"], "latency", None),
    (["--allocation", "latency", "--latency-budget", "40", "--latency-batch", "64"], "macs", 40.0)])
def test_the_cli_and_the_wire_accept_the_mode(argv, metric, budget):
    spec = parse(argv)
    prune = spec.compress.prune
    assert (prune.allocation, prune.target_metric, prune.latency_budget_ms) == ("latency", metric, budget)
    check_allocation(prune)
    assert parse(argv_from_spec(spec.to_dict())[2:]).to_dict() == spec.to_dict()
    back = JobSpec.from_dict(spec_to_dict(spec_to_proto(spec))[0])
    assert back.to_dict() == spec.to_dict()


@pytest.mark.parametrize("prune, says", [
    (PruneSpec(allocation="latency", target_metric="macs"), "--target-latency FRACTION"),
    (PruneSpec(allocation="latency", target_metric="params", target_reduction=0.2), "--allocation sensitivity"),
    (PruneSpec(allocation="sensitivity", target_metric="latency"), "needs --allocation latency"),
    (PruneSpec(allocation="latency", target_metric="latency", layer_criterion="layer_probe"), "--layer-criterion")])
def test_bad_combinations_are_spec_errors_that_name_the_fix(prune, says):
    with pytest.raises(SpecError, match=says):
        check_allocation(prune)
    with pytest.raises(SpecError, match=says):          # before anything is loaded
        compress(CompressSpec(ModelSpec("no/such-model"), prune=prune))


def test_the_engine_needs_a_layer_table_and_a_probe_for_the_mode():
    spec = CompressSpec(ModelSpec("demo/small_cnn"), prune=PruneSpec(allocation="latency", target_metric="latency"))
    with pytest.raises(SpecError, match="per-layer latency table"):
        compress(spec, latency_probe=lambda m, s, b: 1.0)
    with pytest.raises(SpecError, match="blocks"):
        compress(CompressSpec(ModelSpec("demo/small_cnn"), prune=PruneSpec(
            allocation="latency", target_metric="latency", criterion="layer_probe")),
            latency_probe=lambda m, s, b: 1.0, layer_latency=macs_ms)


def test_the_server_refuses_a_bad_combination_at_submit():
    from service.api.validate import validate_spec
    from service.core.errors import InvalidArgument

    message = spec_to_proto(parse(["--allocation", "latency", "--target-macs", "0.5"]))
    with pytest.raises(InvalidArgument, match="--target-latency"):
        validate_spec(message, lambda _: True)
    validate_spec(spec_to_proto(parse(["--allocation", "latency", "--target-latency", "0.5"])), lambda _: True)


# --- through the pipeline -----------------------------------------------------------------------------------

class FakeTable:
    """Stands in for pipeline.latency_table.LayerLatencyTable: ``macs_ms`` per shape, nothing timed."""

    def __init__(self, target, threads, scratch=None):
        self.target, self.measurements, self.measure_seconds, self.path = target, 0, 0.0, "(fake)"
        self.asked = []

    def __call__(self, shape):
        self.asked.append(shape)
        return macs_ms(shape)


def run_job(monkeypatch, out, probes: list, **prune) -> dict:
    """A demo/small_cnn job with allocation "latency" through ``run_pipeline``; the probe 'measures' 0.2 ms + 1 ms
    per million MACs, the layer table is ``FakeTable``; no export, no benchmark."""
    import pipeline.run as pipeline_run
    from pipeline.spec import BenchmarkSpec, ExportSpec

    def fake_probe(target, threads, out, seconds_per_batch):
        def measure(model, input_shape, batch):
            probes.append(batch)
            return 0.2 + count_cost(model, input_shape).macs / 1e6
        return measure

    monkeypatch.setattr(pipeline_run, "latency_probe", fake_probe)
    monkeypatch.setattr(pipeline_run, "LayerLatencyTable", FakeTable)
    spec = JobSpec(CompressSpec(ModelSpec("demo/small_cnn"), prune=PruneSpec(allocation="latency", latency_batch=16,
                                                                              **prune)),
                   export=ExportSpec(onnx=False), benchmark=BenchmarkSpec(targets=()))
    return pipeline_run.run_pipeline(spec, out)


def test_a_job_reports_the_targeted_metric_and_predicted_vs_measured_latency(monkeypatch, tmp_path):
    from pipeline.report import summary_table

    probes = []
    report = run_job(monkeypatch, tmp_path / "job", probes, target_metric="latency", target_reduction=0.3)
    section = report["latency_allocation"]
    assert (section["targeted"], section["batch_size"], section["target"]) == ("reduction", 16, "local:cpu")
    assert section["predicted_ms"] < section["original_ms"] and section["final_p90_ms"] is None
    assert report["criterion"]["target"] == {"metric": "latency", "reduction": 0.3}
    assert report["spec"]["compress"]["prune"]["allocation"] == "latency"
    # the anchor, then each candidate, all at the latency batch; the kept plan lands within CLOSE of the goal
    assert set(probes) == {16} and len(probes) == 1 + 2 * section["candidates"]
    assert section["candidates"] == len(report["latency_search"])
    assert abs(section["measured_ms"] - 0.7 * section["original_ms"]) <= CLOSE * 0.7 * section["original_ms"]
    assert "latency allocation targeted -30.0% of the measured p90 at batch 16" in summary_table(report)
    assert any("latency table on local:cpu" in n for n in report["notes"])
    assert not (tmp_path / "job" / ".latency-table").exists()


def test_a_budget_job_shows_its_candidates_predicted_and_measured(monkeypatch, tmp_path):
    import re

    from pipeline.report_html import render_html
    from pipeline.report_schema import validate_report

    probes = []
    report = run_job(monkeypatch, tmp_path / "job", probes, latency_budget_ms=1.5, latency_margin=0.0)
    section, steps = report["latency_allocation"], report["latency_search"]
    assert section["targeted"] == "budget" and section["budget_ms"] == 1.5 and section["measured_ms"] <= 1.5
    assert steps and all({"predicted_ms", "latency_ms", "metric"} <= set(s) for s in steps)
    assert report["criterion"]["target"]["metric"] == "latency"
    validate_report(report)
    page = render_html(report, tmp_path / "job")
    assert "Latency-budget search: the probes" in page and "latency (table)" in page
    assert re.search(r"p90 [0-9.]+ ms predicted", page)


def test_a_latency_allocation_job_benchmarks_its_batch_and_target():
    from pipeline.resolve import with_budget_measured
    from pipeline.spec import BenchmarkSpec

    spec = JobSpec(CompressSpec(ModelSpec("demo/small_cnn"), prune=PruneSpec(
        allocation="latency", target_metric="latency", latency_batch=64)), benchmark=BenchmarkSpec(targets=()))
    measured = with_budget_measured(spec).benchmark
    assert measured.targets == ("local:cpu",) and measured.batch_sizes == (1, 64)
