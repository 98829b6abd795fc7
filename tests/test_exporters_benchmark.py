"""Latency protocol, accuracy of an exported model, provenance (exporters/benchmark.py)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from exporters import (
    BackendUnavailable,
    LatencyResult,
    benchmark_onnxruntime,
    benchmark_torch,
    environment,
    evaluate_onnx,
    export_onnx,
    measure_latency,
    latency_in_turns,
    speedup_table,
)
from exporters.benchmark import Timings, failed_result, relative_spread, summarize, window_size

INPUT_SHAPE = (3, 16, 16)
FAST = dict(warmup_seconds=0.1, min_runs=10, min_seconds_per_batch=0.1, max_seconds_per_batch=1.0)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return export_onnx(tiny_net(), tmp_path_factory.mktemp("bench") / "tiny.onnx", torch.randn(1, *INPUT_SHAPE)).path


@pytest.fixture(scope="module")
def channel_mean_onnx(tmp_path_factory):
    """A model whose logits are the per-channel means of a 10-channel input: we control its outputs."""
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return export_onnx(model, tmp_path_factory.mktemp("acc") / "means.onnx", torch.randn(1, 10, 2, 2)).path


def assert_well_formed(result: LatencyResult, batch_size: int, min_runs: int) -> None:
    assert result.batch_size == batch_size
    assert result.error is None
    assert result.runs >= min_runs
    assert result.warmup_runs >= 1
    assert 0 < result.min_ms <= result.p50_ms <= result.p90_ms <= result.p99_ms
    assert result.min_ms <= result.mean_ms
    assert result.std_ms >= 0
    assert result.throughput_ips == pytest.approx(batch_size * 1000.0 / result.p50_ms)


def test_onnxruntime_results_follow_the_protocol(tiny_onnx):
    results = benchmark_onnxruntime(tiny_onnx, INPUT_SHAPE, (1, 4), threads=1, **FAST)
    assert [r.batch_size for r in results] == [1, 4]
    for result, batch in zip(results, (1, 4)):
        assert_well_formed(result, batch, FAST["min_runs"])
        assert result.backend == "onnxruntime:cpu"
        assert result.threads == 1
        assert result.precision == "fp32"


def test_torch_results_follow_the_protocol_and_leave_the_model_alone():
    net = tiny_net().train()
    threads_before = torch.get_num_threads()
    results = benchmark_torch(net, INPUT_SHAPE, (1, 4), threads=1, **FAST)
    for result, batch in zip(results, (1, 4)):
        assert_well_formed(result, batch, FAST["min_runs"])
        assert result.backend == "torch:cpu" and result.threads == 1
    assert net.training is True
    assert torch.get_num_threads() == threads_before


def test_measure_latency_stops_once_three_window_medians_agree():
    calls = []

    def run_once():
        calls.append(1)
        time.sleep(0.005)

    started = time.perf_counter()
    timings = measure_latency(run_once, warmup_seconds=0.0, min_runs=7, min_seconds_per_batch=0.0,
                              max_seconds_per_batch=2.0)
    w = window_size(7)
    assert w == 5
    assert timings.stable is True
    assert len(timings.times_ms) == 3 * w                       # the statistics use the last 3 windows only
    assert len(calls) == timings.warmup_runs + 3 * w             # earlier windows count as extended warm-up
    assert len(timings.window_medians_ms) == 3
    last3 = timings.window_medians_ms
    assert (max(last3) - min(last3)) / min(last3) <= 0.05
    assert [float(np.median(timings.times_ms[i * w:(i + 1) * w])) for i in range(3)] == pytest.approx(last3)
    assert min(timings.times_ms) >= 4.9
    assert time.perf_counter() - started < 2.0


def test_fast_runs_get_windows_as_long_as_the_minimum_time():
    timings = measure_latency(lambda: time.sleep(0.0005), warmup_seconds=0.0, min_runs=20,
                              min_seconds_per_batch=0.2, max_seconds_per_batch=3.0)
    # about 0.2 s / 0.6 ms = 300 runs when the window is fixed: w = n // 3, not the minimum of 10
    assert timings.stable is True
    assert len(timings.times_ms) >= 150 and len(timings.times_ms) % 3 == 0
    n = len(timings.times_ms)
    assert timings.window_medians_ms == pytest.approx(
        [float(np.median(timings.times_ms[k * n // 3:(k + 1) * n // 3])) for k in range(3)])


def test_measure_latency_that_keeps_drifting_is_not_stable(caplog):
    calls = []

    def run_once():                      # the i-th call sleeps i ms: every window is slower than the last
        calls.append(1)
        time.sleep(0.001 * len(calls))

    timings = measure_latency(run_once, warmup_seconds=0.0, min_runs=5, min_seconds_per_batch=0.0,
                              max_seconds_per_batch=0.3)
    assert timings.stable is False
    assert "not stable" in caplog.text
    # 1 warm-up call, then about 23 timed runs fit in 0.3 s; windows of 5, judged at 15 and 20 runs
    medians = timings.window_medians_ms
    assert len(medians) == 3 and medians == sorted(medians)
    assert (medians[-1] - medians[0]) / medians[0] > 0.05
    assert len(timings.times_ms) == 15 and timings.warmup_runs == len(calls) - 15
    assert min(timings.times_ms) >= 6.9                           # only the last 15 runs are kept
    assert summarize(timings, backend="x", batch_size=1, threads=1).stable is False


def test_measure_latency_cap_wins_over_min_runs():
    started = time.perf_counter()
    timings = measure_latency(lambda: time.sleep(0.02), warmup_seconds=0.0, min_runs=1000,
                              min_seconds_per_batch=1.0, max_seconds_per_batch=0.2)
    assert 5 <= len(timings.times_ms) < 1000                     # fewer than 3 windows: every run is kept
    assert timings.stable is False and timings.window_medians_ms == []
    assert time.perf_counter() - started < 1.0
    assert min(timings.times_ms) >= 19.0  # each run is timed on its own, in ms


def test_models_measured_in_turns_give_each_its_own_median_and_p90(tmp_path, tiny_onnx):
    wide = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    heavy = export_onnx(wide, tmp_path / "wide.onnx", torch.randn(1, *INPUT_SHAPE)).path
    (light50, light90), (heavy50, heavy90) = latency_in_turns([tiny_onnx, heavy], INPUT_SHAPE, 8, threads=1,
                                                          warmup_seconds=0.05, seconds=0.3, min_runs=8)
    assert 0 < light50 <= light90 and 0 < heavy50 <= heavy90
    assert heavy50 > 3 * light50        # 64-wide 3x3 convs against 8-wide: an order of magnitude more MACs
    with pytest.raises(ValueError, match="need models"):
        latency_in_turns([], INPUT_SHAPE, 8)


def test_measure_latency_rejects_bad_settings():
    with pytest.raises(ValueError):
        measure_latency(lambda: None, min_runs=0)
    with pytest.raises(ValueError):
        measure_latency(lambda: None, max_seconds_per_batch=0)
    with pytest.raises(ValueError):
        measure_latency(lambda: None, stability=-0.01)


def test_summary_statistics_of_known_times():
    result = summarize(Timings(times_ms=[float(v) for v in range(1, 102)], warmup_runs=3, stable=True,
                               window_medians_ms=[]), backend="x", batch_size=8, threads=2)
    assert (result.p50_ms, result.p90_ms, result.p99_ms) == (51.0, 91.0, 100.0)
    assert result.mean_ms == 51.0 and result.min_ms == 1.0
    assert result.std_ms == pytest.approx(np.std(np.arange(1, 102), ddof=1))
    assert result.throughput_ips == pytest.approx(8 * 1000 / 51.0)
    assert (result.runs, result.warmup_runs) == (101, 3)
    assert result.stable is True and result.to_dict()["stable"] is True
    assert failed_result(backend="x", batch_size=8, threads=2, error="out of memory").stable is None


def test_relative_spread_and_window_size():
    assert relative_spread([2.0, 2.1, 1.9]) == pytest.approx(0.2 / 1.9)
    assert relative_spread([3.0, 3.0, 3.0]) == 0.0 and relative_spread([0.0, 1.0, 1.0]) == math.inf
    assert [window_size(n) for n in (1, 10, 11, 20, 100)] == [5, 5, 6, 10, 50]


def one_hot_images(labels: np.ndarray) -> np.ndarray:
    """(N, 10, 2, 2) images whose channel means rank the classes: the label first, then 0, 1, 2, ..."""
    n = labels.shape[0]
    logits = np.tile(-np.arange(10, dtype=np.float32), (n, 1))  # class 0 > class 1 > ...
    logits[np.arange(n), labels] = 100.0
    return np.repeat(np.repeat(logits[:, :, None, None], 2, axis=2), 2, axis=3)


def test_accuracy_is_one_when_the_model_outputs_the_labels(channel_mean_onnx):
    labels = np.random.default_rng(0).integers(0, 10, size=300)
    acc = evaluate_onnx(channel_mean_onnx, one_hot_images(labels), labels, batch_size=64)
    assert (acc.top1, acc.top5, acc.num_images) == (1.0, 1.0, 300)


def test_accuracy_drops_with_shuffled_labels(channel_mean_onnx):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, size=400)
    shuffled = rng.permutation(labels)
    acc = evaluate_onnx(channel_mean_onnx, one_hot_images(labels), shuffled, batch_size=128)
    # the image's own label ranks first, then classes 0, 1, 2, 3, ...: top-k is decidable per image
    expected_top1 = np.mean(shuffled == labels)
    rank_of = lambda true, asked: 0 if asked == true else 1 + asked - (asked > true)  # noqa: E731
    expected_top5 = np.mean([rank_of(t, a) < 5 for t, a in zip(labels, shuffled)])
    assert acc.top1 == pytest.approx(expected_top1) and acc.top1 < 0.5
    assert acc.top5 == pytest.approx(expected_top5) and acc.top1 < acc.top5 < 1.0


def test_accuracy_from_batches_equals_accuracy_from_one_array(channel_mean_onnx):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, size=250)
    asked = np.where(rng.random(250) < 0.7, labels, rng.integers(0, 10, size=250))
    x = one_hot_images(labels)
    whole = evaluate_onnx(channel_mean_onnx, x, asked, topk=(1, 3, 5))
    batches = ((x[i : i + 100], asked[i : i + 100]) for i in range(0, 250, 100))
    streamed = evaluate_onnx(channel_mean_onnx, batches, batch_size=64, topk=(1, 3, 5))
    assert streamed == whole
    assert sorted(whole.by_k) == [1, 3, 5]
    assert whole.top1 <= whole.by_k[3] <= whole.top5


def test_accuracy_rejects_inconsistent_inputs(channel_mean_onnx):
    x = one_hot_images(np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="labels must be in"):
        evaluate_onnx(channel_mean_onnx, x, np.array([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        evaluate_onnx(channel_mean_onnx, x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="labels are required"):
        evaluate_onnx(channel_mean_onnx, x)


def test_constant_output_is_not_counted_correct_for_every_label(tmp_path):
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 10))
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.zero_()
    path = export_onnx(model, tmp_path / "const.onnx", torch.randn(1, 10, 2, 2)).path
    labels = np.arange(10)
    acc = evaluate_onnx(path, one_hot_images(labels), labels)
    assert acc.top1 == pytest.approx(0.1)  # ties go to the lowest class index, like argmax
    assert acc.top5 == pytest.approx(0.5)


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_providers_explain_themselves_when_absent(tiny_onnx, provider):
    wanted = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[provider]
    if wanted in ort.get_available_providers():
        pytest.skip(f"{wanted} is available here")
    with pytest.raises(BackendUnavailable, match=r"pip install 'interprune\[gpu\]'.*CUDA GPU"):
        benchmark_onnxruntime(tiny_onnx, INPUT_SHAPE, (1,), provider=provider, **FAST)
    assert issubclass(BackendUnavailable, RuntimeError)


def test_unknown_provider_is_a_value_error(tiny_onnx):
    with pytest.raises(ValueError, match="unknown provider"):
        benchmark_onnxruntime(tiny_onnx, INPUT_SHAPE, (1,), provider="tpu")


def test_torch_cuda_explains_itself_when_absent():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(BackendUnavailable, match="CUDA"):
        benchmark_torch(tiny_net(), INPUT_SHAPE, (1,), device="cuda", **FAST)


def test_environment_describes_the_machine():
    env = environment()
    for key in ("python", "torch", "onnx", "onnxruntime", "onnxruntime_providers", "tensorrt", "cpu",
                "logical_cores", "torch_threads", "platform", "cuda_available"):
        assert key in env
    assert env["torch"] == torch.__version__
    assert env["onnxruntime"] == ort.__version__
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert env["logical_cores"] >= 1 and env["torch_threads"] >= 1
    if env["cuda_available"]:
        assert env["cuda_device"]
    json.dumps(env)


def result(batch: int, p50: float, error: str | None = None) -> LatencyResult:
    nan = math.nan
    if error:
        return LatencyResult("onnxruntime:cpu", batch, 0, 0, nan, nan, nan, nan, nan, nan, nan, 1, error=error)
    return LatencyResult("onnxruntime:cpu", batch, 20, 5, p50, p50 * 1.1, p50 * 1.2, p50, 0.1, p50 * 0.9,
                         batch * 1000 / p50, 1)


def test_speedup_table_arithmetic():
    original = [result(64, 40.0), result(1, 10.0), result(8, 12.0)]
    pruned = [result(1, 4.0), result(64, 20.0)]  # batch 8 missing: left out
    rows = speedup_table(original, pruned, macs_ratio=2.5)
    assert [r["batch_size"] for r in rows] == [1, 64]
    assert rows[0]["original_p50_ms"] == 10.0 and rows[0]["pruned_p50_ms"] == 4.0
    assert rows[0]["measured_speedup"] == pytest.approx(2.5)
    assert rows[0]["speedup_vs_macs"] == pytest.approx(1.0)
    assert rows[1]["measured_speedup"] == pytest.approx(2.0)
    assert rows[1]["speedup_vs_macs"] == pytest.approx(0.8)
    assert all(r["macs_ratio"] == 2.5 for r in rows)


def test_speedup_table_with_a_failed_measurement_and_bad_ratio():
    rows = speedup_table([result(64, 40.0)], [result(64, 0.0, error="out of memory")], macs_ratio=2.0)
    assert rows[0]["measured_speedup"] is None and rows[0]["pruned_p50_ms"] is None
    with pytest.raises(ValueError, match="macs_ratio"):
        speedup_table([], [], macs_ratio=0.0)


def test_latency_result_to_dict_is_json_with_nan_as_null():
    failed = json.loads(json.dumps(result(4, 0.0, error="boom").to_dict()))
    assert failed["p50_ms"] is None and failed["error"] == "boom" and failed["runs"] == 0
    ok = result(4, 2.0).to_dict()
    assert ok["p50_ms"] == 2.0 and ok["throughput_ips"] == 2000.0 and ok["backend"] == "onnxruntime:cpu"
