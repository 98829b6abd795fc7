"""Layer-wise shallowing by feature probes — ``layer_probe`` (a block criterion).

Shi Chen & Qi Zhao, "Shallowing Deep Networks: Layer-wise Pruning Based on Feature Representations", IEEE TPAMI
41(12), 2019. See ``../shared/CRITERIA.md`` section 4.

A block is worth keeping if the features after it are more linearly separable than the features before it.
For every candidate block l in ``ctx.blocks`` (shape-preserving residual blocks, or plain conv layers):

1. One pass over the calibration set records, by forward hooks, the global-average-pooled INPUT and OUTPUT of every
   candidate block: [N, C] each. The input of a block is the representation of the layer before it (the previous
   block's output, or the stem / a non-candidate module's output for the first block of a stage), so
   a_(l-1) is measured on exactly what block l receives. When a block's input is the very tensor another candidate
   returned, the two share one probe (consecutive blocks are probed once, not twice).
2. The N images are split once, stratified by class and seeded, into probe-train (``train_fraction`` = 70%) and
   probe-held-out (30%). Per probe point, a linear softmax probe is fit on standardised features (full-batch
   L-BFGS, at most ``probe_steps`` iterations, L2 ``weight_decay``, zero init: deterministic) and scored on held-out
   images: a = held-out accuracy. With ``folds`` k > 1 the split is k stratified folds instead, one probe per fold
   trained on the others: a = the accuracy over all N images, each predicted by the probe that did not see it
   (less noise in a, k times the probes; measured on ResNet-56, not better: rows ``r56-layer_probe-folds5*``).
3. Gain Δ_l = a_l - a_(l-1). Importance of block l = Δ_l + 1e-6 x (held-out cross-entropy before - after), the
   second term only breaking ties between equal accuracies. With ``threshold`` δ set, ``remove_blocks`` lists the
   blocks with Δ_l < δ (lowest first); otherwise the allocator removes the lowest until the target is met.

With ``refit_window`` w > 0 (a criterion parameter, as the channel criteria's), the probe gains nominate and the
re-fit picks: each block's skip is priced as ``pruning.block_bypass`` prices it (the rise of the logits' squared
error, on ``SKIP_LOSS_IMAGES`` calibration images, once the next two layers are re-fitted on the first
``block_bypass.FIT_IMAGES``), and the removal order becomes, at every step, the cheapest skip among the fraction w
of the remaining blocks with the lowest gain (``windowed_order``). The score is then the removal order (0 goes
first); each block's reason keeps its gain and adds its skip loss and step.

Width (``depth_share`` s < 1; the default 1 is the paper's: the whole target by removing blocks). Removing blocks
takes s of the target, lowest first as above; the rest of the target is removed as channels, which the same probes
rank: per channel group, a probe on the pooled post-ReLU features of its units (``pruning.activations``, the same
split or folds), and a unit's score is ``unit_reliance``: how much the probe's held-out cross-entropy rises when that
unit alone is held at its mean (how much of the class evidence linearly readable at that layer it carries). A unit
the probe does not read goes first. ``refit_window`` then applies to the channels as for any channel criterion
(``redundant_features.guide_by_refit``) as well as to the blocks. The control is ``random_blocks`` with the same
``depth_share``.

Memory: N x C floats per probe point (ResNet-56, 1,000 images: 28 points x 1,000 x <= 64).
Assumes each candidate block runs once per forward (a block called twice is recorded at its first call).

Example::

    from pruning.criteria import create_criterion
    result = create_criterion("layer_probe", threshold=0.0).score(ctx)   # ctx.blocks: ["layer1.0", ...]
    result.blocks["layer1.3"]              # Δ accuracy of its probe over the probe of its input
    result.remove_blocks                   # blocks whose gain is below 0
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
import torch.nn as nn
from threadpoolctl import threadpool_limits   # installed with scikit-learn

from pruning.criteria.base import (ScoreResult, Scorer, ScoringContext, _depth_share, _refit_window,
                                   register_criterion)
from pruning.criteria.params import Range

log = logging.getLogger(__name__)

_TIE_BREAK = 1e-6
SKIP_LOSS_IMAGES = 256      # calibration images (after the re-fit's) the skip losses of ``refit_window`` are measured on


# --- pure functions ----------------------------------------------------------------------------------

def stratified_split(labels: torch.Tensor, train_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of indices into (train, held-out), ``train_fraction`` of every class in train (at least one
    image of a class with two or more goes to each side)."""
    generator = torch.Generator().manual_seed(seed)
    train, held = [], []
    for cls in torch.unique(labels).tolist():
        idx = (labels == cls).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        cut = round(train_fraction * idx.numel())
        if idx.numel() >= 2:
            cut = min(max(cut, 1), idx.numel() - 1)
        train.append(idx[:cut])
        held.append(idx[cut:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


@dataclass(frozen=True)
class ProbeFit:
    accuracy: float          # held-out accuracy
    loss: float              # held-out mean cross-entropy
    train_accuracy: float


@dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: logits = standardise(x) @ weight + bias."""

    mean: np.ndarray         # [1, D] training mean of the features
    std: np.ndarray          # [1, D] training std (at least 1e-6)
    weight: np.ndarray       # [D, K]
    bias: np.ndarray         # [K]

    def standardise(self, x: torch.Tensor) -> np.ndarray:
        return (x.double().numpy() - self.mean) / self.std                    # [n, D]


def train_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, steps: int = 100,
                weight_decay: float = 1e-3) -> LinearProbe:
    """Linear softmax probe on standardised features [n, D]; L-BFGS from zero weights.

    Minimises mean cross-entropy + weight_decay x ||W||^2 (bias not decayed) with SciPy's L-BFGS-B and the
    closed-form gradient (float64, full batch, at most ``steps`` iterations). Deterministic for given inputs.
    Plain NumPy rather than autograd, on one BLAS thread: thousands of tiny ops are dominated by threading
    overhead otherwise.
    """
    mean = train_x.double().mean(0, keepdim=True).numpy()
    std = np.maximum(train_x.double().std(0, keepdim=True, unbiased=False).numpy(), 1e-6)
    xs = (train_x.double().numpy() - mean) / std                        # [n, D]
    ys = train_y.long().numpy()
    n, d = xs.shape
    onehot = np.zeros((n, num_classes))
    onehot[np.arange(n), ys] = 1.0                                      # [n, K]

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:d * num_classes].reshape(d, num_classes), theta[d * num_classes:]
        log_p = _log_softmax(xs @ w + b)                                # [n, K]
        loss = -(onehot * log_p).sum() / n + weight_decay * (w * w).sum()
        dz = (np.exp(log_p) - onehot) / n                               # [n, K]
        grad_w = xs.T @ dz + 2 * weight_decay * w                       # [D, K]
        return float(loss), np.concatenate([grad_w.ravel(), dz.sum(0)])

    theta0 = np.zeros(d * num_classes + num_classes)
    with threadpool_limits(1):      # BLAS threads only slow these tiny products down (10x on 2 busy cores)
        theta = scipy.optimize.minimize(loss_grad, theta0, jac=True, method="L-BFGS-B",
                                        options={"maxiter": steps, "gtol": 1e-8, "ftol": 1e-12}).x
    return LinearProbe(mean, std, theta[:d * num_classes].reshape(d, num_classes), theta[d * num_classes:])


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _accuracy_loss(probe: LinearProbe, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    if y.numel() == 0:
        return 0.0, 0.0
    labels = y.long().numpy()
    log_p = _log_softmax(probe.standardise(x) @ probe.weight + probe.bias)     # [m, K]
    return float((log_p.argmax(1) == labels).mean()), float(-log_p[np.arange(labels.size), labels].mean())


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
              num_classes: int, steps: int = 100, weight_decay: float = 1e-3) -> ProbeFit:
    """``train_probe`` on the training images, scored on the held-out ones (accuracy, mean cross-entropy)."""
    probe = train_probe(train_x, train_y, num_classes, steps, weight_decay)
    accuracy, loss = _accuracy_loss(probe, test_x, test_y)
    return ProbeFit(accuracy=accuracy, loss=loss, train_accuracy=_accuracy_loss(probe, train_x, train_y)[0])


def unit_reliance(probe: LinearProbe, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """How much ``probe`` relies on each feature: the rise of its mean cross-entropy on (x [m, D], y [m]) when
    feature k alone is held at its training mean (its standardised value 0; the probe is not refitted). [D]."""
    xs = probe.standardise(x)                                           # [m, D]
    labels = y.long().numpy()
    logits = xs @ probe.weight + probe.bias                             # [m, K]
    rows = np.arange(labels.size)
    base = -_log_softmax(logits)[rows, labels].mean()
    # logits without feature k, for every k at once: [D, m, K]
    without = logits[None] - xs.T[:, :, None] * probe.weight[:, None, :]
    return -_log_softmax(without)[:, rows, labels].mean(1) - base       # [D]


def train_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                       train_fraction: float = 0.7, steps: int = 100, weight_decay: float = 1e-3,
                       seed: int = 0) -> float:
    """Held-out accuracy of a linear softmax probe on ``features`` [N, D] with ``labels`` [N] (seeded split)."""
    train, held = stratified_split(labels, train_fraction, seed)
    return fit_probe(features[train], labels[train], features[held], labels[held], num_classes,
                     steps, weight_decay).accuracy


def stratified_folds(labels: torch.Tensor, folds: int, seed: int) -> list[torch.Tensor]:
    """Seeded partition of the indices into ``folds`` held-out sets, every class dealt round-robin across them (so
    each fold holds about 1/folds of every class)."""
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in range(folds)]
    offset = 0
    for cls in torch.unique(labels).tolist():
        idx = (labels == cls).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        for k in range(folds):
            parts[(k + offset) % folds].append(idx[k::folds])
        offset += idx.numel()              # the next class starts where this one's deal ended: sizes stay even
    return [torch.cat(p).sort().values for p in parts]


def cross_validated_fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, held_out: list[torch.Tensor],
                        steps: int = 100, weight_decay: float = 1e-3) -> ProbeFit:
    """One probe per held-out set, trained on the rest: accuracy and loss over every held-out image (each image
    predicted by the probe that did not see it), train accuracy the folds' mean."""
    n = y.numel()
    correct, loss, train_accuracy = 0.0, 0.0, 0.0
    for held in held_out:
        mask = torch.ones(n, dtype=torch.bool)
        mask[held] = False
        fit = fit_probe(x[mask], y[mask], x[held], y[held], num_classes, steps, weight_decay)
        correct += fit.accuracy * held.numel()
        loss += fit.loss * held.numel()
        train_accuracy += fit.train_accuracy / len(held_out)
    total = sum(h.numel() for h in held_out)
    return ProbeFit(accuracy=correct / total, loss=loss / total, train_accuracy=train_accuracy)


def windowed_order(gains: dict[str, float], losses: dict[str, float], window: float) -> list[str]:
    """Removal order of the blocks: at every step, among the ``ceil(window x remaining)`` (at least one) with the
    lowest gain, the one with the lowest loss goes. ``window`` near 0: by gain alone; 1: by loss alone."""
    remaining = sorted(gains, key=lambda b: (gains[b], b))
    order = []
    while remaining:
        nominees = remaining[:max(1, math.ceil(window * len(remaining)))]
        chosen = min(nominees, key=lambda b: (losses[b], gains[b]))
        order.append(chosen)
        remaining.remove(chosen)
    return order


def probe_gains(accuracies: dict[str, float], previous: dict[str, str]) -> dict[str, float]:
    """Δ_l = a_l - a_(l-1): ``accuracies`` per probe point, ``previous[block]`` = the point feeding ``block``
    (the block's own output point has the block's name)."""
    return {block: accuracies[block] - accuracies[prev] for block, prev in previous.items()}


# --- feature capture ---------------------------------------------------------------------------------

def _pool(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().float()
    return x.mean(dim=tuple(range(2, x.dim()))) if x.dim() > 2 else x   # [N, C]


class _BlockFeatures:
    """Hooks on every candidate block: pooled outputs, and pooled inputs unless the input is another candidate's
    output (then ``previous[block]`` names that candidate)."""

    def __init__(self, model: nn.Module, blocks: list[str]) -> None:
        self.model, self.blocks = model, blocks
        self.features: dict[str, list[torch.Tensor]] = {}
        self.previous: dict[str, str] = {}
        self.order: list[str] = []                  # blocks in execution order (first batch)
        self._outputs: dict[int, tuple[str, torch.Tensor]] = {}   # id -> (block, tensor), this forward only
        self._done: set[str] = set()
        self._first = True
        self._handles: list = []

    def __enter__(self) -> "_BlockFeatures":
        for name in self.blocks:
            module = self.model.get_submodule(name)
            self._handles.append(module.register_forward_pre_hook(
                lambda m, inputs, name=name: self._on_input(name, inputs[0])))
            self._handles.append(module.register_forward_hook(
                lambda m, inputs, output, name=name: self._on_output(name, output)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._outputs.clear()

    def _on_input(self, name: str, x: torch.Tensor) -> None:
        if name in self._done:
            return
        if self._first:
            source = self._outputs.get(id(x))
            self.previous[name] = source[0] if source is not None and source[1] is x else f"{name}:input"
            self.order.append(name)
        point = self.previous[name]
        if point == f"{name}:input":
            self.features.setdefault(point, []).append(_pool(x))

    def _on_output(self, name: str, y: torch.Tensor) -> None:
        if name in self._done:
            return
        self._done.add(name)
        self._outputs[id(y)] = (name, y)
        self.features.setdefault(name, []).append(_pool(y))

    def end_batch(self) -> None:
        self._outputs.clear()
        self._done.clear()
        self._first = False


# --- the scorer --------------------------------------------------------------------------------------

@register_criterion
class LayerProbeScorer(Scorer):
    """Linear-probe accuracy gain of every removable block (module docstring)."""

    name = "layer_probe"
    kind = "block"
    paper = ("Chen & Zhao 2019, Shallowing Deep Networks: Layer-wise Pruning Based on Feature Representations "
             "(TPAMI)")
    param_ranges = {"threshold": Range(-1.0, 1.0, optional=True), "probe_steps": Range(1, 10_000, whole=True),
                    "weight_decay": Range(0.0, 1000.0), "folds": Range(1, 20, whole=True),
                    "train_fraction": Range(0.0, 1.0, open_low=True, open_high=True)}

    def __init__(self, threshold: float | None = None, probe_steps: int = 100, weight_decay: float = 1e-3,
                 train_fraction: float = 0.7, seed: int | None = None, max_batches: int | None = None,
                 refit_window: float = 0.0, folds: int = 1, depth_share: float = 1.0) -> None:
        super().__init__(threshold=threshold, probe_steps=probe_steps, weight_decay=weight_decay,
                         train_fraction=train_fraction, seed=seed, max_batches=max_batches, folds=folds,
                         depth_share=depth_share)
        if probe_steps < 1 or weight_decay < 0 or not 0.0 < train_fraction < 1.0:
            raise TypeError("need probe_steps >= 1, weight_decay >= 0 and 0 < train_fraction < 1")
        self.depth_share = _depth_share(depth_share)
        if not isinstance(folds, int) or isinstance(folds, bool) or not 1 <= folds <= 20:
            raise TypeError(f"folds must be an integer from 1 (one {train_fraction:.0%} split) to 20, got {folds!r}")
        self.folds = folds
        self.threshold, self.probe_steps, self.weight_decay = threshold, probe_steps, weight_decay
        self.train_fraction, self.seed, self.max_batches = train_fraction, seed, max_batches
        self.refit_window = _refit_window(refit_window)   # ``create_criterion`` sets it again, as for any criterion

    def score(self, ctx: ScoringContext) -> ScoreResult:
        result = ScoreResult()
        if ctx.blocks:
            result = self._score_blocks(ctx)
        if ctx.groups:
            result.channels, result.reasons = self._score_units(ctx)
        return result

    def _held_out(self, labels: torch.Tensor, seed: int) -> list[torch.Tensor]:
        if self.folds > 1:
            return stratified_folds(labels, self.folds, seed)
        return [stratified_split(labels, self.train_fraction, seed)[1]]

    def _score_units(self, ctx: ScoringContext) -> tuple[dict[str, torch.Tensor], dict[str, list[dict]]]:
        """Every group's channels by ``unit_reliance`` of a probe on the group's pooled post-ReLU features,
        averaged over the held-out images of every split or fold (module docstring, "Width")."""
        from pruning.activations import collect

        seed = ctx.seed if self.seed is None else self.seed
        pooled: dict[str, list[torch.Tensor]] = {g.name: [] for g in ctx.groups}
        labels: list[torch.Tensor] = []

        def keep(batch, maps: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
            labels.append(batch.labels)
            for name, a in maps.items():
                pooled[name].append(_pool(a))

        training = ctx.model.training                 # eval mode for the pass, as for the blocks
        try:
            ctx.model.eval()
            collect(ctx.model, ctx.groups, ctx.batches(), keep, max_batches=self.max_batches)
        finally:
            ctx.model.train(training)
        y = torch.cat(labels).long()                                    # [N]
        held_out = self._held_out(y, seed)
        channels, reasons = {}, {}
        for group in ctx.groups:
            x = torch.cat(pooled[group.name])                           # [N, C]
            reliance = np.zeros(x.shape[1])
            weights = np.zeros(x.shape[1])
            correct = 0.0
            for held in held_out:
                train = torch.ones(y.numel(), dtype=torch.bool)
                train[held] = False
                probe = train_probe(x[train], y[train], ctx.num_classes, self.probe_steps, self.weight_decay)
                reliance += unit_reliance(probe, x[held], y[held]) * held.numel()
                weights += np.linalg.norm(probe.weight, axis=1) / len(held_out)
                correct += _accuracy_loss(probe, x[held], y[held])[0] * held.numel()
            total = sum(h.numel() for h in held_out)
            reliance /= total
            channels[group.name] = torch.from_numpy(reliance + _TIE_BREAK * weights).float()
            reasons[group.name] = [{"probe_reliance": float(r), "probe_weight": float(w),
                                    "probe_accuracy": correct / total} for r, w in zip(reliance, weights)]
        log.info("layer_probe: unit reliance of %d groups from probes on %d images", len(ctx.groups), y.numel())
        return channels, reasons

    def _score_blocks(self, ctx: ScoringContext) -> ScoreResult:
        seed = ctx.seed if self.seed is None else self.seed
        labels = []
        training = ctx.model.training                 # eval mode for the pass (BatchNorm statistics untouched)
        try:
            ctx.model.eval()
            with _BlockFeatures(ctx.model, list(ctx.blocks)) as tap, torch.no_grad():
                for index, batch in enumerate(ctx.batches()):
                    if self.max_batches is not None and index >= self.max_batches:
                        break
                    ctx.model(batch.images)
                    tap.end_batch()
                    labels.append(batch.labels)
        finally:
            ctx.model.train(training)
        missing = [b for b in ctx.blocks if b not in tap.features]
        if missing:
            raise ValueError(f"layer_probe: blocks never ran in the forward pass: {', '.join(missing)}")
        y = torch.cat(labels).long()                                    # [N]
        held_out = self._held_out(y, seed)
        held = torch.cat(held_out)
        fits: dict[str, ProbeFit] = {}
        dims: dict[str, int] = {}
        for point, chunks in tap.features.items():
            x = torch.cat(chunks)                                       # [N, C]
            dims[point] = x.shape[1]
            fits[point] = cross_validated_fit(x, y, ctx.num_classes, held_out, self.probe_steps, self.weight_decay)
        gains = probe_gains({p: f.accuracy for p, f in fits.items()}, tap.previous)

        result = ScoreResult()
        for block in tap.order:
            prev = tap.previous[block]
            loss_gain = fits[prev].loss - fits[block].loss
            result.blocks[block] = gains[block] + _TIE_BREAK * loss_gain
            result.block_reasons[block] = {
                "probe_accuracy": fits[block].accuracy,
                "previous_accuracy": fits[prev].accuracy,
                "previous": prev,
                "gain": gains[block],
                "probe_loss": fits[block].loss,
                "previous_loss": fits[prev].loss,
                "train_accuracy": fits[block].train_accuracy,
                "features": dims[block],
                "held_out": int(held.numel()),
            }
        if self.refit_window > 0:
            self._guide_by_skip_losses(ctx, result, seed)
        if self.threshold is not None:
            result.remove_blocks = sorted((b for b in tap.order if gains[b] < self.threshold),
                                          key=lambda b: result.blocks[b])
        log.info("layer_probe: %d blocks, %d probes on %d images (%d held out)", len(tap.order), len(fits),
                 y.numel(), held.numel())
        return result

    def _guide_by_skip_losses(self, ctx: ScoringContext, result: ScoreResult, seed: int) -> None:
        """Scores become the ``windowed_order`` of the gains and the measured skip losses (module docstring)."""
        from pruning.block_bypass import FIT_IMAGES, bypass_loss

        batches = [batch.images for batch in ctx.batches()]
        images = torch.cat(batches)
        fit = list(images[:FIT_IMAGES].split(len(batches[0])))
        loss_images = images[FIT_IMAGES:FIT_IMAGES + SKIP_LOSS_IMAGES]
        if len(loss_images) == 0:
            raise ValueError(f"layer_probe refit_window needs more than {FIT_IMAGES} calibration images (the skip's "
                             f"re-fit takes the first {FIT_IMAGES}, its loss is measured on the next ones)")
        ctx.model.eval()
        with torch.no_grad():
            reference = ctx.model(loss_images)
        losses = {block: bypass_loss(ctx.model, block, fit, loss_images, reference, seed=seed)
                  for block in result.blocks}
        gains = {block: result.block_reasons[block]["gain"] for block in result.blocks}
        for step, block in enumerate(windowed_order(gains, losses, self.refit_window)):
            result.blocks[block] = float(step)
            result.block_reasons[block].update(skip_loss=losses[block], step=step, window=self.refit_window)
        log.info("layer_probe: skip losses of %d blocks measured (%d fit, %d loss images), window %.2f",
                 len(losses), sum(len(f) for f in fit), len(loss_images), self.refit_window)
