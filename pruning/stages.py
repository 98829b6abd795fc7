"""The allocation, cut and reconstruction stages of ``pruning.compress`` (the pipeline's middle).

- ``sensitivity_stage``: per-group loss curves after the re-fit (``pruning.sensitivity``), for the "sensitivity"
  and "latency" allocations;
- ``allocate_stage``: the plan for the target (or the latency budget), allocated with the measured check and the
  shortfall policy of ``pruning.targeting`` (allocation "latency": ``pruning.latency_alloc``);
- ``prune_model``: the pruned copy (reusing the allocation's last measured candidate when it is the plan);
- ``reconstruct_stage``: the re-fit of every consumer (``pruning.reconstruct``), BatchNorm re-estimation, notes.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn as nn

from pruning.allocate import KNAPSACK_MODES, CostModel, Target, allocate, chunk_boundaries, removal_units
from pruning.criteria import Batch, ScoreResult
from pruning.latency_alloc import latency_allocation
from pruning.latency_model import LayerLatency
from pruning.measure import Accuracy, Cost, count_cost
from pruning.plan import PruningPlan
from pruning.reconstruct import LayerFit, reconstruct, recalibrate_batchnorm
from pruning.result import CompressResult, LatencyProbe, StageRunner
from pruning.sensitivity import Sensitivity, measure_sensitivity
from pruning.spec import CompressSpec
from pruning.surgery import apply_plan, kept_outputs, layers_after
from pruning.targeting import allocate_to_target


SENSITIVITY_FIT_IMAGES = 512  # calibration images the consumers' re-fits are solved on ...
SENSITIVITY_LOSS_IMAGES = 256 # ... and other ones the loss is measured on (a forward pass per group and depth),
SENSITIVITY_LOSS_MACS = 96e9  # ... fewer when their forward pass would cost more than this (large inputs) ...
SENSITIVITY_MIN_LOSS_IMAGES = 64  # ... but not fewer than this (PruneSpec.sensitivity_images overrides all three)
SENSITIVITY_DEPTHS = 4        # removal depths measured per group (the allocator's chunk boundaries, thinned)


def block_groups(groups: list, blocks: list[str]) -> dict[str, str]:
    """group name -> the removable block it is the only group inside of (every member within the block): removing
    all its channels is removing the block (a knapsack weighs both when ``PruneSpec.block_removal`` offers it)."""
    inside: dict[str, list[str]] = {block: [] for block in blocks}
    for group in groups:
        owners = {next((b for b in blocks if name.startswith(b + ".")), None) for name, _side in group.members}
        if len(owners) == 1 and None not in owners:
            inside[owners.pop()].append(group.name)
    return {names[0]: block for block, names in inside.items() if len(names) == 1}


def split_removed_blocks(kept: dict[str, list[int]], bypass: dict[str, str]) -> tuple[dict, list[str]]:
    """An allocation's ``kept`` without the groups it emptied, and the blocks those groups stand for."""
    gone = [name for name, idx in kept.items() if not idx and name in bypass]
    return {n: idx for n, idx in kept.items() if n not in gone}, [bypass[n] for n in gone]


def sensitivity_loss_images(asked: int | None, macs_per_image: float) -> int:
    """How many calibration images the loss curves are measured on: ``asked`` (``PruneSpec.sensitivity_images``),
    else ``SENSITIVITY_LOSS_IMAGES``, fewer when their forward pass would exceed ``SENSITIVITY_LOSS_MACS`` (each
    group and depth costs one: on 2 cores a torchvision ResNet-18 at 224x224 spent 159 s on 256), not below
    ``SENSITIVITY_MIN_LOSS_IMAGES``."""
    if asked is not None:
        return asked
    affordable = int(SENSITIVITY_LOSS_MACS // max(macs_per_image, 1.0))
    return max(SENSITIVITY_MIN_LOSS_IMAGES, min(SENSITIVITY_LOSS_IMAGES, affordable))


def sensitivity_stage(spec: CompressSpec, run: StageRunner, result: CompressResult, model: nn.Module, groups: list,
                      calibration: list[Batch], macs_per_image: float, bypass: dict[str, str] | None = None) -> None:
    """``result.sensitivity``: each group's loss curve, in the criterion's removal order (allocations "sensitivity"
    and "latency"), measured on ``sensitivity_loss_images`` images; ``bypass`` (``block_groups``): those groups'
    curves end at the loss of skipping the block."""
    if spec.prune.allocation not in KNAPSACK_MODES or result.scores is None or not groups:
        return
    with run.stage("sensitivity"):
        units = removal_units(groups, result.scores.channels, spec.prune.round_to, spec.prune.min_channels)
        depths = sensitivity_depths(units)
        removal = {name: (lambda n, u=u: u.channels(u.order[:n])) for name, u in units.items()}
        images = torch.cat([b.images for b in calibration])
        loss_images = sensitivity_loss_images(spec.prune.sensitivity_images, macs_per_image)
        fit, loss = images[:SENSITIVITY_FIT_IMAGES], images[-loss_images:]
        if len(images) < SENSITIVITY_FIT_IMAGES + loss_images:        # few images: split them
            half = max(1, len(images) // 2)
            fit, loss = images[:half], images[half:] if len(images) > 1 else images
        rec = spec.reconstruct
        result.sensitivity = measure_sensitivity(
            model, groups, removal, depths, list(fit.split(spec.data.batch_size)), loss,
            positions_per_image=rec.positions_per_image, ridge=rec.ridge, refit=rec.enabled, seed=spec.seed,
            max_memory_mb=rec.max_memory_mb, should_stop=run.check, bypass=bypass)
        result.notes.extend(result.sensitivity.notes)
        run.emit("sensitivity", 1.0, f"loss curves of {len(groups)} group(s) from {result.sensitivity.images} images")


def sensitivity_depths(units: dict) -> dict[str, list[int]]:
    """The removal depths measured per group: its chunk boundaries, thinned to ``SENSITIVITY_DEPTHS``."""
    return {name: _thin(chunk_boundaries(u), SENSITIVITY_DEPTHS) for name, u in units.items()}


def _thin(points: list[int], most: int) -> list[int]:
    """At most ``most`` of ``points``, evenly spread, the last always kept."""
    if len(points) <= most:
        return points
    picks = {round(i * (len(points) - 1) / (most - 1)) for i in range(most)}
    return [points[i] for i in sorted(picks)]


def allocate_stage(spec: CompressSpec, run: StageRunner, result: CompressResult, original: nn.Module, model: nn.Module,
                   groups: list, removed_blocks: list[str], input_shape: tuple[int, int, int], base_cost: Cost,
                   target: Target, latency_probe, layer_latency: LayerLatency | None = None,
                   bypass: dict[str, str] | None = None) -> tuple[PruningPlan, Target, "Candidates | None"]:
    """The plan for ``target`` (or for the latency budget), with the allocation's last measured candidate.
    ``bypass`` (``block_groups``, when ``PruneSpec.block_removal`` offers block moves): groups whose block the
    plan may remove instead of narrowing."""
    kept, original_widths, measure = {}, {}, None
    current = count_cost(model, input_shape)
    if spec.prune.allocation == "latency" and result.scores is not None and result.sensitivity is not None:
        bypass = bypass or {}
        measure = Candidates(original, removed_blocks, input_shape, base_cost, "macs")
        allocation, target = latency_allocation(spec, run, result, model, groups, input_shape, current, latency_probe,
                                                layer_latency, lambda a: measure.model_for(
                                                    *split_removed_blocks(a.kept, bypass), a.original), set(bypass))
        kept, original_widths, skipped = _blocks_out(run, result, allocation, bypass, "latency")
        removed_blocks = removed_blocks + [b["block"] for b in skipped]
        result.latency_allocation["removed_blocks"] = skipped
    elif result.scores is not None and spec.prune.latency_budget_ms is not None:
        target = search_latency(spec, run, result, model, groups, input_shape, base_cost, current, latency_probe)
    if target.metric != "latency" and result.scores is not None \
            and 1.0 - getattr(current, target.metric) / getattr(base_cost, target.metric) < target.reduction - 0.005:
        whole = bypass or {}                 # empty unless PruneSpec.block_removal offers block moves
        measure = Candidates(original, removed_blocks, input_shape, base_cost, target.metric, whole)
        allocation = allocate_for(spec, groups, result.scores, model, input_shape, current, base_cost, target,
                                  result.warnings, measure, result.sensitivity, whole)
        kept, original_widths, skipped = _blocks_out(run, result, allocation, whole, "sensitivity")
        removed_blocks = removed_blocks + [b["block"] for b in skipped]
    plan = PruningPlan(spec.model.arch, result.plan.num_classes, input_shape, kept, original_widths, removed_blocks,
                       criterion=spec.prune.criterion,
                       notes={"allocation": spec.prune.allocation, "round_to": spec.prune.round_to,
                              "layer_criterion": spec.prune.layer_criterion,
                              "target": {"metric": target.metric, "reduction": target.reduction}},
                       source=dict(result.plan.source))
    return plan, target, measure


def _blocks_out(run: StageRunner, result: CompressResult, allocation, bypass: dict[str, str], mode: str
                ) -> tuple[dict, dict, list[dict]]:
    """(kept, original widths, the removed blocks) of an allocation whose emptied ``bypass`` groups remove their
    blocks, each removed block with its group and measured skip loss (None: not finite); says so in a note and a
    progress event."""
    kept, _ = split_removed_blocks(allocation.kept, bypass)
    losses = {name: result.sensitivity.curves[name].loss[-1] for name in allocation.kept if name not in kept}
    skipped = [{"block": bypass[name], "group": name, "loss": loss if math.isfinite(loss) else None}
               for name, loss in losses.items()]
    if skipped:
        names = [b["block"] for b in skipped]
        run.emit("allocate", 0.9, f"the {mode} plan removes {len(names)} block(s): {', '.join(names)}")
        result.notes.append(
            f"{mode} allocation: {len(names)} block(s) removed whole instead of narrowed ("
            + ", ".join(f"{b['block']}: loss {b['loss']:.3g} when skipped" if b["loss"] is not None else b["block"]
                        for b in skipped)
            + "; the loss is the logits' squared error on held-apart calibration images with the next two layers "
              "re-fitted)")
    return kept, {n: w for n, w in allocation.original.items() if n in kept}, skipped


def prune_model(spec: CompressSpec, result: CompressResult, original: nn.Module, groups: list, plan: PruningPlan,
                measure: "Candidates | None", input_shape: tuple[int, int, int]) -> nn.Module:
    """The pruned model for ``plan`` (the allocation's measured candidate when it is that plan); sets the
    compressed cost."""
    merge = result.scores is not None and spec.prune.criterion == "redundancy" \
        and bool(spec.prune.criterion_params.get("merge"))
    measured = measure.take(plan) if measure is not None and not merge else None
    if measured is not None:
        pruned, result.cost["compressed"] = measured
        return pruned
    pruned = copy.deepcopy(original)
    if merge:
        merges = merge_duplicates(pruned, groups, plan, result.scores)
        result.notes.append(f"redundancy merge: {len(merges)} removed filter(s) folded into their representatives")
    pruned = apply_plan(pruned, plan)
    result.cost["compressed"] = count_cost(pruned, input_shape)
    return pruned


def allocate_for(spec: CompressSpec, groups: list, scores: ScoreResult, model: nn.Module,
                 input_shape: tuple[int, int, int], current: Cost, base_cost: Cost, target: Target,
                 warnings: list[str] | None = None, measure: "Candidates | None" = None,
                 sensitivity: Sensitivity | None = None, whole: dict[str, str] | None = None):
    """The allocation for ``target``; with ``measure`` (the final plan, not a latency probe) the measured
    reduction is checked and a shortfall is handled by ``spec.prune.allow_shortfall`` (into ``warnings``).
    ``whole``: groups whose block the plan may remove instead (``block_groups``)."""
    cost_model = CostModel(model, input_shape, current.macs, current.params)
    options = dict(mode=spec.prune.allocation, round_to=spec.prune.round_to, min_channels=spec.prune.min_channels,
                   curves=sensitivity.curves if sensitivity is not None else None, whole=set(whole or ()))
    if measure is None:
        return allocate(groups, scores.channels, cost_model, target, getattr(base_cost, target.metric), **options)
    return allocate_to_target(groups, scores.channels, cost_model, target, getattr(base_cost, target.metric),
                              measure, allow_shortfall=spec.prune.allow_shortfall, warnings=warnings, **options)


class Candidates:
    """Prunes a copy of the original for a candidate allocation and counts it; keeps the last one, so the prune
    stage reuses it when it is the plan (one pruned copy alive at a time)."""

    def __init__(self, original: nn.Module, removed_blocks: list[str], input_shape: tuple[int, int, int],
                 base_cost: Cost, metric: str, bypass: dict[str, str] | None = None) -> None:
        """``bypass`` (``block_groups``): an allocation that empties one of these groups removes its block."""
        self.original, self.blocks, self.input_shape = original, removed_blocks, input_shape
        self.base, self.metric, self.bypass = base_cost, metric, bypass or {}
        self.last: tuple[dict, list, nn.Module, Cost] | None = None

    def __call__(self, kept: dict, widths: dict, blocks: list[str] = ()) -> float:
        """The reduction of the copy pruned to ``kept`` with ``blocks`` removed too (beyond the stage's)."""
        self.last = None
        kept, emptied = split_removed_blocks(kept, self.bypass)
        blocks = [*self.blocks, *blocks, *emptied]
        plan = PruningPlan("", 1, self.input_shape, kept, {n: widths[n] for n in kept}, blocks)
        model = apply_plan(copy.deepcopy(self.original), plan)
        cost = count_cost(model, self.input_shape)
        self.last = (kept, blocks, model, cost)
        return 1.0 - getattr(cost, self.metric) / getattr(self.base, self.metric)

    def model_for(self, kept: dict, blocks: list[str], widths: dict) -> nn.Module:
        """The pruned copy for this allocation (kept as the last candidate)."""
        self(kept, widths, blocks)
        return self.last[2]

    def take(self, plan: PruningPlan) -> tuple[nn.Module, Cost] | None:
        """The last candidate's copy and cost when it is ``plan`` (None otherwise); forgets it."""
        last, self.last = self.last, None
        if last is None or last[0] != plan.kept or last[1] != list(plan.removed_blocks):
            return None
        return last[2], last[3]


def search_latency(spec: CompressSpec, run: StageRunner, result: CompressResult, model: nn.Module, groups: list,
                   input_shape: tuple[int, int, int], base_cost: Cost, current: Cost, probe: LatencyProbe) -> Target:
    """Search the MACs reduction that meets the latency budget on the target (probes measured, not modelled)."""
    from pruning.allocate import reachable_reduction, search_latency_budget

    budget, batch = spec.prune.latency_budget_ms, spec.prune.latency_batch

    def latency_at(reduction: float) -> float:
        run.check()
        candidate = copy.deepcopy(model)
        if reduction > 0:
            allocation = allocate_for(spec, groups, result.scores, model, input_shape, current, base_cost,
                                      Target("macs", reduction), sensitivity=result.sensitivity)
            plan = PruningPlan(spec.model.arch, result.plan.num_classes, input_shape, allocation.kept,
                               allocation.original)
            candidate = apply_plan(candidate, plan)
        latency = probe(candidate.eval(), input_shape, batch)
        run.emit("allocate", 0.5, f"probe -{reduction:.0%} MACs: p90 {latency:.3g} ms (budget {budget:.3g} ms)")
        return latency

    cost_model = CostModel(model, input_shape, current.macs, current.params)
    most = reachable_reduction(groups, cost_model, "macs", base_cost.macs, round_to=spec.prune.round_to,
                               min_channels=spec.prune.min_channels)
    search = search_latency_budget(latency_at, budget, max_reduction=max(0.0, most - 0.005),
                                   margin=spec.prune.latency_margin)
    result.latency_search = search.steps
    return Target("macs", search.reduction)


def merge_duplicates(model: nn.Module, groups: list, plan: PruningPlan, scores: ScoreResult) -> list[dict]:
    """``redundancy`` with ``merge=True``: fold each removed near-duplicate into its representative first."""
    from pruning.criteria.redundancy import merge_into_representative

    merges = []
    for group in groups:
        if group.name in plan.kept and plan.removed(group.name):
            partners = [reason.get("partner") for reason in scores.reasons[group.name]]
            merges += [dict(m, layer=group.name) for m in
                       merge_into_representative(model, group, plan.removed(group.name), partners)]
    return merges


def reconstruct_stage(spec: CompressSpec, run: StageRunner, result: CompressResult, original: nn.Module,
                      pruned: nn.Module, groups: list, calibration: list[Batch],
                      evaluate_split: Callable[[nn.Module], Accuracy]) -> None:
    """Re-fit the consumers of pruned channels (``ReconstructSpec``), re-estimate BatchNorm if asked, evaluate."""
    rec = spec.reconstruct
    images = [b.images for b in calibration]
    changed = bool(result.plan.removed_blocks) or any(
        len(k) < result.plan.original[n] for n, k in result.plan.kept.items())
    if not changed:
        return
    with run.stage("reconstruct"):
        if rec.enabled and (result.plan.kept or result.plan.removed_blocks):
            consumers = sorted({c for g in groups if g.name in result.plan.kept
                                and len(result.plan.kept[g.name]) < g.size for c in g.consumers}
                               | set(first_layers_after(pruned, result.plan.removed_blocks)))
            if rec.scope == "downstream":
                consumers = downstream_layers(pruned, consumers)
            out_channels = kept_outputs(original, groups, result.plan, consumers)
            result.fits = reconstruct(original, pruned, consumers, out_channels, lambda: iter(images),
                                      positions_per_image=rec.positions_per_image, ridge=rec.ridge,
                                      seed=spec.seed, max_memory_mb=rec.max_memory_mb, holdout=rec.holdout)
            result.notes.extend(fit_notes(result.fits))
        refitted = any(f.status == "refit" for f in result.fits)
        if rec.batchnorm == "on" or (rec.batchnorm == "auto" and not (rec.enabled and refitted)):
            recalibrate_batchnorm(pruned, images)
            result.notes.append("BatchNorm statistics re-estimated on the calibration set")
        result.accuracy["reconstructed"] = evaluate_split(pruned)
        run.emit("reconstruct", 1.0, f"top-1 {result.accuracy['reconstructed'].top1:.2%}")


def first_layers_after(model: nn.Module, blocks: list[str]) -> list[str]:
    """The first conv / linear layer after each removed block of ``model``: it reads what the block's input now
    is, so it is re-fitted like a consumer of removed channels."""
    return [name for block in blocks for name in layers_after(model, block)]


def downstream_layers(model: nn.Module, consumers: list[str]) -> list[str]:
    """Every conv / linear layer from the first of ``consumers`` on (module order), with ``consumers`` themselves."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    wanted = set(consumers)
    first = next((i for i, n in enumerate(names) if n in wanted), len(names))
    return sorted(wanted | set(names[first:]))


def fit_notes(fits: list[LayerFit]) -> list[str]:
    """One line per kind of layer the re-fit left alone (kept, skipped, reverted), for the report."""
    notes = []
    for status, what in (("kept", "kept their un-refit weights (the re-fit did not lower the held-out residual)"),
                         ("skipped", "were not re-fitted"), ("reverted", "were reverted")):
        names = [f.name for f in fits if f.status == status]
        if names:
            example = next(f.note for f in fits if f.status == status)
            notes.append(f"reconstruction: {len(names)} of {len(fits)} layer(s) {what}, e.g. {names[0]}: {example}")
    return notes
