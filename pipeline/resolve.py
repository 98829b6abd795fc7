"""Width rounding and the benchmark plan, decided once from the job's targets before anything runs."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from pipeline.spec import JobSpec
from pruning.errors import SpecError


# Local targets that run on a GPU; device agents (agent:NAME: Jetsons, GPU servers) count as GPU targets too.
GPU_TARGETS = ("local:cuda", "local:tensorrt")


def preferred_round_to(targets: Sequence[str], precision: str) -> tuple[int, str]:
    """The width multiple pruning should round to for these benchmark targets and precision, and why.

    With a GPU-capable target (``local:cuda``, ``local:tensorrt``, ``agent:*``) it is the multiple TensorRT's
    fastest kernels need without padding (``exporters.preferred_channel_multiple``): 32 for int8, 8 for fp16 and
    fp32 (tensor cores; fp32 runs as TF32). CPU-only targets get 8 as well, which keeps the model ready for a GPU
    later; what rounding costs on a given CPU is measured by ``python -m benchmarks.rounding_latency`` (README).
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
        agents = " (a device agent counts as one: its hardware is not asked before pruning; --round-to sets the " \
                 "multiple)" if any(t.startswith("agent:") for t in gpu) else ""
        return multiple, f"{precision} on GPU or agent target(s) {', '.join(gpu)}: {kernels}{agents}"
    return 8, ("CPU-only targets: multiples of 8 keep the model ready for a GPU's tensor cores; what rounding costs "
               "on a CPU is measured by benchmarks/rounding_latency.py")


def resolve_round_to(spec: JobSpec) -> tuple[JobSpec, str | None]:
    """``spec`` with an automatic ``round_to`` (None) replaced by ``preferred_round_to`` of its targets and
    precision, and a note for the report saying why (None when ``round_to`` was given). The latency-budget target
    counts as a target when a budget is set."""
    prune = spec.compress.prune
    if prune.round_to is not None:
        return spec, None
    targets = tuple(spec.benchmark.targets) + ((prune.latency_target,) if measures_latency(prune) else ())
    multiple, reason = preferred_round_to(targets, spec.benchmark.precision)
    resolved = replace(spec, compress=replace(spec.compress, prune=replace(prune, round_to=multiple)))
    return resolved, f"widths rounded to multiples of {multiple} (automatic; {reason})"


def with_budget_measured(spec: JobSpec) -> JobSpec:
    """With a latency budget (or allocation "latency"), make sure the final benchmark measures the compressed model
    at the budget's batch on the budget's target, so the report can say whether the budget was met (not only what
    the probes saw) and how the latency table's prediction compares with the final measurement."""
    prune, bench = spec.compress.prune, spec.benchmark
    if not measures_latency(prune):
        return spec
    targets = bench.targets if prune.latency_target in bench.targets else (*bench.targets, prune.latency_target)
    batches = bench.batch_sizes if prune.latency_batch in bench.batch_sizes else \
        tuple(sorted((*bench.batch_sizes, prune.latency_batch)))
    return replace(spec, benchmark=replace(bench, targets=tuple(targets), batch_sizes=batches))


def measures_latency(prune) -> bool:
    """The job measures candidates on its latency target while pruning (a budget, or allocation "latency")."""
    return prune.latency_budget_ms is not None or prune.allocation == "latency"




def resolve_spec(spec: JobSpec) -> tuple[JobSpec, list[str]]:
    """Every decision the job's spec leaves open, made once: the width multiple and the benchmark plan. Returns
    the resolved spec and the notes the report shows about them."""
    spec, rounding_note = resolve_round_to(spec)
    return with_budget_measured(spec), [rounding_note] if rounding_note else []
