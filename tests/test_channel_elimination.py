"""Greedy channel elimination on Gram statistics (pruning/channel_elimination.py) and the redundancy criterion's
data-driven signal that uses it."""
from __future__ import annotations

import itertools

import torch
import torch.nn as nn

from pruning.channel_elimination import Consumer, eliminate, elimination_scores


def _refit_error(x: torch.Tensor, w: torch.Tensor, keep_cols: list[int]) -> float:
    """Brute force: least-squares re-fit of Y = X W^T on the kept columns, squared error left."""
    y = x @ w.T
    sol = torch.linalg.lstsq(x[:, keep_cols], y).solution
    return float(((x[:, keep_cols] @ sol - y) ** 2).sum())


def test_greedy_steps_match_brute_force_least_squares():
    gen = torch.Generator().manual_seed(0)
    channels, r, out = 5, 3, 4
    x = torch.randn(400, channels * r, generator=gen, dtype=torch.float64)
    x[:, 6:9] = 0.9 * x[:, 0:3] + 0.1 * torch.randn(400, 3, generator=gen, dtype=torch.float64)  # ch 2 ~ ch 0
    w = torch.randn(out, channels * r, generator=gen, dtype=torch.float64)
    result = eliminate([Consumer(gram=x.T @ x, weight=w, per_channel=r)], channels, ridge=1e-12, keep=1)
    energy = float(((x @ w.T) ** 2).sum())
    removed: list[int] = []
    for step, k in enumerate(result.order):
        alive = [c for c in range(channels) if c not in removed]
        errors = {c: _refit_error(x, w, [j for a in alive if a != c for j in range(a * r, a * r + r)]) for c in alive}
        best = min(errors, key=errors.get)
        assert k == best, f"step {step}: greedy took {k}, brute force {best}"
        assert abs(result.cost[step] - errors[k] / energy) < 1e-6 * max(1.0, errors[k] / energy)
        removed.append(k)
    assert result.order[0] in (0, 2)          # one of the near-duplicates goes first
    assert result.explained[0] > 0.9           # and its partner recovers nearly all of it
    assert result.absorbed_by[0] == ({0, 2} - {result.order[0]}).pop()


def test_costs_are_nested_and_scores_follow_the_order():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    result = eliminate([Consumer(gram=x.T @ x, weight=w, per_channel=1)], 8, keep=2)
    assert len(result.order) == 6 and len(set(result.order)) == 6
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(result.cost))
    scores = elimination_scores(result, 8)
    assert torch.equal(torch.argsort(scores)[:6], torch.tensor(result.order))


def test_two_consumers_each_weigh_by_their_own_energy():
    # consumer A reads only channel 0, consumer B only channel 1 (100x larger outputs); channel 2 is read by none:
    # it must go first, and 0 and 1 must tie on normalised cost despite the scale.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(500, 3, generator=gen, dtype=torch.float64)
    wa = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    wb = torch.tensor([[0.0, 100.0, 0.0]], dtype=torch.float64)
    g = x.T @ x
    result = eliminate([Consumer(g, wa, 1), Consumer(g, wb, 1)], 3, ridge=1e-12, keep=0)
    assert result.order[0] == 2 and result.cost[0] < 1e-9
    assert abs(result.cost[1] - 1.0) < 0.05     # one consumer loses all its output: normalised cost 1


def test_bias_column_is_kept_and_absorbs_a_constant_channel():
    # channel 1 is constant: a re-fit moves it into the bias, so it is free to remove
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(300, 3, generator=gen, dtype=torch.float64)
    x[:, 1] = 2.0
    x[:, 2] = 1.0                                 # the bias column (ones), after the 2 channels
    w = torch.tensor([[1.0, 3.0, 0.5], [0.2, -1.0, 0.0]], dtype=torch.float64)
    result = eliminate([Consumer(x.T @ x, w, 1)], 2, ridge=1e-12, keep=0)
    assert result.order[0] == 1 and result.explained[0] > 0.999


def test_redundancy_features_removes_a_scaled_copy_first_and_names_its_stand_in():
    from pruning import surgery
    from pruning.criteria import Batch, ScoringContext, create_criterion

    shape = (3, 8, 8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1)).eval()
    with torch.no_grad():
        conv = model[0]
        conv.weight[4] = 2.0 * conv.weight[1]          # channel 4's map is exactly 2x channel 1's (ReLU)
        conv.bias[4] = 2.0 * conv.bias[1]
        model[2].weight[:, 4] *= 5.0                   # and it is the one the consumer weighs most (L1 would keep it)
    batches = [Batch(torch.randn(16, *shape), torch.zeros(16, dtype=torch.long)) for _ in range(4)]
    groups = surgery.channel_groups(model, shape)
    ctx = ScoringContext(model=model, groups=groups, blocks=[], batches=lambda: iter(batches), input_shape=shape,
                         num_classes=5)
    result = create_criterion("redundancy").score(ctx)
    scores, reasons = result.channels["0"], result.reasons["0"]
    first = int(torch.argmin(scores))
    assert first in (1, 4)
    assert reasons[first]["recovered"] > 0.99 and reasons[first]["partner"] == 5 - first
    assert "recovered" in reasons[first]["why"]
    weights_only = create_criterion("redundancy", signal="weights").score(ctx)
    assert "height" in weights_only.reasons["0"][0] and "removal_step" not in weights_only.reasons["0"][0]


def test_priority_window_nominates_and_the_refit_picks():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(300, 6, generator=gen, dtype=torch.float64)
    x[:, 5] = x[:, 0] * 0.5                        # channel 5 is free to remove once re-fitted
    w = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    consumer = Consumer(x.T @ x, w, 1)
    priority = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])          # 5 is the criterion's favourite
    follow = eliminate([consumer], 6, keep=0, priority=priority, window=1 / 6)
    assert follow.order == [0, 1, 2, 3, 4, 5]                          # a window of one: the priority's order
    free = eliminate([consumer], 6, keep=0)
    assert free.order[0] in (0, 5)                                     # no priority: a duplicate goes first
    half = eliminate([consumer], 6, keep=0, priority=priority, window=0.5)
    assert half.order[0] in (0, 1, 2)                                  # nominated: the 3 lowest of 6


def test_every_channel_criterion_takes_refit_window_and_checks_it():
    import pytest

    from pruning.criteria import create_criterion
    from pruning.criteria.base import criterion_parameters
    from pruning.errors import SpecError

    assert "refit_window" in criterion_parameters("dissection")
    assert create_criterion("random", refit_window=0.5).refit_window == 0.5
    assert create_criterion("l1").refit_window == 0.0
    with pytest.raises(SpecError, match="refit_window"):
        create_criterion("l1", refit_window=1.5)


def test_guide_by_refit_reorders_within_the_window_and_keeps_the_criterions_reasons():
    from pruning import surgery
    from pruning.criteria import Batch, ScoreResult, ScoringContext
    from pruning.criteria.redundant_features import guide_by_refit

    shape = (3, 8, 8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1)).eval()
    with torch.no_grad():
        model[0].weight[5] = 3.0 * model[0].weight[0]
        model[0].bias[5] = 3.0 * model[0].bias[0]
    batches = [Batch(torch.randn(16, *shape), torch.zeros(16, dtype=torch.long)) for _ in range(4)]
    ctx = ScoringContext(model=model, groups=surgery.channel_groups(model, shape), blocks=[],
                         batches=lambda: iter(batches), input_shape=shape, num_classes=5)
    own = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 0.5])                   # the criterion: 5 first, then 0
    result = ScoreResult(channels={"0": own.clone()}, reasons={"0": [{"votes": k} for k in range(6)]})
    guide_by_refit(ctx, result, window=2 / 6)                             # nominated: {5, 0}; either is free
    order = torch.argsort(result.channels["0"]).tolist()
    first = order[0]
    assert first in (0, 5)
    assert order[1] in ({0, 5, 1} - {first})                              # step 2 nominates the two lowest left
    assert result.reasons["0"][first]["votes"] == first                   # the criterion's reason stays
    assert result.reasons["0"][first]["refit"]["recovered"] > 0.99
    assert result.reasons["0"][first]["refit"]["absorbed_by"] == 5 - first

