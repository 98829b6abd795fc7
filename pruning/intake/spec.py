"""What the caller asks for (``ModelSpec``) and what intake hands back (``ResolvedModel``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch.nn as nn

from pruning.intake.catalog import ModelEntry

ONNX_ARCH = "onnx"


@dataclass(frozen=True)
class ModelSpec:
    arch: str                               # a zoo name ("cifar/resnet56"), "timm/NAME", "python:PKG.MODULE:FACTORY",
                                            # or "onnx" (then model_file is the model)
    weights: str | None = None              # weights-only checkpoint (.pt/.pth/.th or .safetensors); None = the
                                            # architecture's random init (an ONNX model carries its own)
    num_classes: int | None = None          # default: the architecture's (python:/timm/: passed as num_classes=)
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)   # JSON-able keyword arguments of the factory
                                                                   # (python:, timm/); recorded in the plan
    input_shape: tuple[int, int, int] | None = None   # C, H, W the weights were trained with; None = the
                                            # architecture's (zoo entry, the factory's pretrained_cfg, the ONNX
                                            # input), else 3x224x224. Mean/std: DataSpec, else the same sources.
    model_file: str | None = None           # arch "onnx": the .onnx file (architecture and weights)

    def __post_init__(self) -> None:        # JSON round trips turn tuples into lists
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        object.__setattr__(self, "arch_kwargs", dict(self.arch_kwargs or {}))


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready for the pipeline: the module (eval mode, weights loaded) and what the engine needs to know."""

    module: nn.Module
    entry: ModelEntry                       # input_shape, num_classes, mean, std, protected, removable_blocks, source
    reference: Path | None = None           # a file the module must reproduce (the ONNX it was converted from);
                                            # ``pruning.intake.verify`` compares the two

    @property
    def source(self) -> dict:
        """How the architecture was obtained, as JSON-able data (``PruningPlan.source``)."""
        return dict(self.entry.source)
