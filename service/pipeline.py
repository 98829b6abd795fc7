"""One job: compress with the engine, export to ONNX, verify, benchmark on each target, write the report.

Used in-process by ``interprune compress`` and by the service's worker processes. Output folder::

    plan.json  weights.pt  model.onnx  original.onnx  report.json  report.html  visualizations/*.png

Engine errors (``pruning.errors.InterpruneError``) pass through unchanged; an export whose ONNX Runtime output
differs from PyTorch by more than ``parity_atol`` fails the job (``ExportCheckFailed``).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pruning import data as data_mod
from pruning.compress import (CompressResult, CompressSpec, DataSpec, FinetuneSpec, ModelSpec, ProgressEvent,
                              PruneSpec, ReconstructSpec, compress)
from pruning.errors import InterpruneError, SpecError
from pruning.measure import Accuracy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportSpec:
    onnx: bool = True
    opset: int = 17
    slim: bool = False
    parity_atol: float = 1e-4
    parity_images: int = 256


@dataclass(frozen=True)
class BenchmarkSpec:
    targets: tuple[str, ...] = ("local:cpu",)      # local:cpu | local:cuda | agent:NAME
    batch_sizes: tuple[int, ...] = (1, 64)
    threads: int | None = None
    seconds_per_batch: float = 3.0
    original: bool = True                          # also benchmark the unpruned model, for the speedup
    agent_eval_images: int = 2000                  # agent targets measure accuracy on this many evaluation images
    precision: str = "fp32"                        # on agents with TensorRT: fp32 | fp16 | int8
    agents: dict[str, str] = field(default_factory=dict)             # agent name -> HOST:PORT (set by the server)
    agent_token_files: dict[str, str] = field(default_factory=dict)  # agent name -> token file (set by the server)


@dataclass(frozen=True)
class GateSpec:
    max_accuracy_drop: float | None = None         # top-1, as a fraction (0.01 = one point)


@dataclass(frozen=True)
class JobSpec:
    compress: CompressSpec
    export: ExportSpec = field(default_factory=ExportSpec)
    benchmark: BenchmarkSpec = field(default_factory=BenchmarkSpec)
    gate: GateSpec = field(default_factory=GateSpec)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "JobSpec":
        try:
            c = data["compress"]
            compress_spec = CompressSpec(
                model=_build(ModelSpec, c["model"]), data=_build(DataSpec, c.get("data", {})),
                prune=_build(PruneSpec, c.get("prune", {})), reconstruct=_build(ReconstructSpec, c.get("reconstruct", {})),
                finetune=_build(FinetuneSpec, c.get("finetune", {})), seed=int(c.get("seed", 0)),
                threads=c.get("threads"))
            return cls(compress_spec, _build(ExportSpec, data.get("export", {})),
                       _build(BenchmarkSpec, data.get("benchmark", {})), _build(GateSpec, data.get("gate", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"malformed job spec: {exc}") from None


_TUPLE_FIELDS = {"input_size", "mean", "std", "protected", "targets", "batch_sizes"}


def _build(cls, values: dict):
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise SpecError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    clean = {k: (tuple(v) if k in _TUPLE_FIELDS and v is not None else v) for k, v in values.items()}
    return cls(**clean)


LOCAL_PROVIDERS = {"local:cpu": "cpu", "local:cuda": "cuda", "local:tensorrt": "tensorrt"}   # target -> ORT provider


class ExportCheckFailed(InterpruneError):
    """The exported model does not reproduce the PyTorch model within the tolerance."""


def run_pipeline(spec: JobSpec, out_dir: str | Path, progress: Callable[[ProgressEvent], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> dict:
    """Run the whole job into ``out_dir`` and return the report (also written as ``report.json``)."""
    from exporters import check_parity, environment, evaluate_onnx, export_onnx

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    emit = progress or (lambda event: None)
    spec, rounding_note = resolve_round_to(spec)
    spec = with_budget_measured(spec)
    prune = spec.compress.prune
    probe = latency_probe(prune.latency_target, spec.benchmark.threads, out, spec.benchmark.seconds_per_batch) \
        if prune.latency_budget_ms is not None else None
    result = compress(spec.compress, out, progress, should_stop, latency_probe=probe)
    if rounding_note:
        result.notes.insert(0, rounding_note)
    timings = dict(result.timings)
    exported: dict[str, Any] = {}
    if spec.export.onnx:
        _check_stop(should_stop)
        emit(ProgressEvent("export", 0.0, "exporting to ONNX"))
        start = time.perf_counter()
        example = torch.zeros(1, *result.input_shape)
        onnx_export = export_onnx(result.model, out / "model.onnx", example, opset=spec.export.opset,
                                  slim=spec.export.slim)
        probe = result.preprocess(result.splits.evaluation.images[:spec.export.parity_images])
        parity = check_parity(onnx_export.path, result.model, probe)
        exported = {"onnx": _plain(onnx_export), "parity": _plain(parity), "parity_atol": spec.export.parity_atol}
        if parity.max_abs_error > spec.export.parity_atol:
            raise ExportCheckFailed(f"ONNX Runtime differs from PyTorch by {parity.max_abs_error:.2e} (max abs) on "
                                    f"{parity.num_inputs} evaluation images, above the tolerance "
                                    f"{spec.export.parity_atol:.0e}")
        emit(ProgressEvent("export", 0.5, f"parity max abs error {parity.max_abs_error:.1e}; evaluating ONNX"))
        accuracy = evaluate_onnx(onnx_export.path, _numpy_batches(result))
        result.accuracy["exported"] = Accuracy(accuracy.top1, accuracy.top5, accuracy.num_images)
        timings["export"] = time.perf_counter() - start
        emit(ProgressEvent("export", 1.0, f"exported top-1 {accuracy.top1:.2%}"))
    latency, speedups, target_errors, target_accuracy = [], [], {}, {}
    if spec.export.onnx and spec.benchmark.targets:
        start = time.perf_counter()
        latency, speedups, target_errors, target_accuracy = _benchmark(spec, result, out, emit, should_stop)
        timings["benchmark"] = time.perf_counter() - start
    from service.report import build_report, write_reports

    report = build_report(spec, result, exported, latency, speedups, target_errors, timings, environment())
    report["latency_search"] = result.latency_search
    report["target_accuracy"] = target_accuracy
    write_reports(report, out, result)
    return report


def latency_probe(target: str, threads: int | None, out: Path, seconds_per_batch: float):
    """p90 latency (ms) of a candidate model at a batch size on ``target``, through an ONNX export.

    Measured with the job's final benchmark protocol (``protocol_settings(seconds_per_batch)``), so the probes of a
    latency-budget search and the figure in the report are comparable.
    """
    from exporters import benchmark_onnxruntime, export_onnx

    provider = LOCAL_PROVIDERS.get(target)
    if provider is None:
        raise SpecError(f"latency budgets can be measured on local:cpu, local:cuda or local:tensorrt, not {target!r}")
    scratch = out / ".latency-probe.onnx"

    def measure(model: torch.nn.Module, input_shape: tuple[int, int, int], batch: int) -> float:
        export_onnx(model, scratch, torch.zeros(1, *input_shape))
        rows = benchmark_onnxruntime(scratch, input_shape, (batch,), provider=provider, threads=threads,
                                     **protocol_settings(seconds_per_batch))
        scratch.unlink(missing_ok=True)
        return rows[0].p90_ms
    return measure


def protocol_settings(seconds_per_batch: float) -> dict[str, float]:
    """The ``exporters.benchmark.measure_latency`` timing settings of a job: 0.5 s warm-up, at least 1 s of runs
    (less when the cap is lower), at most ``seconds_per_batch`` (``BenchmarkSpec.seconds_per_batch``)."""
    return dict(warmup_seconds=0.5, min_seconds_per_batch=min(1.0, seconds_per_batch),
                max_seconds_per_batch=seconds_per_batch)


# Local targets that run on a GPU; device agents (agent:NAME: Jetsons, GPU servers) count as GPU targets too.
GPU_TARGETS = ("local:cuda", "local:tensorrt")


def preferred_round_to(targets: Sequence[str], precision: str) -> tuple[int, str]:
    """The width multiple pruning should round to for these benchmark targets and precision, and why.

    With a GPU-capable target (``local:cuda``, ``local:tensorrt``, ``agent:*``) it is the multiple TensorRT's
    fastest kernels need without padding (``exporters.preferred_channel_multiple``): 32 for int8, 8 for fp16 and
    fp32 (tensor cores; fp32 runs as TF32). CPU-only targets get 8 as well: it costs nothing measurable there
    (ONNX Runtime CPU on this project's machine, batch 64: 1.48x speedup rounded to 8 vs 1.50x unrounded;
    ``python -m benchmarks.rounding_latency``, figures in the README) and keeps the model ready for a GPU later.
    """
    from exporters import preferred_channel_multiple

    gpu = [t for t in targets if t in GPU_TARGETS or t.startswith("agent:")]
    if gpu:
        try:
            multiple = preferred_channel_multiple(precision)
        except ValueError:
            raise SpecError(f"benchmark precision {precision!r}: choose fp32, fp16 or int8") from None
        kernels = "int8 kernels use 32-channel vectors" if multiple == 32 else \
            "tensor cores want channel counts that are multiples of 8"
        return multiple, f"{precision} on GPU target(s) {', '.join(gpu)}: {kernels}"
    return 8, ("CPU-only targets: rounding to 8 costs nothing measurable on CPU (ONNX Runtime, batch 64: 1.48x "
               "speedup rounded vs 1.50x unrounded) and keeps the model ready for a GPU")


def resolve_round_to(spec: JobSpec) -> tuple[JobSpec, str | None]:
    """``spec`` with an automatic ``round_to`` (None) replaced by ``preferred_round_to`` of its targets and
    precision, and a note for the report saying why (None when ``round_to`` was given). The latency-budget target
    counts as a target when a budget is set."""
    prune = spec.compress.prune
    if prune.round_to is not None:
        return spec, None
    targets = tuple(spec.benchmark.targets) + ((prune.latency_target,) if prune.latency_budget_ms is not None else ())
    multiple, reason = preferred_round_to(targets, spec.benchmark.precision)
    resolved = replace(spec, compress=replace(spec.compress, prune=replace(prune, round_to=multiple)))
    return resolved, f"widths rounded to multiples of {multiple} (automatic; {reason})"


def with_budget_measured(spec: JobSpec) -> JobSpec:
    """With a latency budget, make sure the final benchmark measures the compressed model at the budget's batch on
    the budget's target, so the report can say whether the budget was met (not only what the probes saw)."""
    prune, bench = spec.compress.prune, spec.benchmark
    if prune.latency_budget_ms is None:
        return spec
    targets = bench.targets if prune.latency_target in bench.targets else (*bench.targets, prune.latency_target)
    batches = bench.batch_sizes if prune.latency_batch in bench.batch_sizes else \
        tuple(sorted((*bench.batch_sizes, prune.latency_batch)))
    return replace(spec, benchmark=replace(bench, targets=tuple(targets), batch_sizes=batches))


def _plain(obj) -> dict:
    data = asdict(obj)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}


def _numpy_batches(result: CompressResult, batch_size: int = 500):
    for images, labels in data_mod.batches(result.splits.evaluation, result.preprocess, batch_size):
        yield images.numpy(), labels.numpy()


def _check_stop(should_stop: Callable[[], bool] | None) -> None:
    from pruning.errors import Cancelled

    if should_stop is not None and should_stop():
        raise Cancelled("job cancelled")


def _benchmark(spec: JobSpec, result: CompressResult, out: Path, emit, should_stop):
    """Latency rows for every target, original and compressed; a failing target records its error only. Agent
    targets also return the accuracy they measured (target -> ``service.agent_targets`` accuracy entry)."""
    from exporters import BackendUnavailable, benchmark_onnxruntime, export_onnx, speedup_table
    from service.agent_targets import AgentTargets

    bench = spec.benchmark
    original_onnx = None
    if bench.original:
        original_onnx = export_onnx(result.original, out / "original.onnx", torch.zeros(1, *result.input_shape),
                                    opset=spec.export.opset).path
    macs_ratio = result.cost["original"].macs / max(result.cost["compressed"].macs, 1)
    rows, speedups, errors, accuracy = [], [], {}, {}
    with AgentTargets(bench, result, result.input_shape) as agents:
        for target in bench.targets:
            _check_stop(should_stop)
            emit(ProgressEvent("benchmark", 0.0, f"benchmarking on {target}"))
            if target.startswith("agent:"):
                models = {"compressed": out / "model.onnx", **({"original": original_onnx} if original_onnx else {})}
                got = agents.run(target, models)
                rows += got.rows
                if "original" in got.latency and "compressed" in got.latency:
                    speedups += [dict(row, target=target) for row in
                                 speedup_table(got.latency["original"], got.latency["compressed"], macs_ratio)]
                accuracy.update({target: got.accuracy} if got.accuracy else {})
                errors.update({target: got.error} if got.error else {})
                emit(ProgressEvent("benchmark", 1.0, f"{target} {'failed' if got.error else 'done'}"))
                continue
            provider = LOCAL_PROVIDERS.get(target)
            if provider is None:
                errors[target] = (f"unknown benchmark target {target!r}; use local:cpu, local:cuda, local:tensorrt "
                                  "or agent:NAME")
                continue
            try:
                kwargs = dict(provider=provider, threads=bench.threads, **protocol_settings(bench.seconds_per_batch))
                pruned = benchmark_onnxruntime(out / "model.onnx", result.input_shape, bench.batch_sizes, **kwargs)
                original = (benchmark_onnxruntime(original_onnx, result.input_shape, bench.batch_sizes, **kwargs)
                            if original_onnx else [])
            except BackendUnavailable as exc:
                errors[target] = str(exc)
                continue
            rows += [dict(r.to_dict(), target=target, model="compressed") for r in pruned]
            rows += [dict(r.to_dict(), target=target, model="original") for r in original]
            if original:
                speedups += [dict(row, target=target) for row in speedup_table(original, pruned, macs_ratio)]
            emit(ProgressEvent("benchmark", 1.0, f"{target} done"))
    return rows, speedups, errors, accuracy


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default))
    tmp.replace(path)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (Path,)):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")
