"""Latency on every benchmark target, original and compressed, with one protocol; the probe a latency-budget search
uses. Device agents (``agent:NAME``) are reached through a ``RemoteTargets`` the caller passes in: the pipeline
knows no network code (the service's implementation is ``service.agent.targets.AgentTargets``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Protocol

import torch

from pipeline.spec import LOCAL_PROVIDERS, JobSpec
from pruning.compress import CompressResult, ProgressEvent
from pruning.errors import Cancelled, SpecError


@dataclass
class RemoteRun:
    """What a remote target measured: latency rows, rows by model, accuracy, or the error that stopped it."""

    rows: list[dict] = field(default_factory=list)
    latency: dict[str, list] = field(default_factory=dict)     # "original" / "compressed" -> LatencyResult list
    accuracy: dict | None = None
    error: str | None = None


class RemoteTargets(Protocol):
    """Opened once per job (``with factory(bench, result, input_shape) as targets``); ``run`` benchmarks the named
    models on one ``agent:NAME`` target."""

    def run(self, target: str, models: dict[str, Path]) -> RemoteRun: ...


RemoteTargetsFactory = Callable[[Any, CompressResult, tuple], ContextManager[RemoteTargets]]


@dataclass
class Measurements:
    rows: list[dict] = field(default_factory=list)
    speedups: list[dict] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    accuracy: dict[str, dict] = field(default_factory=dict)     # agent target -> accuracy the agent measured


def protocol_settings(seconds_per_batch: float) -> dict[str, float]:
    """The ``exporters.benchmark.measure_latency`` timing settings of a job: 0.5 s warm-up, at least 1 s of runs
    (less when the cap is lower), at most ``seconds_per_batch`` (``BenchmarkSpec.seconds_per_batch``)."""
    return dict(warmup_seconds=0.5, min_seconds_per_batch=min(1.0, seconds_per_batch),
                max_seconds_per_batch=seconds_per_batch)


def latency_probe(target: str, threads: int | None, out: Path, seconds_per_batch: float):
    """p90 latency (ms) of a candidate model at a batch size on ``target``, through an ONNX export.

    Measured with the job's final benchmark protocol (``protocol_settings(seconds_per_batch)``), so the probes of a
    latency-budget search and the figure in the report are comparable.
    """
    from exporters import benchmark_onnxruntime, export_onnx, latency_in_turns

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

    def in_turns(model: torch.nn.Module, other: torch.nn.Module, input_shape: tuple[int, int, int],
                 batch: int) -> tuple[tuple[float, float], tuple[float, float]]:
        """(p50, p90) of ``model`` and of ``other``, measured in turns (``exporters.latency_in_turns``)."""
        paths = [out / ".latency-probe-a.onnx", out / ".latency-probe-b.onnx"]
        try:
            for module, path in zip((model, other), paths):
                export_onnx(module, path, torch.zeros(1, *input_shape))
            first, second = latency_in_turns(paths, input_shape, batch, provider=provider, threads=threads,
                                         warmup_seconds=0.5, seconds=max(1.0, seconds_per_batch))
        finally:
            for path in paths:
                path.unlink(missing_ok=True)
        return first, second
    measure.in_turns = in_turns       # the latency allocation's fractions measure a candidate beside the original
    return measure


class _NoRemoteTargets:
    """Without a server there are no device agents: each ``agent:NAME`` target records why."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def run(self, target: str, models: dict[str, Path]) -> RemoteRun:
        return RemoteRun(error=f"{target}: device agents are reached through an interprune server "
                               "(interprune serve --agent NAME=HOST:PORT)")


def benchmark_targets(spec: JobSpec, result: CompressResult, out: Path, emit, should_stop,
                      remote_targets: RemoteTargetsFactory | None = None) -> Measurements:
    """Latency rows for every target, original and compressed; a failing target records its error only."""
    from exporters import export_onnx

    bench = spec.benchmark
    original_onnx = None
    if bench.original:
        original_onnx = export_onnx(result.original, out / "original.onnx", torch.zeros(1, *result.input_shape),
                                    opset=spec.export.opset).path
    models = {"compressed": out / "model.onnx", **({"original": original_onnx} if original_onnx else {})}
    macs_ratio = result.cost["original"].macs / max(result.cost["compressed"].macs, 1)
    measured = Measurements()
    opened = remote_targets(bench, result, result.input_shape) if remote_targets else _NoRemoteTargets()
    with opened as agents:
        for target in bench.targets:
            if should_stop is not None and should_stop():
                raise Cancelled("job cancelled")
            emit(ProgressEvent("benchmark", 0.0, f"benchmarking on {target}"))
            if target.startswith("agent:"):
                _remote(agents.run(target, models), target, macs_ratio, measured)
            else:
                _local(target, spec, result, models, macs_ratio, measured)
            failed = target in measured.errors
            emit(ProgressEvent("benchmark", 1.0, f"{target} {'failed' if failed else 'done'}"))
    return measured


def _remote(got: RemoteRun, target: str, macs_ratio: float, measured: Measurements) -> None:
    from exporters import speedup_table

    measured.rows += got.rows
    if "original" in got.latency and "compressed" in got.latency:
        measured.speedups += [dict(row, target=target) for row in
                              speedup_table(got.latency["original"], got.latency["compressed"], macs_ratio)]
    if got.accuracy:
        measured.accuracy[target] = got.accuracy
    if got.error:
        measured.errors[target] = got.error


def _local(target: str, spec: JobSpec, result: CompressResult, models: dict, macs_ratio: float,
           measured: Measurements) -> None:
    from exporters import BackendUnavailable, NonFiniteError, benchmark_onnxruntime, speedup_table

    provider = LOCAL_PROVIDERS.get(target)
    if provider is None:
        measured.errors[target] = (f"unknown benchmark target {target!r}; use local:cpu, local:cuda, local:tensorrt "
                                   "or agent:NAME")
        return
    bench = spec.benchmark
    kwargs = dict(provider=provider, threads=bench.threads, **protocol_settings(bench.seconds_per_batch))
    try:
        pruned = benchmark_onnxruntime(models["compressed"], result.input_shape, bench.batch_sizes, **kwargs)
        original = (benchmark_onnxruntime(models["original"], result.input_shape, bench.batch_sizes, **kwargs)
                    if "original" in models else [])
    except (BackendUnavailable, NonFiniteError) as exc:      # no such device here; timings that are not numbers
        measured.errors[target] = str(exc)
        return
    measured.rows += [dict(r.to_dict(), target=target, model="compressed") for r in pruned]
    measured.rows += [dict(r.to_dict(), target=target, model="original") for r in original]
    if original:
        measured.speedups += [dict(row, target=target) for row in speedup_table(original, pruned, macs_ratio)]
