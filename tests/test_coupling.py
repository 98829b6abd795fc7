"""Coupled channels end to end: concatenation + residual, squeeze-excitation, depthwise and grouped convolutions,
ShuffleNet's channel shuffle and RegNet's grouped bottlenecks each prune to the target, export with parity; the
shortfall policy; engine errors that name the layer; a re-fit that cannot make things worse."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import coupling_nets
from pruning import reconstruct as rec
from pruning import surgery, zoo
from pruning.compress import CompressSpec, DataSpec, ModelSpec, PruneSpec, compress
from pruning.errors import EngineError, TargetUnreachable
from pruning.plan import PruningPlan

coupling_nets.register()

CASES = {                      # arch -> input size (small: the shapes matter, not the pixels)
    "test/concat_residual": 32, "test/se": 32, "test/depthwise": 32, "test/grouped": 32,
    "torchvision/regnet_x_400mf": 32, "torchvision/shufflenet_v2_x1_0": 32,
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """An npz of 48 random 32x32 RGB images (16 calibration, 8 evaluation)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("coupling") / "random.npz"
    np.savez(path, images=rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8), labels=rng.integers(0, 10, 48))
    return path


def _spec(arch: str, data, size: int, reduction: float = 0.3, **prune) -> CompressSpec:
    return CompressSpec(model=ModelSpec(arch, num_classes=10),
                        data=DataSpec(str(data), calibration_images=16, evaluation_images=8, batch_size=16,
                                      input_size=None if arch.startswith("test/") else (size, size)),
                        prune=PruneSpec(criterion="l1", target_reduction=reduction, **prune))


@pytest.mark.parametrize("arch", list(CASES))
def test_coupled_nets_reach_the_target_and_export_with_parity(arch, images, tmp_path):
    from exporters.onnx import check_parity, export_onnx

    size = CASES[arch]
    result = compress(_spec(arch, images, size))
    assert abs(result.reduction("macs") - 0.3) <= 0.02, result.plan.widths()
    assert not result.warnings
    x = torch.randn(4, 3, size, size)
    assert result.model(x).shape == (4, 10)                     # the classifier keeps its classes
    exported = export_onnx(result.model, tmp_path / "m.onnx", x[:1])
    parity = check_parity(exported.path, result.model, x)
    assert parity.max_rel_error < 1e-4 and parity.top1_agreement == 1.0
    assert any(f.status == "refit" for f in result.fits)
    if arch == "torchvision/shufflenet_v2_x1_0":                # the shuffled streams stay whole, and say why
        assert any("left unpruned" in n and "channel shuffle" in n for n in result.notes)


def test_the_sensitivity_knapsack_lands_on_the_target_with_few_wide_groups(images):
    # at width multiple 8 the SE net's chunks landed at 27.1% or 37.9% for 30% (TargetUnreachable); one swap of
    # chunks between two groups lands within the tolerance
    result = compress(_spec("test/se", images, 32, allocation="sensitivity"))
    assert abs(result.reduction("macs") - 0.3) <= 0.02 and not result.warnings, result.plan.widths()


def test_grouped_convs_shrink_uniformly_per_group():
    model = coupling_nets.GroupedNet().eval()
    groups = {g.name: g for g in surgery.channel_groups(model, (3, 32, 32))}
    assert groups["block1.reduce.0"].interleave == 4 and groups["block2.grouped.0"].interleave == 8
    assert groups["block2.expand.0"].interleave == 2            # the residual stream feeds mid (2 groups)


def test_se_gate_and_concat_channels_are_coupled_to_their_stream():
    se = {g.name: g for g in surgery.channel_groups(coupling_nets.SENet().eval(), (3, 32, 32))}
    stream = se["block1.se.fc2"]                                # the gate's output, the block's conv2 and stem
    assert {("block1.conv2.0", "out"), ("stem.0", "out"), ("block1.se.fc1", "in")} <= set(stream.members)
    cat = {g.name: g for g in surgery.channel_groups(coupling_nets.ConcatResidualNet().eval(), (3, 32, 32))}
    half = cat["block1.a.1"]                                    # first half of the concatenation = stem 0..15
    stem = half.members.index(("stem.0", "out"))
    assert half.member_channels(stem, range(16)) == list(range(16))
    assert cat["block2.b.1"].member_channels(cat["block2.b.1"].members.index(("stem.0", "out")), [0]) == [16]


def test_impossible_target_names_the_reachable_reduction_or_warns(images):
    with pytest.raises(TargetUnreachable, match=r"largest reachable macs reduction is \d+\.\d%") as caught:
        compress(_spec("test/depthwise", images, 32, reduction=0.97))
    reachable = caught.value.reachable
    assert 0.5 < reachable < 0.97
    result = compress(_spec("test/depthwise", images, 32, reduction=0.97, allow_shortfall=True))
    assert len(result.warnings) == 1 and "unreachable" in result.warnings[0]
    assert abs(result.reduction("macs") - reachable) < 0.02


def test_a_plan_that_breaks_a_grouped_conv_is_an_engine_error_naming_it():
    model = coupling_nets.GroupedNet().eval()
    plan = PruningPlan("test/grouped", 10, (3, 32, 32), {"block1.reduce.0": list(range(1, 64))},
                       {"block1.reduce.0": 64})                  # not uniform over the 4 conv groups
    with pytest.raises(EngineError, match="block1.grouped.0 with 63 input"):
        surgery.apply_plan(model, plan)


# --- the re-fit -----------------------------------------------------------------------------------

def _output_error(pruned: nn.Module, model: nn.Module, probe: torch.Tensor) -> float:
    with torch.no_grad():
        ref = model(probe)
        return float((pruned(probe) - ref).pow(2).sum() / ref.pow(2).sum())


def test_refit_from_few_images_is_never_worse_than_no_refit():
    torch.manual_seed(0)
    model = zoo.create_model("cifar/resnet20").eval()
    rec.recalibrate_batchnorm(model, [torch.randn(64, 3, 32, 32)])
    model.eval()
    groups = surgery.channel_groups(model, (3, 32, 32), zoo.get_entry("cifar/resnet20").protected(model))
    plan = PruningPlan("cifar/resnet20", 10, (3, 32, 32), {g.name: list(range(0, g.size, 4)) for g in groups},
                       {g.name: g.size for g in groups})
    pruned = surgery.apply_plan(copy.deepcopy(model), plan).eval()
    probe = torch.randn(128, 3, 32, 32)
    plain = _output_error(pruned, model, probe)
    consumers = [c for g in groups for c in g.consumers]
    fits = rec.reconstruct(model, pruned, consumers, {}, lambda: iter([torch.randn(10, 3, 32, 32)]))
    assert _output_error(pruned, model, probe) <= plain * 1.001
    assert all(f.heldout_after is None or f.heldout_after <= f.heldout_before for f in fits)
    assert all(f.status in ("refit", "kept", "reverted") for f in fits)


def test_large_layers_switch_to_the_kernel_form_or_are_skipped_within_the_memory_bound():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(7), nn.Flatten(),
                          nn.Linear(32 * 49, 10)).eval()
    groups = surgery.channel_groups(model, (3, 16, 16))
    (group,) = groups
    assert group.member_ratio(group.members.index(("4", "in"))) == 49          # flatten: 49 inputs per channel
    plan = PruningPlan("x", 10, (3, 16, 16), {"0": list(range(16))}, {"0": 32})
    batches = [torch.randn(40, 3, 16, 16)]
    for budget, method, status in ((1.0, "kernel", None), (0.01, "gram", "skipped")):
        pruned = surgery.apply_plan(copy.deepcopy(model), plan).eval()
        (fit,) = rec.reconstruct(model, pruned, ["4"], {}, lambda: iter(batches), max_memory_mb=budget)
        assert fit.inputs == 16 * 49 + 1
        if status == "skipped":
            assert fit.status == "skipped" and "max_memory_mb" in fit.note
        else:
            assert fit.method == method and fit.status in ("refit", "kept") and fit.error_after <= fit.error_before


def test_per_batch_and_single_pass_refits_both_improve_the_output():
    torch.manual_seed(0)
    model = zoo.create_model("cifar/resnet20").eval()
    rec.recalibrate_batchnorm(model, [torch.randn(64, 3, 32, 32)])
    model.eval()
    groups = surgery.channel_groups(model, (3, 32, 32), zoo.get_entry("cifar/resnet20").protected(model))
    plan = PruningPlan("cifar/resnet20", 10, (3, 32, 32), {g.name: list(range(0, g.size, 2)) for g in groups},
                       {g.name: g.size for g in groups})
    batches = [torch.randn(50, 3, 32, 32) for _ in range(4)]
    probe = torch.randn(64, 3, 32, 32)
    consumers = [c for g in groups for c in g.consumers]
    for budget in (1024, 25):                                   # 25 MB: too little for one 200-image pass
        pruned = surgery.apply_plan(copy.deepcopy(model), plan).eval()
        plain = _output_error(pruned, model, probe)
        fits = rec.reconstruct(model, pruned, consumers, {}, lambda: iter(batches), max_memory_mb=budget)
        assert len(fits) == 9 and sum(f.samples for f in fits) > 0
        assert _output_error(pruned, model, probe) < 0.7 * plain



def test_a_downsample_conv_is_recorded_once_per_batch_and_refits_batch_by_batch():
    # torchvision's ResNet-18 at 224x224 failed "reconstruction of layer2.0.downsample.0 ... IndexError": the
    # residual tail's hook ran the downsample to get the shortcut, which recorded the downsample's targets a
    # second time per batch (harmless in one pass, misaligned batch by batch: a crash, or wrong targets)
    import torchvision

    from pruning.layer_io import original_targets, residual_tails, rows, sample_positions

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    batches = [torch.randn(6, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    name = "layer2.0.downsample.0"
    order = ["layer2.0.conv2", name]
    store = original_targets(model, order, residual_tails(model), lambda: iter(batches), 8, 0)
    assert len(store[name]["y"]) == len(store["layer2.0.conv2"]["s"]) == 2
    seen = {}
    hook = model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.setdefault("out", []).append(o))
    for images in batches:
        model(images)
    hook.remove()
    for index, (images, out) in enumerate(zip(batches, seen["out"])):
        pos = sample_positions(name, index, len(images), out.shape[2] * out.shape[3], 8, 0)
        assert torch.allclose(store[name]["y"][index], rows(model.get_submodule(name), out, pos).float())

    groups = surgery.channel_groups(model, (3, 32, 32))
    plan = PruningPlan("x", 10, (3, 32, 32), {g.name: list(range(0, g.size, 2)) for g in groups},
                       {g.name: g.size for g in groups})
    pruned = surgery.apply_plan(copy.deepcopy(model), plan).eval()
    consumers = sorted({c for g in groups for c in g.consumers}, key=list(dict(model.named_modules())).index)
    many = [torch.randn(n, 3, 32, 32) for n in (30, 20, 10)]
    kept = surgery.kept_outputs(model, groups, plan, consumers)
    fits = rec.reconstruct(model, pruned, consumers, kept, lambda: iter(many), max_memory_mb=4)  # batch by batch
    downsample = [f for f in fits if f.name.endswith("downsample.0")]
    assert len(downsample) == 3 and all(f.status in ("refit", "kept") and f.samples > 0 for f in downsample)


def test_a_refitted_conv_whose_outputs_a_concatenation_splits_keeps_both_halves():
    torch.manual_seed(0)
    model = coupling_nets.ConcatResidualNet().eval()
    rec.recalibrate_batchnorm(model, [torch.randn(32, 3, 32, 32)])
    model.eval()
    groups = surgery.channel_groups(model, (3, 32, 32))
    plan = PruningPlan("test/concat_residual", 10, (3, 32, 32),
                       {g.name: list(range(0, g.size, 2)) for g in groups}, {g.name: g.size for g in groups})
    pruned = surgery.apply_plan(copy.deepcopy(model), plan).eval()
    consumers = sorted({c for g in groups for c in g.consumers})
    kept = surgery.kept_outputs(model, groups, plan, consumers)
    assert kept["down.0"] == list(range(0, 64, 2))             # both halves of block3's concatenation, each halved
    fits = rec.reconstruct(model, pruned, consumers, kept, lambda: iter([torch.randn(40, 3, 32, 32)]))
    down = next(f for f in fits if f.name == "down.0")
    assert down.samples > 0 and down.error_after <= down.error_before


def test_a_refit_that_makes_the_output_worse_is_reverted(monkeypatch):
    torch.manual_seed(0)
    model = zoo.create_model("cifar/resnet20").eval()
    groups = surgery.channel_groups(model, (3, 32, 32), zoo.get_entry("cifar/resnet20").protected(model))
    plan = PruningPlan("cifar/resnet20", 10, (3, 32, 32), {g.name: list(range(0, g.size, 2)) for g in groups},
                       {g.name: g.size for g in groups})
    pruned = surgery.apply_plan(copy.deepcopy(model), plan).eval()
    before = copy.deepcopy(pruned.state_dict())
    errors = iter([0.1, 0.2])                                  # the check says: worse after the re-fit
    monkeypatch.setattr(rec, "_heldout_output_error", lambda *args: next(errors))
    fits = rec.reconstruct(model, pruned, [c for g in groups for c in g.consumers], {},
                           lambda: iter([torch.randn(20, 3, 32, 32)]))
    assert fits and all(f.status in ("reverted", "kept") and "reverted" in f.note for f in fits)
    assert all(torch.equal(v, pruned.state_dict()[k]) for k, v in before.items())


def test_a_linear_root_on_channels_last_maps_gives_channel_first_activations():
    from pruning.activations import group_activation_fn
    from pruning.criteria.base import ChannelGroup

    model = nn.Sequential(nn.Linear(8, 16))                      # ConvNeXt's pointwise layer on [N, H, W, C]
    fn = group_activation_fn(model, ChannelGroup("0", 16, (("0", "out"),), ()))
    maps = torch.randn(2, 5, 6, 16)
    assert torch.equal(fn(maps), torch.relu(maps.movedim(-1, 1)))
    assert fn(torch.randn(3, 16)).shape == (3, 16, 1, 1)
