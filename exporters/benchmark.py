"""One latency protocol for every backend, and the table comparing two models' latencies.

Protocol (`measure_latency`, used by ONNX Runtime, PyTorch and TensorRT engines alike):

1. warm-up: run repeatedly for `warmup_seconds` (at least one run);
2. timed runs: each run is timed alone with `time.perf_counter_ns`, the run including the device
   synchronisation (so GPU work is finished when the clock stops). When at least `min_runs` runs and
   `min_seconds_per_batch` seconds are first done (n runs), the window size is fixed at
   w = max(5, ceil(min_runs / 2), n // 3) runs, so a fast model's windows hold thousands of runs and a slow
   one's at least `min_runs` together. From then on, every w runs, the measurement is *stable* when the medians
   of the last 3 windows (3w runs) are within `stability` of each other ((max - min) / min <= stability, 5% by
   default); it stops when stable, or at `max_seconds_per_batch` (then `stable` is False and a warning is
   logged). A clock that keeps drifting
   (thermal throttling, a busy neighbour, caches still filling) thus shows up as "not stable" instead of a
   quiet average over a moving target;
3. statistics over the runs of those last 3 windows only (earlier runs were still settling: they are counted
   as extended warm-up in `warmup_runs`; when the cap hits before 3 windows exist, every run is used), in
   milliseconds: p50/p90/p99 (linear interpolation), mean, std (sample, ddof=1), min; throughput in images per second =
   batch * 1000 / p50_ms (the median, not the mean, so a few slow outliers do not move it).

Inputs are random normal float32 from a seeded generator: latency of a dense CNN does not depend on values.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .environment import cpu_name, cuda_device_name
from .onnx import NonFiniteError, count_nonfinite, eval_float32

log = logging.getLogger(__name__)

GPU_EXTRA_HINT = "pip install 'interprune[gpu]' on a machine with a CUDA GPU"

#: our provider names -> ONNX Runtime execution providers, in priority order.
ORT_PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class BackendUnavailable(RuntimeError):
    """The requested backend (execution provider, device) is not available on this machine."""


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one backend at one batch size, in milliseconds per batch.

    `throughput_ips` is images per second at this batch size computed from the median:
    `batch_size * 1000 / p50_ms`. `threads` is the CPU intra-op thread count used (ONNX Runtime session
    or torch), `device` a human description (CPU model or GPU name), `precision` the numeric precision of
    the run ("fp32", "fp16", "int8"). When a batch size could not be run (e.g. out of memory), `runs` is 0,
    the numbers are NaN and `error` says why. `stable` is False when the time cap came before the window
    medians settled (see the module docstring): read such numbers as approximate.
    """

    backend: str
    batch_size: int
    runs: int
    warmup_runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    throughput_ips: float
    threads: int
    precision: str = "fp32"
    device: str = ""
    error: str | None = None
    stable: bool | None = None   # the protocol's stability rule was met; None when not judged (failed, remote)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (NaN becomes None)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------------------------------
# the protocol


@dataclass(frozen=True)
class Timings:
    """Raw output of `measure_latency`.

    `times_ms` are the per-run times the statistics use (the last 3 complete windows, or every run when the
    cap came before 3 windows); `warmup_runs` counts the warm-up runs and the earlier timed runs that were
    discarded; `stable` says whether the last 3 window medians agreed within the tolerance;
    `window_medians_ms` are the medians of the 3 windows that decided `stable` (empty if none was judged).
    """

    times_ms: list[float]
    warmup_runs: int
    stable: bool
    window_medians_ms: list[float]


def window_size(min_runs: int) -> int:
    """Smallest stability window: max(5, ceil(min_runs / 2)) runs, so 3 windows always hold at least `min_runs`."""
    return max(5, math.ceil(min_runs / 2))


def window_medians(times: Sequence[float], w: int) -> list[float]:
    """Medians of consecutive windows of ``w`` runs (an incomplete last window is ignored)."""
    return [float(np.median(times[i:i + w])) for i in range(0, len(times) - w + 1, w)]


def relative_spread(values: Sequence[float]) -> float:
    """(max - min) / min of positive numbers; 0 when all are equal, inf when the minimum is 0 and others are not."""
    low, high = min(values), max(values)
    if high == low:
        return 0.0
    return (high - low) / low if low > 0 else math.inf


def warm_up(run_once: Callable[[], object], seconds: float) -> int:
    """Run ``run_once`` for ``seconds`` (at least once); returns how many runs that took."""
    runs = 0
    deadline = time.perf_counter_ns() + int(seconds * 1e9)
    while runs == 0 or time.perf_counter_ns() < deadline:
        run_once()
        runs += 1
    return runs


def measure_latency(
    run_once: Callable[[], object],
    *,
    warmup_seconds: float = 1.0,
    min_runs: int = 20,
    min_seconds_per_batch: float = 1.0,
    max_seconds_per_batch: float = 10.0,
    stability: float = 0.05,
) -> Timings:
    """Time `run_once` by the protocol in the module docstring; `run_once` must synchronise its device.

    `stability` is the largest accepted relative spread of the last 3 window medians (0.05 = 5%).
    """
    if min_runs < 1:
        raise ValueError(f"min_runs must be >= 1, got {min_runs}")
    if max_seconds_per_batch <= 0:
        raise ValueError(f"max_seconds_per_batch must be > 0, got {max_seconds_per_batch}")
    if not stability >= 0:
        raise ValueError(f"stability must be >= 0 (a fraction, 0.05 = 5%), got {stability}")
    warmup_runs = warm_up(run_once, warmup_seconds)
    min_ns = int(min(min_seconds_per_batch, max_seconds_per_batch) * 1e9)
    max_ns = int(max_seconds_per_batch * 1e9)
    times_ns: list[int] = []
    w: int | None = None                   # window size, fixed when min_runs and min_seconds are first reached
    medians_ns: list[float] = []           # medians of the last 3 windows at the latest check
    stable = False
    started = time.perf_counter_ns()
    while True:
        t0 = time.perf_counter_ns()
        run_once()
        t1 = time.perf_counter_ns()
        times_ns.append(t1 - t0)
        elapsed = t1 - started
        if w is None and len(times_ns) >= min_runs and elapsed >= min_ns:
            w = max(window_size(min_runs), len(times_ns) // 3)
        if w is not None and len(times_ns) >= 3 * w and len(times_ns) % w == 0:
            medians_ns = window_medians(times_ns[-3 * w:], w)
            if relative_spread(medians_ns) <= stability:
                stable = True
                break
        if elapsed >= max_ns:
            break
    if not stable:
        log.warning("latency not stable after %d runs: max_seconds_per_batch=%.3g reached %s", len(times_ns),
                    max_seconds_per_batch,
                    f"with the last 3 window medians {relative_spread(medians_ns):.1%} apart (tolerance "
                    f"{stability:.1%})" if medians_ns else "before three windows of runs were complete")
    used = times_ns[-3 * w:] if w is not None and len(times_ns) >= 3 * w else times_ns
    return Timings(times_ms=[t / 1e6 for t in used], warmup_runs=warmup_runs + len(times_ns) - len(used),
                   stable=stable, window_medians_ms=[m / 1e6 for m in medians_ns])


def summarize(
    timings: Timings, *, backend: str, batch_size: int, threads: int, precision: str = "fp32", device: str = ""
) -> LatencyResult:
    """Statistics of `timings` as a `LatencyResult` (see module docstring for definitions).

    Raises `NonFiniteError` when there are no times, or a time is NaN, infinite or negative, or the median is 0
    (an infinite throughput): such a figure would pass any latency budget.
    """
    ms = np.asarray(timings.times_ms, dtype=np.float64)
    if ms.size == 0 or count_nonfinite(ms) or not ms.min() >= 0:
        raise NonFiniteError(f"{backend} batch {batch_size}: the run times are not finite, non-negative numbers "
                             f"({ms.size} runs, {count_nonfinite(ms)} NaN/inf); no latency can be reported")
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return LatencyResult(
        backend=backend,
        batch_size=batch_size,
        runs=int(ms.size),
        warmup_runs=timings.warmup_runs,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=float(ms.mean()),
        std_ms=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        min_ms=float(ms.min()),
        throughput_ips=_throughput(batch_size, p50, backend),
        threads=threads,
        precision=precision,
        device=device,
        stable=timings.stable,
    )


def _throughput(batch_size: int, p50_ms: float, backend: str) -> float:
    """Images per second at the median time; `NonFiniteError` when the median is 0 (the clock did not advance)."""
    if not p50_ms > 0:
        raise NonFiniteError(f"{backend} batch {batch_size}: the median run time is {p50_ms} ms, so the throughput "
                             "would be infinite; the clock is too coarse for this model")
    return batch_size * 1000.0 / p50_ms


def failed_result(
    *, backend: str, batch_size: int, threads: int, error: str, precision: str = "fp32", device: str = ""
) -> LatencyResult:
    """A `LatencyResult` for a batch size that could not be run: runs=0, NaN numbers, `error` kept."""
    nan = math.nan
    return LatencyResult(backend, batch_size, 0, 0, nan, nan, nan, nan, nan, nan, nan, threads,
                         precision=precision, device=device, error=error)


def random_batch(batch_size: int, input_shape: Sequence[int], seed: int) -> np.ndarray:
    """A (batch_size, *input_shape) float32 standard-normal array from a seeded generator."""
    _check_input_shape(input_shape)
    if batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_size}")
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch_size, *input_shape), dtype=np.float32)


def _check_input_shape(input_shape: Sequence[int]) -> None:
    if len(input_shape) != 3 or any(int(d) < 1 for d in input_shape):
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")


# --------------------------------------------------------------------------------------------------
# ONNX Runtime


def create_session(onnx_path: str | Path, provider: str = "cpu", threads: int | None = None):
    """An ONNX Runtime session on `provider` ("cpu" | "cuda" | "tensorrt"), all graph optimisations on.

    `threads` is the intra-op thread count (default: `os.cpu_count()`). Raises `BackendUnavailable` when
    the provider is not in this onnxruntime build or the session silently fell back to another provider.
    """
    import onnxruntime as ort

    wanted = _ort_providers(provider)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=wanted)
    if wanted[0] not in session.get_providers():
        raise BackendUnavailable(
            f"onnxruntime could not start {wanted[0]} (session uses {session.get_providers()}); check the CUDA/"
            f"TensorRT libraries; {GPU_EXTRA_HINT}"
        )
    return session


def _ort_providers(provider: str) -> list[str]:
    """ONNX Runtime providers for our provider name; raise `BackendUnavailable` if the first is missing."""
    import onnxruntime as ort

    if provider not in ORT_PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose one of {sorted(ORT_PROVIDERS)}")
    wanted = ORT_PROVIDERS[provider]
    available = ort.get_available_providers()
    if wanted[0] not in available:
        raise BackendUnavailable(
            f"ONNX Runtime provider {provider!r} ({wanted[0]}) is not available here (available: {available}); "
            f"it needs onnxruntime-gpu and a CUDA GPU: {GPU_EXTRA_HINT}"
        )
    return wanted


def benchmark_onnxruntime(
    onnx_path: str | Path,
    input_shape: tuple[int, int, int],
    batch_sizes: Sequence[int] = (1, 64),
    *,
    provider: str = "cpu",
    threads: int | None = None,
    warmup_seconds: float = 1.0,
    min_runs: int = 20,
    min_seconds_per_batch: float = 1.0,
    max_seconds_per_batch: float = 10.0,
    seed: int = 0,
) -> list[LatencyResult]:
    """Latency of `onnx_path` in ONNX Runtime on `provider`, one `LatencyResult` per batch size.

    On "cuda"/"tensorrt" input and output stay on the GPU (IO binding), so the time is the model's, not
    the host-device copies'. Backend label: "onnxruntime:<provider>".
    """
    session = create_session(onnx_path, provider, threads)
    n_threads = threads or os.cpu_count() or 1
    device = cpu_name() if provider == "cpu" else cuda_device_name()
    results = []
    for batch_size in batch_sizes:
        x = random_batch(batch_size, input_shape, seed)
        run_once = _ort_runner(session, x, on_gpu=provider != "cpu")
        timings = measure_latency(run_once, warmup_seconds=warmup_seconds, min_runs=min_runs,
                                  min_seconds_per_batch=min_seconds_per_batch,
                                  max_seconds_per_batch=max_seconds_per_batch)
        results.append(summarize(timings, backend=f"onnxruntime:{provider}", batch_size=batch_size,
                                 threads=n_threads, device=device))
    return results


def latency_in_turns(onnx_paths: Sequence[str | Path], input_shape: tuple[int, int, int], batch_size: int, *,
                 provider: str = "cpu", threads: int | None = None, warmup_seconds: float = 0.5,
                 seconds: float = 2.0, min_runs: int = 10, turn_runs: int = 5, seed: int = 0
                 ) -> list[tuple[float, float]]:
    """(p50, p90) in ms of each model, measured in turns (``turn_runs`` runs of A, then of B, ...; the first run of each
    turn not counted, so caches are the model's own) for ``seconds`` per model and at least ``min_runs`` each,
    after ``warmup_seconds`` of each: a burst of load on a shared machine slows every model alike, so their ratio
    holds where back-to-back measurements seconds apart can differ by 20%."""
    if not onnx_paths or seconds <= 0 or min_runs < 1:
        raise ValueError(f"need models, seconds > 0 and min_runs >= 1, got {len(onnx_paths)}, {seconds}, {min_runs}")
    x = random_batch(batch_size, input_shape, seed)
    runners = [_ort_runner(create_session(path, provider, threads), x, on_gpu=provider != "cpu")
               for path in onnx_paths]
    for run_once in runners:
        warm_up(run_once, warmup_seconds)
    times: list[list[float]] = [[] for _ in runners]
    deadline = time.perf_counter() + seconds * len(runners)
    while len(times[0]) < min_runs or time.perf_counter() < deadline:
        for run_once, own in zip(runners, times):
            run_once()
            for _ in range(max(1, turn_runs - 1)):
                t0 = time.perf_counter_ns()
                run_once()
                own.append((time.perf_counter_ns() - t0) / 1e6)
    return [(float(np.percentile(own, 50)), float(np.percentile(own, 90))) for own in times]


def _ort_runner(session, x: np.ndarray, *, on_gpu: bool) -> Callable[[], object]:
    """A zero-argument callable running one inference of `x` (synchronous: returns when done)."""
    input_name = session.get_inputs()[0].name
    if not on_gpu:
        return lambda: session.run(None, {input_name: x})
    import onnxruntime as ort

    binding = session.io_binding()
    x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    binding.bind_ortvalue_input(input_name, x_dev)
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda")

    def run() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run


# --------------------------------------------------------------------------------------------------
# PyTorch


def benchmark_torch(
    model: torch.nn.Module,
    input_shape: tuple[int, int, int],
    batch_sizes: Sequence[int] = (1, 64),
    *,
    device: str = "cpu",
    threads: int | None = None,
    warmup_seconds: float = 1.0,
    min_runs: int = 20,
    min_seconds_per_batch: float = 1.0,
    max_seconds_per_batch: float = 10.0,
    seed: int = 0,
) -> list[LatencyResult]:
    """Latency of `model` in PyTorch (eval, no_grad, float32) on `device`, one result per batch size.

    On CUDA each timed run ends with `torch.cuda.synchronize()`; an out-of-memory batch size gives a
    result with `error` set instead of aborting the others. `threads` sets `torch.set_num_threads` for
    the duration (restored after). Backend label: "torch:<device type>".
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable(f"CUDA is not available to PyTorch here; needs a CUDA GPU and a CUDA build of torch "
                                 f"({GPU_EXTRA_HINT})")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with eval_float32(model, dev) as prepared:
            return [_torch_one(prepared, dev, b, input_shape, seed, warmup_seconds, min_runs,
                               min_seconds_per_batch, max_seconds_per_batch) for b in batch_sizes]
    finally:
        torch.set_num_threads(previous_threads)


def _torch_one(model, dev: torch.device, batch_size: int, input_shape, seed: int, warmup_seconds: float,
               min_runs: int, min_seconds: float, max_seconds: float) -> LatencyResult:
    """Benchmark one batch size in PyTorch (see `benchmark_torch`)."""
    backend = f"torch:{dev.type}"
    threads = torch.get_num_threads()
    name = cuda_device_name(dev) if dev.type == "cuda" else cpu_name()
    x = torch.from_numpy(random_batch(batch_size, input_shape, seed)).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def run_once() -> None:
        with torch.no_grad():
            model(x)
        sync()

    try:
        timings = measure_latency(run_once, warmup_seconds=warmup_seconds, min_runs=min_runs,
                                  min_seconds_per_batch=min_seconds, max_seconds_per_batch=max_seconds)
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        log.warning("%s batch %d: out of memory", backend, batch_size)
        return failed_result(backend=backend, batch_size=batch_size, threads=threads, device=name,
                             error=f"out of memory: {exc}".splitlines()[0])
    return summarize(timings, backend=backend, batch_size=batch_size, threads=threads, device=name)


# --------------------------------------------------------------------------------------------------
# comparison


def speedup_table(original: Sequence[LatencyResult], pruned: Sequence[LatencyResult], macs_ratio: float
                  ) -> list[dict[str, Any]]:
    """Per batch size present in both lists: original and pruned p50 (ms), measured speedup, MACs ratio.

    `measured_speedup = original_p50_ms / pruned_p50_ms` (>1 means the pruned model is faster);
    `macs_ratio` is original MACs / pruned MACs, the speedup the MAC count alone would predict, shown
    beside it. `speedup_vs_macs = measured_speedup / macs_ratio`. Failed results give None.
    """
    if not (macs_ratio > 0 and math.isfinite(macs_ratio)):
        raise ValueError(f"macs_ratio must be > 0 (original MACs / pruned MACs), got {macs_ratio}")
    by_batch = {r.batch_size: r for r in pruned}
    rows = []
    for orig in sorted(original, key=lambda r: r.batch_size):
        new = by_batch.get(orig.batch_size)
        if new is None:
            log.warning("batch size %d measured for the original model only; left out", orig.batch_size)
            continue
        ok = orig.error is None and new.error is None and new.p50_ms > 0
        speedup = orig.p50_ms / new.p50_ms if ok else None
        rows.append({
            "batch_size": orig.batch_size,
            "backend": orig.backend,
            "original_p50_ms": None if orig.error else orig.p50_ms,
            "pruned_p50_ms": None if new.error else new.p50_ms,
            "measured_speedup": speedup,
            "macs_ratio": macs_ratio,
            "speedup_vs_macs": speedup / macs_ratio if speedup is not None else None,
        })
    return rows
