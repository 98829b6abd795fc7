"""Latency-aware allocation (``PruneSpec.allocation`` "latency"): the widths that remove the most predicted time per
unit of loss, HALP's latency-saliency knapsack (Shen et al. 2022, "Structural Pruning via Latency-Saliency
Knapsack", arXiv:2210.06659), solved greedily by ``pruning.allocate`` (mode "latency").

The cost is a ``pruning.latency_model.LatencyModel`` of the model at ``latency_batch`` on ``latency_target``: a
per-layer table (``layer_latency``, passed in by the caller — ``pipeline.latency_table`` measures it with ONNX
Runtime and caches it per target and shape) anchored to the unpruned model's p90 as the job's latency probe
measures it, so every prediction is a p90 in ms. The loss side is the per-group curves of ``pruning.sensitivity``,
as for "sensitivity". What is aimed at:

- ``target_metric`` "latency": remove ``target_reduction`` of the *predicted* p90; the result is measured once and
  reported beside the prediction, not corrected;
- ``latency_budget_ms``: a predicted p90 of ``budget x (1 - margin)`` (the goal). The candidate is measured with
  the probe; while it misses the goal, or lands more than ``CLOSE`` under it, the aim is corrected along the line
  through the (predicted, measured) pairs closest to the goal (``next_aim``; the unpruned model is the first pair)
  and allocated again, at most ``BUDGET_TRIES`` measured candidates; the least-pruned one that meets the goal wins
  (``pick``).

``result.latency_allocation`` records what was targeted, the anchor and the plan's predicted and measured p90;
``result.latency_search`` the measured candidates of a budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection

import torch.nn as nn

from pruning.allocate import Allocation, CostModel, Target, allocate, reachable_reduction
from pruning.errors import SpecError
from pruning.latency_model import LatencyModel, LayerLatency, grid_step_for
from pruning.measure import Cost
from pruning.result import CompressResult, LatencyProbe, StageRunner
from pruning.spec import CompressSpec
from pruning.targeting import allocate_or_reachable

BUDGET_TRIES = 4        # measured candidates at most, per budget
CLOSE = 0.03            # a candidate measured at most this fraction under the goal is accepted at once
STEP = 0.02             # when a corrected aim gives a plan measured already: aim this fraction of the unpruned p90
                        # further
MAX_TABLE_SHAPES = 256  # the layer grid is coarsened (interpolated) until it has at most this many shapes

Build = Callable[[Allocation], nn.Module]     # the pruned copy of the model for an allocation


@dataclass(frozen=True)
class Candidate:
    reduction: float          # of the predicted p90, as allocated for
    predicted_ms: float
    measured_ms: float


def next_aim(points: list[tuple[float, float]], goal_ms: float) -> float:
    """The predicted p90 to aim at next, from the (predicted, measured) p90 pairs seen so far (the unpruned model's
    is one): the prediction at which the line through the two points closest to the goal on either side measures
    the goal (the two closest above it when none is under it yet). The table may be off by a factor in what
    pruning saves (a layer timed alone is not the layer inside the whole model); this corrects that factor."""
    above = sorted((p for p in points if p[1] > goal_ms), key=lambda p: p[1])
    below = sorted((p for p in points if p[1] <= goal_ms), key=lambda p: -p[1])
    (p1, m1), (p2, m2) = (above[0], below[0]) if below else (above[0], above[1] if len(above) > 1 else above[0])
    if m1 == m2 or (p1 - p2) * (m1 - m2) <= 0:          # no usable slope (noise): scale the nearer one
        return p1 * goal_ms / m1
    return p1 + (goal_ms - m1) * (p1 - p2) / (m1 - m2)


def bisect_aim(points: list[tuple[float, float]], goal_ms: float) -> float | None:
    """The predicted p90 halfway between the nearest measurements above and under the goal (None: none under)."""
    above = [p for p in points if p[1] > goal_ms]
    below = [p for p in points if p[1] <= goal_ms]
    if not above or not below:
        return None
    return 0.5 * (min(above, key=lambda p: p[1])[0] + max(below, key=lambda p: p[1])[0])


def pick(candidates: list[Candidate], goal_ms: float) -> Candidate | None:
    """The least-pruned candidate (largest predicted p90) whose measured p90 meets the goal; None if none does."""
    meeting = [c for c in candidates if c.measured_ms <= goal_ms]
    return max(meeting, key=lambda c: (c.predicted_ms, -c.reduction)) if meeting else None


def latency_allocation(spec: CompressSpec, run: StageRunner, result: CompressResult, model: nn.Module, groups: list,
                       input_shape: tuple[int, int, int], current: Cost, probe: LatencyProbe,
                       layer_latency: LayerLatency, build: Build, whole: Collection[str] = ()
                       ) -> tuple[Allocation, Target]:
    """The plan of the "latency" allocation (see the module docstring) and the target it reached. ``whole``:
    groups that may go entirely (their block removed: ``pruning.allocate``'s ``whole``)."""
    prune, batch = spec.prune, spec.prune.latency_batch
    anchor = float(probe(model.eval(), input_shape, batch))
    run.emit("allocate", 0.05, f"unpruned p90 {anchor:.4g} ms at batch {batch} on {prune.latency_target}")
    table = latency_model(model, input_shape, batch, anchor, current, groups, prune.round_to,
                          _reporting(layer_latency, run))
    options = dict(mode="latency", round_to=prune.round_to, min_channels=prune.min_channels,
                   curves=result.sensitivity.curves, whole=whole)
    scores = result.scores.channels

    def measured(allocation: Allocation) -> float:
        run.check()
        return anchor if not allocation.kept else float(probe(build(allocation).eval(), input_shape, batch))

    if prune.latency_budget_ms is None:
        target = Target("latency", prune.target_reduction)
        allocation = allocate_or_reachable(groups, scores, table, target, anchor, prune.allow_shortfall,
                                           result.warnings, options) or Allocation({}, {}, 0.0, 0)
        chosen = Candidate(target.reduction, anchor * (1 - allocation.achieved_reduction), measured(allocation))
    else:
        allocation, chosen = _meet_budget(prune, run, result, groups, scores, table, anchor, options, measured)
        target = Target("latency", chosen.reduction)
    result.latency_allocation = {
        "target": prune.latency_target, "batch_size": batch, "statistic": "p90",
        "targeted": "budget" if prune.latency_budget_ms is not None else "reduction",
        "budget_ms": prune.latency_budget_ms, "reduction": target.reduction,
        "original_ms": anchor, "predicted_ms": chosen.predicted_ms, "measured_ms": chosen.measured_ms,
        "grid_step": table.grid_step, "layer_shapes": len(table.measured_shapes), "layer_scale": table.scale}
    return allocation, target


def latency_model(model: nn.Module, input_shape: tuple[int, int, int], batch: int, anchor_ms: float, current: Cost,
                  groups: list, round_to: int, layer_latency: LayerLatency) -> LatencyModel:
    """The ``LatencyModel`` of ``model`` at ``batch`` for these groups, anchored to ``anchor_ms`` (scaled to it when
    the layers add up to more: ``LatencyModel.scaled_to``); its grid is the finest multiple of ``round_to`` with at
    most ``MAX_TABLE_SHAPES`` shapes (looked up as the allocator needs)."""
    cost_model = CostModel(model, input_shape, current.macs, current.params)
    prunable = {member for g in groups for member in g.members}
    step = grid_step_for(cost_model.layers, prunable, round_to, MAX_TABLE_SHAPES)
    table = LatencyModel(model, input_shape, batch, layer_latency, anchor_ms, grid_step=step, cost_model=cost_model,
                         prunable=prunable)
    return table.scaled_to(anchor_ms) if table.constant_ms < 0 else table


def _meet_budget(prune, run: StageRunner, result: CompressResult, groups: list, scores: dict, table: LatencyModel,
                 anchor: float, options: dict, measured: Callable[[Allocation], float]
                 ) -> tuple[Allocation, Candidate]:
    budget = prune.latency_budget_ms
    goal = budget * (1.0 - prune.latency_margin)
    tried: list[tuple[Candidate, Allocation]] = []

    def record(candidate: Candidate) -> None:
        result.latency_search.append({
            "metric": "latency", "reduction": round(candidate.reduction, 4), "predicted_ms": candidate.predicted_ms,
            "latency_ms": candidate.measured_ms, "meets_budget": candidate.measured_ms <= budget,
            "meets_goal": candidate.measured_ms <= goal})
        run.emit("allocate", 0.5, f"candidate -{candidate.reduction:.1%} predicted latency: p90 predicted "
                                  f"{candidate.predicted_ms:.4g} ms, measured {candidate.measured_ms:.4g} ms "
                                  f"(goal {goal:.4g} ms)")

    if anchor <= goal:
        unpruned = Candidate(0.0, anchor, anchor)
        record(unpruned)
        return Allocation({}, {}, 0.0, 0), unpruned
    most = reachable_reduction(groups, table, "latency", anchor, round_to=options["round_to"],
                               min_channels=options["min_channels"], whole=options["whole"])
    aim, points, bisected = goal, [(anchor, anchor)], False
    for _ in range(2 * BUDGET_TRIES):                   # allocations; measured candidates: BUDGET_TRIES at most
        reduction = min(max(0.0, 1.0 - aim / anchor), max(0.0, min(most, 0.99) - 1e-6))
        allocation = allocate(groups, scores, table, Target("latency", reduction), anchor, **options)
        repeat = next((c for c, a in tried if a.kept == allocation.kept), None)
        if repeat is not None:                           # a plan measured already
            if repeat.measured_ms > goal and not any(c.measured_ms <= goal for c, _ in tried):
                aim = repeat.predicted_ms - STEP * anchor    # nothing meets the goal yet: one step further
            else:
                aim = None if bisected else bisect_aim(points, goal)     # halve the bracket, once
                bisected = True
            if aim is None or reduction >= most - 1e-6:
                break
            continue
        candidate = Candidate(reduction, anchor * (1.0 - allocation.achieved_reduction), measured(allocation))
        tried.append((candidate, allocation))
        record(candidate)
        if goal * (1.0 - CLOSE) <= candidate.measured_ms <= goal or len(tried) == BUDGET_TRIES:
            break
        points.append((candidate.predicted_ms, candidate.measured_ms))
        aim = next_aim(points, goal)
    best = pick([c for c, _ in tried], goal)
    if best is None:
        fastest = min((c for c, _ in tried), key=lambda c: c.measured_ms)
        raise SpecError(f"latency budget {budget:.4g} ms (aiming at {goal:.4g} ms with the {prune.latency_margin:.0%} "
                        f"margin) is unreachable with allocation 'latency': the fastest candidate (-{fastest.reduction:.0%}"
                        f" predicted latency; the most this model allows is -{most:.0%}) measured "
                        f"{fastest.measured_ms:.4g} ms; raise the budget, lower the rounding or the protected layers, "
                        "or pick a faster target")
    return next(a for c, a in tried if c is best), best


def _reporting(layer_latency: LayerLatency, run: StageRunner) -> LayerLatency:
    """``layer_latency`` that checks for cancellation and reports progress (LatencyModel asks once per shape)."""
    asked = 0

    def lookup(shape) -> float:
        nonlocal asked
        run.check()
        asked += 1
        if asked == 1 or asked % 10 == 0:
            run.emit("allocate", 0.1, f"layer latency table: {asked} shape(s) looked up")
        return layer_latency(shape)
    return lookup
