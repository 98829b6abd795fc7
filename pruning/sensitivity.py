"""What removing each group's weakest channels costs the network after the re-fit, measured on calibration images.

For a channel group g and a removal depth n (the n weakest units in the criterion's own order), the cost is the
rise of the logits' squared error against the unpruned model, per image, on held-apart calibration images:

    loss_g(n) = mean_images || f_(g, n)(x) - f(x) ||^2

where f_(g, n) is the model with only g pruned n units deep and its consumers re-fitted. No pruned copy is built:
the removal is simulated in place (the removed channels' producers are zeroed, so every tensor carries zeros
there, as if the channels were gone), and each consumer takes its ridge re-fit without the removed inputs
(``pruning.reconstruct``'s objective), solved from the Gram matrices X^T X, X^T Y of its input patches and outputs,
accumulated in one pass over the fit images — so each (group, depth) costs one small solve per consumer and one
forward pass of the loss images, which starts where the group's first layer runs (``pruning.prefix_cache``: the
layers before it give the outputs recorded in the reference pass); the weights are restored after each.

A consumer whose Gram matrix does not fit half of ``max_memory_mb`` keeps its old weights (plain removal) and
``Sensitivity.notes`` says so. Norms over channels (LayerNorm, GroupNorm) see zeros instead of fewer channels: the
simulation is approximate there.

``SensitivityCurve.at(n)`` interpolates between the measured depths; ``pruning.allocate`` (mode "sensitivity")
removes, step by step, the chunk with the least loss per unit of cost saved (a knapsack solved greedily).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from pruning.block_bypass import bypass_loss
from pruning.criteria.base import ChannelGroup
from pruning.gram_stats import ConsumerStats, collect_stats, conv_groups, input_columns
from pruning.prefix_cache import PrefixCache


@dataclass(frozen=True)
class SensitivityCurve:
    """Loss after removing ``removed[i]`` units of a group (its removal order), non-decreasing, from (0, 0)."""

    group: str
    removed: tuple[int, ...]
    loss: tuple[float, ...]

    def at(self, units: int) -> float:
        """The loss at ``units`` removed: linear between measured depths, the last slope beyond them."""
        xs, ys = self.removed, self.loss
        i = bisect.bisect_right(xs, units)
        if i < len(xs) and xs[i - 1] == units:
            return ys[i - 1]
        lo, hi = (i - 1, i) if i < len(xs) else (len(xs) - 2, len(xs) - 1)
        if hi <= 0 or xs[hi] == xs[lo]:
            return ys[-1]
        return ys[lo] + (ys[hi] - ys[lo]) * (units - xs[lo]) / (xs[hi] - xs[lo])


@dataclass
class Sensitivity:
    curves: dict[str, SensitivityCurve]
    images: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"images": self.images, "notes": list(self.notes),
                "curves": {n: {"removed": list(c.removed), "loss": list(c.loss)} for n, c in self.curves.items()}}


# -- pure math: the re-fit of one consumer from its Gram statistics -------------------------------------------------

def refit_weights(xtx: torch.Tensor, xty: torch.Tensor, prior: torch.Tensor, keep_cols: torch.Tensor,
                  ridge: float) -> torch.Tensor:
    """The ridge re-fit of one conv group without the dropped inputs, as [C, D] with zeros in the dropped columns:
    W'_S = (G_SS + lam I)^-1 (B_S + lam W_S^T), lam = ridge x trace(G_SS) / |S| (``pruning.reconstruct``'s
    objective). ``xtx`` [D, D], ``xty`` [D, C], ``prior`` [C, D] (bias last when present), ``keep_cols`` [D] bool."""
    g = xtx[keep_cols][:, keep_cols]
    rhs = xty[keep_cols] + 0.0
    out = torch.zeros_like(prior, dtype=torch.float64)
    if not len(g):
        return out
    lam = ridge * float(g.diagonal().sum().clamp_min(1e-12)) / len(g)
    rhs += lam * prior[:, keep_cols].T.double()
    system = g + lam * torch.eye(len(g), dtype=g.dtype)
    factor, info = torch.linalg.cholesky_ex(system)
    w = torch.cholesky_solve(rhs, factor) if int(info) == 0 else torch.linalg.lstsq(system, rhs).solution
    out[:, keep_cols] = w.T
    return out


# -- simulated removal ----------------------------------------------------------------------------------------------

class _Simulation:
    """Applies one (group, removed channels) to ``model`` in place; ``restore`` puts every weight back."""

    def __init__(self, model: nn.Module, stats: dict[str, ConsumerStats], ridge: float, refit: bool) -> None:
        self.model, self.stats, self.ridge, self.refit = model, stats, ridge, refit
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def apply(self, group: ChannelGroup, gone: list[int]) -> None:
        for index, (name, side) in enumerate(group.members):
            channels = group.member_channels(index, gone)
            if side == "out":
                self._zero_outputs(self.model.get_submodule(name), channels)
        for index, (name, side) in enumerate(group.members):
            if side == "in" and name in self.stats:
                self._drop_inputs(name, group.member_channels(index, gone))

    def restore(self) -> None:
        with torch.no_grad():
            for param, value in reversed(self.saved):
                param.copy_(value)
        self.saved.clear()

    def _save(self, param: torch.Tensor | None) -> None:
        if param is not None:
            self.saved.append((param, param.detach().clone()))

    @torch.no_grad()
    def _zero_outputs(self, module: nn.Module, channels: list[int]) -> None:
        for attr in ("weight", "bias"):
            param = getattr(module, attr, None)
            if isinstance(param, torch.Tensor) and param.dim() >= 1:
                self._save(param)
                param[channels] = 0

    @torch.no_grad()
    def _drop_inputs(self, name: str, channels: list[int]) -> None:
        layer, s = self.model.get_submodule(name), self.stats[name]
        groups, c_out, per_group_in = conv_groups(layer), layer.weight.shape[0], layer.weight.shape[1]
        kernel = layer.weight[0, 0].numel() if isinstance(layer, nn.Conv2d) else 1
        self._save(layer.weight)
        self._save(layer.bias)
        weight = layer.weight.view(c_out, -1)
        width = c_out // groups
        by_group: dict[int, list[int]] = {}
        for ch in channels:
            by_group.setdefault(ch // per_group_in, []).append(ch % per_group_in)
        for j, local in by_group.items():
            keep = torch.ones(input_columns(layer), dtype=torch.bool)
            for ch in local:
                keep[ch * kernel:(ch + 1) * kernel] = False
            rows_ = slice(j * width, (j + 1) * width)
            if not self.refit or s.xtx is None:
                weight[rows_, ~keep[:weight.shape[1]]] = 0
                continue
            prior = weight[rows_]
            if layer.bias is not None:
                prior = torch.cat([prior, layer.bias[rows_, None]], 1)
            new = refit_weights(s.xtx[j], s.xty[j], prior, keep, self.ridge)
            weight[rows_] = new[:, :weight.shape[1]].to(weight.dtype)
            if layer.bias is not None:
                layer.bias[rows_] = new[:, -1].to(layer.bias.dtype)


# -- curves ---------------------------------------------------------------------------------------------------------

def _append_loss(losses: list[float], loss: float) -> None:
    """The next point of a curve: never below the last one (a NaN counts as infinite)."""
    losses.append(max(losses[-1], loss if loss == loss else float("inf")))


def _prefix_cache(model: nn.Module, images: torch.Tensor, budget_bytes: int) -> PrefixCache:
    """The replay for ``images``, channels-last when the model takes it (the CPU convolutions run ~25% faster, the
    weights stay as they are); a model that does not (``x.view`` on a feature map) gets the default layout."""
    if images.dim() == 4:
        try:
            return PrefixCache(model, images.contiguous(memory_format=torch.channels_last), budget_bytes)
        except RuntimeError:
            pass
    return PrefixCache(model, images, budget_bytes)


@torch.no_grad()
def measure_sensitivity(model: nn.Module, groups: list[ChannelGroup], removal: dict[str, Callable[[int], list[int]]],
                        depths: dict[str, list[int]], fit_images: list[torch.Tensor],
                        loss_images: torch.Tensor, *, positions_per_image: int = 8, ridge: float = 1e-3,
                        refit: bool = True, seed: int = 0, max_memory_mb: float = 1024,
                        should_stop: Callable[[], None] | None = None,
                        bypass: dict[str, str] | None = None) -> Sensitivity:
    """Curves for ``groups``: ``removal[g](n)`` gives the group channels the first n units are, ``depths[g]`` the
    unit counts to measure. ``bypass[g]``: the shape-preserving block that group ``g`` lives in; its curve gets one
    more point, at every unit removed: the loss with the block skipped and the layers after it re-fitted
    (``pruning.block_bypass``). ``model`` is modified during the call and restored before it returns."""
    was_training = model.training
    model.eval()
    consumers = sorted({c for g in groups for c in g.consumers})
    stats = collect_stats(model, consumers, fit_images, positions_per_image=positions_per_image, seed=seed,
                          budget_bytes=int(max_memory_mb * 2 ** 20 / 2)) if refit else {}
    notes = []
    skipped = sorted(n for n, s in stats.items() if not s.fits)
    if skipped:
        notes.append(f"sensitivity: {len(skipped)} consumer(s) too large for their Gram matrix within "
                     f"max_memory_mb (e.g. {skipped[0]}) were measured without their re-fit")
    replay = _prefix_cache(model, loss_images, budget_bytes=int(max_memory_mb * 2 ** 20 / 2))
    reference = replay.reference
    sim = _Simulation(model, stats, ridge, refit)
    curves = {}
    try:
        for group in groups:
            changed = [name for name, _side in group.members]
            points, losses = [0], [0.0]
            for n in depths[group.name]:
                if should_stop is not None:
                    should_stop()
                sim.apply(group, removal[group.name](n))
                try:
                    loss = float(((replay.forward(changed) - reference) ** 2).sum(1).mean())
                finally:
                    sim.restore()
                points.append(n)
                _append_loss(losses, loss)
            if bypass and group.name in bypass:
                if should_stop is not None:
                    should_stop()
                loss = bypass_loss(model, bypass[group.name], fit_images, replay.images, reference, refit=refit,
                                   positions_per_image=positions_per_image, ridge=ridge, seed=seed,
                                   max_memory_mb=max_memory_mb)
                points.append(group.size // group.interleave)
                _append_loss(losses, loss)
            curves[group.name] = SensitivityCurve(group.name, tuple(points), tuple(losses))
    finally:
        model.train(was_training)
    return Sensitivity(curves, len(loss_images), notes)
