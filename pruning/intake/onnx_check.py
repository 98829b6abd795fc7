"""Does the converted module compute what the ONNX file computes? ONNX Runtime (CPU) is the reference.

``relative_error`` is pure (the norm-wise relative error of ``exporters.onnx.Parity``: the largest absolute
difference over the largest reference magnitude); ``check_conversion`` runs both on real images and raises
``ModelError`` naming the tolerance when they disagree.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from pruning.errors import ModelError

CONVERSION_RTOL = 1e-3          # float32 reorderings stay near 1e-6; a wrong conversion is off by far more
REL_ERROR_FLOOR = 1e-6


@dataclass(frozen=True)
class ConversionCheck:
    max_abs_error: float
    max_rel_error: float
    num_inputs: int
    rtol: float

    def to_dict(self) -> dict:
        return asdict(self)


def relative_error(reference: np.ndarray, converted: np.ndarray) -> tuple[float, float]:
    """(max |converted - reference|, that over max(max |reference|, 1e-6))."""
    if reference.shape != converted.shape:
        raise ModelError(f"the converted model outputs {converted.shape}, ONNX Runtime {reference.shape}")
    diff = np.abs(converted.astype(np.float64) - reference.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = max(float(np.abs(reference).max()) if reference.size else 0.0, REL_ERROR_FLOOR)
    return max_abs, max_abs / scale


def run_reference(path: Path, images: np.ndarray) -> np.ndarray:
    """ONNX Runtime's outputs for ``images`` [N, C, H, W] (one by one when the file fixes the batch size)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    batch = feed.shape[0] if isinstance(feed.shape[0], int) and feed.shape[0] > 0 else len(images)
    try:
        chunks = [session.run(None, {feed.name: images[i:i + batch]})[0] for i in range(0, len(images), batch)]
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidArgument types
        first = (str(exc).splitlines() or [""])[0][:300]
        raise ModelError(f"ONNX Runtime cannot run {path.name} on inputs of shape {list(images.shape[1:])} "
                         f"({first}); give the input size the model was exported with") from None
    return np.concatenate(chunks)


@torch.no_grad()
def check_conversion(path: Path, module: nn.Module, images: torch.Tensor,
                     rtol: float = CONVERSION_RTOL) -> ConversionCheck:
    """Compare ``module`` with ONNX Runtime on ``images``; raise ``ModelError`` when the relative error > rtol."""
    data = np.ascontiguousarray(images.detach().cpu().float().numpy())
    reference = run_reference(path, data)
    converted = module.eval()(torch.from_numpy(data)).numpy()
    max_abs, max_rel = relative_error(reference, converted)
    check = ConversionCheck(max_abs, max_rel, len(data), rtol)
    if not max_rel <= rtol:                                            # also catches NaN
        raise ModelError(f"the PyTorch conversion of {path.name} does not match ONNX Runtime: max relative error "
                         f"{max_rel:.3g} exceeds the tolerance rtol={rtol:g} (max abs error {max_abs:.3g} over "
                         f"{len(data)} images); the model uses an operator onnx2torch converts differently")
    return check
