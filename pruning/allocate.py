"""From scores to a plan: how many channels each group keeps, and which.

The cost of a candidate plan is computed analytically from layer widths (``pruning.cost_model``), anchored to the
exact count of the unpruned model, so the search costs no forward passes. Channels go in chunks that keep widths at multiples of ``round_to`` (8 suits GPU tensor cores; 16 suits
ONNX Runtime's AVX-512 kernels), lowest-scored chunk first, until the target is met; the final state is whichever
of the last two is closer to the target (in the knapsacks, when neither lands within the tolerance, one swap of
chunks between two groups may: ``land_by_swap``).

Modes:
- ``uniform``: the group with the largest kept fraction gives up its weakest chunk (same ratio everywhere, as
  Torch-Pruning's default);
- ``global``: the chunk with the lowest mean normalised score anywhere goes (layer widths follow the scores);
- ``sensitivity``: the chunk whose removal costs the least measured loss per unit of cost saved goes (``curves``:
  ``pruning.sensitivity``, measured after the re-fit; a knapsack solved greedily). The cost is the target's metric
  (MACs or parameters);
- ``latency``: the same knapsack with predicted latency as the cost (HALP's latency-saliency knapsack: Shen et al.
  2022, arXiv:2210.06659): ``cost_model`` is a ``pruning.latency_model.LatencyModel`` and the target's metric is
  "latency", so the chunk with the least loss per predicted millisecond saved goes first.

In either knapsack a ``whole`` group (a removable block's inner channels) may also give up everything it has left
in one move, at any width: the caller then removes the block (``pruning.stages.split_removed_blocks``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection

import torch

from pruning.cost_model import CostModel
from pruning.criteria.base import ChannelGroup, normalise_scores
from pruning.errors import SpecError, TargetUnreachable
from pruning.spec import KNAPSACK_ALLOCATIONS


METRICS = ("macs", "params", "latency")


@dataclass(frozen=True)
class Target:
    """A reduction to reach, as a fraction of the *original* model: 0.5 = half the MACs (or parameters, or of the
    latency a ``LatencyModel`` predicts)."""

    metric: str = "macs"          # "macs" | "params" | "latency"
    reduction: float = 0.5

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise SpecError(f"target metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if not 0.0 <= self.reduction < 1.0:
            raise SpecError(f"target reduction must be in [0, 1), got {self.reduction}")


def widths_removed(groups: list[ChannelGroup], counts: dict[str, int]) -> dict[tuple[str, str], float]:
    """(module, side) -> channels removed, given how many channels each group loses (a member that sees each
    group channel several times, like a linear layer after a flatten, loses that many per channel)."""
    removed: dict[tuple[str, str], float] = {}
    for group in groups:
        n = counts.get(group.name, 0)
        if n:
            for index, member in enumerate(group.members):
                removed[member] = removed.get(member, 0) + n * group.member_ratio(index)
    return removed


@dataclass
class Allocation:
    kept: dict[str, list[int]]           # group -> kept channel indices (sorted)
    original: dict[str, int]
    achieved_reduction: float            # analytic, relative to the base cost
    steps: int


@dataclass
class _Units:
    """One group's removal units (a unit = the same offset in each of its ``interleave`` blocks), weakest first."""

    group: ChannelGroup
    order: list[int]                     # unit indices, lowest score first
    norm: torch.Tensor                   # normalised score per unit
    step: int                            # units per chunk (rounding)
    floor: int                           # units that always stay ...
    removed: int = 0
    whole: bool = False                  # ... unless the group may go entirely (its block is removed instead)

    @property
    def total(self) -> int:
        return self.group.size // self.group.interleave

    def chunk(self, everything: bool = False) -> list[int]:
        """The next units to go (empty when the floor is reached); ``everything``: all that are left, for a
        ``whole`` group (empty otherwise)."""
        kept = self.total - self.removed
        if everything:
            return self.order[self.removed:] if self.whole else []
        n = _next_chunk(kept, self.step)
        return [] if kept - n < self.floor else self.order[self.removed:self.removed + n]

    def moves(self) -> list[bool]:
        """The chunks this group can give up next, as ``chunk``'s ``everything``: the next one, and (a ``whole``
        group) all that are left, at any width, so the knapsack weighs removing the block against narrowing it."""
        out = [False] if self.chunk() else []
        everything = self.chunk(True)
        return out + [True] if everything and len(everything) != len(self.chunk()) else out

    def channels(self, units) -> list[int]:
        width = self.total
        return sorted(u + b * width for u in units for b in range(self.group.interleave))


def _make_units(group: ChannelGroup, scores: torch.Tensor, round_to: int, min_channels: int,
                min_keep_fraction: float, whole: bool = False) -> _Units:
    blocks = group.interleave
    per_unit = scores.double().reshape(blocks, group.size // blocks).mean(0)         # [units]
    step = round_to // math.gcd(round_to, blocks)
    if blocks > 1 and step * blocks > group.size // 4:
        step = 1                         # coarser rounding would leave a grouped layer almost nothing to choose
    floor = math.ceil(_floor(group.size, round_to, min_channels, min_keep_fraction) / blocks)
    return _Units(group, torch.argsort(per_unit, stable=True).tolist(), normalise_scores(per_unit), step,
                  max(1, floor), whole=whole)


def removal_units(groups: list[ChannelGroup], scores: dict[str, torch.Tensor], round_to: int = 8,
                  min_channels: int = 1, min_keep_fraction: float = 0.1) -> dict[str, _Units]:
    """Each group's removal units in the order the allocator takes them (``chunk_boundaries`` for the depths)."""
    return {g.name: _make_units(g, scores[g.name], round_to, min_channels, min_keep_fraction) for g in groups}


def chunk_boundaries(units: _Units) -> list[int]:
    """Units removed after each chunk the allocator may take, down to the group's floor."""
    out, removed = [], 0
    while True:
        kept = units.total - removed
        n = _next_chunk(kept, units.step)
        if kept - n < units.floor:
            return out
        removed += n
        out.append(removed)


def allocate(groups: list[ChannelGroup], scores: dict[str, torch.Tensor], cost_model: CostModel, target: Target,
             base_cost: float, *, mode: str = "uniform", round_to: int = 8, min_channels: int = 1,
             min_keep_fraction: float = 0.1, tolerance: float = 0.01, curves: dict | None = None,
             whole: Collection[str] = ()) -> Allocation:
    """Choose the channels to remove so that cost <= (1 - target.reduction) x ``base_cost`` (closest state wins).

    ``whole``: groups that may lose every channel in one last chunk after their floor (a removable block's inner
    channels: the caller removes the block); their curves must give the loss at ``group.size`` units (mode
    "sensitivity" / "latency"). Such a group keeps ``[]`` in the allocation.

    Near the goal, a chunk that would overshoot it by more than ``tolerance`` x ``base_cost`` gives way to the
    next-ranked chunk that does not (coarse groups — a residual stream shared by many layers — otherwise land
    several points past or short of the target). ``base_cost`` is the original model's cost (before any block
    removal); ``cost_model`` describes the model the groups belong to. Raises ``TargetUnreachable`` (naming the
    largest reachable reduction) if protected layers and minimum widths make the target unreachable.
    """
    _check_inputs(groups, scores, mode, curves, target.metric)
    goal, slack = (1.0 - target.reduction) * base_cost, tolerance * base_cost
    units = [_make_units(g, scores[g.name], round_to, min_channels, min_keep_fraction, g.name in whole)
             for g in groups]
    cost = cost_model.cost(target.metric, {})
    history = [(cost, {u.group.name: u.removed for u in units})]
    while cost > goal:
        ranked = sorted(((_key(u, mode, units, (i, move), cost, cost_model, target.metric, curves), (i, move))
                         for i, u in enumerate(units) for move in u.moves()))
        if not ranked:
            most = reachable_reduction(groups, cost_model, target.metric, base_cost, round_to=round_to,
                                       min_channels=min_channels, min_keep_fraction=min_keep_fraction, whole=whole)
            raise TargetUnreachable(
                f"target {target.metric} reduction {target.reduction:.0%} is unreachable: at most {most:.1%} with "
                f"widths rounded to {round_to} and at least {min_channels} channel(s) per layer; lower the target "
                "(or allow a shortfall), the rounding or the protected layers", most, target.metric)
        (pick, everything), cost = _landing(units, [m for _, m in ranked], cost_model, target.metric,
                                            goal - slack)
        units[pick].removed += len(units[pick].chunk(everything))
        history.append((cost, {u.group.name: u.removed for u in units}))
    if len(history) > 1 and abs(history[-2][0] - goal) < abs(history[-1][0] - goal):
        cost = history[-2][0]
        for u in units:
            u.removed = history[-2][1][u.group.name]
    if mode in KNAPSACK_MODES and len(history) > 1 and abs(cost - goal) > slack:
        chosen = {u.group.name: u.removed for u in units}
        swapped = land_by_swap(units, history[-2][1], goal, slack, cost_model, target.metric, curves)
        cost, removed = swapped if swapped is not None else (cost, chosen)
        for u in units:
            u.removed = removed[u.group.name]
    kept = {u.group.name: u.channels(u.order[u.removed:]) for u in units}
    return Allocation(kept, {g.name: g.size for g in groups}, 1.0 - cost / base_cost, len(history) - 1)


def land_by_swap(units: list[_Units], before: dict[str, int], goal: float, slack: float, cost_model: CostModel,
                 metric: str, curves: dict) -> tuple[float, dict[str, int]] | None:
    """(cost, units removed per group) of the state with the least measured loss that lands within ``slack`` of
    ``goal``, one step past ``before`` (the last state short of the goal): one group's next chunk added and another
    group's last chunk given back, or two groups' next chunks added; None when no such state lands. With coarse
    chunks (few, wide groups at a width multiple of 8) no single chunk may land: one step goes short by more than
    the tolerance, the next one past it. Leaves ``units`` at ``before``."""
    def state_loss(removed: dict[str, int]) -> float:
        return sum(curves[u.group.name].at(removed[u.group.name]) for u in units)

    nexts, backs = {}, {}
    for u in units:
        u.removed = before[u.group.name]
        if chunk := u.chunk():
            nexts[u.group.name] = u.removed + len(chunk)
        if u.removed:
            backs[u.group.name] = max(b for b in [0, *chunk_boundaries(u)] if b < u.removed)
    best = None
    for i, (name, added) in enumerate(nexts.items()):
        partners = [(other, back) for other, back in backs.items() if other != name]
        partners += [(other, more) for other, more in list(nexts.items())[i + 1:]]
        for other, width in partners:
            removed = {**before, name: added, other: width}
            cost = _state_cost(units, removed, cost_model, metric)
            if abs(cost - goal) <= slack:
                key = (state_loss(removed), abs(cost - goal))
                if best is None or key < best[0]:
                    best = (key, cost, removed)
    return None if best is None else (best[1], best[2])


MODES = ("uniform", "global", "sensitivity", "latency")
KNAPSACK_MODES = KNAPSACK_ALLOCATIONS             # ranked by measured loss per unit of cost: need loss curves


def _check_inputs(groups: list[ChannelGroup], scores: dict[str, torch.Tensor], mode: str, curves,
                  metric: str = "macs") -> None:
    if mode not in MODES:
        raise SpecError(f"allocation mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode in KNAPSACK_MODES and (curves is None or any(g.name not in curves for g in groups)):
        raise SpecError(f"{mode} allocation needs a measured curve for every group")
    if (mode == "latency") != (metric == "latency"):
        raise SpecError("latency allocation ranks by predicted milliseconds and targets latency (a LatencyModel as "
                        f"the cost model); got allocation {mode!r} with a {metric!r} target")
    missing = [g.name for g in groups if g.name not in scores]
    if missing:
        raise SpecError(f"the criterion gave no scores for {', '.join(missing[:3])}")
    for g in groups:
        if scores[g.name].numel() != g.size:
            raise SpecError(f"criterion scored {scores[g.name].numel()} channels of {g.name}, which has {g.size}")


Move = tuple[int, bool]                 # (index of a group's units, ``_Units.chunk``'s ``everything``)


def _key(u: _Units, mode: str, units: list[_Units], move: Move, cost: float, cost_model: CostModel, metric: str,
         curves: dict | None) -> tuple:
    chunk = u.chunk(move[1])
    chunk_score = float(u.norm[chunk].mean())
    if mode in KNAPSACK_MODES:                               # the knapsack: least loss per unit of cost saved
        curve, after = curves[u.group.name], u.removed + len(chunk)
        saved = cost - _cost_after(units, move, cost_model, metric)
        lost = max(curve.at(after) - curve.at(u.removed), 0.0)
        return (lost / saved if saved > 0 else math.inf, chunk_score)
    kept = u.total - u.removed
    return (round(-kept / u.total, 6), chunk_score) if mode == "uniform" else (chunk_score,)


def _cost_after(units: list[_Units], move: Move, cost_model: CostModel, metric: str) -> float:
    removed = {u.group.name: u.removed + (len(u.chunk(move[1])) if j == move[0] else 0) for j, u in enumerate(units)}
    return _state_cost(units, removed, cost_model, metric)


def _state_cost(units: list[_Units], removed: dict[str, int], cost_model: CostModel, metric: str) -> float:
    """The cost with ``removed[group]`` units gone from each group."""
    counts = {u.group.name: removed[u.group.name] * u.group.interleave for u in units}
    return cost_model.cost(metric, widths_removed([u.group for u in units], counts))


def _landing(units: list[_Units], ranked: list[Move], cost_model: CostModel, metric: str,
             lowest: float) -> tuple[Move, float]:
    """(move to make, cost after): the best-ranked chunk, unless it takes the cost below ``lowest`` and a
    lower-ranked one does not."""
    def cost_after(move: Move) -> float:
        return _cost_after(units, move, cost_model, metric)

    first = cost_after(ranked[0])
    if first >= lowest:
        return ranked[0], first
    for i in ranked[1:]:
        after = cost_after(i)
        if after >= lowest:
            return i, after
    return ranked[0], first


def reachable_reduction(groups: list[ChannelGroup], cost_model: CostModel, metric: str, base_cost: float, *,
                        round_to: int = 8, min_channels: int = 1, min_keep_fraction: float = 0.1,
                        whole: Collection[str] = ()) -> float:
    """The largest reduction ``allocate`` can reach: every group at its floor width, ``whole`` ones at none (same
    rules as ``allocate``)."""
    counts = {}
    for g in groups:
        u = _make_units(g, torch.zeros(g.size), round_to, min_channels, min_keep_fraction, g.name in whole)
        u.removed += len(u.chunk(True))
        while u.chunk():
            u.removed += len(u.chunk())
        counts[g.name] = u.removed * g.interleave
    return 1.0 - cost_model.cost(metric, widths_removed(groups, counts)) / base_cost


def _floor(size: int, round_to: int, min_channels: int, min_keep_fraction: float) -> int:
    return min(size, max(min_channels, round_to, math.ceil(min_keep_fraction * size)))


def _next_chunk(kept: int, round_to: int) -> int:
    """Units to drop so the width falls to the next lower multiple of ``round_to``."""
    remainder = kept % round_to
    return remainder if remainder else round_to


def allocate_blocks(block_scores: dict[str, float], block_costs: dict[str, float], budget: float,
                    threshold: float | None = None) -> list[str]:
    """Blocks to remove: all scored below ``threshold``, else lowest first while their cost fits ``budget``.

    ``block_costs`` and ``budget`` share a unit (MACs or parameters). The returned list is ordered by score.
    """
    ranked = sorted(block_scores, key=lambda b: block_scores[b])
    if threshold is not None:
        return [b for b in ranked if block_scores[b] < threshold]
    chosen, spent = [], 0.0
    for block in ranked:
        if spent >= budget:
            break
        if spent + block_costs[block] <= budget * 1.02 or not chosen:
            chosen.append(block)
            spent += block_costs[block]
    return chosen


@dataclass
class LatencySearch:
    reduction: float
    steps: list[dict]          # every probe: {reduction, latency_ms, meets_budget}


def search_latency_budget(latency_at, budget_ms: float, probes: tuple[float, ...] = (0.25, 0.5, 0.75),
                          max_reduction: float = 0.9, step: float = 0.02, margin: float = 0.0) -> LatencySearch:
    """Smallest MACs reduction whose measured latency meets ``budget_ms``: a few probes, linear interpolation
    between the two that bracket the budget, then a verified probe (nudged up by ``step`` until it meets it).

    ``latency_at(reduction)`` prunes to that reduction and returns the measured latency in ms (or raises
    ``SpecError`` when the reduction cannot be reached). Probes above ``max_reduction`` (the most the allocator
    can remove, ``reachable_reduction``) are replaced by one probe at ``max_reduction``.

    Every decision compares with the goal ``budget_ms x (1 - margin)``: a measured latency moves by a few percent
    between two measurements of the same model, so a probe that only just meets the budget is no promise that the
    final benchmark will. Each step records ``meets_budget`` and ``meets_goal``. ``margin`` is checked with the
    spec (``pruning.compress``: 0 <= margin < 0.5).
    """
    goal = budget_ms * (1.0 - margin)
    steps: list[dict] = []

    def probe(reduction: float) -> float:
        latency = float(latency_at(reduction))
        steps.append({"reduction": round(reduction, 4), "latency_ms": latency, "meets_budget": latency <= budget_ms,
                      "meets_goal": latency <= goal})
        return latency

    points = [(0.0, probe(0.0))]
    if points[0][1] <= goal:
        return LatencySearch(0.0, steps)
    for reduction in probes:
        reduction = min(reduction, max_reduction)
        if reduction <= points[-1][0]:
            break
        try:
            points.append((reduction, probe(reduction)))
        except SpecError:
            break
        if points[-1][1] <= goal or reduction >= max_reduction:
            break
    meeting = [p for p in points if p[1] <= goal]
    if not meeting:
        best = min(points, key=lambda p: p[1])
        raise SpecError(f"latency budget {budget_ms:.3g} ms (aiming at {goal:.3g} ms with the {margin:.0%} margin) is "
                        f"unreachable: the fastest probe (-{best[0]:.0%} MACs, the most this model allows is "
                        f"-{max_reduction:.0%}) measured {best[1]:.3g} ms; raise the budget, lower the rounding or "
                        "the protected layers, or pick a faster target")
    hi = min(meeting)
    lo = max(p for p in points if p[0] < hi[0])
    reduction = lo[0] + (hi[0] - lo[0]) * (lo[1] - goal) / max(lo[1] - hi[1], 1e-9)
    reduction = min(hi[0], math.ceil(reduction * 100) / 100)
    while reduction < hi[0]:
        if probe(reduction) <= goal:
            return LatencySearch(reduction, steps)
        reduction = min(hi[0], reduction + step)
    return LatencySearch(hi[0], steps)
