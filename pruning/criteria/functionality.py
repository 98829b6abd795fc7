"""Functionality-oriented filter clustering — ``functionality``.

Qin, Yu, Liu, Chen, "Functionality-Oriented Convolutional Filter Pruning", arXiv:1810.07322 (BMVC 2019);
``../shared/CRITERIA.md`` §2. A filter's functionality is its feature preference, read off its activation-
maximization (AM) image; filters whose preferences repeat are redundant whatever their magnitude. Per channel
group (root conv with K filters):

1. AM image of every filter (``pruning.visualize.visualize_layer``: leaky-ReLU of the response after the conv's
   BatchNorm, ``steps`` Adam steps), on the unpruned model: images [K, C, H, W] in [0, 1].
2. Cluster the filters on their flattened, L2-normalised AM images taken relative to the data mean colour
   (``images - mean``: a flat mean-coloured image is the zero vector, so cosine compares the *patterns*, not the
   shared grey level) — agglomerative, cosine distance, average linkage (scipy). The cut:
   ``threshold`` (a cosine distance) when given; else, when ``ctx.keep_fraction`` is set, ceil(keep_fraction x K)
   clusters (one representative per channel the allocator will keep); else the distance ``FALLBACK_THRESHOLD``.
3. Class contribution of channel k: ``c_k = Σ_y E_x |Σ_{h,w} ∂z_y/∂A_k · A_k|`` — the first-order (Taylor)
   change of logit y when feature map A_k is removed, A_k being the channel as its consumer sees it (the input of
   the group's first consumer layer, i.e. after BN and ReLU). Computed exactly as written: one forward pass and
   one backward pass per class (``torch.autograd.grad`` w.r.t. the feature maps only, no weight gradients) on the
   first ``max_batches`` calibration batches. (No cheaper exact form exists: the absolute value sits between the
   class sum and the image mean.)
4. In each cluster the member with the largest ``c_k`` is its representative. Score (higher = keep):
   representative ``1 + c_k / max c``, every other member ``0.99 x c_k / max c`` — so all redundant members rank
   below all representatives, and among themselves by contribution.

Reasons per channel: cluster id, representative index, whether it is one, contribution, cosine distance to its
representative's AM image, achieved AM activation. Visualizations: the AM images.

Example::

    from pruning.criteria import create_criterion
    scorer = create_criterion("functionality", steps=32, max_batches=2)
    result = scorer.score(ctx)                          # ctx: ScoringContext
    result.channels["layer1.0.conv1"]                   # [16]: representatives in [1, 2], the rest in [0, 1)
    result.reasons["layer1.0.conv1"][3]["representative"]
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from pruning.criteria.base import Batch, ChannelGroup, ScoreResult, Scorer, ScoringContext, register_criterion
from pruning.criteria.params import AM_LR, AM_STEPS, Range
from pruning.visualize import input_stats, visualize_layer
from pruning.zoo import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

FALLBACK_THRESHOLD = 0.3     # cosine distance cut when neither ``threshold`` nor ``ctx.keep_fraction`` is given
REDUNDANT_CEILING = 0.99     # non-representatives score in [0, REDUNDANT_CEILING]


# --- pure math ----------------------------------------------------------------------------------

def cosine_distances(vectors: torch.Tensor) -> np.ndarray:
    """Pairwise 1 - cos of rows [K, D] -> float64 [K, K]; a zero row is at distance 1 from every other row."""
    v = vectors.detach().double().flatten(1)                         # [K, D]
    norms = v.norm(dim=1, keepdim=True)
    unit = torch.where(norms > 1e-12, v / norms.clamp_min(1e-12), torch.zeros_like(v))
    dist = (1.0 - unit @ unit.T).clamp(0.0, 2.0)                      # [K, K]
    dist.fill_diagonal_(0.0)
    return dist.numpy()


def cluster_filters(distances: np.ndarray, *, threshold: float | None = None,
                    n_clusters: int | None = None, method: str = "average") -> np.ndarray:
    """Agglomerative clustering of K items from a [K, K] distance matrix; labels [K], 0-based, numbered in
    order of first appearance. Cut at ``threshold`` (distance) or into ``n_clusters`` (exactly one is set)."""
    k = distances.shape[0]
    if (threshold is None) == (n_clusters is None):
        raise ValueError("give exactly one of threshold and n_clusters")
    if k == 1:
        return np.zeros(1, dtype=np.int64)
    z = linkage(squareform(distances, checks=False), method=method)
    if threshold is not None:
        raw = fcluster(z, t=threshold, criterion="distance")
    else:
        raw = fcluster(z, t=max(1, min(k, n_clusters)), criterion="maxclust")
    _, first = np.unique(raw, return_index=True)
    renumber = {raw[i]: new for new, i in enumerate(sorted(first))}
    return np.array([renumber[r] for r in raw], dtype=np.int64)


def representatives(labels: np.ndarray, contribution: torch.Tensor) -> np.ndarray:
    """Per item, the index of its cluster's member with the largest contribution (ties: lowest index) [K]."""
    c = contribution.detach().double().numpy()
    rep = np.empty(len(labels), dtype=np.int64)
    for cluster in np.unique(labels):
        members = np.flatnonzero(labels == cluster)
        rep[members] = members[np.argmax(c[members])]   # argmax returns the first of equal maxima
    return rep


def functionality_scores(rep: np.ndarray, contribution: torch.Tensor) -> torch.Tensor:
    """Representatives ``1 + c / max c``; others ``REDUNDANT_CEILING x c / max c``; float32 [K]."""
    c = contribution.detach().double().clamp_min(0.0)
    top = float(c.max()) if c.numel() else 0.0
    rel = c / top if top > 0 else torch.zeros_like(c)                  # [K] in [0, 1]
    is_rep = torch.from_numpy(rep == np.arange(len(rep)))
    return torch.where(is_rep, 1.0 + rel, REDUNDANT_CEILING * rel).float()


def taylor_contribution(features: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Σ_n |Σ_positions ∂z/∂A · A| per channel, for one class: features and grads [N, K, ...] -> [K] float64."""
    prod = (grads.double() * features.double()).reshape(features.shape[0], features.shape[1], -1)  # [N, K, P]
    return prod.sum(2).abs().sum(0)                                                              # [K]


# --- model plumbing -----------------------------------------------------------------------------

def _feature_layer(model: nn.Module, group: ChannelGroup) -> tuple[str, bool]:
    """(module name, read its input?) where the group's channels are seen as features: the input of the first
    consumer conv / linear that takes exactly ``group.size`` channels, else the root layer's output."""
    for name in group.consumers:
        module = model.get_submodule(name)
        if isinstance(module, nn.Conv2d) and module.groups == 1 and module.in_channels == group.size:
            return name, True
        if isinstance(module, nn.Linear) and module.in_features == group.size:
            return name, True
    return group.name, False


def class_contributions(model: nn.Module, groups: Sequence[ChannelGroup], batches: Iterable[Batch],
                        num_classes: int, max_batches: int) -> dict[str, torch.Tensor]:
    """``c_k = Σ_y E_x |Σ_{h,w} ∂z_y/∂A_k · A_k|`` for every channel of every group: name -> [size] float64.

    ``model`` is used as given (pass a copy); hooks are removed afterwards, no parameter receives a gradient.
    """
    model.eval()
    where = {g.name: _feature_layer(model, g) for g in groups}
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for group in groups:
        name, is_input = where[group.name]
        module = model.get_submodule(name)
        if is_input:
            hooks.append(module.register_forward_pre_hook(
                lambda m, inputs, key=group.name: captured.__setitem__(key, inputs[0])))
        else:
            hooks.append(module.register_forward_hook(
                lambda m, inputs, output, key=group.name: captured.__setitem__(key, output)))
    totals = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    seen = 0
    try:
        for index, batch in enumerate(batches):
            if index >= max_batches:
                break
            captured.clear()
            images = batch.images.detach().clone().requires_grad_(True)   # keeps a graph even if params are frozen
            logits = model(images)                                         # [N, classes]
            names = [g.name for g in groups]
            feats = [captured[n] for n in names]
            for y in range(min(num_classes, logits.shape[1])):
                grads = torch.autograd.grad(logits[:, y].sum(), feats, retain_graph=True, allow_unused=True)
                for name, feat, grad in zip(names, feats, grads):
                    if grad is not None:
                        totals[name] += taylor_contribution(feat.detach(), grad)
            seen += images.shape[0]
    finally:
        for hook in hooks:
            hook.remove()
    if seen == 0:
        raise ValueError("no calibration batches: the functionality criterion needs data")
    return {name: total / seen for name, total in totals.items()}


# --- scorer -------------------------------------------------------------------------------------

@register_criterion
class FunctionalityScorer(Scorer):
    """Cluster filters by AM image, keep the top class contributor per cluster (see module docstring).

    ``steps``: AM steps per layer (default 32: ResNet-56 in ≈ 3.5 minutes on one CPU core; the shared
    machinery's 256 gives sharper images at 8x the cost). ``threshold``: cosine-distance cut; None = follow
    ``ctx.keep_fraction``.
    ``max_batches``: calibration batches for the class contribution (one backward per class each).
    ``mean`` / ``std``: the model's input normalisation (``pruning.zoo.get_entry(arch).mean / .std``).
    """

    name = "functionality"
    paper = "Qin et al. 2019, Functionality-Oriented Convolutional Filter Pruning (arXiv:1810.07322)"
    param_ranges = {"steps": AM_STEPS, "lr": AM_LR, "threshold": Range(0.0, 2.0, optional=True),
                    "max_batches": Range(1, 1_000_000, whole=True)}
    needs_data = True

    def __init__(self, steps: int = 32, lr: float = 0.05, threshold: float | None = None, max_batches: int = 4,
                 linkage_method: str = "average", mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__(steps=steps, lr=lr, threshold=threshold, max_batches=max_batches,
                         linkage_method=linkage_method, mean=list(mean), std=list(std))
        if steps < 1 or max_batches < 1:
            raise TypeError("steps and max_batches must be >= 1")
        if threshold is not None and not 0.0 <= threshold <= 2.0:
            raise TypeError("threshold is a cosine distance in [0, 2]")
        self.steps, self.lr, self.threshold, self.max_batches = steps, lr, threshold, max_batches
        self.linkage_method, self.mean, self.std = linkage_method, tuple(mean), tuple(std)

    def _cut(self, size: int, keep_fraction: float | None) -> dict:
        if self.threshold is not None:
            return {"threshold": self.threshold}
        if keep_fraction is not None:
            return {"n_clusters": max(1, min(size, math.ceil(keep_fraction * size)))}
        return {"threshold": FALLBACK_THRESHOLD}

    def score(self, ctx: ScoringContext) -> ScoreResult:
        model = copy.deepcopy(ctx.model).eval()
        mean, std = input_stats(self.mean, self.std, ctx.input_shape[0])
        contributions = class_contributions(model, ctx.groups, ctx.batches(), ctx.num_classes, self.max_batches)
        centre = torch.tensor(mean).view(1, -1, 1, 1)
        result = ScoreResult()
        for group in ctx.groups:
            vis = visualize_layer(model, group.name, ctx.input_shape, mean, std, steps=self.steps, lr=self.lr,
                                  seed=ctx.seed)
            dist = cosine_distances((vis.images - centre).flatten(1))                     # [K, K]
            labels = cluster_filters(dist, method=self.linkage_method, **self._cut(group.size, ctx.keep_fraction))
            contribution = contributions[group.name]
            rep = representatives(labels, contribution)
            result.channels[group.name] = functionality_scores(rep, contribution)
            result.visualizations[group.name] = vis.images
            result.reasons[group.name] = [
                {"cluster": int(labels[k]), "representative": int(rep[k]), "is_representative": bool(rep[k] == k),
                 "contribution": float(contribution[k]), "distance_to_representative": float(dist[k, rep[k]]),
                 "am_activation": float(vis.activation[k])}
                for k in range(group.size)]
            log.info("functionality %s: %d clusters of %d filters", group.name, int(labels.max()) + 1, group.size)
        return result
