"""The intake pipeline: pick the source for a spec, build and describe the model, check it, rebuild it later.

- ``check_spec``: cheap validation for submit time (syntax, the package allow-list, files exist); imports
  nothing the user named.
- ``resolve``: the model in eval mode with its weights, and its ``ModelEntry`` (with ``source``, the record the
  plan keeps).
- ``verify``: for a converted model (ONNX), compare it with ONNX Runtime on real images; the numbers join the
  source record.
- ``rebuild``: from a plan alone (plus the ONNX file for ONNX plans), the unpruned architecture again.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Collection

import torch
import torch.nn as nn

from pruning.errors import ModelError, SpecError
from pruning.finite import check_finite_state_dict
from pruning.intake.onnx_check import CONVERSION_RTOL, check_conversion
from pruning.intake.sources import get_source, source_for
from pruning.intake.spec import ModelSpec, ResolvedModel
from pruning.plan import PruningPlan

VERIFY_IMAGES = 8


def check_spec(spec: ModelSpec, allowed_packages: Collection[str] | None = None) -> str:
    """Raise ``SpecError`` / ``ModelError`` for what can be told without building; return the source kind."""
    source = _source(spec)
    source.check(spec, allowed_packages)
    return source.kind


def _source(spec: ModelSpec):
    """The source that builds ``spec``; ``SpecError`` for external data files given to a model that is not ONNX."""
    source = source_for(spec.arch)
    if spec.external_data and source.kind != "onnx":
        raise SpecError("external_data is only read for arch 'onnx' (the files an ONNX model keeps its weights in)")
    return source


def resolve(spec: ModelSpec, allowed_packages: Collection[str] | None = None) -> ResolvedModel:
    """Build the model ``spec`` names, load its weights and describe it.

    ``allowed_packages``: top-level packages a ``python:`` entry point may come from (None = any; a server passes
    its ``--allow-model-package`` set). For ONNX models call ``verify`` next, with real images. A model file whose
    own weights (ONNX initializers) hold NaN/inf is refused (``ModelError``); weights files are checked on reading.
    """
    resolved = _source(spec).resolve(spec, allowed_packages)
    if spec.model_file:
        check_finite_state_dict(resolved.module.state_dict(), Path(spec.model_file).name)
    return resolved


def verify(resolved: ResolvedModel, images: torch.Tensor, rtol: float = CONVERSION_RTOL) -> ResolvedModel:
    """Check a converted model against its reference file on ``images`` (no-op without one).

    Raises ``ModelError`` naming ``rtol`` when they disagree; otherwise the errors are added to the source record
    as ``conversion_check``.
    """
    if resolved.reference is None:
        return resolved
    check = check_conversion(resolved.reference, resolved.module, images[:VERIFY_IMAGES], rtol)
    entry = replace(resolved.entry, source={**resolved.entry.source, "conversion_check": check.to_dict()})
    return replace(resolved, entry=entry)


def rebuild(plan: PruningPlan, *, allowed_packages: Collection[str] | None = None,
            model_file: str | None = None) -> nn.Module:
    """The architecture ``plan`` was made from, unpruned (random init; an ONNX model's own weights).

    Plans written before sources were recorded name a zoo architecture in ``plan.arch``.
    """
    record = dict(plan.source) or {"kind": "zoo", "arch": plan.arch}
    if "arch" not in record:
        raise ModelError(f"malformed plan: its source record {record} names no architecture")
    return get_source(str(record.get("kind"))).rebuild(record, plan.num_classes, allowed_packages=allowed_packages,
                                                       model_file=model_file)
