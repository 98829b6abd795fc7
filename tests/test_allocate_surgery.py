import copy

import pytest
import torch
import torch.nn as nn

from pruning import allocate, surgery, zoo
from pruning.errors import ModelError, SpecError
from pruning.measure import count_cost
from pruning.plan import PruningPlan


def _setup(arch="cifar/resnet56"):
    entry = zoo.get_entry(arch)
    model = zoo.create_model(arch).eval()
    groups = surgery.channel_groups(model, entry.input_shape, entry.protected(model))
    base = count_cost(model, entry.input_shape)
    return entry, model, groups, base, allocate.CostModel(model, entry.input_shape, base.macs, base.params)


def test_option_a_resnet_exposes_only_block_internal_channels():
    _, model, groups, _, _ = _setup()
    assert len(groups) == 27
    assert all(g.name.endswith(".conv1") and g.consumers == (g.name[:-1] + "2",) for g in groups)


@pytest.mark.parametrize("mode", ["uniform", "global"])
@pytest.mark.parametrize("metric,reduction", [("macs", 0.3), ("macs", 0.5), ("params", 0.4)])
def test_target_is_met_within_two_points_and_widths_are_rounded(mode, metric, reduction):
    entry, model, groups, base, cm = _setup()
    gen = torch.Generator().manual_seed(0)
    scores = {g.name: torch.rand(g.size, generator=gen) for g in groups}
    result = allocate.allocate(groups, scores, cm, allocate.Target(metric, reduction), getattr(base, metric),
                               mode=mode, round_to=8)
    plan = PruningPlan("cifar/resnet56", 10, entry.input_shape, result.kept, result.original)
    pruned = surgery.apply_plan(copy.deepcopy(model), plan)
    achieved = 1 - getattr(count_cost(pruned, entry.input_shape), metric) / getattr(base, metric)
    assert abs(achieved - reduction) <= 0.02
    assert abs(achieved - result.achieved_reduction) < 0.005       # analytic model == exact count
    assert all(len(k) % 8 == 0 for k in result.kept.values())


def test_lowest_scores_go_first():
    entry, model, groups, base, cm = _setup()
    scores = {g.name: torch.arange(g.size, dtype=torch.float32) for g in groups}
    result = allocate.allocate(groups, scores, cm, allocate.Target("macs", 0.5), base.macs, round_to=1)
    for g in groups:
        kept = result.kept[g.name]
        assert kept == list(range(g.size - len(kept), g.size))


def test_unreachable_target_is_explained():
    entry, model, groups, base, cm = _setup()
    scores = {g.name: torch.ones(g.size) for g in groups}
    with pytest.raises(SpecError, match="unreachable"):
        allocate.allocate(groups, scores, cm, allocate.Target("macs", 0.9), base.macs, round_to=16)


def test_plan_replays_to_the_same_model(tmp_path):
    from pruning.compress import save_compressed

    entry, model, groups, base, cm = _setup("cifar/resnet20")
    kept = {g.name: list(range(0, g.size, 2)) for g in groups}
    plan = PruningPlan("cifar/resnet20", 10, entry.input_shape, kept, {g.name: g.size for g in groups},
                       removed_blocks=[])
    pruned = surgery.apply_plan(copy.deepcopy(model), plan).eval()
    files = save_compressed(pruned, plan, tmp_path)
    reloaded = surgery.load_compressed(files["plan"], files["weights"])
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(reloaded(x), pruned(x))
    # the kept channels are the original ones: conv1 of the pruned block is a slice of the original
    assert torch.equal(pruned.layer1[0].conv1.weight, model.layer1[0].conv1.weight[::2])


def test_block_removal_and_plan_validation(tmp_path):
    model = zoo.create_model("cifar/resnet20")
    plan = PruningPlan("cifar/resnet20", 10, (3, 32, 32), removed_blocks=["layer1.1"])
    surgery.apply_plan(model, plan)
    assert isinstance(model.layer1[1], torch.nn.Identity)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    bad = plan.to_dict() | {"kept": {"layer1.0.conv1": [0, 0]}, "original": {"layer1.0.conv1": 16}}
    with pytest.raises(ModelError, match="distinct"):
        PruningPlan.from_dict(bad)
    with pytest.raises(ModelError, match="not an interprune plan"):
        PruningPlan.from_dict({"arch": "x"})


def test_torchvision_residual_channels_are_prunable():
    entry = zoo.get_entry("torchvision/resnet18")
    model = zoo.create_model("torchvision/resnet18", num_classes=10).eval()
    groups = surgery.channel_groups(model, (3, 64, 64), entry.protected(model))
    residual = [g for g in groups if len([m for m, side in g.members if side == "out"]) > 4]
    assert residual, "residual stages couple several layers into one group"
    kept = {g.name: list(range(g.size // 2)) for g in groups}
    plan = PruningPlan("torchvision/resnet18", 10, (3, 64, 64), kept, {g.name: g.size for g in groups})
    pruned = surgery.apply_plan(model, plan)
    assert pruned(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_latency_search_finds_the_smallest_reduction_meeting_the_budget():
    curve = lambda r: 10.0 * (1.0 - 0.8 * r)                  # noqa: E731  ms, falls linearly with pruning
    search = allocate.search_latency_budget(curve, budget_ms=6.0)
    assert curve(search.reduction) <= 6.0
    assert search.reduction <= 0.52                            # exact answer 0.5; interpolation + 0.01 rounding
    assert [s["reduction"] for s in search.steps][:3] == [0.0, 0.25, 0.5]
    assert search.steps[-1]["meets_budget"] is True


def test_latency_search_without_pruning_and_unreachable():
    assert allocate.search_latency_budget(lambda r: 1.0, budget_ms=5.0).reduction == 0.0
    with pytest.raises(SpecError, match="unreachable.*5 ms"):
        allocate.search_latency_budget(lambda r: 5.0 + r, budget_ms=2.0)


def test_latency_search_nudges_up_when_interpolation_undershoots():
    curve = lambda r: 10.0 if r < 0.6 else 4.0                 # noqa: E731  a step: interpolation lands too low
    search = allocate.search_latency_budget(curve, budget_ms=5.0, step=0.05)
    assert search.reduction >= 0.6 and curve(search.reduction) <= 5.0


def test_reachable_reduction_is_the_allocators_limit():
    entry, model, groups, base, cm = _setup()
    most = allocate.reachable_reduction(groups, cm, "macs", base.macs, round_to=8)
    assert 0.6 < most < 0.8                  # option A: only block-internal widths move, 16/32/64 -> 8
    scores = {g.name: torch.arange(g.size, dtype=torch.float32) for g in groups}
    allocate.allocate(groups, scores, cm, allocate.Target("macs", most - 0.01), base.macs, round_to=8)
    with pytest.raises(SpecError, match="unreachable"):
        allocate.allocate(groups, scores, cm, allocate.Target("macs", most + 0.02), base.macs, round_to=8)


def test_latency_search_probes_the_reachable_maximum_instead_of_giving_up():
    def curve(r):
        if r > 0.6:
            raise SpecError("unreachable")
        return 10.0 * (1.0 - r)                                  # 4.0 ms at the most that is reachable
    search = allocate.search_latency_budget(curve, budget_ms=4.2, max_reduction=0.6)
    assert [s["reduction"] for s in search.steps][:4] == [0.0, 0.25, 0.5, 0.6]
    assert 0.55 < search.reduction <= 0.6 and search.steps[-1]["meets_budget"]
    with pytest.raises(SpecError, match="most this model allows is -60%"):
        allocate.search_latency_budget(curve, budget_ms=3.0, max_reduction=0.6)


def test_a_forward_that_assumes_a_channel_count_is_explained_with_the_flag_that_fixes_it():
    from pruning.errors import EngineError
    from pruning.surgery import check_consistent

    class FixedView(nn.Module):                   # as if conv lost 2 of its 8 channels to pruning
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(8, 10)

        def forward(self, x):
            y = self.conv(x).mean((2, 3))
            return self.head(y.reshape(x.shape[0], 8))

    with pytest.raises(EngineError, match=r"fails at conv: .*--protect LAYER"):
        check_consistent(FixedView(), (3, 8, 8))
