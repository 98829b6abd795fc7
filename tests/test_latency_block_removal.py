"""Allocation "latency" may remove a whole residual block instead of narrowing it (pruning.allocate ``whole``,
pruning.sensitivity ``bypass``, pruning.stages ``block_groups``): the block's inner group can lose every channel in
one step, at any width, priced at the measured loss of skipping the block and the predicted ms of its layers."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from pruning import allocate, surgery, zoo
from pruning.latency_model import LatencyModel, LayerShape
from pruning.measure import count_cost
from pruning.plan import PruningPlan
from pruning.reconstruct import reconstruct
from pruning.sensitivity import SensitivityCurve, measure_sensitivity
from pruning.stages import Candidates, block_groups, first_layers_after, split_removed_blocks
from tests.resnet20_parts import resnet20_parts

BATCH = 8


def macs_ms(shape: LayerShape) -> float:
    """1 ms per 10^7 MACs at the batch; the 16-channel stage (32x32 inputs) 10x slower than its MACs say."""
    kh, kw = shape.kernel
    positions = shape.height * shape.width // (shape.stride[0] * shape.stride[1])
    slow = 10.0 if shape.height == 32 and shape.stride == (1, 1) else 1.0
    return slow * 1e-7 * shape.batch * shape.in_channels / shape.groups * shape.out_channels * kh * kw * positions


@pytest.fixture(scope="module")
def net():
    parts = resnet20_parts()
    entry, model, groups, costs = parts.entry, parts.model, parts.groups, parts.costs
    prunable = {m for g in groups for m in g.members}
    latency = LatencyModel(model, entry.input_shape, BATCH, macs_ms, 1.0, grid_step=8, cost_model=costs,
                           prunable=prunable)
    latency = latency.anchored(latency.layer_sum_ms)
    bypass = block_groups(groups, entry.removable_blocks(model))
    return entry, model, groups, latency, bypass


def test_each_removable_block_maps_to_its_one_inner_group(net):
    entry, model, groups, _, bypass = net
    blocks = entry.removable_blocks(model)
    assert len(blocks) == 7 and "layer2.0" not in blocks and "layer3.0" not in blocks     # downsampling blocks stay
    assert bypass == {f"{block}.conv1": block for block in blocks}
    plain = zoo.create_model("demo/small_cnn")
    plain_groups = surgery.channel_groups(plain, (1, 8, 8), [])
    assert block_groups(plain_groups, ["features.1", "features.2"]) == {}      # its outputs leave the block


def test_a_layer_with_no_channels_left_costs_nothing(net):
    _, _, groups, latency, _ = net
    group = next(g for g in groups if g.name == "layer1.1.conv1")
    one = allocate.widths_removed(groups, {group.name: 8})
    every = allocate.widths_removed(groups, {group.name: group.size})
    full = latency.cost("latency", {})
    conv1, conv2 = latency.layer_ms("layer1.1.conv1"), latency.layer_ms("layer1.1.conv2")
    assert full - latency.cost("latency", every) == pytest.approx(conv1 + conv2)
    assert 0 < full - latency.cost("latency", one) < conv1 + conv2


def test_the_bypass_point_is_the_loss_of_the_model_without_the_block_and_its_next_layers_refitted(net):
    entry, model, groups, _, bypass = net
    group = next(g for g in groups if g.name == "layer1.1.conv1")
    images = torch.randn(64, *entry.input_shape, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def curve(refit: bool) -> SensitivityCurve:
        sens = measure_sensitivity(model, [group], {group.name: lambda n: list(range(n))}, {group.name: [8]},
                                   [images], images, refit=refit, bypass={group.name: "layer1.1"})
        return sens.curves[group.name]

    plain, refitted = curve(False), curve(True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())
    assert plain.removed == refitted.removed == (0, 8, group.size)
    without = copy.deepcopy(model)
    surgery.remove_blocks(without, ["layer1.1"])
    with torch.no_grad():
        skipped = float(((without(images) - model(images)) ** 2).sum(1).mean())
    assert skipped > 0 and plain.loss[-1] == pytest.approx(max(skipped, plain.loss[1]), rel=1e-4)
    assert surgery.layers_after(without, "layer1.1", 2) == ["layer1.2.conv1", "layer1.2.conv2"]
    fits = reconstruct(model, without, ["layer1.2.conv1", "layer1.2.conv2"], {}, lambda: iter([images]))
    with torch.no_grad():
        expected = float(((without(images) - model(images)) ** 2).sum(1).mean())
    assert any(f.status == "refit" for f in fits) and expected < skipped
    assert refitted.loss[-1] == pytest.approx(max(expected, refitted.loss[1]), rel=1e-3)


def curves_with_cheap_block(groups, cheap: str) -> dict:
    """Each group: loss 1 per removed channel down to a width of 8, all of it 1000; ``cheap``: all of it 0.5."""
    out = {}
    for g in groups:
        last = 0.5 if g.name == cheap else 1000.0
        out[g.name] = SensitivityCurve(g.name, (0, g.size - 8, g.size), (0.0, min(g.size - 8.0, last), last))
    return out


def test_a_cheap_block_goes_whole_from_full_width(net):
    _, _, groups, latency, bypass = net
    scores = {g.name: torch.arange(g.size, dtype=torch.float32) for g in groups}
    curves = curves_with_cheap_block(groups, "layer1.2.conv1")
    target = allocate.Target("latency", 0.3)         # a stage-1 block is ~27% of this table's ms
    base = latency.cost("latency", {})
    with_blocks = allocate.allocate(groups, scores, latency, target, base, mode="latency", round_to=8, curves=curves,
                                    whole=set(bypass))
    assert with_blocks.kept["layer1.2.conv1"] == []
    assert all(with_blocks.kept[n] for n in with_blocks.kept if n != "layer1.2.conv1")
    without = allocate.allocate(groups, scores, latency, target, base, mode="latency", round_to=8, curves=curves)
    assert all(kept for kept in without.kept.values())
    assert allocate.reachable_reduction(groups, latency, "latency", base, whole=set(bypass)) > \
        allocate.reachable_reduction(groups, latency, "latency", base) + 0.05


def test_an_emptied_group_becomes_a_removed_block_in_the_plan_and_the_model(net):
    entry, model, groups, _, bypass = net
    kept = {g.name: list(range(g.size)) for g in groups}
    kept["layer1.2.conv1"], kept["layer3.1.conv1"] = [], list(range(32))
    channels, blocks = split_removed_blocks(kept, bypass)
    assert blocks == ["layer1.2"] and "layer1.2.conv1" not in channels
    base = count_cost(model, entry.input_shape)
    candidates = Candidates(model, [], entry.input_shape, base, "macs")
    pruned = candidates.model_for(channels, blocks, {g.name: g.size for g in groups})
    assert isinstance(pruned.layer1[2], nn.Identity) and pruned.layer3[1].conv1.out_channels == 32
    plan = PruningPlan("cifar/resnet20", 10, entry.input_shape, channels, {n: 16 for n in channels}, blocks)
    assert candidates.take(plan) is not None                  # the measured candidate is the plan: reused
    assert first_layers_after(pruned, blocks) == ["layer2.0.conv1"]
    with torch.no_grad():
        assert pruned(torch.zeros(2, *entry.input_shape)).shape == (2, 10)


def test_the_report_names_the_blocks_the_latency_plan_removed():
    from pipeline.report import latency_allocation_line

    section = {"target": "local:cpu", "batch_size": 64, "targeted": "reduction", "reduction": 0.45,
               "original_ms": 140.0, "predicted_ms": 78.0, "measured_ms": 90.0, "final_p90_ms": None,
               "removed_blocks": [{"block": "layer1.0", "group": "layer1.0.conv1", "loss": 3.3},
                                  {"block": "layer1.2", "group": "layer1.2.conv1", "loss": 2.8}]}
    line = latency_allocation_line(section)
    assert line.endswith("; 2 block(s) removed whole: layer1.0, layer1.2")
    assert "removed whole" not in latency_allocation_line({**section, "removed_blocks": []})


def run_job(monkeypatch, tmp_path, **prune) -> dict:
    """ResNet-20 (random init, random 32x32 images) through ``run_pipeline``; the skip loss is faked to 0 (the
    curve then ends at its last narrowing's loss) so that a plan offered block moves takes some. Layer ms:
    ``macs_ms``; the probe 'measures' 1 ms per million MACs; no export, no benchmark."""
    import pipeline.run as pipeline_run
    import pruning.sensitivity as sensitivity
    from pipeline.spec import BenchmarkSpec, ExportSpec, JobSpec
    from pruning.compress import CompressSpec, DataSpec, ModelSpec, PruneSpec
    from tests.conftest import make_npz

    class FakeTable:
        def __init__(self, target, threads, scratch=None):
            self.target, self.measurements, self.measure_seconds, self.path = target, 0, 0.0, "(fake)"

        def __call__(self, shape):
            return macs_ms(shape)

    def fake_probe(target, threads, out, seconds_per_batch):
        return lambda model, input_shape, batch: count_cost(model, input_shape).macs / 1e6

    monkeypatch.setattr(pipeline_run, "latency_probe", fake_probe)
    monkeypatch.setattr(pipeline_run, "LayerLatencyTable", FakeTable)
    monkeypatch.setattr(sensitivity, "bypass_loss", lambda *args, **kwargs: 0.0)
    data = make_npz(tmp_path / "cifar-like.npz", n=100, size=32, channels=3)
    spec = JobSpec(CompressSpec(ModelSpec("cifar/resnet20"), DataSpec(str(data), calibration_images=64),
                                prune=PruneSpec(**prune)),
                   export=ExportSpec(onnx=False), benchmark=BenchmarkSpec(targets=()))
    return pipeline_run.run_pipeline(spec, tmp_path / "job")


def test_a_latency_job_that_removes_blocks_says_so_everywhere(monkeypatch, tmp_path):
    """The plan, the model, report.json (schema), the summary and the HTML page name the removed blocks."""
    from pipeline.report import summary_table
    from pipeline.report_schema import validate_report

    report = run_job(monkeypatch, tmp_path, allocation="latency", target_metric="latency", target_reduction=0.3,
                     latency_batch=4)
    out = tmp_path / "job"
    gone = report["latency_allocation"]["removed_blocks"]
    assert gone and all(b["loss"] >= 0 and b["group"] == b["block"] + ".conv1" for b in gone)
    assert report["removed_blocks"] == [b["block"] for b in gone]
    assert not any(g["layer"] == b["group"] for g in report["criterion"]["groups"] for b in gone)
    assert any(n.startswith(f"latency allocation: {len(gone)} block(s) removed whole") for n in report["notes"])
    assert f"{len(gone)} block(s) removed whole: {gone[0]['block']}" in summary_table(report)
    validate_report(report)
    assert f"{len(gone)} block(s) removed whole" in (out / "report.html").read_text()
    refitted = {fit["name"] for fit in report["reconstruction"]}
    model = zoo.create_model("cifar/resnet20")
    surgery.remove_blocks(model, report["removed_blocks"])
    assert set(first_layers_after(model, report["removed_blocks"])) <= refitted


@pytest.mark.parametrize("setting, removes", [("on", True), ("auto", False), ("off", False)])
def test_the_macs_knapsack_removes_blocks_only_when_asked(monkeypatch, tmp_path, setting, removes):
    report = run_job(monkeypatch, tmp_path, allocation="sensitivity", target_reduction=0.4, block_removal=setting)
    assert bool(report["removed_blocks"]) is removes
    assert report["spec"]["compress"]["prune"]["block_removal"] == setting
    assert 0.37 <= report["reduction"]["macs"] <= 0.43                          # the target, measured
    notes = [n for n in report["notes"] if n.startswith("sensitivity allocation:")]
    assert bool(notes) is removes and all("block(s) removed whole" in n for n in notes)
    assert "latency_allocation" not in report


def test_block_removal_needs_a_knapsack_and_a_known_setting():
    from pruning.errors import SpecError
    from pruning.spec import PruneSpec, check_allocation, offers_block_moves

    with pytest.raises(SpecError, match="--allocation sensitivity or latency"):
        check_allocation(PruneSpec(allocation="uniform", block_removal="on"))
    with pytest.raises(SpecError, match="auto, on, off"):
        check_allocation(PruneSpec(block_removal="sometimes"))
    assert offers_block_moves(PruneSpec(allocation="latency", target_metric="latency"))
    assert not offers_block_moves(PruneSpec(allocation="latency", target_metric="latency", block_removal="off"))
    assert not offers_block_moves(PruneSpec(allocation="sensitivity"))
    assert offers_block_moves(PruneSpec(allocation="sensitivity", block_removal="on"))


def test_the_flag_and_the_wire_carry_the_setting():
    import argparse

    from pipeline.flags import add_spec_arguments, argv_from_spec, spec_from_args
    from pipeline.spec import JobSpec
    from service.api.validate import validate_spec
    from service.core.errors import InvalidArgument
    from service.core.wire import spec_to_dict, spec_to_proto

    parser = argparse.ArgumentParser()
    add_spec_arguments(parser)
    spec = spec_from_args(parser.parse_args(["--arch", "cifar/resnet20", "--allocation", "sensitivity",
                                             "--block-removal", "on"]))
    assert spec.compress.prune.block_removal == "on"
    argv = argv_from_spec(spec.to_dict())
    assert argv[argv.index("--block-removal") + 1] == "on"
    message = spec_to_proto(spec)
    assert message.prune.block_removal == "on"
    assert JobSpec.from_dict(spec_to_dict(message)[0]).to_dict() == spec.to_dict()
    message.prune.block_removal = "always"
    with pytest.raises(InvalidArgument, match="auto, on or off"):
        validate_spec(message, lambda _: True)
