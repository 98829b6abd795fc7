"""``redundancy``: near-duplicates go first, the order equals bisection on τ, merging is exact where it can be."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from pruning import surgery
from pruning.criteria import ScoringContext, create_criterion
from pruning.criteria.functionality import cosine_distances
from pruning.criteria.redundancy import merge_input_columns, merge_into_representative, redundancy_tree

SHAPE = (3, 8, 8)


def make_model(out_channels: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                          nn.ReLU(), nn.Conv2d(out_channels, 5, 3, padding=1))
    return model.eval()


def context(model: nn.Module) -> ScoringContext:
    groups = surgery.channel_groups(model, SHAPE)       # the last conv is the classifier: one group, root "0"
    assert [g.name for g in groups] == ["0"]
    return ScoringContext(model=model, groups=groups, blocks=[], batches=lambda: iter(()), input_shape=SHAPE,
                          num_classes=5)


def test_duplicates_score_below_distinct_filters() -> None:
    model = make_model(7)
    with torch.no_grad():
        w = model[0].weight
        w[4] = w[1]                 # exact duplicate
        w[6] = 3.0 * w[2]           # scaled duplicate (same direction, larger L1)
    result = create_criterion("redundancy").score(context(model))
    scores = result.channels["0"]
    assert scores.shape == (7,)
    lowest = set(torch.argsort(scores)[:2].tolist())
    assert lowest == {4, 2}         # equal L1: the higher index goes; scaled: the smaller filter goes
    others = [k for k in range(7) if k not in lowest]
    assert float(scores[[4, 2]].max()) < 1e-4 < float(scores[others].min())
    reasons = result.reasons["0"]
    assert reasons[4]["partner"] == 1 and reasons[2]["partner"] == 6
    assert reasons[4]["height"] == pytest.approx(0.0, abs=1e-6)
    assert sum(r["is_root"] for r in reasons) == 1


def test_order_equals_bisection_on_tau() -> None:
    torch.manual_seed(1)
    w = torch.randn(12, 27)
    w[7] = w[3] + 0.05 * torch.randn(27)
    dist = cosine_distances(w)
    l1 = w.abs().sum(1).numpy()
    height, partner, root = redundancy_tree(dist, l1)
    assert np.isinf(height[root]) and partner[root] == -1 and np.isfinite(np.delete(height, root)).all()
    z = linkage(squareform(dist, checks=False), method="complete")
    for tau in list(z[:, 2]) + [0.0, 0.5, 1.0, 2.0]:
        n_clusters = len(np.unique(fcluster(z, t=tau, criterion="distance")))
        removed = np.flatnonzero(height <= tau)
        assert len(removed) == 12 - n_clusters
        labels = fcluster(z, t=tau, criterion="distance")
        kept = np.setdiff1d(np.arange(12), removed)
        assert len(np.unique(labels[kept])) == n_clusters   # exactly one kept filter per cluster at τ
    assert height[7] < 0.05 or height[3] < 0.05          # the near-duplicate pair merges first


def test_two_duplicate_pairs_are_the_two_lowest() -> None:
    model = make_model(8, seed=2)
    with torch.no_grad():
        w = model[0].weight
        w[5] = 1.01 * w[0]
        w[7] = 0.98 * w[3]
    scores = create_criterion("redundancy").score(context(model)).channels["0"]
    assert set(torch.argsort(scores)[:2].tolist()) == {0, 7}


def test_zero_filter_goes_first() -> None:
    model = make_model(4)
    with torch.no_grad():
        model[0].weight[2] = 0.0
    result = create_criterion("redundancy").score(context(model))
    assert int(torch.argmin(result.channels["0"])) == 2 and result.reasons["0"][2]["zero_filter"]


def test_merge_input_columns_math() -> None:
    w = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    merged = merge_input_columns(w, [(2, 0, 0.5)], 3)
    assert torch.equal(merged[:, 0], w[:, 0] + 0.5 * w[:, 2]) and torch.equal(merged[:, 1:], w[:, 1:])
    assert torch.equal(w, torch.arange(12, dtype=torch.float32).view(2, 3, 2))   # input untouched


def _remove(model: nn.Module, channel: int) -> None:
    graph = surgery.build_graph(model, SHAPE)
    graph.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=[channel]).prune()


@pytest.mark.parametrize("scale", [2.5, 0.4])
def test_merge_makes_removing_a_scaled_duplicate_exact(scale: float) -> None:
    model = make_model(4, seed=3)
    with torch.no_grad():
        model[0].weight[3] = scale * model[0].weight[1]
        bn = model[1]
        bn.weight.copy_(torch.tensor([0.7, 1.3, 0.9, 0.6]))
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.0, 0.3]))
        bn.running_mean.zero_()      # zero folded bias: the duplicate's map is exactly ρ x its partner's
        bn.bias.zero_()
    x = torch.randn(6, *SHAPE)
    with torch.no_grad():
        before = model(x)
    ctx = context(model)
    result = create_criterion("redundancy", merge=True).score(ctx)
    removed = int(torch.argmin(result.channels["0"]))
    partner = result.reasons["0"][removed]["partner"]
    assert {removed, partner} == {1, 3}

    plain = make_model(4, seed=3)
    plain.load_state_dict(model.state_dict())
    _remove(plain, removed)
    with torch.no_grad():
        assert (plain(x) - before).abs().max() > 1e-2          # dropping alone changes the output

    records = merge_into_representative(model, ctx.groups[0], [removed],
                                        [r["partner"] for r in result.reasons["0"]])
    assert len(records) == 1 and records[0]["into"] == partner
    _remove(model, removed)
    with torch.no_grad():
        after = model(x)
    assert after.shape == before.shape
    assert torch.allclose(after, before, atol=1e-5)


def test_merge_follows_chains() -> None:
    """j -> r -> s, with j and r removed: both end up in s, exactly."""
    model = make_model(4, seed=4)
    with torch.no_grad():
        w = model[0].weight
        w[1] = 0.5 * w[0]
        w[2] = 0.25 * w[0]
        model[1].running_mean.zero_()
        model[1].bias.zero_()
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        before = model(x)
    ctx = context(model)
    records = merge_into_representative(model, ctx.groups[0], [1, 2], {2: 1, 1: 0})
    assert [r["removed"] for r in records] == [2, 1]       # the child first, then the partner it merged into
    graph = surgery.build_graph(model, SHAPE)
    graph.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=[1, 2]).prune()
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)
