"""Latency-aware allocation (``PruneSpec.allocation`` "latency"): the widths that remove the most predicted time per
unit of loss, HALP's latency-saliency knapsack (Shen et al. 2022, "Structural Pruning via Latency-Saliency
Knapsack", arXiv:2210.06659), solved greedily by ``pruning.allocate`` (mode "latency").

The cost is a ``pruning.latency_model.LatencyModel`` of the model at ``latency_batch`` on ``latency_target``: a
per-layer table (``layer_latency``, passed in by the caller — ``pipeline.latency_table`` measures it with ONNX
Runtime and caches it per target and shape) anchored to the unpruned model's p90 as the job's latency probe
measures it, so every prediction is a p90 in ms. The loss side is the per-group curves of ``pruning.sensitivity``,
as for "sensitivity". What is aimed at:

- ``target_metric`` "latency": remove ``target_reduction`` F of the *measured* latency, a goal of ``anchor x
  (1 - F)``. Each candidate is measured in turns with the unpruned model and counts as anchor x (its p50 / the
  unpruned p50), both from ``probe.in_turns`` (``exporters.latency_in_turns``: alternating turns of a few runs),
  else from two probes. On this shared 2-core machine two measurements seconds apart differed by 20% and more and
  a job's first probe ran 10-20% slow, which moved every cut (``benchmarks.in_turns_ratio`` measures the
  difference: p50 ratios 0.66-0.69 in turns, 0.63-0.72 one after the other, on one pair). The candidate measured closest to the goal wins (``closest``); one
  still more than ``CLOSE`` off is kept with a warning, one short at the widest cut the widths allow is refused
  (``TargetUnreachable``; with ``allow_shortfall``, kept with a warning). The table alone over-predicts what a
  plan saves on a runtime that fuses whole residual blocks (ResNet-56 on ONNX Runtime CPU: 0.35 of the predicted
  p90 measured a 0.25-0.29 cut in turns), hence the correction;
- ``latency_budget_ms``: a goal of ``budget x (1 - margin)`` in ms, each candidate measured alone; the
  least-pruned candidate that meets it wins (``pick``), none meeting it is an error.

Both aim the predicted p90 at the goal first, measure the candidate and, while it misses, correct the aim along
the line through the (predicted, measured) pairs closest to the goal (``next_aim``; the unpruned model is the
first pair) and allocate again: at most ``BUDGET_TRIES`` measured candidates.

``result.latency_allocation`` records what was targeted, the goal, the anchor, the plan's predicted and measured
p90 and its measured cut; ``result.latency_search`` the measured candidates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection

import torch.nn as nn

from pruning.allocate import Allocation, CostModel, Target, allocate, reachable_reduction
from pruning.errors import SpecError, TargetUnreachable
from pruning.latency_model import LatencyModel, LayerLatency, grid_step_for
from pruning.measure import Cost
from pruning.result import CompressResult, LatencyProbe, StageRunner
from pruning.spec import CompressSpec

BUDGET_TRIES = 4        # measured candidates at most, per budget or fraction
CLOSE = 0.03            # a budget's candidate measured at most this fraction under the goal is accepted at once; a
                        # fraction's, one measured within this fraction of the goal either side
STEP = 0.02             # when a corrected aim gives a plan measured already: aim this fraction of the unpruned p90
                        # further
MAX_TABLE_SHAPES = 256  # the layer grid is coarsened (interpolated) until it has at most this many shapes

Build = Callable[[Allocation], nn.Module]     # the pruned copy of the model for an allocation


@dataclass(frozen=True)
class Candidate:
    reduction: float          # of the predicted p90, as allocated for
    predicted_ms: float
    measured_ms: float        # in the anchor's units: a fraction's is anchor x (its latency / the unpruned one's)
    raw_ms: float | None = None         # a fraction's candidate as measured, and the unpruned model measured
    unpruned_ms: float | None = None    # right after it (in turns: the machine's drift cancels in the ratio)


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


def closest(candidates: list[Candidate], goal_ms: float) -> Candidate:
    """The candidate measured closest to the goal (of two as close, the less pruned)."""
    return min(candidates, key=lambda c: (abs(c.measured_ms - goal_ms), -c.predicted_ms))


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

    def measured(allocation: Allocation) -> tuple[float, float | None, float | None]:
        """(the candidate in the anchor's units, its p90, the unpruned p90 measured beside it); a budget's
        candidate is measured alone, in ms."""
        run.check()
        if not allocation.kept:
            return anchor, None, None
        if prune.latency_budget_ms is not None:
            return float(probe(build(allocation).eval(), input_shape, batch)), None, None
        in_turns = getattr(probe, "in_turns", None)      # measured in turns, when the probe can (pipeline's can)
        if in_turns is None:
            ms = float(probe(build(allocation).eval(), input_shape, batch))
            unpruned = float(probe(model.eval(), input_shape, batch))
            return ms * anchor / unpruned, ms, unpruned
        (ms50, ms), (unpruned50, unpruned) = in_turns(build(allocation).eval(), model.eval(), input_shape, batch)
        return anchor * ms50 / unpruned50, float(ms), float(unpruned)   # the ratio of medians: steadier than p90s

    search = _Search(prune, run, result, groups, scores, table, anchor, options, measured)
    if prune.latency_budget_ms is None:
        target = Target("latency", prune.target_reduction)
        allocation, chosen = _meet_fraction(search, prune, result)
    else:
        allocation, chosen = _meet_budget(search, prune)
        target = Target("latency", chosen.reduction)
    result.latency_allocation = {
        "target": prune.latency_target, "batch_size": batch, "statistic": "p90",
        "targeted": "budget" if prune.latency_budget_ms is not None else "reduction",
        "budget_ms": prune.latency_budget_ms, "reduction": target.reduction, "goal_ms": search.goal_ms,
        "original_ms": anchor, "predicted_ms": chosen.predicted_ms,
        "measured_ms": chosen.raw_ms if chosen.raw_ms is not None else chosen.measured_ms,
        "unpruned_beside_ms": chosen.unpruned_ms,
        "measured_reduction": 1.0 - chosen.measured_ms / anchor, "candidates": len(search.tried),
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


class _Search:
    """Aim the predicted p90 at a goal, measure, correct (the module docstring); ``tried`` holds the measured
    candidates with their allocations, ``result.latency_search`` one record each."""

    def __init__(self, prune, run: StageRunner, result: CompressResult, groups: list, scores: dict,
                 table: LatencyModel, anchor: float, options: dict,
                 measured: Callable[[Allocation], tuple[float, float | None, float | None]]):
        self.prune, self.run, self.result = prune, run, result
        self.groups, self.scores, self.table, self.anchor, self.options = groups, scores, table, anchor, options
        self.measured = measured
        self.goal_ms = anchor
        self.tried: list[tuple[Candidate, Allocation]] = []
        self.most = reachable_reduction(groups, table, "latency", anchor, round_to=options["round_to"],
                                        min_channels=options["min_channels"], whole=options["whole"])

    def run_to(self, goal: float, accepted: Callable[[float], bool],
               meets: Callable[[float], bool] | None = None) -> None:
        """Measure candidates aimed at ``goal`` ms until one is ``accepted`` or ``BUDGET_TRIES`` are measured;
        each record's ``meets_goal`` is ``meets`` (default: ``accepted``) of its measurement."""
        meets = meets or accepted
        self.goal_ms = goal
        aim, points, bisected = goal, [(self.anchor, self.anchor)], False
        for _ in range(2 * BUDGET_TRIES):                # allocations; measured candidates: BUDGET_TRIES at most
            reduction = min(max(0.0, 1.0 - aim / self.anchor), max(0.0, min(self.most, 0.99) - 1e-6))
            allocation = allocate(self.groups, self.scores, self.table, Target("latency", reduction), self.anchor,
                                  **self.options)
            repeat = next((c for c, a in self.tried if a.kept == allocation.kept), None)
            if repeat is not None:                       # a plan measured already
                if repeat.measured_ms > goal and not any(c.measured_ms <= goal for c, _ in self.tried):
                    aim = repeat.predicted_ms - STEP * self.anchor   # nothing under the goal yet: one step further
                else:
                    aim = None if bisected else bisect_aim(points, goal)     # halve the bracket, once
                    bisected = True
                if aim is None or reduction >= self.most - 1e-6:
                    break
                continue
            candidate = Candidate(reduction, self.anchor * (1.0 - allocation.achieved_reduction),
                                  *self.measured(allocation))
            self.tried.append((candidate, allocation))
            self.record(candidate, meets(candidate.measured_ms))
            if accepted(candidate.measured_ms) or len(self.tried) == BUDGET_TRIES:
                break
            points.append((candidate.predicted_ms, candidate.measured_ms))
            aim = next_aim(points, goal)

    def allocation_of(self, chosen: Candidate) -> Allocation:
        return next(a for c, a in self.tried if c is chosen)

    def record(self, candidate: Candidate, meets_goal: bool) -> None:
        budget = self.prune.latency_budget_ms
        step = {"metric": "latency", "reduction": round(candidate.reduction, 4), "predicted_ms": candidate.predicted_ms,
                "latency_ms": candidate.measured_ms, "meets_goal": meets_goal}
        if candidate.unpruned_ms is not None:
            step.update(raw_ms=candidate.raw_ms, unpruned_beside_ms=candidate.unpruned_ms)
        if budget is not None:
            step["meets_budget"] = candidate.measured_ms <= budget
        self.result.latency_search.append(step)
        beside = ("" if candidate.unpruned_ms is None else
                  f" ({candidate.raw_ms:.4g} ms beside the unpruned model's {candidate.unpruned_ms:.4g} ms)")
        self.run.emit("allocate", 0.5, f"candidate -{candidate.reduction:.1%} predicted latency: p90 predicted "
                                       f"{candidate.predicted_ms:.4g} ms, measured {candidate.measured_ms:.4g} ms"
                                       f"{beside} (goal {self.goal_ms:.4g} ms)")


def _meet_fraction(search: _Search, prune, result: CompressResult) -> tuple[Allocation, Candidate]:
    """Remove ``prune.target_reduction`` of the measured p90: the candidate measured closest to the goal. Short of
    it by more than ``CLOSE`` with the most-pruned plan the widths allow: ``TargetUnreachable`` (or, with
    ``allow_shortfall``, that plan and a warning); off it otherwise (the latency moved between measurements):
    the closest, with a warning."""
    fraction, anchor, batch = prune.target_reduction, search.anchor, prune.latency_batch
    goal = anchor * (1.0 - fraction)

    def within(ms: float) -> bool:
        return abs(ms - goal) <= CLOSE * goal

    search.run_to(goal, within)
    chosen = closest([c for c, _ in search.tried], goal)
    if within(chosen.measured_ms):
        return search.allocation_of(chosen), chosen
    widest = [c for c, _ in search.tried if c.reduction >= search.most - 1e-6]
    fastest = min(widest, key=lambda c: c.measured_ms) if widest else None
    if fastest is not None and fastest.measured_ms > goal:      # the widest cut the widths allow falls short
        reachable = 1.0 - fastest.measured_ms / anchor
        message = (f"target latency reduction {fraction:.1%} is unreachable: the most-pruned plan the widths allow "
                   f"removes {reachable:.1%} of the unpruned model's p90 at batch {batch}, measured in turns")
        if not prune.allow_shortfall:
            raise TargetUnreachable(message + "; ask for less, lower the rounding or the protected layers, or set "
                                    "allow_shortfall (--allow-shortfall) to prune to it instead", reachable, "latency")
        result.warnings.append(message + "; pruned to it (allow_shortfall)")
        return search.allocation_of(fastest), fastest
    result.warnings.append(
        f"asked to remove {fraction:.1%} of the measured p90 at batch {batch}; the closest of {len(search.tried)} "
        f"measured plans removes {1.0 - chosen.measured_ms / anchor:.1%}: the latency moved between measurements, or the widths cannot step "
        "finer (lower --round-to)")
    return search.allocation_of(chosen), chosen


def _meet_budget(search: _Search, prune) -> tuple[Allocation, Candidate]:
    budget = prune.latency_budget_ms
    goal = budget * (1.0 - prune.latency_margin)
    if search.anchor <= goal:
        unpruned = Candidate(0.0, search.anchor, search.anchor)
        search.goal_ms = goal
        search.tried.append((unpruned, Allocation({}, {}, 0.0, 0)))
        search.record(unpruned, True)
        return Allocation({}, {}, 0.0, 0), unpruned
    search.run_to(goal, lambda ms: goal * (1.0 - CLOSE) <= ms <= goal, meets=lambda ms: ms <= goal)
    tried = [c for c, _ in search.tried]
    best = pick(tried, goal)
    if best is None:
        fastest = min(tried, key=lambda c: c.measured_ms)
        raise SpecError(f"latency budget {budget:.4g} ms (aiming at {goal:.4g} ms with the {prune.latency_margin:.0%} "
                        f"margin) is unreachable with allocation 'latency': the fastest candidate (-{fastest.reduction:.0%}"
                        f" predicted latency; the most this model allows is -{search.most:.0%}) measured "
                        f"{fastest.measured_ms:.4g} ms; raise the budget, lower the rounding or the protected layers, "
                        "or pick a faster target")
    return search.allocation_of(best), best


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
