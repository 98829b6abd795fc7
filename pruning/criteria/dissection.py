"""Concept alignment with majority voting — ``dissection``.

Alqahtani, Xie, Jones, Essa, "Pruning CNN filters via quantifying the importance of deep visual representations",
CVIU 208-209 (2021) 103220, built on Network Dissection (Bau et al., "Network Dissection: Quantifying
Interpretability of Deep Visual Representations", CVPR 2017). See ``../shared/CRITERIA.md`` section 1.

A unit matters if it is among the units of its layer that best align with the visual concepts present in an image,
for many images. Per channel group (a layer with C units; A_k its post-ReLU map, ``pruning.activations``):

1. Pass 1, thresholds: T_k = the ``quantile`` (0.995, the top 0.5%) of A_k over all calibration images and
   positions (exact on a bounded uniform subsample, ``activations.ChannelStats``).
2. Pass 2, votes: every (image x, concept c present in x) pair is a voter. Unit masks
   M_k(x) = bilinear_upsample(A_k(x) to the input size) > T_k, [C, H, W]; IoU_k = |M_k ∩ L_c| / |M_k ∪ L_c|, [C].
   The m = max(1, ceil(``vote_fraction`` x C)) units with the highest IoU, among those above ``iou_floor``, get one
   vote each.
3. score_k = votes_k / voters + 1e-6 x mean_k / max_j mean_j  (the mean activation only breaks ties). Higher = keep.
   voters counts every (image, concept) pair that took part, whether or not any unit cleared the floor.

Concept masks L_c(x), chosen by ``masks``:
- ``"auto"``: the batch's pixel masks (one concept id per pixel) when it has them, else ``"gradcam"``. Concept id 0
  is background / unlabelled and never a concept; every other id present in an image makes one voter.
- ``"gradcam"``: concepts are the classes. The mask of an image of class y is the unpruned model's Grad-CAM for y
  (Selvaraju et al. 2017) at the last conv stage, bilinearly upsampled to the input size and binarised at its top
  ``gradcam_top`` (20%) of pixels. The last conv stage is the last module, in the order forward hooks fire (a
  container fires after its children), whose output is 4-D with more than one spatial position, excluding the
  model itself: the block or stage output just before global pooling (``layer3`` of a CIFAR ResNet, ``features``
  of SmallCNN / MobileNetV2, ``layer4`` of a torchvision ResNet; for torchvision VGG its adaptive 7x7 ``avgpool``,
  a resampling of ``features``). Images whose Grad-CAM is zero everywhere do not vote.
- ``"whole"`` (control): an all-ones mask for the image's class.
- ``"random"`` (control): a random ``gradcam_top`` fraction of pixels per image for the image's class, from a
  generator seeded with ``seed``.
With the class-based masks (gradcam, whole, random) only correctly classified images vote (``correct_only``).

Memory: pass 1 holds at most ``quantile_samples`` values per unit, lowered so that all groups together stay within
``memory_mb``; pass 2 holds one batch's maps and upsamples them in chunks of at most ~8M elements.

Example::

    from pruning.criteria import create_criterion
    result = create_criterion("dissection", masks="gradcam").score(ctx)
    result.channels["layer1.0.conv1"]          # [16] importance, higher = keep
    result.reasons["layer1.0.conv1"][3]        # {"votes": 41, "voters": 930, "mean_iou": 0.08, ...}
"""
from __future__ import annotations

import copy
import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pruning.activations import ChannelStats, collect, module_outputs_in_order, stable_seed
from pruning.criteria.base import Batch, ScoreResult, Scorer, ScoringContext, register_criterion
from pruning.criteria.params import Range

log = logging.getLogger(__name__)

MASK_MODES = ("auto", "gradcam", "whole", "random")
_CHUNK_ELEMENTS = 1 << 23          # upsampled mask elements per chunk in pass 2
_TIE_BREAK = 1e-6


# --- pure functions ----------------------------------------------------------------------------------

def unit_masks(acts: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """M_k = bilinear_upsample(A_k) > T_k: acts [N, C, h, w], thresholds [C] -> bool [N, C, H, W]."""
    up = F.interpolate(acts.float(), size=tuple(size), mode="bilinear", align_corners=False)   # [N, C, H, W]
    return up > thresholds.view(1, -1, 1, 1)


def iou(unit_masks: torch.Tensor, concept_masks: torch.Tensor) -> torch.Tensor:
    """IoU of every unit mask with its image's concept mask: [P, C, H, W] bool, [P, H, W] bool -> [P, C].

    An empty union gives IoU 0.
    """
    m = unit_masks.flatten(2).float()                                   # [P, C, HW]
    c = concept_masks.flatten(1).float()                                # [P, HW]
    both = torch.stack([c, torch.ones_like(c)], dim=2)                  # [P, HW, 2]: concept, all pixels
    counts = torch.bmm(m, both)                                         # [P, C, 2]: |M ∩ L|, |M| in one pass
    inter, area = counts[..., 0], counts[..., 1]                        # [P, C] each
    union = area + c.sum(1, keepdim=True) - inter                       # [P, C]
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))


def ballots(iou_matrix: torch.Tensor, m: int, floor: float) -> torch.Tensor:
    """Who each voter votes for: [P, C] IoU -> bool [P, C], True for the top-m units of a row whose IoU > floor.

    Ties at the m-th place are broken by unit index (lower first), deterministically.
    """
    p, c = iou_matrix.shape
    m = max(1, min(m, c))
    # stable descending sort: equal IoUs keep index order
    order = torch.sort(iou_matrix, dim=1, descending=True, stable=True).indices[:, :m]   # [P, m]
    chosen = torch.zeros(p, c, dtype=torch.bool)
    chosen.scatter_(1, order, True)
    return chosen & (iou_matrix > floor)


def majority_votes(iou_matrix: torch.Tensor, m: int, floor: float) -> torch.Tensor:
    """Votes per unit [C] (float) from an IoU matrix [P voters, C units]; see ``ballots``."""
    return ballots(iou_matrix, m, floor).sum(0).float()


def gradcam(features: torch.Tensor, grads: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Grad-CAM heat maps: features and d(class score)/d(features) [N, K, h, w] -> [N, H, W], upsampled bilinearly.

    cam = ReLU(sum_k alpha_k A_k) with alpha_k = spatial mean of the gradient (Selvaraju et al. 2017, eq. 1-2).
    """
    alpha = grads.mean(dim=(2, 3), keepdim=True)                        # [N, K, 1, 1]
    cam = F.relu((alpha * features).sum(1, keepdim=True))               # [N, 1, h, w]
    cam = F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)
    return cam[:, 0]                                                    # [N, H, W]


def top_fraction_mask(heat: torch.Tensor, fraction: float) -> torch.Tensor:
    """Binarise each map at its top ``fraction`` of pixels: [N, H, W] -> bool [N, H, W] (exactly ceil(f HW) set)."""
    n, h, w = heat.shape
    k = max(1, math.ceil(fraction * h * w))
    top = heat.reshape(n, -1).topk(k, dim=1).indices                    # [N, k]
    mask = torch.zeros(n, h * w, dtype=torch.bool)
    mask.scatter_(1, top, True)
    return mask.view(n, h, w)


def random_masks(n: int, size: tuple[int, int], fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A random ``fraction`` of pixels per image: bool [n, H, W]."""
    return top_fraction_mask(torch.rand(n, *size, generator=generator), fraction)


def concept_pairs(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Voters of a batch with pixel concept masks [N, H, W] (id 0 = background, skipped).

    Returns image index [P], concept id [P] and the concept's binary mask in that image [P, H, W].
    """
    images, concepts, binary = [], [], []
    for concept in torch.unique(masks).tolist():
        if concept == 0:
            continue
        mask = masks == concept                                         # [N, H, W]
        present = mask.flatten(1).any(1).nonzero().flatten()            # [n_c]
        images.append(present)
        concepts.append(torch.full_like(present, concept))
        binary.append(mask[present])
    if not images:
        h, w = masks.shape[-2:]
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty.clone(), torch.zeros(0, h, w, dtype=torch.bool)
    return torch.cat(images), torch.cat(concepts), torch.cat(binary)


def gradcam_layer(model: nn.Module, input_shape: tuple[int, int, int]) -> str:
    """The last conv stage (rule in the module docstring), found by one forward of a zero image."""
    order = module_outputs_in_order(model, torch.zeros(1, *input_shape))
    spatial = [name for name, shape in order if len(shape) == 4 and shape[2] * shape[3] > 1]
    if not spatial:
        raise ValueError("Grad-CAM needs a module with a spatial (4-D) output; this model has none")
    return spatial[-1]


# --- accumulation ------------------------------------------------------------------------------------

class _Tally:
    """Votes of one layer, accumulated over batches."""

    def __init__(self, size: int) -> None:
        self.votes = torch.zeros(size, dtype=torch.float64)
        self.iou_sum = torch.zeros(size, dtype=torch.float64)
        self.voters = 0
        self.by_concept: dict[int, torch.Tensor] = {}

    def add(self, acts: torch.Tensor, thresholds: torch.Tensor, images: torch.Tensor, concepts: torch.Tensor,
            masks: torch.Tensor, m: int, floor: float) -> None:
        c = acts.shape[1]
        h, w = masks.shape[-2:]
        step = max(1, _CHUNK_ELEMENTS // (c * h * w))
        for start in range(0, images.numel(), step):
            idx = slice(start, start + step)
            um = unit_masks(acts[images[idx]], thresholds, (h, w))      # [p, C, H, W]
            scores = iou(um, masks[idx])                                # [p, C]
            voted = ballots(scores, m, floor)                           # [p, C]
            self.votes += voted.sum(0)
            self.iou_sum += scores.sum(0, dtype=torch.float64)
            for concept in concepts[idx].unique().tolist():
                rows = voted[concepts[idx] == concept].sum(0).double()
                self.by_concept[concept] = self.by_concept.get(concept, torch.zeros(c, dtype=torch.float64)) + rows
        self.voters += images.numel()


# --- the scorer --------------------------------------------------------------------------------------

@register_criterion
class DissectionScorer(Scorer):
    """Network-Dissection majority voting (module docstring); one pass for thresholds, one for votes."""

    name = "dissection"
    paper = ("Alqahtani et al. 2021, Pruning CNN filters via quantifying the importance of deep visual "
             "representations (CVIU)")
    param_ranges = {"quantile": Range(0.0, 1.0, open_low=True, open_high=True),
                    "vote_fraction": Range(0.0, 1.0, open_low=True), "iou_floor": Range(0.0, 1.0),
                    "gradcam_top": Range(0.0, 1.0, open_low=True),
                    "quantile_samples": Range(1, 10_000_000, whole=True),
                    "memory_mb": Range(0.0, 65_536.0, open_low=True)}

    def __init__(self, quantile: float = 0.995, vote_fraction: float = 0.1, iou_floor: float = 0.01,
                 masks: str = "auto", gradcam_top: float = 0.2, correct_only: bool = True,
                 quantile_samples: int = 200_000, memory_mb: float = 512.0, seed: int | None = None,
                 max_batches: int | None = None) -> None:
        super().__init__(quantile=quantile, vote_fraction=vote_fraction, iou_floor=iou_floor, masks=masks,
                         gradcam_top=gradcam_top, correct_only=correct_only, quantile_samples=quantile_samples,
                         memory_mb=memory_mb, seed=seed, max_batches=max_batches)
        if masks not in MASK_MODES:
            raise TypeError(f"masks must be one of {', '.join(MASK_MODES)}, got {masks!r}")
        if not 0.0 < quantile < 1.0:
            raise TypeError("quantile must be in (0, 1)")
        if not 0.0 < vote_fraction <= 1.0 or not 0.0 < gradcam_top <= 1.0:
            raise TypeError("vote_fraction and gradcam_top must be in (0, 1]")
        if quantile_samples < 1 or memory_mb <= 0:
            raise TypeError("quantile_samples and memory_mb must be positive")
        self.quantile, self.vote_fraction, self.iou_floor = quantile, vote_fraction, iou_floor
        self.masks, self.gradcam_top, self.correct_only = masks, gradcam_top, correct_only
        self.quantile_samples, self.memory_mb = quantile_samples, memory_mb
        self.seed, self.max_batches = seed, max_batches

    def score(self, ctx: ScoringContext) -> ScoreResult:
        groups = ctx.groups
        if not groups:
            return ScoreResult()
        # A private copy with frozen weights: hooks never touch ctx.model, and for Grad-CAM autograd records only
        # the tail after the captured layer (its output is turned into a leaf by the hook below).
        model = copy.deepcopy(ctx.model).eval().requires_grad_(False)
        seed = ctx.seed if self.seed is None else self.seed
        size = tuple(ctx.input_shape[1:])

        # Pass 1: thresholds T_k (and mean activation for ties), within the memory bound.
        per_channel = int(self.memory_mb * 2**20 / 4 / sum(g.size for g in groups))
        cap = max(1, min(self.quantile_samples, per_channel))
        stats = {g.name: ChannelStats(g.size, cap, stable_seed(seed, g.name)) for g in groups}
        seen = {"images": 0, "without_masks": 0}

        def pass1(batch: Batch, maps: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
            seen["images"] += batch.images.shape[0]
            seen["without_masks"] += batch.masks is None
            for name, acts in maps.items():
                stats[name].update(acts)

        collect(model, groups, ctx.batches(), pass1, max_batches=self.max_batches)
        thresholds = {name: s.quantile(self.quantile) for name, s in stats.items()}
        if not all(s.exact for s in stats.values()):
            log.info("dissection: thresholds from a subsample of %d values per unit", cap)

        # Pass 2: votes.
        use_cam = self.masks == "gradcam" or (self.masks == "auto" and seen["without_masks"] > 0)
        cam_layer = gradcam_layer(model, ctx.input_shape) if use_cam else None
        if cam_layer:
            log.info("dissection: Grad-CAM concept masks from %s", cam_layer)
        generator = torch.Generator().manual_seed(stable_seed(seed, "dissection/random-masks"))
        tallies = {g.name: _Tally(g.size) for g in groups}
        captured: dict[str, torch.Tensor] = {}
        skipped = {"wrong": 0, "flat_cam": 0}

        def pass2(batch: Batch, maps: dict[str, torch.Tensor], logits: torch.Tensor) -> None:
            images, concepts, masks = self._voters(batch, logits, captured, generator, size, skipped)
            captured.clear()
            if images.numel() == 0:
                return
            for name, acts in maps.items():
                m = max(1, math.ceil(self.vote_fraction * acts.shape[1]))
                tallies[name].add(acts, thresholds[name], images, concepts, masks, m, self.iou_floor)

        handle = None
        if cam_layer is not None:
            def leaf(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
                captured["features"] = output.detach().requires_grad_(True)
                return captured["features"].clone()    # not the leaf itself: the model may modify it in place
            handle = model.get_submodule(cam_layer).register_forward_hook(leaf)
        try:
            collect(model, groups, ctx.batches(), pass2, grad=use_cam, max_batches=self.max_batches)
        finally:
            if handle is not None:
                handle.remove()
            captured.clear()

        voters = next(iter(tallies.values())).voters
        log.info("dissection: %d images, %d voters (%d misclassified, %d flat Grad-CAM skipped)",
                 seen["images"], voters, skipped["wrong"], skipped["flat_cam"])
        if voters == 0:
            log.warning("dissection: no voters (no concepts present / no correctly classified images); "
                        "scores are mean activations only")
        result = ScoreResult()
        for group in groups:
            tally, mean = tallies[group.name], stats[group.name].mean
            result.channels[group.name] = dissection_scores(tally.votes, tally.voters, mean)
            result.reasons[group.name] = _reasons(tally, mean, thresholds[group.name])
        return result

    def _voters(self, batch: Batch, logits: torch.Tensor, captured: dict[str, torch.Tensor],
                generator: torch.Generator, size: tuple[int, int], skipped: dict[str, int]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image index [P], concept id [P], concept mask [P, H, W]) of a batch, by the ``masks`` mode."""
        if self.masks == "auto" and batch.masks is not None:
            masks = batch.masks
            if tuple(masks.shape[-2:]) != size:
                masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].long()  # [N, H, W]
            return concept_pairs(masks)
        labels = batch.labels
        keep = torch.ones(labels.shape[0], dtype=torch.bool)
        if self.correct_only:
            keep = logits.detach().argmax(1) == labels
            skipped["wrong"] += int((~keep).sum())
        if self.masks == "whole":
            binary = torch.ones(labels.shape[0], *size, dtype=torch.bool)
        elif self.masks == "random":
            binary = random_masks(labels.shape[0], size, self.gradcam_top, generator)
        else:   # gradcam, or auto on a batch without masks
            features = captured["features"]
            target = logits.gather(1, labels.view(-1, 1)).sum()
            (grads,) = torch.autograd.grad(target, features)
            heat = gradcam(features.detach(), grads, size)              # [N, H, W]
            flat = heat.flatten(1).amax(1) <= 0
            skipped["flat_cam"] += int((flat & keep).sum())
            keep = keep & ~flat
            binary = top_fraction_mask(heat, self.gradcam_top)
        images = keep.nonzero().flatten()
        return images, labels[images], binary[images]


def dissection_scores(votes: torch.Tensor, voters: int, mean_activation: torch.Tensor) -> torch.Tensor:
    """score_k = votes_k / voters + 1e-6 x mean_k / max_j mean_j: [C] votes, [C] means -> float32 [C]."""
    top = float(mean_activation.max()) if mean_activation.numel() else 0.0
    tie = mean_activation.double() / top if top > 0 else torch.zeros_like(mean_activation, dtype=torch.float64)
    share = votes.double() / voters if voters else torch.zeros_like(votes, dtype=torch.float64)
    return (share + _TIE_BREAK * tie).float()


def _reasons(tally: _Tally, mean: torch.Tensor, thresholds: torch.Tensor) -> list[dict]:
    reasons = []
    for k in range(tally.votes.numel()):
        best, best_votes = None, 0
        for concept, counts in tally.by_concept.items():
            if counts[k] > best_votes:
                best, best_votes = concept, int(counts[k])
        reasons.append({
            "votes": int(tally.votes[k]),
            "voters": tally.voters,
            "mean_iou": float(tally.iou_sum[k] / tally.voters) if tally.voters else 0.0,
            "mean_activation": float(mean[k]),
            "threshold": float(thresholds[k]),
            "top_concept": best,
            "top_concept_votes": best_votes,
        })
    return reasons
