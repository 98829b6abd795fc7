"""layer_probe: a block that adds nothing (the identity) has the lowest probe gain and goes first."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from pruning import surgery
from pruning.allocate import allocate_blocks
from pruning.criteria import Batch, ScoringContext, create_criterion
from pruning.criteria.layer_probe import (cross_validated_fit, fit_probe, probe_gains, stratified_folds,
                                          stratified_split, train_linear_probe, train_probe, unit_reliance,
                                          windowed_order)
from pruning.models.cifar_resnet import BasicBlock, CifarResNet

WIDTH, SIZE = 4, 8


def revealing_block(source: int, target: int) -> BasicBlock:
    """A residual block whose branch writes relu(x[source] - 2) into channel ``target`` (zero before).

    For inputs >= 0 it passes every channel through unchanged and adds that one feature, so it reveals the
    information hidden in the spread (not the mean) of channel ``source``.
    """
    block = BasicBlock(WIDTH, WIDTH)
    with torch.no_grad():
        for conv in (block.conv1, block.conv2):
            conv.weight.zero_()
        block.conv1.weight[target, source, 1, 1] = 1.0
        block.conv2.weight[target, target, 1, 1] = 1.0
        for bn in (block.bn1, block.bn2):
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.weight.zero_()
            bn.bias.zero_()
            bn.weight[target] = 1.0
        block.bn1.running_mean[target] = 2.0
    return block


class ProbeNet(nn.Module):
    """Three residual blocks: reveal bit 1, a zeroed block (identity), reveal bit 2; pool; linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        zeroed = BasicBlock(WIDTH, WIDTH)                      # random weights...
        with torch.no_grad():
            zeroed.bn2.weight.zero_()                          # ...but BN2 = 0, so the block is relu(x) = x
            zeroed.bn2.bias.zero_()
        self.blocks = nn.Sequential(revealing_block(0, 2), zeroed, revealing_block(1, 3))
        self.fc = nn.Linear(WIDTH, 4)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(x).mean((2, 3)))


def hidden_bit_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes = 2 bits. Channel j < 2 holds 2 + a_j * (random signs), a_j = 0.5 or 1.5 by bit j: the mean of
    every channel is 2 whatever the class, so the pooled input says nothing; relu(x - 2) says everything."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4                                # [N]
    bits = torch.stack([labels % 2, labels // 2], dim=1).float()   # [N, 2]
    amplitude = 0.5 + bits                                      # [N, 2]
    signs = torch.randint(0, 2, (n, 2, SIZE, SIZE), generator=gen).float() * 2 - 1
    images = torch.zeros(n, WIDTH, SIZE, SIZE)
    images[:, :2] = 2 + amplitude.view(n, 2, 1, 1) * signs      # >= 0.5 everywhere
    return images, labels


def probe_context(model: nn.Module, blocks: list[str], images: torch.Tensor, labels: torch.Tensor,
                  input_shape: tuple[int, int, int], num_classes: int) -> ScoringContext:
    batches = [Batch(images[i:i + 100], labels[i:i + 100]) for i in range(0, len(labels), 100)]
    return ScoringContext(model=model, groups=surgery.channel_groups(model, input_shape), blocks=blocks,
                          batches=lambda: iter(batches), input_shape=input_shape, num_classes=num_classes)


def test_identity_block_has_lowest_gain_and_goes_first() -> None:
    model = ProbeNet()
    before = copy.deepcopy(model.state_dict())
    images, labels = hidden_bit_data(600)
    blocks = ["blocks.0", "blocks.1", "blocks.2"]
    ctx = probe_context(model, blocks, images, labels, (WIDTH, SIZE, SIZE), 4)
    result = create_criterion("layer_probe", threshold=0.05).score(ctx)
    reasons = result.block_reasons
    # the probe points: the input of the first block, then each block's output (inputs alias earlier outputs)
    assert [reasons[b]["previous"] for b in blocks] == ["blocks.0:input", "blocks.0", "blocks.1"]
    assert reasons["blocks.0"]["previous_accuracy"] < 0.4      # pooled input: about chance (0.25)
    assert 0.4 < reasons["blocks.0"]["probe_accuracy"] < 0.6   # bit 1 known
    assert reasons["blocks.2"]["probe_accuracy"] > 0.95         # both bits known
    assert reasons["blocks.1"]["gain"] == 0.0                  # identical features, identical probe
    assert reasons["blocks.0"]["gain"] > 0.1 and reasons["blocks.2"]["gain"] > 0.3
    assert min(result.blocks, key=result.blocks.get) == "blocks.1"
    assert result.remove_blocks == ["blocks.1"]
    assert allocate_blocks(result.blocks, {b: 1.0 for b in blocks}, budget=1.0) == ["blocks.1"]
    assert reasons["blocks.1"]["features"] == WIDTH and reasons["blocks.1"]["held_out"] == 180
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value)


def test_cifar_resnet_probe_points_and_zeroed_block() -> None:
    model = CifarResNet(blocks_per_stage=2, num_classes=3, widths=(4, 8, 8)).eval()
    with torch.no_grad():
        model.layer1[1].bn2.weight.zero_()
        model.layer1[1].bn2.bias.zero_()
    images = torch.randn(200, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = (images[:, 0].mean((1, 2)) > 0).long() + (images[:, 1].mean((1, 2)) > 0).long()   # 3 classes
    blocks = ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]
    ctx = probe_context(model, blocks, images, labels, (3, 16, 16), 3)
    result = create_criterion("layer_probe", probe_steps=50).score(ctx)
    assert list(result.blocks) == blocks
    previous = {b: result.block_reasons[b]["previous"] for b in blocks}
    assert previous == {"layer1.0": "layer1.0:input", "layer1.1": "layer1.0",
                        "layer2.1": "layer2.1:input", "layer3.1": "layer3.1:input"}
    assert result.block_reasons["layer1.1"]["gain"] == 0.0
    assert result.remove_blocks == []                          # no threshold, nothing forced
    assert [result.block_reasons[b]["features"] for b in blocks] == [4, 4, 8, 8]


def test_windowed_order_lets_the_gain_nominate_and_the_skip_loss_pick() -> None:
    gains = {"a": 0.0, "b": 0.1, "c": 0.2, "d": 0.3}
    losses = {"a": 5.0, "b": 1.0, "c": 0.5, "d": 0.1}
    assert windowed_order(gains, losses, 0.0) == ["a", "b", "c", "d"]          # the gain alone
    assert windowed_order(gains, losses, 1.0) == ["d", "c", "b", "a"]          # the loss alone
    # half the remaining blocks nominated: {a, b} -> b; {a, c} (2 of 3, rounded up) -> c; {a} -> a; then d
    assert windowed_order(gains, losses, 0.5) == ["b", "c", "a", "d"]


def test_a_refit_window_orders_blocks_by_skip_loss_among_the_lowest_gains() -> None:
    model = CifarResNet(blocks_per_stage=2, num_classes=3, widths=(4, 8, 8)).eval()
    with torch.no_grad():                                      # layer2.1 adds nothing: skipping it costs nothing
        model.layer2[1].bn2.weight.zero_()
        model.layer2[1].bn2.bias.zero_()
    before = copy.deepcopy(model.state_dict())
    images = torch.randn(400, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = (images[:, 0].mean((1, 2)) > 0).long() + (images[:, 1].mean((1, 2)) > 0).long()
    blocks = ["layer1.1", "layer2.1", "layer3.1"]
    ctx = probe_context(model, blocks, images, labels, (3, 16, 16), 3)
    plain = create_criterion("layer_probe", probe_steps=50).score(ctx)
    guided = create_criterion("layer_probe", probe_steps=50, refit_window=1.0).score(ctx)
    reasons = guided.block_reasons
    assert reasons["layer2.1"]["skip_loss"] < 1e-9 < min(reasons[b]["skip_loss"] for b in ("layer1.1", "layer3.1"))
    by_loss = sorted(blocks, key=lambda b: reasons[b]["skip_loss"])
    assert sorted(guided.blocks, key=guided.blocks.get) == by_loss and guided.blocks[by_loss[0]] == 0.0
    assert [reasons[b]["step"] for b in by_loss] == [0, 1, 2]
    assert {b: reasons[b]["gain"] for b in blocks} == {b: plain.block_reasons[b]["gain"] for b in blocks}
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value)


def test_a_refit_window_needs_images_beyond_the_refit_ones() -> None:
    model = CifarResNet(blocks_per_stage=2, num_classes=3, widths=(4, 8, 8)).eval()
    images = torch.randn(100, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ctx = probe_context(model, ["layer1.1"], images, torch.arange(100) % 3, (3, 16, 16), 3)
    with pytest.raises(ValueError, match="more than 128 calibration images"):
        create_criterion("layer_probe", probe_steps=5, refit_window=0.5).score(ctx)


def test_train_linear_probe_separable_and_shuffled() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 4
    centres = torch.randn(4, 6, generator=gen) * 4
    features = centres[labels] + torch.randn(400, 6, generator=gen)
    assert train_linear_probe(features, labels, 4) > 0.95
    shuffled = labels[torch.randperm(400, generator=gen)]
    assert train_linear_probe(features, shuffled, 4) < 0.4     # chance is 0.25
    # deterministic
    assert train_linear_probe(features, labels, 4, seed=1) == train_linear_probe(features, labels, 4, seed=1)


def test_stratified_split_and_gains() -> None:
    labels = torch.arange(100) % 4
    train, held = stratified_split(labels, 0.7, seed=0)
    assert len(train) == 72 and len(held) == 28                # round(0.7 x 25) = 18 per class
    assert set(train.tolist()).isdisjoint(held.tolist())
    assert torch.bincount(labels[held]).tolist() == [7, 7, 7, 7]
    assert torch.equal(stratified_split(labels, 0.7, seed=0)[0], train)
    gains = probe_gains({"a:input": 0.3, "a": 0.5, "b": 0.45}, {"a": "a:input", "b": "a"})
    assert gains == {"a": 0.5 - 0.3, "b": 0.45 - 0.5}


def test_random_blocks_control_is_seeded_and_covers_every_block() -> None:
    blocks = ["blocks.0", "blocks.1", "blocks.2"]
    ctx = ScoringContext(model=ProbeNet(), groups=[], blocks=blocks, batches=lambda: iter([]),
                         input_shape=(WIDTH, SIZE, SIZE), num_classes=4, seed=3)
    scorer = create_criterion("random_blocks")
    first, again = scorer.score(ctx), scorer.score(ctx)
    assert scorer.kind == "block" and set(first.blocks) == set(blocks)
    assert first.blocks == again.blocks and len(set(first.blocks.values())) == 3
    ctx.seed = 4
    assert scorer.score(ctx).blocks != first.blocks


def test_stratified_folds_hold_every_image_out_once_with_every_class_in_each() -> None:
    labels = torch.arange(103) % 4
    folds = stratified_folds(labels, 5, seed=0)
    assert sorted(torch.cat(folds).tolist()) == list(range(103))            # a partition
    assert max(f.numel() for f in folds) - min(f.numel() for f in folds) <= 1
    assert all(set(labels[f].tolist()) == {0, 1, 2, 3} for f in folds)
    assert [f.tolist() for f in stratified_folds(labels, 5, seed=0)] == [f.tolist() for f in folds]
    assert [f.tolist() for f in stratified_folds(labels, 5, seed=1)] != [f.tolist() for f in folds]


def test_cross_validated_fit_scores_every_image_once_and_one_split_is_the_plain_probe() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    x = torch.randn(200, 3, generator=gen)
    x[:, 0] += 1.5 * (labels.float() * 2 - 1)                                # separable on channel 0, noisily
    train, held = stratified_split(labels, 0.7, seed=0)
    one = cross_validated_fit(x, labels, 2, [held])
    plain = fit_probe(x[train], labels[train], x[held], labels[held], 2)
    assert one.accuracy == plain.accuracy and one.loss == pytest.approx(plain.loss)
    five = cross_validated_fit(x, labels, 2, stratified_folds(labels, 5, seed=0))
    assert 0.8 < five.accuracy < 1.0
    assert (five.accuracy * 200) == pytest.approx(round(five.accuracy * 200))   # a count over all 200 images


def test_folds_are_validated_and_recorded() -> None:
    from pruning.errors import SpecError

    with pytest.raises(SpecError, match=r"folds must be a whole number in \[1, 20\]"):
        create_criterion("layer_probe", folds=0)
    model = ProbeNet()
    images, labels = hidden_bit_data(600)
    ctx = probe_context(model, ["blocks.0", "blocks.1", "blocks.2"], images, labels, (WIDTH, SIZE, SIZE), 4)
    result = create_criterion("layer_probe", folds=5).score(ctx)
    assert result.block_reasons["blocks.1"]["held_out"] == 600                 # every image held out once
    assert min(result.blocks, key=result.blocks.get) == "blocks.1"


# --- width: the same probes rank channels (depth_share < 1) -------------------------------------------

def test_unit_reliance_is_the_held_out_loss_rise_with_the_feature_held_at_its_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    x = torch.randn(300, 3, generator=gen)
    x[:, 0] += 2.0 * (labels == 1).float()               # feature 0 tells class 1 apart
    x[:, 1] += 2.0 * (labels == 2).float()               # feature 1 tells class 2 apart; feature 2 is noise
    probe = train_probe(x[:200], labels[:200], 3)
    reliance = unit_reliance(probe, x[200:], labels[200:])

    def held_out_loss(features: torch.Tensor) -> float:
        z = (features.double().numpy() - probe.mean) / probe.std @ probe.weight + probe.bias
        return float(torch.nn.functional.cross_entropy(torch.from_numpy(z), labels[200:]))

    for k in range(3):
        without = x[200:].clone()
        without[:, k] = float(probe.mean[0, k])
        expected = held_out_loss(without) - held_out_loss(x[200:])
        assert reliance[k] == pytest.approx(expected, abs=1e-6)          # the mean was rounded to float32
    assert reliance[0] > 0.2 and reliance[1] > 0.2 and abs(reliance[2]) < 0.05


def test_probe_reliance_ranks_the_unit_that_carries_the_class_first() -> None:
    model = ProbeNet()
    images, labels = hidden_bit_data(600)
    ctx = probe_context(model, [], images, labels, (WIDTH, SIZE, SIZE), 4)
    result = create_criterion("layer_probe", depth_share=0.5).score(ctx)
    assert set(result.channels) == {g.name for g in ctx.groups}
    # blocks.0's conv1 writes relu(x0 - 2), the spread of input channel 0 (bit 1), into unit 2; its other units are 0
    scores = result.channels["blocks.0.conv1"]
    assert int(scores.argmax()) == 2 and scores[2] > 0.2
    assert scores[[0, 1, 3]].abs().max() < 1e-5
    reason = result.reasons["blocks.0.conv1"][2]
    assert reason["probe_reliance"] == pytest.approx(float(scores[2]), abs=1e-4)
    assert 0.4 < reason["probe_accuracy"] < 0.6          # one of the two bits
    assert result.blocks == {}                           # no blocks asked for


def test_depth_share_is_validated_and_says_whether_channels_are_scored() -> None:
    from pruning.errors import SpecError

    for name in ("layer_probe", "random_blocks"):
        assert not create_criterion(name).scores_channels
        assert create_criterion(name, depth_share=0.4).scores_channels
        for bad in (0, 1.5, -0.1):
            with pytest.raises(SpecError, match=r"depth_share must be a number in \(0, 1\] \(1 = the whole target"):
                create_criterion(name, depth_share=bad)
    assert create_criterion("l1").scores_channels


def test_random_blocks_with_a_depth_share_ranks_channels_at_random_by_the_seed() -> None:
    model = ProbeNet()
    images, labels = hidden_bit_data(200)
    ctx = probe_context(model, ["blocks.0", "blocks.1"], images, labels, (WIDTH, SIZE, SIZE), 4)
    result = create_criterion("random_blocks", depth_share=0.5).score(ctx)
    random_channels = create_criterion("random").score(ctx).channels
    assert set(result.blocks) == {"blocks.0", "blocks.1"}
    assert all(torch.equal(result.channels[n], random_channels[n]) for n in random_channels)


@pytest.mark.parametrize("criterion", ["layer_probe", "random_blocks"])
def test_a_depth_share_removes_blocks_for_its_share_and_channels_for_the_rest(digits_weights, criterion) -> None:
    from pruning.compress import CompressSpec, DataSpec, FinetuneSpec, ModelSpec, PruneSpec, compress

    def run(params: dict):
        return compress(CompressSpec(ModelSpec("demo/small_cnn", str(digits_weights)),
                                     data=DataSpec(None, calibration_images=300),
                                     prune=PruneSpec(criterion, criterion_params=params, target_reduction=0.4,
                                                     allocation="uniform", round_to=1),
                                     finetune=FinetuneSpec(steps=0)))

    # small_cnn has two removable blocks of 28% of its MACs each: depth alone stops at one (28%, short of 40%)
    whole, mixed = run({}), run({"depth_share": 0.4})
    assert len(whole.plan.removed_blocks) == 1 and not any(row["kept"] < row["original"] for row in whole.layers)
    assert whole.reduction("macs") < 0.3
    assert mixed.plan.removed_blocks == whole.plan.removed_blocks                  # the block the criterion ranks last
    assert any(row["kept"] < row["original"] for row in mixed.layers)              # the rest by width
    assert mixed.reduction("macs") == pytest.approx(0.4, abs=0.02)
    assert set(mixed.scores.channels) and all(mixed.scores.reasons[g] for g in mixed.scores.channels)
