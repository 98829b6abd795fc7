"""Export to ONNX and verify it: parity with PyTorch on evaluation images (the job fails above the tolerance),
then the exported model's own top-1 on the evaluation split."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pipeline.spec import ExportSpec
from pruning import data as data_mod
from pruning.compress import CompressResult, ProgressEvent
from pruning.errors import InterpruneError, clip
from pruning.measure import Accuracy


PARITY_RTOL = 1e-3      # max abs error / largest PyTorch output: float32 noise is ~1e-6; a wrong export is ~1


class ExportCheckFailed(InterpruneError):
    """The exported model does not reproduce the PyTorch model within the tolerance."""


def export_and_verify(export: ExportSpec, result: CompressResult, out: Path, emit,
                      evaluated: tuple[str, Accuracy] | None = None) -> tuple[dict[str, Any], float]:
    """Write ``model.onnx``, check parity and evaluate it; sets ``result.accuracy["exported"]``. Returns the report's
    ``export`` section and the seconds it took.

    ``evaluated``: ``(sha256, accuracy)`` of an ONNX file already run in ONNX Runtime on the whole evaluation split
    (``pipeline.onnx_inference``); when ``model.onnx`` has the same bytes that figure is its accuracy (the section's
    ``accuracy_from`` says so) and the file is not run again."""
    from exporters import check_parity, evaluate_onnx, export_onnx

    emit(ProgressEvent("export", 0.0, "exporting to ONNX"))
    start = time.perf_counter()
    with export_checks():
        onnx_export = export_onnx(result.model, out / "model.onnx", torch.zeros(1, *result.input_shape),
                                  opset=export.opset, slim=export.slim)
        probe = result.preprocess(result.splits.evaluation.images[:export.parity_images])
        parity = check_parity(onnx_export.path, result.model, probe)
    section = {"onnx": _plain(onnx_export), "parity": _plain(parity), "parity_atol": export.parity_atol}
    section["onnx"]["path"] = Path(onnx_export.path).name   # beside report.json: ``out`` may be a staging folder
    section["parity_rtol"] = PARITY_RTOL
    if not parity_ok(parity.max_abs_error, export.parity_atol, parity.max_rel_error):
        raise ExportCheckFailed(f"ONNX Runtime differs from PyTorch by {parity.max_abs_error:.2e} (max abs; "
                                f"{parity.max_rel_error:.2e} of the largest output) on {parity.num_inputs} "
                                f"evaluation images, above the tolerance {export.parity_atol:.0e} "
                                f"(relative {PARITY_RTOL:.0e})")
    if evaluated is not None and evaluated[0] == onnx_export.sha256:
        result.accuracy["exported"] = evaluated[1]
        section["accuracy_from"] = "the same ONNX bytes (sha256) run on the evaluation split by the engine"
    else:
        emit(ProgressEvent("export", 0.5, f"parity max abs error {parity.max_abs_error:.1e}; evaluating ONNX"))
        with export_checks():
            accuracy = evaluate_onnx(onnx_export.path, _numpy_batches(result))
        result.accuracy["exported"] = Accuracy(accuracy.top1, accuracy.top5, accuracy.num_images)
        section["accuracy_from"] = "model.onnx run on the evaluation split"
    accuracy = result.accuracy["exported"]
    emit(ProgressEvent("export", 1.0, f"exported top-1 {accuracy.top1:.2%}"))
    return section, time.perf_counter() - start


def parity_ok(max_abs_error: float, tolerance: float, max_rel_error: float = 0.0) -> bool:
    """True only when both errors are numbers within their tolerances: a NaN error fails (``NaN <= tol`` is False).

    ``max_rel_error`` (the max abs error over the largest PyTorch output) must stay within ``PARITY_RTOL`` too: a
    model whose outputs are all tiny (an untrained head: logits ~1e-9) passes any absolute tolerance however wrong
    the export is."""
    return max_abs_error <= tolerance and max_rel_error <= PARITY_RTOL


@contextmanager
def export_checks():
    """The exporters' own failures (``ExportError``: the export, its checker, parity, non-finite outputs) as
    ``ExportCheckFailed``, the job failure the service reports as EXPORT_CHECK."""
    from exporters import ExportError

    try:
        yield
    except ExportError as exc:
        raise ExportCheckFailed(f"{type(exc).__name__}: {clip(exc, 1000)}") from None


def _plain(obj) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(obj).items()}


def _numpy_batches(result: CompressResult, batch_size: int = 500):
    for images, labels in data_mod.batches(result.splits.evaluation, result.preprocess, batch_size):
        yield images.numpy(), labels.numpy()
