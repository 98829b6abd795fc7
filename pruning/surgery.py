"""Structural surgery through Torch-Pruning's dependency graph.

- ``channel_groups``: the prunable channel groups of a model (residual adds, concatenations, depthwise and grouped
  convolutions kept consistent by the graph), minus the classifier and protected layers.
- ``apply_plan``: remove blocks, then the channels a ``PruningPlan`` drops, in place.
- ``load_compressed``: rebuild the base architecture, replay the plan, load weights-only tensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Collection

import torch
import torch.nn as nn
import torch_pruning as tp

from pruning import intake
from pruning.criteria.base import ChannelGroup
from pruning.errors import ModelError
from pruning.plan import PruningPlan

_WIDTH_MODULES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm)


def build_graph(model: nn.Module, input_shape: tuple[int, int, int]) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape))


def classifier_layers(model: nn.Module) -> list[str]:
    """The last Linear (or 1x1 conv producing the logits) — its outputs are the classes and never pruned."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = name
    return [last] if last else []


def channel_groups(model: nn.Module, input_shape: tuple[int, int, int], protected: list[str] = (),
                   graph: tp.DependencyGraph | None = None) -> list[ChannelGroup]:
    """Every group of coupled channels whose root is a conv or linear not in ``protected`` (nor the classifier).

    A group that touches a protected layer's output channels is excluded as a whole (e.g. the residual channels
    of an option-A CIFAR ResNet stage).
    """
    graph = graph or build_graph(model, input_shape)
    names = {module: name for name, module in model.named_modules()}
    blocked = set(protected) | set(classifier_layers(model))
    ignored = [model.get_submodule(n) for n in blocked]
    groups = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
        root_dep = group[0].dep
        root = root_dep.target.module
        members, consumers = [], []
        touches_protected = False
        for item in group:
            module = item.dep.target.module
            if not isinstance(module, _WIDTH_MODULES) or module not in names:
                continue
            side = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
            member = (names[module], side)
            if member in members:
                continue
            members.append(member)
            if side == "out" and names[module] in blocked:
                touches_protected = True
            if side == "in" and isinstance(module, (nn.Conv2d, nn.Linear)) and not _is_depthwise(module):
                consumers.append(names[module])
        if touches_protected or root not in names:
            continue
        size = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        groups.append(ChannelGroup(names[root], size, tuple(members), tuple(consumers)))
    return groups


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


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
        group = graph.get_pruning_group(module, fn, idxs=removed)
        group.prune()
    return model


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
