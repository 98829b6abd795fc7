"""The zoo's registry of named architectures: a dict and a function that adds to it.

``register_model(ModelEntry(...))`` adds a builder under a name; ``list_models()`` / ``is_model()`` let the CLI
and the service validate names; ``create_model(name, num_classes)`` builds one. Each entry also says what input
it expects, which layers' output channels must not be pruned and which blocks layer pruning may remove. The
other sources (timm, Python entry points, ONNX) describe what they build with the same ``ModelEntry``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch.nn as nn

from pruning.errors import ModelError, clip

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SHAPE = (3, 224, 224)


def _nothing(model: nn.Module) -> list[str]:
    return []


@dataclass(frozen=True)
class ModelEntry:
    """What the engine needs to know about an architecture besides its modules."""

    name: str
    builder: Callable[[int], nn.Module]
    input_shape: tuple[int, int, int]             # C, H, W the weights were trained with
    num_classes: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    # Module names whose *output* channels stay whole (besides the classifier, which always does).
    protected: Callable[[nn.Module], list[str]] = field(default=_nothing)
    # Blocks that map a tensor to one of the same shape and may be replaced by the identity.
    removable_blocks: Callable[[nn.Module], list[str]] = field(default=_nothing)
    description: str = ""
    # Where the model came from, as JSON-able data for the plan (``pruning.intake`` fills it; empty in the zoo).
    source: Mapping[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def is_model(name: str) -> bool:
    return name in _REGISTRY


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = [n for n in _REGISTRY if name.split("/")[-1] in n]
        hint = f" Did you mean {', '.join(close[:3])}?" if close else ""
        raise ModelError(f"unknown architecture {clip(name, 120)!r}.{hint} Known: {', '.join(list_models())}; "
                         "or bring your own: timm/NAME, python:PACKAGE.MODULE:FACTORY, or an ONNX file") from None


def create_model(name: str, num_classes: int | None = None) -> nn.Module:
    entry = get_entry(name)
    return entry.builder(num_classes or entry.num_classes)
