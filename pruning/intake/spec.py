"""What the caller asks for (``ModelSpec``) and what intake hands back (``ResolvedModel``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from pruning.intake.catalog import ModelEntry
from pruning.spec import ONNX_ARCH, ModelSpec  # noqa: F401 - re-exported: the spec lives in pruning.spec

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
