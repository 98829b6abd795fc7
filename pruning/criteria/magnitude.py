"""Peer baselines through Torch-Pruning's importance API: L1/L2 magnitude, random, FPGM, Taylor.

- ``l1`` / ``l2``: Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017 — the p-norm of the weights
  of every layer in the channel group (Torch-Pruning's ``GroupMagnitudeImportance``; ``scope="filter"`` uses the
  root filter only, as in the paper).
- ``fpgm``: He et al., "Filter Pruning via Geometric Median", CVPR 2019 (``FPGMImportance``).
- ``taylor``: Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019 — first-order
  Taylor |w * dL/dw| from cross-entropy gradients over the calibration set (``GroupTaylorImportance``).
- ``random``: uniform random scores from the context's seed (the floor every criterion must beat).

Example::

    from pruning.criteria import create_criterion
    result = create_criterion("l2").score(ctx)   # result.channels[group] -> [size]
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from pruning.criteria.base import (ChannelGroup, ScoreResult, Scorer, ScoringContext, _depth_share, _refit_window,
                                   register_criterion)
from pruning.criteria.params import Range


def tp_group(graph: tp.DependencyGraph, model: nn.Module, group: ChannelGroup) -> tp.Group:
    """Torch-Pruning's group for all channels of ``group`` on ``model`` (the graph must be built on it)."""
    module = model.get_submodule(group.name)
    fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
    return graph.get_pruning_group(module, fn, idxs=list(range(group.size)))


def _scores_from_tp(importance: tp.importance.Importance, graph: tp.DependencyGraph, model: nn.Module,
                    groups: list[ChannelGroup]) -> dict[str, torch.Tensor]:
    out = {}
    for group in groups:
        with torch.no_grad():
            value = importance(tp_group(graph, model, group))
        out[group.name] = value.detach().float().cpu()
    return out


def _graph(ctx: ScoringContext, model: nn.Module) -> tp.DependencyGraph:
    if ctx.graph is not None and model is ctx.model:
        return ctx.graph
    return tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *ctx.input_shape))


@register_criterion
class MagnitudeScorer(Scorer):
    """p-norm of weights; ``p=1`` is ``l1``, ``p=2`` is ``l2``. ``scope``: "group" or "filter"."""

    name = "l1"
    paper = "Li et al. 2017, Pruning Filters for Efficient ConvNets"
    param_ranges = {"p": Range(0.0, 16.0, open_low=True)}
    needs_data = False

    def __init__(self, p: int = 1, scope: str = "group") -> None:
        super().__init__(p=p, scope=scope)
        if scope not in ("group", "filter"):
            raise TypeError("scope must be 'group' or 'filter'")
        self.p, self.scope = p, scope

    def score(self, ctx: ScoringContext) -> ScoreResult:
        if self.scope == "filter":
            channels = {g.name: _filter_norms(ctx.module(g.name).weight, self.p) for g in ctx.groups}
        else:
            importance = tp.importance.GroupMagnitudeImportance(p=self.p, group_reduction="mean", normalizer=None)
            channels = _scores_from_tp(importance, _graph(ctx, ctx.model), ctx.model, ctx.groups)
        reasons = {name: [{"norm": float(v)} for v in s] for name, s in channels.items()}
        return ScoreResult(channels=channels, reasons=reasons)


def _filter_norms(weight: torch.Tensor, p: int) -> torch.Tensor:
    return weight.detach().flatten(1).norm(p=p, dim=1).float()   # [out_channels]


@register_criterion
class L2Scorer(MagnitudeScorer):
    name = "l2"
    param_ranges = {}                  # p is fixed at 2

    def __init__(self, scope: str = "group") -> None:
        super().__init__(p=2, scope=scope)


@register_criterion
class RandomBlocksScorer(Scorer):
    """Control for layer pruning: a uniform random ranking of the removable blocks (compare with ``layer_probe``)."""

    name = "random_blocks"
    kind = "block"
    paper = "uniform random ranking of residual blocks (control)"
    needs_data = False

    def __init__(self, depth_share: float = 1.0, refit_window: float = 0.0) -> None:
        super().__init__(depth_share=depth_share)
        self.depth_share = _depth_share(depth_share)
        self.refit_window = _refit_window(refit_window)   # channels only (``create_criterion`` sets it again)

    def score(self, ctx: ScoringContext) -> ScoreResult:
        """Random blocks; with ``depth_share`` < 1 (the control for ``layer_probe``'s), random channels too, which
        ``refit_window`` lets the re-fit overrule as for any channel criterion."""
        gen = torch.Generator().manual_seed(ctx.seed)
        values = torch.rand(len(ctx.blocks), generator=gen).tolist()
        result = RandomScorer().score(ctx) if ctx.groups else ScoreResult()
        result.blocks = dict(zip(ctx.blocks, values))
        result.block_reasons = {b: {"random": v} for b, v in zip(ctx.blocks, values)}
        return result


@register_criterion
class RandomScorer(Scorer):
    name = "random"
    paper = "uniform random ranking (control)"
    needs_data = False

    def score(self, ctx: ScoringContext) -> ScoreResult:
        gen = torch.Generator().manual_seed(ctx.seed)
        channels = {g.name: torch.rand(g.size, generator=gen) for g in ctx.groups}
        return ScoreResult(channels=channels, reasons={n: [{"random": float(v)} for v in s]
                                                       for n, s in channels.items()})


@register_criterion
class FPGMScorer(Scorer):
    name = "fpgm"
    paper = "He et al. 2019, Filter Pruning via Geometric Median"
    param_ranges = {"p": Range(0.0, 16.0, open_low=True)}
    needs_data = False

    def __init__(self, p: int = 2) -> None:
        super().__init__(p=p)
        self.p = p

    def score(self, ctx: ScoringContext) -> ScoreResult:
        importance = tp.importance.FPGMImportance(p=self.p, group_reduction="mean", normalizer=None)
        channels = _scores_from_tp(importance, _graph(ctx, ctx.model), ctx.model, ctx.groups)
        return ScoreResult(channels=channels, reasons={n: [{"distance_sum": float(v)} for v in s]
                                                       for n, s in channels.items()})


@register_criterion
class TaylorScorer(Scorer):
    name = "taylor"
    paper = "Molchanov et al. 2019, Importance Estimation for Neural Network Pruning"
    param_ranges = {"max_batches": Range(1, 1_000_000, whole=True)}

    def __init__(self, max_batches: int = 8) -> None:
        super().__init__(max_batches=max_batches)
        self.max_batches = max_batches

    def score(self, ctx: ScoringContext) -> ScoreResult:
        model = copy.deepcopy(ctx.model).eval()
        model.zero_grad()
        for index, batch in enumerate(ctx.batches()):
            if index >= self.max_batches:
                break
            F.cross_entropy(model(batch.images), batch.labels).backward()
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *ctx.input_shape))
        importance = tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer=None)
        channels = _scores_from_tp(importance, graph, model, ctx.groups)
        return ScoreResult(channels=channels, reasons={n: [{"taylor": float(v)} for v in s]
                                                       for n, s in channels.items()})
