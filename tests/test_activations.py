"""pruning.activations: which tensor is captured, streaming statistics, the subsample bound."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pruning import surgery
from pruning.activations import (ChannelStats, collect, group_activation_fn, group_norm_layer,
                                 module_outputs_in_order, quantile_rows)
from pruning.criteria.base import Batch


class ConvBnNet(nn.Module):
    """conv (1 -> 2, 1x1) -> bn -> relu -> pool -> linear, with hand-set weights and BN statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1))
            self.bn.running_mean.copy_(torch.tensor([0.5, -1.0]))
            self.bn.running_var.copy_(torch.tensor([4.0, 0.25]))
            self.bn.weight.copy_(torch.tensor([2.0, 1.0]))
            self.bn.bias.copy_(torch.tensor([0.1, -0.2]))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


def _expected(x: torch.Tensor) -> torch.Tensor:
    """The post-ReLU map of ConvBnNet written out by hand: [N, 1, H, W] -> [N, 2, H, W]."""
    eps = 1e-5
    a = F.relu((1.0 * x - 0.5) / (4.0 + eps) ** 0.5 * 2.0 + 0.1)
    b = F.relu((-2.0 * x + 1.0) / (0.25 + eps) ** 0.5 * 1.0 - 0.2)
    return torch.cat([a, b], dim=1)


def _inputs(n: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 5, 6, generator=torch.Generator().manual_seed(seed))


def test_group_activation_is_conv_bn_relu() -> None:
    model = ConvBnNet()
    (group,) = surgery.channel_groups(model, (1, 5, 6))
    assert group.name == "conv"
    assert group_norm_layer(model, group) == "bn"
    x = _inputs()
    fn = group_activation_fn(model, group)
    torch.testing.assert_close(fn(model.conv(x)), _expected(x))


def test_group_without_batchnorm_is_relu_only() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 4, 2))
    (group,) = [g for g in surgery.channel_groups(model, (1, 5, 6)) if g.name == "0"]
    assert group_norm_layer(model, group) is None
    out = torch.randn(2, 3, 3, 4)
    torch.testing.assert_close(group_activation_fn(model, group)(out), out.clamp_min(0))


def test_collect_streams_stats_equal_to_direct_computation() -> None:
    model = ConvBnNet()
    groups = surgery.channel_groups(model, (1, 5, 6))
    x = _inputs(12)
    batches = [Batch(x[i:i + 5], torch.zeros(len(x[i:i + 5]), dtype=torch.long)) for i in range(0, 12, 5)]
    stats = ChannelStats(2, max_samples=10_000, seed=0)
    sizes = []

    def on_batch(batch: Batch, maps: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
        sizes.append(tuple(maps["conv"].shape))
        stats.update(maps["conv"])

    assert collect(model, groups, batches, on_batch) == 12
    assert sizes == [(5, 2, 5, 6), (5, 2, 5, 6), (2, 2, 5, 6)]
    direct = _expected(x).transpose(0, 1).reshape(2, -1).double()        # [2, 360]
    assert stats.count == 360 and stats.exact
    torch.testing.assert_close(stats.mean, direct.mean(1).float())
    torch.testing.assert_close(stats.mean_sq, direct.square().mean(1).float())
    torch.testing.assert_close(stats.std, direct.std(1, unbiased=False).float())
    torch.testing.assert_close(stats.max, direct.max(1).values.float())
    # all values kept: the quantile is exact
    torch.testing.assert_close(stats.quantile(0.995), torch.quantile(direct.float(), 0.995, dim=1))
    # hooks are gone afterwards and the model is unchanged
    assert not model.conv._forward_hooks
    torch.testing.assert_close(model.bn.running_mean, torch.tensor([0.5, -1.0]))


def test_quantile_rows_matches_torch_quantile() -> None:
    values = torch.randn(3, 1001, generator=torch.Generator().manual_seed(1))
    for q in (0.0, 0.5, 0.9, 0.995, 1.0):
        torch.testing.assert_close(quantile_rows(values, q), torch.quantile(values, q, dim=1))


def test_subsample_is_bounded_uniform_and_close_to_exact_quantile() -> None:
    gen = torch.Generator().manual_seed(2)
    stats = ChannelStats(2, max_samples=4_000, seed=3)
    everything = []
    for step in range(20):                                   # 20 x 8 x 10 x 10 = 16,000 values per channel
        # a drifting stream: a biased (e.g. first-come) sample would get the mean and quantiles wrong
        maps = torch.rand(8, 2, 10, 10, generator=gen) * torch.tensor([1.0, 5.0]).view(1, 2, 1, 1) + step
        everything.append(maps.transpose(0, 1).reshape(2, -1))
        stats.update(maps)
        assert stats.sample.shape[1] <= 4_000
    full = torch.cat(everything, dim=1)                        # [2, 16000]
    assert stats.count == 16_000 and not stats.exact
    assert stats.sample.shape == (2, 4_000)                    # the memory bound, filled
    exact = torch.quantile(full, 0.995, dim=1)
    estimate = stats.quantile(0.995)
    spread = full.max(1).values - full.min(1).values
    assert ((estimate - exact).abs() / spread).max() < 0.01
    assert ((stats.sample.mean(1) - full.mean(1)).abs() / spread).max() < 0.02
    # each kept position is one real value of the stream
    assert torch.isin(stats.sample[0], full[0]).all()
    # seeded: the same stream gives the same sample
    again = ChannelStats(2, max_samples=4_000, seed=3)
    for chunk in everything:
        again.update(chunk.reshape(2, 8, 10, 10).transpose(0, 1))
    torch.testing.assert_close(again.quantile(0.995), estimate)


def test_module_outputs_in_order_lists_containers_after_children() -> None:
    model = ConvBnNet()
    names = [name for name, _ in module_outputs_in_order(model, torch.zeros(1, 1, 5, 6))]
    assert names == ["conv", "bn", "fc"]
    seq = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), nn.AdaptiveAvgPool2d(1))
    order = module_outputs_in_order(seq, torch.zeros(1, 1, 6, 6))
    assert order == [("0.0", (1, 2, 4, 4)), ("0.1", (1, 2, 4, 4)), ("0", (1, 2, 4, 4)), ("1", (1, 2, 1, 1))]


def test_reading_the_sample_midway_keeps_everything() -> None:
    stats = ChannelStats(1, max_samples=100, seed=0)
    stats.update(torch.arange(30.0).view(30, 1))
    assert stats.sample.shape == (1, 30)                      # read before the bound: a lazy merge
    stats.update(torch.arange(30.0, 60.0).view(30, 1))
    assert sorted(stats.sample[0].tolist()) == list(range(60))
    stats.update(torch.arange(60.0, 160.0).view(100, 1))
    assert stats.sample.shape == (1, 100) and len(set(stats.sample[0].tolist())) == 100
