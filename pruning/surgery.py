"""Structural surgery through Torch-Pruning's dependency graph.

- ``channel_groups`` / ``analyse_groups``: the prunable channel groups of a model (residual adds, concatenations,
  depthwise and grouped convolutions kept consistent by the graph, each mapping verified by ``pruning.coupling``),
  minus the classifier and protected layers; ``analyse_groups`` also says which groups stay whole and why.
- ``apply_plan``: remove blocks, then the channels a ``PruningPlan`` drops, in place.
- ``kept_outputs``: the original output channels a layer keeps under a plan (for reconstruction targets).
- ``load_compressed``: rebuild the base architecture, replay the plan, load weights-only tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection

import torch
import torch.nn as nn
import torch_pruning as tp

from pruning import coupling, intake
from pruning.criteria.base import ChannelGroup
from pruning.errors import EngineError, ModelError
from pruning.plan import PruningPlan
from pruning.tp_compat import build_graph

__all__ = ["GroupAnalysis", "analyse_groups", "apply_plan", "build_graph", "channel_groups", "check_consistent",
           "classifier_layers", "kept_outputs", "load_compressed", "remove_blocks"]


def classifier_layers(model: nn.Module, graph: tp.DependencyGraph | None = None) -> list[str]:
    """The layers producing the model output (the logits) — their outputs are the classes and never pruned.

    With ``graph``: every conv / linear whose output reaches the model output through parameter-free ops. Without
    (or if none is found): the last conv / linear in module order.
    """
    if graph is not None:
        found = coupling.output_layers(model, graph)
        if found:
            return found
    last = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = name
    return [last] if last else []


@dataclass
class GroupAnalysis:
    groups: list[ChannelGroup]
    excluded: dict[str, str] = field(default_factory=dict)      # root layer -> why its channels stay whole
    unverified: str | None = None                               # why the couplings could not be traced, if so

    def notes(self, limit: int = 3) -> list[str]:
        """One line per kind of reason (roots abbreviated, one example), for the report."""
        by_kind: dict[str, list[str]] = {}
        for root, why in self.excluded.items():
            by_kind.setdefault(why.split(": ")[0], []).append(root)
        lines = []
        for kind, roots in by_kind.items():
            more = f" and {len(roots) - limit} more" if len(roots) > limit else ""
            detail = self.excluded[roots[0]].partition(": ")[2]
            lines.append(f"channels of {', '.join(roots[:limit])}{more} left unpruned: {kind} (e.g. {roots[0]}: "
                         f"{detail})")
        return lines + ([self.unverified] if self.unverified else [])


def channel_groups(model: nn.Module, input_shape: tuple[int, int, int], protected: list[str] = (),
                   graph: tp.DependencyGraph | None = None) -> list[ChannelGroup]:
    """Every verified group of coupled channels whose root is a conv or linear not protected (see ``analyse_groups``)."""
    return analyse_groups(model, input_shape, protected, graph).groups


def analyse_groups(model: nn.Module, input_shape: tuple[int, int, int], protected: list[str] = (),
                   graph: tp.DependencyGraph | None = None) -> GroupAnalysis:
    """Prunable channel groups, and the ones left whole with the reason (``pruning.coupling`` checks each).

    A group that touches a protected layer's (or the classifier's) output channels is skipped as a whole (e.g. the
    residual channels of an option-A CIFAR ResNet stage); one whose mapping fails the trace, or whose grouped
    convolutions cannot shrink uniformly, is excluded with the reason.
    """
    graph = graph or build_graph(model, input_shape)
    names = {module: name for name, module in model.named_modules()}
    blocked = set(protected) | set(classifier_layers(model, graph))
    analysis = GroupAnalysis([])
    cands: list[tuple[coupling.Candidate, int]] = []
    for root, group in _tp_groups(model, graph, blocked, analysis.excluded):
        cand = coupling.describe(group, graph, model, names)
        blocks, why = coupling.interleave(model, cand)
        if why:
            analysis.excluded[cand.root] = why
        else:
            cands.append((cand, blocks))
    mismatched = coupling.trace_mismatches(model, input_shape, [c for c, _ in cands])
    analysis.unverified = mismatched.pop("*", None)
    for cand, blocks in cands:
        if cand.root in mismatched:
            analysis.excluded[cand.root] = mismatched[cand.root]
            continue
        analysis.groups.append(ChannelGroup(cand.root, cand.size, tuple(cand.members), tuple(cand.consumers),
                                            blocks, tuple(cand.channel_map)))
    return analysis


def _tp_groups(model: nn.Module, graph: tp.DependencyGraph, blocked: set[str], excluded: dict[str, str]):
    """(root name, Torch-Pruning group) for every conv / linear root, as ``get_all_groups`` but failing per group."""
    names = {module: name for name, module in model.named_modules()}
    ignored = {model.get_submodule(n) for n in blocked} | set(graph.IGNORED_LAYERS_IN_TRACING)
    visited: set[nn.Module] = set()
    for module in list(graph.module2node):
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or module in ignored or module in visited \
                or module not in names:
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        try:
            group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                            list(range(pruner.get_out_channels(module))))
        except Exception as exc:  # noqa: BLE001 - Torch-Pruning's own failure: this group stays whole
            excluded[names[module]] = f"Torch-Pruning cannot couple its channels: {type(exc).__name__}: {exc}"
            continue
        outs = [item.dep.target.module for item in group if graph.is_out_channel_pruning_fn(item.dep.handler)]
        visited.update(outs)
        if any(o in ignored for o in outs):
            continue
        yield names[module], group


def kept_outputs(model: nn.Module, groups: list[ChannelGroup], plan: PruningPlan,
                 layers: list[str]) -> dict[str, list[int]]:
    """For each of ``layers`` whose output channels the plan prunes: the original indices it keeps."""
    removed: dict[str, set[int]] = {}
    for group in groups:
        if group.name not in plan.kept:
            continue
        gone = plan.removed(group.name)
        for index, (member, side) in enumerate(group.members):
            if side == "out" and member in layers and gone:
                removed.setdefault(member, set()).update(group.member_channels(index, gone))
    out = {}
    for name, gone in removed.items():
        module = model.get_submodule(name)
        width = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        out[name] = [i for i in range(width) if i not in gone]
    return out


def layers_after(model: nn.Module, block: str, count: int = 1) -> list[str]:
    """The first ``count`` conv / linear layers (module order) after ``block`` of ``model`` (not inside it)."""
    names = [n for n, _ in model.named_modules()]
    if block not in names:
        return []
    layers = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    after = names[names.index(block) + 1:]
    return [n for n in after if n in layers and not n.startswith(block + ".")][:count]


def remove_blocks(model: nn.Module, names: list[str]) -> None:
    """Replace each named block by ``nn.Identity`` (the caller checks they preserve shape)."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if not hasattr(parent, child):
            raise ModelError(f"plan removes block {name!r}, which this model does not have")
        setattr(parent, child, nn.Identity())


def apply_plan(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Apply ``plan`` to ``model`` in place (blocks first, then channels) and return it."""
    remove_blocks(model, plan.removed_blocks)
    if not plan.kept:
        return model
    graph = build_graph(model, plan.input_shape)
    for name, kept in plan.kept.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ModelError(f"plan prunes layer {name!r}, which this model does not have") from None
        size = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        if size != plan.original[name]:
            raise ModelError(f"plan expects {name} to have {plan.original[name]} channels, it has {size}")
        removed = plan.removed(name)
        if not removed:
            continue
        fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
        try:
            graph.get_pruning_group(module, fn, idxs=removed).prune()
        except Exception as exc:  # noqa: BLE001 - a Torch-Pruning failure on this layer: name it
            raise EngineError(f"pruning {len(removed)} channel(s) of {name} failed in Torch-Pruning: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    check_consistent(model, plan.input_shape)
    return model


def check_consistent(model: nn.Module, input_shape: tuple[int, int, int]) -> None:
    """``EngineError`` naming the layer if the pruned model is no longer a valid network (a grouped conv whose
    widths do not split into its groups, a forward pass that fails)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and (module.in_channels % module.groups or module.out_channels % module.groups
                                              or module.weight.shape[1] * module.groups != module.in_channels):
            raise EngineError(f"pruning left {name} with {module.in_channels} input / {module.out_channels} output "
                              f"channels for {module.groups} groups (weight {tuple(module.weight.shape)})")
    current: list[str] = []
    handles = [m.register_forward_pre_hook(lambda m, i, n=n: current.append(n))
               for n, m in model.named_modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    except RuntimeError as exc:
        where = current[-1] if current else "the model"
        raise EngineError(f"the pruned model fails at {where}: {str(exc).splitlines()[0][:300]}; a forward that "
                          "assumes a channel count (a reshape or view to a fixed size) breaks when the layer it reads "
                          "loses channels: keep that layer's width with --protect LAYER "
                          "(spec.prune.protected_layers)") from exc
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def load_compressed(plan_path: str | Path, weights_path: str | Path, *, model_file: str | Path | None = None,
                    allowed_packages: Collection[str] | None = None) -> nn.Module:
    """Rebuild a compressed model from ``plan.json`` + ``weights.pt`` (weights-only), in eval mode.

    The base architecture comes from the plan's source record (``pruning.intake.rebuild``): a zoo name, timm, or a
    ``python:`` factory (imported; ``allowed_packages`` as in ``intake.resolve``). A plan made from an ONNX model
    needs that file again as ``model_file`` (checked against the recorded sha256).
    """
    plan = PruningPlan.load(plan_path)
    base = intake.rebuild(plan, allowed_packages=allowed_packages, model_file=str(model_file) if model_file else None)
    model = apply_plan(base, plan)
    intake.load_weights(model, intake.read_state_dict(weights_path), label=f"weights {Path(weights_path).name}")
    return model.eval()
