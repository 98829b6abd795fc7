"""Exporters never report a NaN as a measurement: parity, accuracy and latency figures must be finite."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from exporters import NonFiniteError, Parity, ParityError, check_parity, evaluate_onnx, export_onnx
from exporters.benchmark import Timings, speedup_table, summarize
from exporters.onnx import _compare
from exporters.onnx_accuracy import topk_correct

NAN, INF = float("nan"), float("inf")


class Linear4(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_nan_outputs_fail_the_parity_check_instead_of_reporting_nan():
    reference = np.array([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(NonFiniteError, match=r"^the PyTorch outputs hold 1 non-finite value\(s\) \(NaN or infinite\) "
                                             r"of 4 over 2 inputs: parity cannot be measured"):
        _compare(reference, np.array([[1.0, NAN], [3.0, 4.0]]))
    with pytest.raises(NonFiniteError, match=r"^the ONNX Runtime outputs hold 2 non-finite"):
        _compare(np.array([[INF, -INF], [3.0, 4.0]]), reference)
    assert _compare(reference, reference).max_abs_error == 0.0


def test_nan_errors_and_bad_tolerances_never_pass():
    nan = Parity(NAN, NAN, NAN, 3, 0.0)
    with pytest.raises(ParityError, match=r"max_abs_error=nan exceeds atol=0.0001"):
        nan.assert_within(atol=1e-4)
    fine = Parity(1e-6, 1e-6, 1e-7, 3, 1.0)
    for bad in (NAN, INF, -1.0):
        with pytest.raises(ValueError, match="atol must be a finite number >= 0"):
            fine.assert_within(atol=bad)
    with pytest.raises(ValueError, match="rtol must be a finite number >= 0"):
        fine.assert_within(atol=1e-4, rtol=NAN)
    fine.assert_within(atol=np.float32(1e-4), rtol=0.01)


def test_nan_weights_fail_parity_and_onnx_accuracy_end_to_end(tmp_path):
    net = Linear4()
    with torch.no_grad():
        net.fc.weight[1, 2] = NAN
    exported = export_onnx(net, tmp_path / "nan.onnx", torch.zeros(1, 4, 1, 1))
    inputs = torch.rand(6, 4, 1, 1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NonFiniteError, match=r"^the PyTorch outputs hold 6 non-finite value\(s\) .* of 18 over 6 "
                                             r"inputs"):
        check_parity(exported.path, net, inputs)
    with pytest.raises(NonFiniteError, match=r"non-finite outputs \(NaN or infinite\) for 6 of 6 images"):
        evaluate_onnx(exported.path, inputs.numpy(), np.zeros(6, np.int64))
    with pytest.raises(NonFiniteError, match=r"^the parity inputs hold 1 non-finite value"):
        bad = inputs.clone()
        bad[0, 0, 0, 0] = NAN
        check_parity(exported.path, Linear4(), bad)


def test_topk_does_not_count_nan_rows_as_correct():
    logits = np.array([[2.0, 1.0], [NAN, 0.0]])
    labels = np.array([0, 0])
    with pytest.raises(NonFiniteError, match="for 1 of 2 images"):
        topk_correct(logits, labels, (1,))
    assert topk_correct(logits[:1], labels[:1], (1,)) == {1: 1}


def _timings(times):
    return Timings(times_ms=list(times), warmup_runs=1, stable=True, window_medians_ms=[])


@pytest.mark.parametrize("times, message", [
    ([1.0, NAN, 2.0], r"^onnxruntime:cpu batch 8: the run times are not finite, non-negative numbers \(3 runs, 1 "
                      r"NaN/inf\)"),
    ([1.0, INF], r"\(2 runs, 1 NaN/inf\)"),
    ([-1.0, 2.0], r"\(2 runs, 0 NaN/inf\)"),
    ([], r"\(0 runs, 0 NaN/inf\)"),
    ([0.0, 0.0, 0.0], r"^onnxruntime:cpu batch 8: the median run time is 0.0 ms, so the throughput would be "
                      r"infinite"),
])
def test_non_finite_latency_is_an_error(times, message):
    with pytest.raises(NonFiniteError, match=message):
        summarize(_timings(times), backend="onnxruntime:cpu", batch_size=8, threads=1)


def test_latency_figures_are_finite_and_speedup_needs_a_finite_ratio():
    result = summarize(_timings([1.0, 2.0, 3.0]), backend="x", batch_size=4, threads=1)
    assert all(math.isfinite(v) for v in (result.p50_ms, result.p99_ms, result.mean_ms, result.throughput_ips))
    for ratio in (NAN, INF, 0.0):
        with pytest.raises(ValueError, match="macs_ratio must be > 0"):
            speedup_table([result], [result], macs_ratio=ratio)
