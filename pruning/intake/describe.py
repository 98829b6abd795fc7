"""Describe a model built by a factory (timm, a Python entry point): input shape, classes, normalisation.

Precedence: the spec, then the model's ``pretrained_cfg`` (or ``default_cfg``) dict, then the factory's, then
the defaults (3x224x224, ImageNet mean/std). ``pretrained_cfg`` is timm's convention, also open to a team's own
factory: ``{"input_size": (3, 32, 32), "mean": (...), "std": (...)}``. The class count is what the model
outputs: one forward pass on zeros, which also proves the model accepts the input shape.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from pruning.errors import ModelError, SpecError
from pruning.intake.catalog import DEFAULT_INPUT_SHAPE, IMAGENET_MEAN, IMAGENET_STD, ModelEntry

CFG_ATTRIBUTES = ("pretrained_cfg", "default_cfg")


def read_cfg(*objects: object) -> dict[str, Any]:
    """The first ``pretrained_cfg`` / ``default_cfg`` dict found on ``objects`` (in order), else {}."""
    for obj in objects:
        for attribute in CFG_ATTRIBUTES:
            cfg = getattr(obj, attribute, None)
            if isinstance(cfg, Mapping) and cfg:
                return dict(cfg)
    return {}


def input_shape_of(spec_shape: tuple[int, ...] | None, cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    """C, H, W from the spec, else ``cfg["input_size"]``, else 3x224x224."""
    shape = spec_shape or cfg.get("input_size") or DEFAULT_INPUT_SHAPE
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise SpecError(f"input shape must be C, H, W with positive sizes, got {list(shape)}")
    return shape  # type: ignore[return-value]


def normalisation_of(cfg: Mapping[str, Any], channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from ``cfg``, else ImageNet's (3 channels) or 0.5 per channel."""
    default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,) * channels,) * 2
    mean = tuple(float(v) for v in cfg.get("mean") or default_mean)
    std = tuple(float(v) for v in cfg.get("std") or default_std)
    if len(mean) != channels or len(std) != channels:
        return default_mean, default_std
    return mean, std


@torch.no_grad()
def probe_num_classes(model: nn.Module, input_shape: tuple[int, int, int], label: str) -> int:
    """The width of the model's output for one zero image; it must be logits [1, classes]."""
    try:
        out = model.eval()(torch.zeros(1, *input_shape))
    except Exception as exc:  # noqa: BLE001 - any failure means the model does not take this input
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ModelError(f"{label} does not run on a {'x'.join(map(str, input_shape))} input "
                         f"({type(exc).__name__}: {first}); set the input shape it was trained with") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        what = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{label} returns {what}; interprune prunes classifiers that return logits [N, classes]")
    return int(out.shape[1])


def describe(name: str, model: nn.Module, spec_shape: tuple[int, ...] | None, num_classes: int | None,
             source: Mapping[str, Any], cfg: Mapping[str, Any], builder: Callable[[int], nn.Module] | None = None,
             description: str = "") -> ModelEntry:
    """A ``ModelEntry`` for a built model; checks that it outputs ``num_classes`` logits when that is given.

    ``builder(num_classes)`` builds the architecture again (random init); None = not rebuildable that way.
    """
    input_shape = input_shape_of(spec_shape, cfg)
    classes = probe_num_classes(model, input_shape, name)
    if num_classes is not None and classes != num_classes:
        raise ModelError(f"{name} outputs {classes} classes, not the {num_classes} asked for")
    mean, std = normalisation_of(cfg, input_shape[0])
    return ModelEntry(name=name, builder=builder or _no_builder(name), input_shape=input_shape, num_classes=classes,
                      mean=mean, std=std, description=description, source=dict(source))


def _no_builder(name: str):
    def build(num_classes: int) -> nn.Module:
        raise ModelError(f"{name} is not a zoo name; build it with pruning.intake.resolve")
    return build
