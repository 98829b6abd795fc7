"""Colour and texture similarity of filter visualizations — ``visual_similarity``.

Yao, Cao, Leung, Liang, "Deep neural network compression through interpretability-based filter pruning",
Pattern Recognition 119 (2021) 108056; ``../shared/CRITERIA.md`` §5. Layer by layer, shallow to deep (forward
order of the groups' root layers):

1. Visualize every filter of the layer by activation maximization (``pruning.visualize.visualize_layer``:
   leaky-ReLU of the response after the conv's BatchNorm, ``steps`` Adam steps), on the model *as already pruned
   in the layers before it*. The pruning of earlier layers is emulated on a working copy: when
   ``ctx.keep_fraction`` is set, each earlier
   group's K - ceil(keep_fraction x K) lowest-scored channels are silenced by setting their BatchNorm weight and
   bias to 0 (the conv's weight and bias when no BatchNorm follows), which makes those channels exactly 0 after
   the ReLU — the same function as removing them. With ``keep_fraction`` None the unpruned model is visualized.
2. Activation strength s_k = mean post-ReLU response of filter k to its own AM image. Invalid filters: the
   image has no structure (std over all its pixels < ``min_std`` = 0.02 on [0, 1]) or s_k < ``min_activation``
   (5%) of the layer median (or s_k <= 0: the filter never fires) — they are ranked last.
3. Similarity of two filters = β·colour + (1−β)·texture (β = 0.5), computed on each image contrast-stretched to
   [0, 1] (AM images of few steps are faint; the stretch keeps hue and pattern and makes histograms comparable):
   colour = histogram intersection of the H, S and V channels (``skimage.color.rgb2hsv``, ``bins`` bins each,
   averaged over the three; greyscale input: the intensity histogram), texture = cosine of the uniform-LBP
   histograms (``skimage.feature.local_binary_pattern``, P = 8, R = 1, ``method="uniform"``, 10 bins) of the
   grey image.
4. Greedy maximal marginal relevance: repeatedly pick the valid filter maximising s_k / max s − γ · max similarity
   to the filters already picked (γ = 1). The pick order is the ranking: score = 1 + (n_valid − rank) / n_valid
   for valid filters (first pick highest, all in (1, 2]); invalid filters score 0.99 x s_k / max s in [0, 1).

Reasons per channel: invalid flag and why, activation strength, the most similar already-picked filter (for
invalid filters: the most similar valid one) and that similarity, pick rank. Visualizations: the AM images.

Example::

    from pruning.criteria import create_criterion
    result = create_criterion("visual_similarity", steps=32).score(ctx)    # ctx.keep_fraction e.g. 0.6
    result.channels["layer1.0.conv1"]                                       # [16]
    result.reasons["layer1.0.conv1"][0]                                     # {"invalid": False, "rank": 3, ...}
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from skimage.color import rgb2hsv
from skimage.feature import local_binary_pattern

from pruning.criteria.base import ChannelGroup, ScoreResult, Scorer, ScoringContext, register_criterion
from pruning.criteria.params import AM_LR, AM_STEPS, Range
from pruning.visualize import input_stats, measure_response, response_layer, stretch, visualize_layer
from pruning.zoo import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

LBP_POINTS, LBP_RADIUS = 8, 1
INVALID_CEILING = 0.99


# --- pure math: image features and similarity ---------------------------------------------------

def colour_histogram(image: np.ndarray, bins: int = 16) -> np.ndarray:
    """[H, W, C] in [0, 1] -> per-channel normalised histograms [channels, bins]: H, S, V for RGB; intensity
    for greyscale."""
    planes = rgb2hsv(image) if image.shape[-1] == 3 else image[..., :1]      # [H, W, 3] or [H, W, 1]
    hist = np.stack([np.histogram(planes[..., c], bins=bins, range=(0.0, 1.0))[0]
                     for c in range(planes.shape[-1])]).astype(np.float64)   # [channels, bins]
    return hist / np.maximum(hist.sum(1, keepdims=True), 1.0)


def lbp_histogram(image: np.ndarray) -> np.ndarray:
    """[H, W, C] in [0, 1] -> normalised uniform-LBP histogram of the grey image [P + 2]."""
    grey = image.mean(-1)                                                      # [H, W]
    codes = local_binary_pattern(np.round(grey * 255).astype(np.uint8), LBP_POINTS, LBP_RADIUS, method="uniform")
    hist = np.bincount(codes.astype(np.int64).ravel(), minlength=LBP_POINTS + 2).astype(np.float64)
    return hist / max(hist.sum(), 1.0)


def similarity_matrix(images: torch.Tensor, beta: float = 0.5, bins: int = 16, contrast_stretch: bool = True
                      ) -> np.ndarray:
    """β·colour + (1−β)·texture for every pair of images [K, C, H, W] in [0, 1] -> [K, K] in [0, 1]."""
    x = stretch(images.detach().float()) if contrast_stretch else images.detach().float()
    arrays = x.permute(0, 2, 3, 1).double().numpy()                           # [K, H, W, C]
    colour = np.stack([colour_histogram(a, bins) for a in arrays])             # [K, channels, bins]
    texture = np.stack([lbp_histogram(a) for a in arrays])                     # [K, P + 2]
    inter = np.minimum(colour[:, None], colour[None, :]).sum(-1).mean(-1)      # [K, K]
    unit = texture / np.maximum(np.linalg.norm(texture, axis=1, keepdims=True), 1e-12)
    cos = unit @ unit.T                                                        # [K, K]
    return beta * inter + (1.0 - beta) * cos


def invalid_filters(images: torch.Tensor, strength: torch.Tensor, min_std: float = 0.02,
                    min_activation: float = 0.05) -> list[str | None]:
    """Why each filter is invalid (None if valid): no structure (image std < ``min_std``), or strength below
    ``min_activation`` x the layer median, or never firing (strength <= 0)."""
    std = images.detach().float().flatten(1).std(1)                            # [K]
    median = float(strength.double().quantile(0.5))                         # the mean of the two middle values
    reasons: list[str | None] = []
    for k in range(len(strength)):
        s = float(strength[k])
        if float(std[k]) < min_std:
            reasons.append(f"blank visualization (std {float(std[k]):.4f} < {min_std})")
        elif s <= 0.0:
            reasons.append("never fires (post-ReLU activation 0 on its own AM image)")
        elif median > 0 and s < min_activation * median:
            reasons.append(f"weak (activation {s:.4g} < {min_activation:.0%} of layer median {median:.4g})")
        else:
            reasons.append(None)
    return reasons


def mmr_order(strength: torch.Tensor, similarity: np.ndarray, valid: Sequence[bool], gamma: float = 1.0
              ) -> tuple[list[int], dict[int, tuple[int | None, float | None]]]:
    """Greedy maximal marginal relevance over the valid filters.

    Picks argmax_k  s_k / max s − γ · max_{p picked} sim(k, p)  (ties: lowest index) until none is left.
    Returns (the pick order, k -> (the most similar filter already picked when k was picked, that similarity)).
    """
    s = strength.detach().double().numpy()
    candidates = [k for k in range(len(s)) if valid[k]]
    top = max((s[k] for k in candidates), default=0.0)
    rel = s / top if top > 0 else np.zeros_like(s)
    order: list[int] = []
    partner: dict[int, tuple[int | None, float | None]] = {}
    while candidates:
        best, best_value, best_partner = None, -math.inf, (None, None)
        for k in candidates:
            if order:
                p = order[int(np.argmax(similarity[k, order]))]
                penalty = float(similarity[k, p])
            else:
                p, penalty = None, 0.0
            value = rel[k] - gamma * penalty
            if value > best_value:
                best, best_value, best_partner = k, value, (p, penalty if p is not None else None)
        order.append(best)
        partner[best] = best_partner
        candidates.remove(best)
    return order, partner


def rank_scores(order: Sequence[int], strength: torch.Tensor, size: int) -> torch.Tensor:
    """Valid (picked) filters 1 + (n − rank) / n; the rest INVALID_CEILING x clip(s / max s, 0, 1); float32 [K]."""
    s = strength.detach().double().clamp_min(0.0)
    top = float(s.max()) if s.numel() else 0.0
    scores = INVALID_CEILING * (s / top if top > 0 else torch.zeros_like(s))
    n = len(order)
    for rank, k in enumerate(order):
        scores[k] = 1.0 + (n - rank) / n
    return scores.float()


# --- model plumbing -----------------------------------------------------------------------------

def forward_order(model: nn.Module, names: Sequence[str], input_shape: tuple[int, int, int]) -> list[str]:
    """``names`` sorted by when their module first runs in a forward pass (unreached ones last)."""
    first: dict[str, int] = {}

    def seen(name: str) -> None:
        first.setdefault(name, len(first))          # returns None: a forward hook's return replaces the output

    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return sorted(names, key=lambda n: first.get(n, len(names)))


def silence_channels(model: nn.Module, group: ChannelGroup, channels: Sequence[int],
                     input_shape: tuple[int, int, int]) -> None:
    """Soft-prune ``channels`` of ``group`` in place: BatchNorm weight and bias 0 (or conv weight and bias 0)."""
    if not len(channels):
        return
    idx = torch.as_tensor(list(channels), dtype=torch.long)
    target = model.get_submodule(response_layer(model, group.name, input_shape))
    with torch.no_grad():
        if target.weight is not None:
            target.weight[idx] = 0.0
        if target.bias is not None:
            target.bias[idx] = 0.0


# --- scorer -------------------------------------------------------------------------------------

@register_criterion
class VisualSimilarityScorer(Scorer):
    """MMR over AM images: strong, visually distinct filters first (see module docstring).

    ``steps``: AM steps per layer (default 32: ResNet-56 in ≈ 3.5 minutes on one CPU core; 256 = the shared
    machinery's setting at 8x the cost). ``beta``: colour weight; ``gamma``: redundancy penalty;
    ``mean`` / ``std``: the model's input normalisation (``pruning.zoo.get_entry(arch).mean / .std``).
    """

    name = "visual_similarity"
    paper = "Yao et al. 2021, Deep neural network compression through interpretability-based filter pruning (PR 119)"
    param_ranges = {"steps": AM_STEPS, "lr": AM_LR, "beta": Range(0.0, 1.0), "gamma": Range(0.0, 1000.0),
                    "bins": Range(2, 256, whole=True), "min_std": Range(0.0, 1.0), "min_activation": Range(0.0, 1.0)}
    needs_data = False

    def __init__(self, steps: int = 32, lr: float = 0.05, beta: float = 0.5, gamma: float = 1.0, bins: int = 16,
                 min_std: float = 0.02, min_activation: float = 0.05, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__(steps=steps, lr=lr, beta=beta, gamma=gamma, bins=bins, min_std=min_std,
                         min_activation=min_activation, mean=list(mean), std=list(std))
        if steps < 1 or not 0.0 <= beta <= 1.0 or gamma < 0 or bins < 2:
            raise TypeError("need steps >= 1, 0 <= beta <= 1, gamma >= 0, bins >= 2")
        self.steps, self.lr, self.beta, self.gamma, self.bins = steps, lr, beta, gamma, bins
        self.min_std, self.min_activation = min_std, min_activation
        self.mean, self.std = tuple(mean), tuple(std)

    def score(self, ctx: ScoringContext) -> ScoreResult:
        work = copy.deepcopy(ctx.model).eval()              # soft-pruned progressively, layer by layer
        mean, std = input_stats(self.mean, self.std, ctx.input_shape[0])
        result = ScoreResult()
        for name in forward_order(work, [g.name for g in ctx.groups], ctx.input_shape):
            group = ctx.group(name)
            vis = visualize_layer(work, name, ctx.input_shape, mean, std, steps=self.steps, lr=self.lr,
                                  seed=ctx.seed)
            strength = measure_response(work, name, vis.images, mean, std, activation_fn=torch.relu)   # [K]
            why = invalid_filters(vis.images, strength, self.min_std, self.min_activation)
            valid = [w is None for w in why]
            sim = similarity_matrix(vis.images, self.beta, self.bins)                                   # [K, K]
            order, partner = mmr_order(strength, sim, valid, self.gamma)
            scores = rank_scores(order, strength, group.size)
            result.channels[name] = scores
            result.visualizations[name] = vis.images
            result.reasons[name] = self._reasons(group.size, why, strength, vis.activation, order, partner, sim)
            if ctx.keep_fraction is not None:
                drop = group.size - max(1, math.ceil(ctx.keep_fraction * group.size))
                silence_channels(work, group, torch.argsort(scores.double(), stable=True)[:drop].tolist(),
                                 ctx.input_shape)
            log.info("visual_similarity %s: %d valid of %d", name, len(order), group.size)
        return result

    @staticmethod
    def _reasons(size: int, why: list[str | None], strength: torch.Tensor, objective: torch.Tensor,
                 order: list[int], partner: dict, sim: np.ndarray) -> list[dict]:
        rank = {k: r for r, k in enumerate(order)}
        reasons = []
        for k in range(size):
            if k in rank:
                p, value = partner[k]
            elif order:
                p = order[int(np.argmax(sim[k, order]))]
                value = float(sim[k, p])
            else:
                p, value = None, None
            reasons.append({"invalid": why[k] is not None, "why": why[k], "activation": float(strength[k]),
                            "am_objective": float(objective[k]), "rank": rank.get(k),
                            "most_similar": None if p is None else int(p),
                            "similarity": None if value is None else float(value)})
        return reasons
