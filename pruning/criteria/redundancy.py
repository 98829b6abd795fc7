"""Redundant feature clustering — ``redundancy``.

Ayinde & Zurada, "Building Efficient ConvNets using Redundant Feature Pruning", arXiv:1802.07653;
``../shared/CRITERIA.md`` §3.

By default (``signal="features"``) the order comes from the redundancy of what the units pass on, measured on
calibration data: the unit whose signal the kept units best stand in for, once the consumers are re-fitted, goes
first (``redundant_features.py``; a near-duplicate filter is the special case of an exact stand-in). Groups that no
consumer reads one to one, and ``signal="weights"``, use the paper's data-free clustering below; the weight-space
facts (nearest filter, L1) are in every reason either way.

The paper's clustering (``signal="weights"``), per channel group (root conv with K filters):

1. Flatten each filter of the root layer, w_k [C_in x kh x kw]; pairwise cosine distance d_ij = 1 - cos(w_i, w_j).
2. Agglomerative clustering, complete linkage (scipy). The paper cuts the tree at a threshold τ, keeps one
   representative per cluster (the medoid, ties by larger L1) and removes the rest; to reach a FLOPs target it
   bisects τ.
3. Here the allocator meets the target from an *order*, so the tree is turned into one. Walking the merges
   bottom-up, the representative of a merged cluster is the better of its two children's representatives
   (smaller summed distance to all members of the union — the medoid restricted to those two —, then larger L1,
   then lower index); the loser becomes redundant at that merge's height h and records the winner as its
   ``partner``. Score of a filter = the height at which it stops being a representative (exact duplicates: 0,
   pruned first), plus a 1e-6 x L1/max L1 tie-break; the one representative of the whole layer scores 3 (above any
   cosine distance), zero filters score -1 (removed first).

   Why this equals bisection on τ: with representatives chosen among the children's, a filter that is redundant
   at τ stays redundant at every τ' > τ, so the filters removed at τ are exactly those with height <= τ. A cut at
   τ keeps n(τ) clusters = the K - n(τ) lowest scores go. Any target the bisection reaches by some τ, the
   allocator reaches by removing lowest first, and it can also stop between two heights (the order is total).
   (With the unrestricted medoid a merge could promote a third member and demote both children's representatives,
   making the removed sets non-nested; restricting the choice is our simplification.)

Option ``merge`` (``merge_into_representative``, called by the pipeline before surgery): instead of dropping a
near-duplicate j, add its consumer-layer input kernels into those of its partner r, scaled by the norm ratio
ρ = ||w̃_j|| / ||w̃_r|| of the BatchNorm-folded filters w̃_c = w_c · γ_c / sqrt(var_c + eps). Only the consumers'
weights change. Exact when j's post-BN map is ρ times r's (w̃_j = ρ w̃_r and the folded biases
β_c - γ_c μ_c / sqrt(var_c + eps) in the same ratio), through any positively homogeneous activation (ReLU) and a
linear consumer; otherwise an approximation (the folded bias difference is not transferred). Pairs with
cos(w̃_j, w̃_r) <= 0 are not merged (a negative multiple does not pass a ReLU).

Reasons per channel: height, partner (merge target), L1 norm, whether it is the layer's last representative, the
nearest filter and its distance; with ``threshold`` also whether the filter is redundant at τ = ``threshold``.

Example::

    from pruning.criteria import create_criterion
    from pruning.criteria.redundancy import merge_into_representative
    result = create_criterion("redundancy", merge=True).score(ctx)
    partners = [r["partner"] for r in result.reasons["layer1.0.conv1"]]
    merge_into_representative(model, ctx.group("layer1.0.conv1"), removed=[3, 7], representatives=partners)
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform

from pruning.criteria.base import ChannelGroup, ScoreResult, Scorer, ScoringContext, register_criterion
from pruning.criteria.params import Range
from pruning.channel_elimination import Elimination, elimination_scores
from pruning.criteria.functionality import cosine_distances
from pruning.criteria.redundant_features import feature_eliminations

log = logging.getLogger(__name__)

ROOT_SCORE = 3.0       # the layer's last representative: above any cosine distance (<= 2)
ZERO_SCORE = -1.0      # all-zero filters: below everything
TIE_BREAK = 1e-6       # x L1 / max L1: at equal height the smaller filter goes first
SIGNALS = ("features", "weights")   # features: what the consumers' re-fit cannot recover (redundant_features.py);
                                    # weights: the paper's data-free clustering of filters


# --- pure math ----------------------------------------------------------------------------------

def flatten_filters(weight: torch.Tensor) -> torch.Tensor:
    """Conv [K, C_in, kh, kw] or linear [K, in] weight -> [K, D] float64."""
    return weight.detach().double().flatten(1)     # [K, D]


def redundancy_tree(distances: np.ndarray, l1: np.ndarray, method: str = "complete"
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """Bottom-up representatives (see module docstring, step 3).

    Returns (height [K] float64: the merge height at which each filter stops being a representative, +inf for the
    root representative; partner [K] int64: the representative it lost to, -1 for the root; root index).
    """
    k = distances.shape[0]
    height = np.full(k, np.inf)
    partner = np.full(k, -1, dtype=np.int64)
    if k == 1:
        return height, partner, 0
    z = linkage(squareform(distances, checks=False), method=method)       # [K-1, 4]: a, b, height, size
    members: dict[int, list[int]] = {i: [i] for i in range(k)}
    rep: dict[int, int] = {i: i for i in range(k)}
    for step, (a, b, h, _) in enumerate(z):
        a, b = int(a), int(b)
        union = members.pop(a) + members.pop(b)
        ra, rb = rep.pop(a), rep.pop(b)

        def key(r: int) -> tuple[float, float, int]:
            return (round(float(distances[r, union].sum()), 9), -float(l1[r]), r)   # rounding: float ties

        winner, loser = (ra, rb) if key(ra) <= key(rb) else (rb, ra)
        height[loser], partner[loser] = float(h), winner
        members[k + step], rep[k + step] = union, winner
    root = next(iter(rep.values()))
    return height, partner, root


def redundancy_scores(height: np.ndarray, l1: np.ndarray) -> torch.Tensor:
    """height + TIE_BREAK x L1 / max L1; the root (inf) gets ROOT_SCORE + the same; float32 [K]."""
    top = float(l1.max()) if l1.size and l1.max() > 0 else 1.0
    finite = np.where(np.isfinite(height), height, ROOT_SCORE)
    return torch.from_numpy(finite + TIE_BREAK * l1 / top).float()


def merge_ratios(folded: torch.Tensor, pairs: Sequence[tuple[int, int]]) -> dict[tuple[int, int], float]:
    """ρ = ||w̃_j|| / ||w̃_r|| for each (removed j, representative r) whose folded filters [K, D] have a positive
    cosine; other pairs are left out."""
    out = {}
    for j, r in pairs:
        wj, wr = folded[j].double(), folded[r].double()
        nj, nr = float(wj.norm()), float(wr.norm())
        if nr > 0 and nj > 0 and float(wj @ wr) > 0:
            out[(j, r)] = nj / nr
    return out


def merge_input_columns(weight: torch.Tensor, merges: Sequence[tuple[int, int, float]], size: int) -> torch.Tensor:
    """A consumer weight with input channels on dim 1 ([O, size, ...] conv, [O, size] or [O, size x S] linear,
    flattened channel-major): column r += ρ · column j for each (j, r, ρ) in order. Returns a new tensor."""
    w = weight.detach().clone()
    view = w.view(w.shape[0], size, -1)                       # [O, size, rest]
    for j, r, rho in merges:
        view[:, r] += rho * view[:, j]
    return w


# --- model plumbing -----------------------------------------------------------------------------

def _norm_after(model: nn.Module, group: ChannelGroup, norm: str | None) -> nn.Module | None:
    if norm is not None:
        return model.get_submodule(norm)
    for name, side in group.members:
        module = model.get_submodule(name)
        if side == "out" and isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.num_features == group.size:
            return module
    return None


def folded_filters(model: nn.Module, group: ChannelGroup, norm: str | None = None) -> torch.Tensor:
    """The root's filters with the following BatchNorm's scale folded in: w_c · γ_c / sqrt(var_c + eps) [K, D]."""
    w = flatten_filters(model.get_submodule(group.name).weight)            # [K, D]
    bn = _norm_after(model, group, norm)
    if bn is None:
        return w
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones(group.size, dtype=torch.float64)
    scale = gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)  # [K]
    return w * scale[:, None]


def merge_into_representative(model: nn.Module, group: ChannelGroup, removed: Sequence[int],
                              representatives: Mapping[int, int | None] | Sequence[int | None],
                              norm: str | None = None) -> list[dict]:
    """Fold each removed near-duplicate into its representative, in place on ``model``'s consumer layers.

    ``representatives``: channel -> partner (e.g. ``[r["partner"] for r in result.reasons[group.name]]``).
    A removed channel whose partner is removed too is merged first, so its share travels on with the partner's
    (merges compose along the chain). ``norm``: the BatchNorm after the root (default: the group's first
    BatchNorm member of width ``group.size``). Call before surgery removes the channels. Returns one record
    ``{"removed", "into", "ratio"}`` per merge made.
    """
    partner_of = dict(representatives) if isinstance(representatives, Mapping) else dict(enumerate(representatives))
    gone = set(int(i) for i in removed)
    folded = folded_filters(model, group, norm)
    pending = [j for j in sorted(gone) if partner_of.get(j) is not None and 0 <= int(partner_of[j]) < group.size
               and int(partner_of[j]) != j]
    order: list[tuple[int, int]] = []
    done: set[int] = set()
    while pending:                                            # children before the partners they merge into
        ready = [j for j in pending if not any(int(partner_of[i]) == j for i in pending if i != j)]
        if not ready:
            log.warning("merge: cyclic partners among %s in %s; not merged", pending, group.name)
            break
        for j in ready:
            order.append((j, int(partner_of[j])))
            done.add(j)
        pending = [j for j in pending if j not in done]
    ratios = merge_ratios(folded, order)
    merges = [(j, r, ratios[(j, r)]) for j, r in order if (j, r) in ratios]
    for name in group.consumers:
        layer = model.get_submodule(name)
        fits = ((isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.in_channels == group.size)
                or (isinstance(layer, nn.Linear) and layer.in_features % group.size == 0))
        if not fits:
            log.warning("merge: consumer %s of %s does not take %d channels on dim 1; skipped", name, group.name,
                        group.size)
            continue
        with torch.no_grad():
            layer.weight.copy_(merge_input_columns(layer.weight, merges, group.size))
    skipped = len(order) - len(merges)
    if skipped:
        log.info("merge %s: %d pair(s) with non-positive cosine after BN folding were dropped, not merged",
                 group.name, skipped)
    return [{"removed": j, "into": r, "ratio": rho} for j, r, rho in merges]


def feature_reasons(elimination: Elimination, l1: np.ndarray, masked: np.ndarray) -> list[dict]:
    """Per channel: the weight-space facts (L1, nearest filter from ``masked`` cosine distances, self excluded) and,
    for the units the elimination removed, when (``removal_step``), how much of what they passed on the kept units
    recover (``recovered``), and which kept unit took most of it over (``partner``, the merge target)."""
    out = []
    for k in range(len(l1)):
        nearest = int(np.argmin(masked[k])) if len(l1) > 1 else None
        out.append({"signal": "features", "l1": float(l1[k]), "nearest": nearest,
                    "nearest_distance": float(masked[k, nearest]) if nearest is not None else None,
                    "zero_filter": bool(l1[k] == 0),
                    "removal_step": None, "recovered": None, "partner": None, "refit_error": None})
    for step, k in enumerate(elimination.order):
        reason = out[k]
        reason.update(removal_step=step, recovered=round(elimination.explained[step], 4),
                      partner=elimination.absorbed_by[step], refit_error=elimination.cost[step])
        taker = f", mostly by #{reason['partner']}" if reason["partner"] is not None else ""
        reason["why"] = f"{reason['recovered']:.0%} of its signal recovered by the kept units{taker}"
    return out


# --- scorer -------------------------------------------------------------------------------------

@register_criterion
class RedundancyScorer(Scorer):
    """Order filters by how redundant they are (see module docstring): by what the consumers' re-fit recovers
    (``signal="features"``, from ``images`` calibration images x ``positions_per_image``), or by the cosine-distance
    height at which they become redundant (``signal="weights"``).

    ``threshold``: optional τ, only reported (``redundant_at_threshold``); the allocator still decides how many go.
    ``merge``: ask the pipeline to fold removed channels into their ``partner`` (``merge_into_representative``).
    """

    name = "redundancy"
    paper = "Ayinde & Zurada 2018, Building Efficient ConvNets using Redundant Feature Pruning (arXiv:1802.07653)"
    param_ranges = {"threshold": Range(0.0, 2.0, optional=True), "images": Range(1, 50_000, whole=True),
                    "positions_per_image": Range(1, 65_536, whole=True)}
    needs_data = False

    def __init__(self, linkage_method: str = "complete", threshold: float | None = None, merge: bool = False,
                 signal: str = "features", images: int = 1024, positions_per_image: int = 16) -> None:
        super().__init__(linkage_method=linkage_method, threshold=threshold, merge=merge, signal=signal,
                         images=images, positions_per_image=positions_per_image)
        if linkage_method not in ("complete", "average", "single", "weighted"):
            raise TypeError("linkage_method must be complete, average, single or weighted")
        if signal not in SIGNALS:
            raise TypeError(f"signal must be one of {', '.join(SIGNALS)}")
        if int(images) < 1 or int(positions_per_image) < 1:
            raise TypeError("images and positions_per_image must be at least 1")
        self.linkage_method, self.threshold, self.merge, self.signal = linkage_method, threshold, merge, signal
        self.images, self.positions_per_image = int(images), int(positions_per_image)
        self.needs_data = signal == "features"

    def score(self, ctx: ScoringContext) -> ScoreResult:
        result = ScoreResult()
        eliminations = (feature_eliminations(ctx, images=self.images, positions_per_image=self.positions_per_image)
                        if self.signal == "features" else {})
        for group in ctx.groups:
            w = flatten_filters(ctx.module(group.name).weight)               # [K, D]
            l1 = w.abs().sum(1).numpy()                                       # [K]
            dist = cosine_distances(w)                                        # [K, K]
            masked = dist + np.eye(group.size) * 10.0
            elimination = eliminations.get(group.name)
            if elimination is not None:                                       # no clustering needed
                result.channels[group.name] = elimination_scores(elimination, group.size)
                result.reasons[group.name] = feature_reasons(elimination, l1, masked)
                continue
            nonzero = np.flatnonzero(l1 > 0)
            height = np.full(group.size, -np.inf)                             # zero filters stay at -inf
            partner = np.full(group.size, -1, dtype=np.int64)
            root = -1
            if nonzero.size:
                sub = dist[np.ix_(nonzero, nonzero)]
                h, p, r = redundancy_tree(sub, l1[nonzero], self.linkage_method)
                height[nonzero] = h
                partner[nonzero] = np.where(p >= 0, nonzero[np.maximum(p, 0)], -1)
                root = int(nonzero[r])
            reasons = [self._reason(k, height, partner, l1, root, masked) for k in range(group.size)]
            scores = redundancy_scores(np.where(np.isneginf(height), 0.0, height), l1)
            scores[torch.from_numpy(np.isneginf(height))] = ZERO_SCORE
            result.channels[group.name] = scores
            if self.signal == "features":
                for reason in reasons:
                    reason["signal"] = "weights (no calibration statistics for a one-to-one consumer)"
            result.reasons[group.name] = reasons
        return result

    def _reason(self, k: int, height: np.ndarray, partner: np.ndarray, l1: np.ndarray, root: int,
                masked: np.ndarray) -> dict:
        nearest = int(np.argmin(masked[k])) if len(l1) > 1 else None
        reason = {
            "height": float(height[k]) if np.isfinite(height[k]) else None,
            "partner": int(partner[k]) if partner[k] >= 0 else None,
            "l1": float(l1[k]),
            "is_root": k == root,
            "zero_filter": bool(l1[k] == 0),
            "nearest": nearest,
            "nearest_distance": float(masked[k, nearest]) if nearest is not None else None,
        }
        if self.threshold is not None:
            reason["redundant_at_threshold"] = bool(height[k] <= self.threshold)
        return reason
