"""Reaching the target, measured: allocate, count the exact cost of the result, correct once, and never fall short
silently.

``allocate`` plans with an analytic cost model; some layers the exact counter sees scale with width in ways the
model does not follow (they sit in its constant anchor), so the plan is applied to a copy and counted. When the
measured reduction misses the target by more than ``tolerance``, the target is shifted by the gap and allocated
once more, and the closer of the two plans wins. A target the model cannot reach raises ``TargetUnreachable``
naming the largest reachable reduction — or, with ``allow_shortfall``, prunes to it and records a warning.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from pruning.allocate import Allocation, CostModel, Target, allocate
from pruning.criteria.base import ChannelGroup
from pruning.errors import TargetUnreachable

log = logging.getLogger(__name__)

Measure = Callable[[dict, dict], float]     # (kept, original widths) -> exact reduction of that plan


def allocate_to_target(groups: list[ChannelGroup], scores: dict[str, torch.Tensor], cost_model: CostModel,
                       target: Target, base_cost: float, measure: Measure, *, allow_shortfall: bool,
                       warnings: list[str], tolerance: float = 0.02, **options) -> Allocation:
    """The allocation whose *measured* reduction is closest to ``target`` (see the module docstring).

    ``options`` go to ``allocate``. Appends to ``warnings`` when the result falls short and that is allowed.
    """
    first = allocate_or_reachable(groups, scores, cost_model, target, base_cost, allow_shortfall, warnings,
                                  options)
    if first is None:
        return Allocation({}, {}, 0.0, 0)
    best, measured = first, measure(first.kept, first.original)
    gap = first.achieved_reduction - measured
    if abs(measured - target.reduction) > tolerance and not warnings:
        shifted = Target(target.metric, min(0.99, max(0.0, target.reduction + gap)))
        log.info("measured %.2f%% for a %.2f%% target (model %.2f%%): allocating for %.2f%%", 100 * measured,
                 100 * target.reduction, 100 * first.achieved_reduction, 100 * shifted.reduction)
        second = allocate_or_reachable(groups, scores, cost_model, shifted, base_cost, True, [], options)
        if second is not None:
            again = measure(second.kept, second.original)
            if abs(again - target.reduction) < abs(measured - target.reduction):
                best, measured = second, again
    check_reached(target, measured, allow_shortfall or bool(warnings), warnings, tolerance)
    return best


def allocate_or_reachable(groups, scores, cost_model, target, base_cost, allow_shortfall, warnings,
                          options) -> Allocation | None:
    """``allocate`` for ``target``; an unreachable target raises (naming the reachable reduction) or, with
    ``allow_shortfall``, allocates the largest reachable one and says so in ``warnings`` (None: nothing prunable)."""
    try:
        return allocate(groups, scores, cost_model, target, base_cost, **options)
    except TargetUnreachable as exc:
        if not allow_shortfall:
            raise TargetUnreachable(f"{exc}. The largest reachable {exc.metric} reduction is {exc.reachable:.1%}; "
                                    "set allow_shortfall (--allow-shortfall) to prune to it instead", exc.reachable,
                                    exc.metric) from None
        if exc.reachable <= 0.0:
            warnings.append(f"target {target.metric} reduction {target.reduction:.1%} is unreachable and nothing "
                            "can be pruned (allow_shortfall): the model is unchanged")
            return None
        reach = allocate(groups, scores, cost_model, Target(target.metric, max(0.0, exc.reachable - 1e-6)),
                         base_cost, **options)
        warnings.append(f"target {target.metric} reduction {target.reduction:.1%} is unreachable; pruned to the "
                        f"largest reachable, {reach.achieved_reduction:.1%} (allow_shortfall)")
        return reach


def check_reached(target: Target, measured: float, allow_shortfall: bool, warnings: list[str],
                  tolerance: float = 0.02) -> None:
    """Raise ``TargetUnreachable`` (or, allowed, warn) when ``measured`` falls short of the target by more than
    ``tolerance``; a shortfall already recorded in ``warnings`` is not repeated."""
    if measured >= target.reduction - tolerance:
        return
    message = (f"target {target.metric} reduction {target.reduction:.1%} not reached: the pruned model measures "
               f"{measured:.1%}")
    if not allow_shortfall:
        raise TargetUnreachable(message + "; lower the rounding (--round-to; 1 keeps any width) or the target, or "
                                "set allow_shortfall (--allow-shortfall) to accept it", measured, target.metric)
    if not any("unreachable" in w or "not reached" in w for w in warnings):
        warnings.append(message + " (allow_shortfall)")
