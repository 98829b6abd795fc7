"""One job in a straight line: resolve the spec -> compress -> export and verify -> measure -> build the complete
report (gate included) -> write.

Used in-process by ``interprune compress`` and by the service's worker processes. Output folder::

    plan.json  weights.pt  model.onnx  original.onnx  report.json  report.html  visualizations/*.png

The engine's evaluations on the whole evaluation split run in ONNX Runtime (``pipeline.onnx_inference``).
Engine errors (``pruning.errors.InterpruneError``) pass through unchanged; an export whose ONNX Runtime output
differs from PyTorch by more than ``parity_atol`` (or ``pipeline.export.PARITY_RTOL`` of its largest output) fails
the job (``ExportCheckFailed``). ``should_stop`` is polled between stages and inside the engine's loops
(cooperative cancel).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, Collection

from pipeline.benchmark import Measurements, RemoteTargetsFactory, benchmark_targets, latency_probe
from pipeline.export import ExportCheckFailed, export_and_verify, export_checks
from pipeline.latency_table import LayerLatencyTable
from pipeline.onnx_inference import OnnxRuntimeInference
from pipeline.report import build_report, write_reports
from pipeline.resolve import measures_latency, resolve_spec
from pipeline.spec import JobSpec
from pruning.compress import ProgressEvent, compress
from pruning.errors import Cancelled

__all__ = ["ExportCheckFailed", "run_pipeline"]


def run_pipeline(spec: JobSpec, out_dir: str | Path, progress: Callable[[ProgressEvent], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 remote_targets: RemoteTargetsFactory | None = None, *,
                 allowed_packages: Collection[str] | None = None, data_name: str | None = None,
                 scratch_dir: str | Path | None = None) -> dict:
    """Run the whole job into ``out_dir`` and return the report (also written as ``report.json``).

    ``remote_targets`` opens the job's device-agent targets (``agent:NAME``); without it they record an error.
    ``allowed_packages``: the packages a ``python:`` architecture may come from (None = any importable one).
    ``data_name`` / ``scratch_dir``: the data file's name for messages and where archives are extracted (the
    service passes the uploaded file's name and the job's work folder). An exporter's own failure
    (``exporters.ExportError``, e.g. non-finite outputs) ends the job as ``ExportCheckFailed``."""
    with export_checks():
        return _run(spec, Path(out_dir), progress, should_stop, remote_targets, allowed_packages, data_name,
                    scratch_dir)


def _run(spec: JobSpec, out: Path, progress, should_stop, remote_targets, allowed_packages, data_name,
         scratch_dir) -> dict:
    from exporters import environment

    out.mkdir(parents=True, exist_ok=True)
    emit = progress or (lambda event: None)
    spec, notes = resolve_spec(spec)
    prune, bench = spec.compress.prune, spec.benchmark
    probe = latency_probe(prune.latency_target, bench.threads, out, bench.seconds_per_batch) \
        if measures_latency(prune) else None
    table = LayerLatencyTable(prune.latency_target, bench.threads, scratch=out / ".latency-table") \
        if prune.allocation == "latency" else None
    inference_notes: list[str] = []
    inference = OnnxRuntimeInference(out, inference_notes, opset=spec.export.opset, slim=spec.export.slim)
    try:
        result = compress(spec.compress, out, progress, should_stop, latency_probe=probe,
                          allowed_packages=allowed_packages, data_name=data_name, scratch_dir=scratch_dir,
                          layer_latency=table, inference=inference)
    finally:
        shutil.rmtree(out / ".latency-table", ignore_errors=True)
    result.notes.extend(inference_notes)
    if table is not None:
        result.notes.append(f"latency table on {prune.latency_target}: {table.measurements} shape(s) measured in "
                            f"{table.measure_seconds:.0f} s, the rest from the cache {table.path}")
    result.notes[:0] = notes
    timings = dict(result.timings)
    exported: dict = {}
    if spec.export.onnx:
        _check_stop(should_stop)
        exported, timings["export"] = export_and_verify(spec.export, result, out, emit,
                                                        inference.evaluated(result.final_accuracy))
    measured = Measurements()
    if spec.export.onnx and bench.targets:
        start = time.perf_counter()
        measured = benchmark_targets(spec, result, out, emit, should_stop, remote_targets)
        timings["benchmark"] = time.perf_counter() - start
    report = build_report(spec, result, exported, measured, timings, environment())
    write_reports(report, out, result)
    return report


def _check_stop(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled("job cancelled")
