"""Redundancy in what the units pass on: the ``redundancy`` criterion's data-driven signal (``signal="features"``).

Ayinde & Zurada call a filter redundant when another filter computes nearly the same thing (cosine distance between
weights, ``redundancy.py``). What the rest of the network loses when a unit goes is the part of its feature map that
the kept units cannot stand in for — a near-duplicate is the special case where one kept unit stands in exactly. This
module measures that directly: per channel group, the group's consumers' input Gram statistics are gathered on
calibration images (``pruning.gram_stats``), and the channels are eliminated greedily, each time the one whose
contribution the consumers' re-fit recovers best from the channels still kept (``pruning.channel_elimination``).

A consumer is used when it reads the group's channels one to one (a conv with ``groups == 1`` and ``in_channels ==
size``, or a linear layer whose inputs are the channels flattened channel-major); a group with none falls back to the
weight clustering, and the fallback is named in its reasons.

Example::

    eliminations = feature_eliminations(ctx, images=1024, positions_per_image=16)
    eliminations["layer1.0.conv1"].order[:4]     # the four most redundant units, removal order
"""
from __future__ import annotations

import torch
import torch.nn as nn

from pruning.channel_elimination import Consumer, Elimination, eliminate, elimination_scores
from pruning.criteria.base import ChannelGroup, ScoreResult, ScoringContext
from pruning.gram_stats import collect_stats


def channel_columns(model: nn.Module, name: str, group: ChannelGroup) -> int | None:
    """Input columns per group channel of consumer ``name`` when it reads the group's channels one to one (channel k
    is the k-th block of that many columns), else None."""
    layer = model.get_submodule(name)
    if group.interleave != 1:
        return None
    if isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.in_channels == group.size:
        per, taps = 1, layer.kernel_size[0] * layer.kernel_size[1]
    elif isinstance(layer, nn.Linear) and group.size and layer.in_features % group.size == 0:
        per = taps = layer.in_features // group.size
    else:
        return None
    if group.channel_map:
        index = next((i for i, (member, side) in enumerate(group.members) if member == name and side == "in"), None)
        if index is None or any(tuple(c) != tuple(range(k * per, (k + 1) * per))
                                for k, c in enumerate(group.channel_map[index])):
            return None
    return taps


def output_scale(model: nn.Module, name: str) -> torch.Tensor | None:
    """gamma / sqrt(var + eps) of the BatchNorm right after layer ``name`` (the next module registered, when it is a
    BatchNorm of the layer's width), float64 [out]; None when there is none. Errors are weighed by it, as the
    network downstream sees them after the norm."""
    layer, seen = model.get_submodule(name), False
    width = layer.weight.shape[0]
    for other, module in model.named_modules():
        if other == name:
            seen = True
        elif seen and not other.startswith(name + "."):
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.num_features == width \
                    and module.running_var is not None:
                gamma = module.weight.detach().double() if module.weight is not None else 1.0
                return gamma / torch.sqrt(module.running_var.detach().double() + module.eps)
            return None
    return None


def calibration_images(ctx: ScoringContext, limit: int) -> list[torch.Tensor]:
    """The first ``limit`` calibration images, batch by batch."""
    out, seen = [], 0
    for batch in ctx.batches():
        if seen >= limit:
            break
        out.append(batch.images[:limit - seen])
        seen += len(out[-1])
    return out


@torch.no_grad()
def feature_eliminations(ctx: ScoringContext, *, images: int = 1024, positions_per_image: int = 16,
                         ridge: float = 1e-3, max_memory_mb: float = 1024, priority: dict[str, torch.Tensor] | None = None,
                         window: float = 1.0, weigh_by_norm: bool = True) -> dict[str, Elimination]:
    """Greedy elimination order for every group that has a one-to-one consumer (see the module docstring); with
    ``priority`` (group -> scores), each step picks among the ``window`` fraction of lowest-priority channels.
    ``weigh_by_norm``: weigh each consumer's output channels by the BatchNorm after it (``output_scale``)."""
    readers = {g.name: [(c, cols) for c in g.consumers
                        if (cols := channel_columns(ctx.model, c, g)) is not None] for g in ctx.groups}
    consumers = sorted({c for pairs in readers.values() for c, _ in pairs})
    if not consumers:
        return {}
    was_training = ctx.model.training
    ctx.model.eval()
    try:
        stats = collect_stats(ctx.model, consumers, calibration_images(ctx, images),
                              positions_per_image=positions_per_image, seed=ctx.seed,
                              budget_bytes=int(max_memory_mb * 2 ** 20))
    finally:
        ctx.model.train(was_training)
    out = {}
    for group in ctx.groups:
        parts = []
        for name, cols in readers[group.name]:
            s = stats[name]
            if not s.fits or s.xtx is None:
                continue
            layer = s.layer
            weight = layer.weight.detach().flatten(1).double()
            if layer.bias is not None:
                weight = torch.cat([weight, layer.bias.detach().double()[:, None]], 1)
            scale = output_scale(ctx.model, name) if weigh_by_norm else None
            if scale is not None:
                weight = weight * scale[:, None]
            parts.append(Consumer(gram=s.xtx[0], weight=weight, per_channel=cols))
        if parts:
            rank = None if priority is None else priority.get(group.name)
            out[group.name] = eliminate(parts, group.size, ridge=ridge, priority=rank, window=window)
    return out


def guide_by_refit(ctx: ScoringContext, result: ScoreResult, window: float, **options) -> ScoreResult:
    """Let a criterion's scores nominate and the re-fit pick: each group's removal order becomes the greedy
    elimination restricted, at every step, to the ``window`` fraction of the alive channels the criterion scores
    lowest. The criterion's own reasons stay; each removed unit's reason gains ``refit`` = {step, recovered,
    absorbed_by}. Groups without a one-to-one consumer keep the criterion's order. ``options``: as
    ``feature_eliminations``. Returns ``result``, changed in place."""
    eliminations = feature_eliminations(ctx, priority=result.channels, window=window, **options)
    for name, elimination in eliminations.items():
        result.channels[name] = elimination_scores(elimination, len(result.channels[name]))
        reasons = result.reasons.get(name)
        if reasons is None:
            continue
        for step, k in enumerate(elimination.order):
            reasons[k]["refit"] = {"step": step, "recovered": round(elimination.explained[step], 4),
                                   "absorbed_by": elimination.absorbed_by[step], "window": window}
    return result
