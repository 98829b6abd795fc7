"""The compression pipeline as one function: load -> measure -> score -> allocate -> cut -> reconstruct ->
fine-tune -> save, from a typed spec, with a progress callback and cooperative cancellation.

Export, latency benchmarks and the report are not the engine's business: ``pipeline.run`` calls this
function and then the exporters. From Python::

    from pruning.compress import CompressSpec, ModelSpec, DataSpec, PruneSpec, compress
    spec = CompressSpec(model=ModelSpec("cifar/resnet56", weights="resnet56.th"),
                        data=DataSpec("../shared/data/cifar10"), prune=PruneSpec(criterion="l1"))
    result = compress(spec, out_dir="runs/r56")
    result.accuracy["reconstructed"].top1
"""
from __future__ import annotations

import copy
import inspect
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

import torch
import torch.nn as nn

from pruning import data as data_mod
from pruning import intake, zoo
from pruning.allocate import CostModel, Target, allocate_blocks
from pruning.criteria import Batch, ScoringContext, create_criterion
from pruning.criteria.redundant_features import guide_by_refit
from pruning.errors import SpecError
from pruning.finetune import FinetuneSettings, check_distillation, check_settings, evaluation_callback, finetune
from pruning.latency_model import LayerLatency
from pruning.spec import (MAX_SENSITIVITY_IMAGES, CompressSpec, DataSpec, FinetuneSpec,  # noqa: F401 - re-exported
                          ModelSpec, PruneSpec, ReconstructSpec, check_allocation, offers_block_moves)
from pruning.measure import Accuracy, Cost, count_cost, evaluate
from pruning.plan import PruningPlan
from pruning.result import (CompressResult, Inference, LatencyProbe, Progress,  # noqa: F401 - re-exported
                            ProgressEvent, StageRunner)
from pruning.stages import allocate_stage, block_groups, prune_model, reconstruct_stage, sensitivity_stage
from pruning.surgery import analyse_groups, build_graph, remove_blocks

log = logging.getLogger(__name__)

STAGES = ("load", "score", "allocate", "prune", "reconstruct", "finetune", "save")
DEFAULT_ROUND_TO = 8    # width multiple when PruneSpec.round_to is None and no caller chose one: tensor cores' multiple


# --- the spec -----------------------------------------------------------------------------------

# --- the pipeline -------------------------------------------------------------------------------

def load_inputs(spec: CompressSpec, allowed_packages: Collection[str] | None = None, *,
                data_name: str | None = None, scratch_dir: str | Path | None = None
                ) -> tuple[nn.Module, zoo.ModelEntry, data_mod.Splits, data_mod.Preprocess, tuple[int, int, int]]:
    """Model (eval mode), its entry (``entry.source``: the plan's record), checked splits, preprocessing and the
    input shape. ``allowed_packages``: see ``pruning.intake.resolve``; ``data_name`` / ``scratch_dir``: see
    ``pruning.data.load_images`` (the file name messages show; where archives are extracted)."""
    resolved = intake.resolve(spec.model, allowed_packages)
    model, entry = resolved.module, resolved.entry
    num_classes = spec.model.num_classes or entry.num_classes
    source = data_mod.load_images(spec.data.path, name=data_name, scratch_dir=scratch_dir) if spec.data.path \
        else data_mod.digits_sample()
    size = spec.data.input_size or entry.input_shape[1:]
    input_shape = (entry.input_shape[0], int(size[0]), int(size[1]))
    shown = data_name or (Path(spec.data.path).name if spec.data.path else "the bundled sample")
    for part, label in ((source.train, f"{shown} (training images)"), (source.test, f"{shown} (test images)")):
        if part is not None:
            data_mod.check_fits_model(part, input_shape, num_classes, label=label,
                                      resize=spec.data.input_size is not None)
    splits = data_mod.make_splits(source, spec.data.calibration_images, spec.data.evaluation_images,
                                  spec.data.finetune_images, seed=spec.seed)
    preprocess = data_mod.Preprocess(spec.data.mean or entry.mean, spec.data.std or entry.std,
                                     tuple(size) if spec.data.input_size else None)
    if len(preprocess.mean) != input_shape[0] or len(preprocess.std) != input_shape[0]:
        raise SpecError(f"mean/std have {len(preprocess.mean)}/{len(preprocess.std)} values; the model takes "
                        f"{input_shape[0]} channels")
    entry = intake.verify(resolved, preprocess(splits.calibration.images[:intake.VERIFY_IMAGES])).entry
    return model, entry, splits, preprocess, input_shape


def compress(spec: CompressSpec, out_dir: str | Path | None = None, progress: Progress | None = None,
             should_stop: Callable[[], bool] | None = None,
             latency_probe: LatencyProbe | None = None,
             allowed_packages: Collection[str] | None = None, *, data_name: str | None = None,
             scratch_dir: str | Path | None = None, layer_latency: LayerLatency | None = None,
             inference: Inference | None = None) -> CompressResult:
    """Run the engine end to end; write ``plan.json`` and ``weights.pt`` to ``out_dir`` when given.

    With ``spec.prune.latency_budget_ms`` set, ``latency_probe`` measures candidate models on the target and the
    MACs reduction is searched (``allocate.search_latency_budget``); the probes are in ``result.latency_search``.
    With ``spec.prune.allocation`` "latency", ``layer_latency`` (``LayerShape -> ms`` on the latency target, e.g.
    ``pipeline.latency_table.LayerLatencyTable``) and ``latency_probe`` (the anchor, and the candidates' check)
    are both needed (``pruning.latency_alloc``).
    ``allowed_packages``: the top-level packages a ``python:`` architecture may come from (None = any).
    ``data_name``: the data file's name as its owner knows it (messages); ``scratch_dir``: where archives are
    extracted (default: the system's temporary folder). Label-coverage warnings go into ``result.notes``.
    ``inference``: runs the evaluations on the whole evaluation split (original, pruned, re-fitted, fine-tuned) in
    a faster form of each model, e.g. ``pipeline.onnx_inference`` (None: the modules themselves).
    """
    check_allocation(spec.prune)
    if spec.prune.latency_budget_ms is not None and latency_probe is None:
        raise SpecError("a latency budget needs a latency probe for the target (run it through the pipeline)")
    if spec.prune.allocation == "latency" and (latency_probe is None or layer_latency is None):
        raise SpecError("allocation 'latency' needs a per-layer latency table and a latency probe for the target "
                        "(run it through the pipeline)")
    spec, rounding_note = _resolve_round_to(spec)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    run = StageRunner(progress, should_stop)
    with run.stage("load"):
        original, entry, splits, preprocess, input_shape = load_inputs(spec, allowed_packages, data_name=data_name,
                                                                       scratch_dir=scratch_dir)
        num_classes = spec.model.num_classes or entry.num_classes
        coverage = data_mod.check_label_coverage(splits, num_classes)
        _validate_prune_spec(spec.prune)
        _validate_reconstruct_spec(spec.reconstruct)
        check_distillation(spec.finetune.distillation)
        check_settings(spec.finetune.lr, spec.finetune.alpha, spec.finetune.temperature)
        evaluate_split = split_evaluator(splits.evaluation, preprocess, spec.data.batch_size, input_shape, inference)
        base_cost = count_cost(original, input_shape)
        result = CompressResult(spec, original, original, PruningPlan(spec.model.arch, num_classes, input_shape,
                                                                      source=dict(entry.source)),
                                splits, preprocess, input_shape)
        result.notes.extend([rounding_note] if rounding_note else [])
        result.notes.extend(coverage)
        result.notes.extend(data_mod.split_notes(splits, spec.data.calibration_images, spec.data.evaluation_images,
                                                 not spec.finetune.budget().is_zero()))
        result.cost["original"] = base_cost
        result.accuracy["original"] = evaluate_split(original)
        run.emit("load", 1.0, f"original top-1 {result.accuracy['original'].top1:.2%}")

    calibration = [Batch(x, y, None) for x, y in data_mod.batches(splits.calibration, preprocess,
                                                                  spec.data.batch_size)]
    calibration = _attach_masks(calibration, splits.calibration, spec.data.batch_size)
    target = Target(spec.prune.target_metric, spec.prune.target_reduction)
    model = copy.deepcopy(original) if _removes_blocks(spec) else original    # scorers never modify their model
    removed_blocks = _prune_blocks(spec, run, result, original, model, entry, calibration, input_shape,
                                   num_classes, base_cost, target)

    protected = list(entry.protected(model)) + list(spec.prune.protected)
    _check_protected(model, spec.prune.protected)
    with run.stage("score"):
        graph = build_graph(model, input_shape)
        analysis = analyse_groups(model, input_shape, protected, graph=graph)
        groups = analysis.groups
        result.notes.extend(analysis.notes())
        if spec.prune.target_reduction > 0 and not groups and not removed_blocks:
            raise SpecError("nothing to prune: every layer is protected")
        scorer = create_criterion(spec.prune.criterion,
                                  **_with_normalisation(spec.prune.criterion, spec.prune.criterion_params, preprocess))
        if not scorer.scores_channels:     # a block criterion that took the whole target
            scorer = None
        if scorer is not None and groups:
            ctx = ScoringContext(model=model, groups=groups, blocks=[], batches=lambda: iter(calibration),
                                 input_shape=input_shape, num_classes=num_classes, seed=spec.seed,
                                 keep_fraction=1.0 - spec.prune.target_reduction, graph=graph)
            result.scores = scorer.score(ctx)
            if scorer.refit_window > 0:
                guide_by_refit(ctx, result.scores, scorer.refit_window)

    bypass = block_groups(groups, [b for b in entry.removable_blocks(model) if b not in removed_blocks]) \
        if offers_block_moves(spec.prune) else {}
    sensitivity_stage(spec, run, result, model, groups, calibration, base_cost.macs, bypass)
    with run.stage("allocate"):
        plan, target, measure = allocate_stage(spec, run, result, original, model, groups, removed_blocks,
                                               input_shape, base_cost, target, latency_probe, layer_latency, bypass)
        result.plan = plan

    with run.stage("prune"):
        pruned = result.model = prune_model(spec, result, original, groups, plan, measure, input_shape)
        result.layers = [{"layer": name, "kept": len(idx), "original": plan.original[name]}
                         for name, idx in plan.kept.items()]
        result.accuracy["pruned"] = evaluate_split(pruned)
        shown = "macs" if target.metric == "latency" else target.metric
        run.emit("prune", 1.0, f"{result.reduction(shown):.1%} {shown} removed, "
                                f"top-1 {result.accuracy['pruned'].top1:.2%}")

    reconstruct_stage(spec, run, result, original, pruned, groups, calibration, evaluate_split)
    _finetune_stage(spec, run, result, original, pruned, splits, preprocess, evaluate_split)

    with run.stage("save"):
        if out_dir is not None:
            result.files.update(save_compressed(pruned, plan, out_dir))
    result.timings = run.timings
    return result


def split_evaluator(images: data_mod.ImageSet, preprocess: data_mod.Preprocess, batch_size: int,
                    input_shape: tuple[int, int, int], inference: Inference | None = None
                    ) -> Callable[[nn.Module], Accuracy]:
    """``model -> Accuracy`` on all of ``images``: through ``inference(model, input_shape, len(images))`` when it
    gives a forward function, else the module itself."""
    def evaluate_split(model: nn.Module) -> Accuracy:
        forward = inference(model, input_shape, len(images)) if inference is not None else None
        return evaluate(model, data_mod.batches(images, preprocess, batch_size), forward)
    return evaluate_split


def _resolve_round_to(spec: CompressSpec) -> tuple[CompressSpec, str | None]:
    """``spec`` with ``prune.round_to`` None replaced by ``DEFAULT_ROUND_TO``, and a note saying so (None when set).

    ``pipeline.run`` resolves it first, by the job's targets and precision; this covers calls from Python.
    """
    if spec.prune.round_to is not None:
        return spec, None
    resolved = replace(spec, prune=replace(spec.prune, round_to=DEFAULT_ROUND_TO))
    return resolved, f"widths rounded to multiples of {DEFAULT_ROUND_TO} (round_to not set: the engine default)"


def _removes_blocks(spec: CompressSpec) -> bool:
    main = create_criterion(spec.prune.criterion, **dict(spec.prune.criterion_params))
    return main.kind == "block" or bool(spec.prune.layer_criterion)


def _with_normalisation(name: str, params: Mapping[str, Any], preprocess: data_mod.Preprocess) -> dict:
    """Criteria that draw images in input space (activation maximization) get the model's mean/std unless set."""
    from pruning.criteria.base import criterion_class

    params = dict(params)
    accepted = inspect.signature(criterion_class(name).__init__).parameters
    for key, value in (("mean", preprocess.mean), ("std", preprocess.std)):
        if key in accepted and key not in params:
            params[key] = tuple(value)
    return params


def _validate_reconstruct_spec(rec: ReconstructSpec) -> None:
    if not rec.max_memory_mb > 0:
        raise SpecError(f"reconstruct.max_memory_mb must be positive, got {rec.max_memory_mb}")
    if not 0.0 <= rec.ridge < math.inf:
        raise SpecError(f"reconstruct.ridge must be a finite number >= 0, got {rec.ridge}")
    if not rec.positions_per_image >= 1:
        raise SpecError(f"reconstruct.positions_per_image (--refit-positions) must be at least 1, "
                        f"got {rec.positions_per_image}")
    if rec.holdout < 0 or rec.holdout == 1:
        raise SpecError(f"reconstruct.holdout must be 0 (none) or >= 2 (every n-th image), got {rec.holdout}")
    if rec.scope not in ("consumers", "downstream"):
        raise SpecError(f"reconstruct.scope must be consumers or downstream, got {rec.scope!r}")
    if rec.batchnorm not in ("auto", "on", "off"):
        raise SpecError(f"reconstruct.batchnorm must be auto, on or off, got {rec.batchnorm!r}")


def _validate_prune_spec(prune: PruneSpec) -> None:
    if prune.latency_budget_ms is not None and prune.latency_budget_ms <= 0:
        raise SpecError("the latency budget must be a positive number of milliseconds")
    if not 0.0 <= prune.latency_margin < 0.5:
        raise SpecError(f"latency_margin must be in [0, 0.5), got {prune.latency_margin}")
    if prune.min_channels < 1:
        raise SpecError(f"min_channels (--min-channels) must be >= 1 (the fewest channels a layer keeps), got "
                        f"{prune.min_channels}")
    if prune.round_to is not None and prune.round_to < 1:
        raise SpecError("round_to must be >= 1 (1 = no rounding; None = automatic)")
    if prune.sensitivity_images is not None and not 1 <= prune.sensitivity_images <= MAX_SENSITIVITY_IMAGES:
        raise SpecError(f"sensitivity_images (--sensitivity-images) must be in [1, {MAX_SENSITIVITY_IMAGES}] (the "
                        f"calibration images the loss curves are measured on), got {prune.sensitivity_images}")
    main = create_criterion(prune.criterion, **dict(prune.criterion_params))  # unknown name / bad params: SpecError
    if prune.allocation == "latency" and main.kind == "block":
        raise SpecError(f"allocation 'latency' plans channel widths; {prune.criterion!r} removes whole blocks: "
                        "choose a channel criterion (e.g. l1)")
    if prune.layer_criterion:
        layer = create_criterion(prune.layer_criterion, **dict(prune.layer_criterion_params))
        if layer.kind != "block":
            raise SpecError(f"layer criterion {prune.layer_criterion!r} scores channels, not blocks")
    if not 0.0 <= prune.layer_share <= 1.0:
        raise SpecError("layer_share must be in [0, 1]")


def _check_protected(model: nn.Module, names: tuple[str, ...]) -> None:
    known = {n for n, _ in model.named_modules()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SpecError(f"protected layer(s) {', '.join(unknown)} not in the model")


def _attach_masks(calibration: list[Batch], data: data_mod.ImageSet, batch_size: int) -> list[Batch]:
    if data.masks is None:
        return calibration
    out = []
    for index, batch in enumerate(calibration):
        masks = torch.from_numpy(data.masks[index * batch_size:index * batch_size + len(batch.labels)]).long()
        out.append(Batch(batch.images, batch.labels, masks))
    return out


def _prune_blocks(spec: CompressSpec, run: StageRunner, result: CompressResult, original: nn.Module, model: nn.Module,
                  entry: zoo.ModelEntry, calibration: list[Batch], input_shape: tuple[int, int, int],
                  num_classes: int, base_cost: Cost, target: Target) -> list[str]:
    """Layer pruning (a block criterion alone, or first when combined); removes blocks from ``model``."""
    main = create_criterion(spec.prune.criterion, **dict(spec.prune.criterion_params))
    if main.kind == "block":
        block_scorer, share = main, main.depth_share
    elif spec.prune.layer_criterion:
        block_scorer = create_criterion(spec.prune.layer_criterion, **dict(spec.prune.layer_criterion_params))
        share = spec.prune.layer_share
    else:
        return []
    with run.stage("score_blocks"):
        blocks = entry.removable_blocks(model)
        if not blocks:
            raise SpecError(f"{spec.model.arch} has no shape-preserving blocks for layer pruning")
        ctx = ScoringContext(model=model, groups=[], blocks=blocks, batches=lambda: iter(calibration),
                             input_shape=input_shape, num_classes=num_classes, seed=spec.seed)
        result.block_scores = block_scorer.score(ctx)
        cost_model = CostModel(model, input_shape, base_cost.macs, base_cost.params)
        costs = {b: _block_cost(cost_model, b, target.metric) for b in blocks}
        budget = share * target.reduction * getattr(base_cost, target.metric)
        chosen = list(result.block_scores.remove_blocks) or allocate_blocks(
            result.block_scores.blocks, costs, budget)
        remove_blocks(model, chosen)
        run.emit("score_blocks", 1.0, f"removing {len(chosen)} block(s): {', '.join(chosen)}")
    return chosen


def _block_cost(cost_model: CostModel, block: str, metric: str) -> float:
    inside = [layer for layer in cost_model.layers if layer.name.startswith(block + ".")]
    removed = {}
    for layer in inside:
        removed[(layer.name, "out")] = layer.out
    return cost_model.cost(metric, {}) - cost_model.cost(metric, removed)


def _finetune_stage(spec: CompressSpec, run: StageRunner, result: CompressResult, original: nn.Module,
                    pruned: nn.Module, splits: data_mod.Splits, preprocess: data_mod.Preprocess,
                    evaluate_split: Callable[[nn.Module], Accuracy]) -> None:
    ft = spec.finetune
    if ft.budget().is_zero():
        return
    with run.stage("finetune"):
        pool = splits.finetune
        n_val = min(ft.validation_images, max(0, len(pool) // 5))
        val_set = pool.subset(slice(0, n_val)) if n_val else None
        train_set = pool.subset(slice(n_val, None)) if n_val else pool
        batches_per_epoch = max(1, -(-len(train_set) // ft.batch_size))

        def train_epoch(epoch: int):
            return data_mod.batches(train_set, preprocess, ft.batch_size, shuffle=True,
                                    seed=spec.seed * 1000 + epoch, augment=ft.augment)

        validate = evaluation_callback(lambda: data_mod.batches(val_set, preprocess, 500)) if val_set else None
        settings = FinetuneSettings(lr=ft.lr, temperature=ft.temperature, alpha=ft.alpha, loss=ft.distillation)
        result.finetune = finetune(pruned, original, train_epoch, batches_per_epoch, ft.batch_size, ft.budget(),
                                   settings, validate,
                                   progress=lambda f, m: run.emit("finetune", f, m), should_stop=run.should_stop,
                                   validation_images=len(val_set) if val_set else 0)
        if result.finetune.diverged_at is not None:
            kept = ("the weights from before fine-tuning" if result.finetune.returned == "the start"
                    else f"the weights of {result.finetune.returned}, the best validation check before it")
            result.warnings.append(
                f"fine-tuning diverged at step {result.finetune.diverged_at} ({result.finetune.diverged_why}) and "
                f"was stopped; the model keeps {kept}: lower the learning rate (--lr, {ft.lr:g} here)")
            run.emit("finetune", 1.0, result.warnings[-1])
        result.accuracy["finetuned"] = evaluate_split(pruned)
        run.emit("finetune", 1.0, f"top-1 {result.accuracy['finetuned'].top1:.2%}")


def save_compressed(model: nn.Module, plan: PruningPlan, out_dir: str | Path) -> dict[str, str]:
    """Write ``plan.json`` and weights-only ``weights.pt`` (atomically) and return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan_path, weights_path = out / "plan.json", out / "weights.pt"
    tmp_plan, tmp_weights = out / ".plan.json.tmp", out / ".weights.pt.tmp"
    plan.save(tmp_plan)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, tmp_weights)
    tmp_plan.replace(plan_path)
    tmp_weights.replace(weights_path)
    return {"plan": str(plan_path), "weights": str(weights_path)}
