"""pipeline.run's pure parts: the automatic width multiple, the job spec, and one latency protocol for the
latency-budget probes and the final benchmark."""
from __future__ import annotations

import pytest
import torch

from pipeline.benchmark import latency_probe, protocol_settings
from pipeline.report import budget_verdict
from pipeline.resolve import preferred_round_to, resolve_round_to, with_budget_measured
import pipeline.run as pipeline_run
from pipeline.run import run_pipeline
from pipeline.spec import BenchmarkSpec, JobSpec
from pruning.compress import DEFAULT_ROUND_TO, CompressSpec, ModelSpec, PruneSpec, _resolve_round_to
from pruning.errors import SpecError


def job(targets=("local:cpu",), precision="fp32", **prune) -> JobSpec:
    return JobSpec(CompressSpec(ModelSpec("demo/small_cnn"), prune=PruneSpec(**prune)),
                   benchmark=BenchmarkSpec(targets=targets, precision=precision))


# --- automatic rounding ------------------------------------------------------------------------------

@pytest.mark.parametrize("targets, precision, multiple, says", [
    (("agent:jetson",), "int8", 32, "int8 kernels"),
    (("local:cpu", "local:tensorrt"), "int8", 32, "local:tensorrt"),
    (("local:cuda",), "fp16", 8, "tensor cores"),
    (("agent:edge",), "fp32", 8, "tensor cores"),
    (("local:cpu",), "int8", 8, "CPU-only"),       # int8 only applies to TensorRT engines, not to CPU targets
    (("local:cpu",), "fp32", 8, "ready for a GPU"),
])
def test_preferred_round_to_by_targets_and_precision(targets, precision, multiple, says):
    got, reason = preferred_round_to(targets, precision)
    assert got == multiple
    assert says in reason


def test_an_unknown_precision_on_a_gpu_target_is_a_spec_error():
    with pytest.raises(SpecError, match="fp64"):
        preferred_round_to(("local:cuda",), "fp64")


def test_resolve_round_to_puts_the_multiple_in_the_spec_that_runs_and_says_why():
    resolved, note = resolve_round_to(job(("agent:jetson",), "int8"))
    assert resolved.compress.prune.round_to == 32
    assert note.startswith("widths rounded to multiples of 32 (automatic;") and "agent:jetson" in note
    assert resolved.compress.prune.criterion == "l1" and resolved.benchmark.precision == "int8"   # rest unchanged


def test_an_explicit_round_to_is_kept_without_a_note():
    spec = job(("agent:jetson",), "int8", round_to=4)
    assert resolve_round_to(spec) == (spec, None)


def test_the_latency_budget_target_counts_when_a_budget_is_set():
    spec = job(("local:cpu",), "int8", latency_budget_ms=2.0, latency_target="local:cuda")
    assert resolve_round_to(spec)[0].compress.prune.round_to == 32
    no_budget = job(("local:cpu",), "int8", latency_target="local:cuda")
    assert resolve_round_to(no_budget)[0].compress.prune.round_to == 8


def test_a_job_spec_without_round_to_is_automatic():
    spec = JobSpec.from_dict({"compress": {"model": {"arch": "demo/small_cnn"}, "prune": {"criterion": "l2"}}})
    assert spec.compress.prune.round_to is None
    assert JobSpec.from_dict(spec.to_dict()) == spec
    explicit = JobSpec.from_dict({"compress": {"model": {"arch": "demo/small_cnn"}, "prune": {"round_to": 16}}})
    assert explicit.compress.prune.round_to == 16


def test_compress_called_from_python_rounds_to_8_when_unset():
    spec = CompressSpec(ModelSpec("demo/small_cnn"))
    resolved, note = _resolve_round_to(spec)
    assert DEFAULT_ROUND_TO == 8 and resolved.prune.round_to == 8 and "8" in note
    explicit = CompressSpec(ModelSpec("demo/small_cnn"), prune=PruneSpec(round_to=1))
    assert _resolve_round_to(explicit) == (explicit, None)


# --- one protocol for probes and the final benchmark ---------------------------------------------------

def test_protocol_settings():
    assert protocol_settings(3.0) == {"warmup_seconds": 0.5, "min_seconds_per_batch": 1.0,
                                      "max_seconds_per_batch": 3.0}
    assert protocol_settings(0.2) == {"warmup_seconds": 0.5, "min_seconds_per_batch": 0.2,
                                      "max_seconds_per_batch": 0.2}


def test_latency_probe_measures_with_the_final_benchmark_protocol(monkeypatch, tmp_path):
    import exporters

    calls = []

    def fake_benchmark(path, input_shape, batch_sizes, **kwargs):
        calls.append((input_shape, batch_sizes, kwargs))
        return [exporters.LatencyResult("onnxruntime:cpu", batch_sizes[0], 30, 5, 1.0, 1.5, 2.0, 1.1, 0.1, 0.9,
                                        1000.0, 1)]

    monkeypatch.setattr(exporters, "benchmark_onnxruntime", fake_benchmark)
    monkeypatch.setattr(exporters, "export_onnx", lambda model, path, example: None)
    measure = latency_probe("local:cpu", 2, tmp_path, 2.5)
    assert measure(torch.nn.Identity(), (1, 8, 8), 4) == 1.5                       # the p90
    assert calls == [((1, 8, 8), (4,), dict(provider="cpu", threads=2, **protocol_settings(2.5)))]


def test_run_pipeline_gives_the_probe_the_jobs_benchmark_seconds(monkeypatch, tmp_path):
    seen = {}

    class Stop(Exception):
        pass

    def fake_probe(target, threads, out, seconds_per_batch):
        seen.update(target=target, threads=threads, seconds=seconds_per_batch)
        return lambda model, shape, batch: 1.0

    def fake_compress(spec, out, progress, should_stop, latency_probe, **inputs):
        seen["round_to"] = spec.prune.round_to
        raise Stop

    monkeypatch.setattr(pipeline_run, "latency_probe", fake_probe)
    monkeypatch.setattr(pipeline_run, "compress", fake_compress)
    spec = JobSpec(CompressSpec(ModelSpec("demo/small_cnn"), prune=PruneSpec(latency_budget_ms=1.0)),
                   benchmark=BenchmarkSpec(targets=("local:cpu",), threads=3, seconds_per_batch=4.5))
    with pytest.raises(Stop):
        run_pipeline(spec, tmp_path)
    assert seen == {"target": "local:cpu", "threads": 3, "seconds": 4.5, "round_to": 8}


def test_a_budget_job_benchmarks_the_budgets_batch_on_the_budgets_target():
    spec = with_budget_measured(job(("local:cpu",), latency_budget_ms=5.0, latency_batch=64,
                                             latency_target="local:cuda"))
    assert spec.benchmark.targets == ("local:cpu", "local:cuda") and spec.benchmark.batch_sizes == (1, 64)
    plain = job(("local:cpu",))
    assert with_budget_measured(plain) is plain


def test_budget_verdict_reads_the_final_benchmark_not_the_probes():
    prune = PruneSpec(latency_budget_ms=58.0, latency_batch=64)
    rows = [{"target": "local:cpu", "model": "compressed", "batch_size": 64, "p90_ms": 61.5, "stable": True},
            {"target": "local:cpu", "model": "original", "batch_size": 64, "p90_ms": 40.0, "stable": True},
            {"target": "local:cpu", "model": "compressed", "batch_size": 1, "p90_ms": 2.0, "stable": True}]
    missed = budget_verdict(prune, rows, {})
    assert missed["met"] is False and missed["achieved_p90_ms"] == 61.5 and missed["margin"] == 0.05
    rows[0]["p90_ms"] = 57.9
    assert budget_verdict(prune, rows, {})["met"] is True
    gone = budget_verdict(prune, rows[1:], {"local:cpu": "session failed"})
    assert gone["met"] is False and gone["achieved_p90_ms"] is None and gone["error"] == "session failed"


def test_the_search_aims_under_the_budget_by_the_margin(tmp_path):
    from pruning.allocate import search_latency_budget

    curve = lambda r: 10.0 * (1.0 - r)                      # noqa: E731
    plain = search_latency_budget(curve, budget_ms=5.0)
    safe = search_latency_budget(curve, budget_ms=5.0, margin=0.1)
    assert curve(plain.reduction) <= 5.0 and curve(safe.reduction) <= 4.5 < curve(plain.reduction)
    assert safe.steps[-1] == {"reduction": safe.reduction, "latency_ms": curve(safe.reduction), "meets_budget": True,
                              "meets_goal": True}
    with pytest.raises(SpecError, match="latency_margin"):
        run_pipeline(job(latency_budget_ms=5.0, latency_margin=0.7), tmp_path / "out")
