"""``functionality``: one representative per repeated AM pattern; class contribution = gradient x activation."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from pruning import surgery
from pruning.criteria import Batch, ScoringContext, create_criterion
from pruning.criteria.functionality import (class_contributions, cluster_filters, cosine_distances,
                                            functionality_scores, representatives)

SHAPE = (3, 12, 12)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def make_model(seed: int = 0) -> nn.Sequential:
    """conv(3->6) - BN - ReLU - conv(6->5) - mean pool - linear(5->3); the second conv has no ReLU after it."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 5, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(0.0, 0.3)
    return model.eval()


def batches(n_batches: int = 2, size: int = 5, seed: int = 0) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    return [Batch(torch.randn(size, *SHAPE, generator=gen), torch.randint(0, 3, (size,), generator=gen))
            for _ in range(n_batches)]


def context(model: nn.Module, data: list[Batch], keep_fraction: float | None = None) -> ScoringContext:
    groups = surgery.channel_groups(model, SHAPE)
    return ScoringContext(model=model, groups=groups, blocks=[], batches=lambda: iter(data), input_shape=SHAPE,
                          num_classes=3, keep_fraction=keep_fraction)


def test_identical_filters_share_one_representative() -> None:
    model = make_model()
    with torch.no_grad():
        model[0].weight[5] = model[0].weight[0]
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(model[1], name)[5] = getattr(model[1], name)[0]
        model[3].weight[:, 5] *= 0.3            # same function, smaller downstream contribution
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = context(model, batches())
    result = create_criterion("functionality", steps=16, threshold=0.01, mean=MEAN, std=STD).score(ctx)
    scores, reasons = result.channels["0"], result.reasons["0"]
    assert scores.shape == (6,) and result.visualizations["0"].shape == (6, *SHAPE)
    assert torch.allclose(result.visualizations["0"][0], result.visualizations["0"][5], atol=1e-5)
    assert reasons[0]["cluster"] == reasons[5]["cluster"]
    assert reasons[0]["is_representative"] != reasons[5]["is_representative"]
    kept = 0 if reasons[0]["is_representative"] else 5
    other = 5 - kept
    assert kept == 0                             # the larger class contribution wins
    assert reasons[other]["representative"] == kept and reasons[other]["distance_to_representative"] < 1e-6
    reps = [k for k in range(6) if reasons[k]["is_representative"]]
    assert float(scores[other]) < float(scores[reps].min())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the second group (root "3", consumer: the classifier) is scored too
    assert result.channels["3"].shape == (5,)


def test_keep_fraction_sets_the_number_of_clusters() -> None:
    ctx = context(make_model(1), batches(), keep_fraction=0.5)
    result = create_criterion("functionality", steps=8, mean=MEAN, std=STD).score(ctx)
    reps = [r["is_representative"] for r in result.reasons["0"]]
    assert sum(reps) == 3
    scores = result.channels["0"]
    rep_idx = [k for k in range(6) if reps[k]]
    assert float(scores[[k for k in range(6) if not reps[k]]].max()) < float(scores[rep_idx].min())


def test_contribution_matches_a_direct_computation() -> None:
    model = make_model(2)
    data = batches(n_batches=3, size=4, seed=1)
    groups = surgery.channel_groups(model, SHAPE)
    got = class_contributions(model, groups, iter(data), num_classes=3, max_batches=2)   # the third batch unused

    images = torch.cat([b.images for b in data[:2]])               # [8, C, H, W]
    lin_w = model[6].weight.detach()                               # [3, 5]
    conv2 = model[3]
    with torch.no_grad():
        a = model[2](model[1](model[0](images)))                   # [8, 6, H, W]: what conv2 sees
        pooled = model[5](model[4](conv2(a)))                      # [8, 5]: what the classifier sees
        # z_y is linear in A (conv2 -> mean pool -> linear), so Σ_hw ∂z_y/∂A_k · A_k is channel k's share of z_y
        expected0 = torch.zeros(6, dtype=torch.float64)
        for k in range(6):
            only_k = torch.zeros_like(a)
            only_k[:, k] = a[:, k]
            share = nn.functional.conv2d(only_k, conv2.weight, padding=1).mean((2, 3)) @ lin_w.T   # [8, 3]
            expected0[k] = share.abs().sum(1).mean().double()
        expected3 = (lin_w[None, :, :] * pooled[:, None, :]).abs().sum(1).mean(0).double()   # [5]
    assert torch.allclose(got["0"], expected0, rtol=1e-4, atol=1e-7)
    assert torch.allclose(got["3"], expected3, rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())


def test_pure_parts() -> None:
    v = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    d = cosine_distances(v)
    assert np.allclose(d[0, 1], 0.0) and np.allclose(d[0, 2], 1.0) and np.allclose(d[3, :3], 1.0)
    labels = cluster_filters(d[:3, :3], threshold=0.1)
    assert labels.tolist() == [0, 0, 1]
    assert cluster_filters(d[:3, :3], n_clusters=1).tolist() == [0, 0, 0]
    rep = representatives(labels, torch.tensor([0.2, 0.5, 0.1]))
    assert rep.tolist() == [1, 1, 2]
    scores = functionality_scores(rep, torch.tensor([0.2, 0.5, 0.1]))
    assert torch.allclose(scores, torch.tensor([0.99 * 0.4, 2.0, 1.2]))
