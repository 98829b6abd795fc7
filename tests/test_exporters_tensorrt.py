"""TensorRT helpers (exporters/tensorrt.py): pure logic everywhere, engine build/benchmark on a GPU only."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from exporters import (
    BackendUnavailable,
    SilentFallbackError,
    TensorRTUnavailable,
    benchmark_engine,
    build_engine,
    check_layer_precisions,
    engine_cache_key,
    export_onnx,
    preferred_channel_multiple,
    profile_shapes,
    tensorrt_available,
)
from exporters.tensorrt import NOT_INSTALLED, NO_GPU, layer_precision, normalize_precision

TRT_OK, TRT_REASON = tensorrt_available()
INPUT_SHAPE = (3, 16, 16)


# --------------------------------------------------------------------------------------------------
# recorded layer information (engine inspector JSON, ProfilingVerbosity.DETAILED, TensorRT 10 style),
# trimmed to the keys we read. A 3-conv net with a linear head, built with BuilderFlag.FP16.

def _t(name: str, fmt: str, dims=(64, 8, 16, 16)) -> dict:
    return {"Name": name, "Location": "Device", "Dimensions": list(dims), "Format/Datatype": fmt}


FP16_NHWC8 = "Channel major FP16 format where channel % 8 == 0"
FP32_LINEAR = "Row major linear FP32"

FP16_ENGINE_LAYERS = [
    {"Name": "Reformatting CopyNode for Input Tensor 0 to /features.0/Conv + /features.2/Relu",
     "LayerType": "Reformat", "ParameterType": "Reformat",
     "Inputs": [_t("input", FP32_LINEAR, (64, 3, 16, 16))], "Outputs": [_t("r0", FP16_NHWC8, (64, 3, 16, 16))]},
    {"Name": "/features.0/Conv + /features.2/Relu", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
     "Inputs": [_t("r0", FP16_NHWC8, (64, 3, 16, 16))], "Outputs": [_t("a0", FP16_NHWC8)],
     "Weights": {"Type": "Half", "Count": 216}, "Bias": {"Type": "Half", "Count": 8},
     "TacticName": "sm80_xmma_fprop_implicit_gemm_f16f16_f16f16_f16_nhwckrsc_nhwc"},
    {"Name": "/features.3/Conv + /features.5/Relu", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
     "Inputs": [_t("a0", FP16_NHWC8)], "Outputs": [_t("a1", FP16_NHWC8)]},
    {"Name": "/features.6/Conv + /features.8/Relu", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
     "Inputs": [_t("a1", FP16_NHWC8)], "Outputs": [_t("a2", FP16_NHWC8)]},
    {"Name": "/pool/GlobalAveragePool", "LayerType": "CaskPooling", "ParameterType": "Pooling",
     "Inputs": [_t("a2", FP16_NHWC8)], "Outputs": [_t("p", FP16_NHWC8, (64, 8, 1, 1))]},
    {"Name": "/head/Gemm", "LayerType": "CaskGemmConvolution", "ParameterType": "Convolution",
     "Inputs": [_t("p", FP16_NHWC8, (64, 8, 1, 1))], "Outputs": [_t("l", FP16_NHWC8, (64, 10, 1, 1))]},
    {"Name": "Reformatting CopyNode for Output Tensor 0 to /head/Gemm", "LayerType": "Reformat",
     "ParameterType": "Reformat", "Inputs": [_t("l", FP16_NHWC8, (64, 10))], "Outputs": [_t("logits", FP32_LINEAR, (64, 10))]},
]

# The same network where the builder silently kept every kernel in fp32 (e.g. no fast fp16 kernels).
SILENT_FP32_ENGINE_LAYERS = [
    {"Name": "/features.0/Conv + /features.2/Relu", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
     "Inputs": [_t("input", FP32_LINEAR, (64, 3, 16, 16))], "Outputs": [_t("a0", FP32_LINEAR)],
     "TacticName": "sm80_xmma_fprop_implicit_gemm_tf32f32_tf32f32_f32_nchwkcrs_nchw"},
    {"Name": "/features.3/Conv + /features.5/Relu", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
     "Inputs": [_t("a0", FP32_LINEAR)], "Outputs": [_t("a1", FP32_LINEAR)]},
    {"Name": "/features.6/Conv + /features.8/Relu", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
     "Inputs": [_t("a1", FP32_LINEAR)], "Outputs": [_t("a2", FP32_LINEAR)]},
    {"Name": "/pool/GlobalAveragePool", "LayerType": "CaskPooling", "ParameterType": "Pooling",
     "Inputs": [_t("a2", FP32_LINEAR)], "Outputs": [_t("p", FP32_LINEAR, (64, 8, 1, 1))]},
    {"Name": "/head/Gemm", "LayerType": "CaskGemmConvolution", "ParameterType": "Convolution",
     "Inputs": [_t("p", FP32_LINEAR, (64, 8, 1, 1))], "Outputs": [_t("logits", FP32_LINEAR, (64, 10))]},
]


def test_fp16_engine_passes_with_counts():
    report = check_layer_precisions(FP16_ENGINE_LAYERS, "fp16")
    assert report.compute_layers == 4
    assert report.compute_by_precision == {"fp16": 4}
    assert report.layers_by_precision == {"fp32": 1, "fp16": 6}  # input reformat reads fp32
    assert report.reduced_fraction == 1.0
    assert report.wide_compute_layers == ()
    assert report.to_dict()["requested"] == "fp16"


def test_silent_fp32_engine_raises_for_fp16_and_int8():
    with pytest.raises(SilentFallbackError, match=r"fp16 was requested but 4 of 4 compute layers run in 4 fp32"):
        check_layer_precisions(SILENT_FP32_ENGINE_LAYERS, "fp16")
    with pytest.raises(SilentFallbackError, match="/features.0/Conv"):
        check_layer_precisions(SILENT_FP32_ENGINE_LAYERS, "int8")


def test_fp32_request_never_raises():
    report = check_layer_precisions(SILENT_FP32_ENGINE_LAYERS, "fp32")
    assert report.compute_by_precision == {"fp32": 4}
    assert report.reduced_fraction is None


def test_mostly_fp16_passes_but_threshold_is_honoured():
    layers = copy.deepcopy(FP16_ENGINE_LAYERS)
    layers[1]["Inputs"][0]["Format/Datatype"] = FP32_LINEAR  # first conv stayed fp32: 3 of 4 reduced
    report = check_layer_precisions(layers, "fp16")
    assert report.reduced_fraction == pytest.approx(0.75)
    assert report.wide_compute_layers == ("/features.0/Conv + /features.2/Relu",)
    with pytest.raises(SilentFallbackError):
        check_layer_precisions(layers, "fp16", min_reduced_fraction=0.9)


def test_int8_request_served_by_fp16_only_is_a_fallback_and_int8_kernels_pass():
    with pytest.raises(SilentFallbackError, match="int8 was requested"):
        check_layer_precisions(FP16_ENGINE_LAYERS, "int8")
    int8_layers = [
        {"Name": "conv1", "LayerType": "CaskConvolution",
         "Inputs": [_t("x", "Thirty-two wide channel vectorized row major Int8 format")], "Outputs": []},
        {"Name": "conv2", "LayerType": "CaskConvolution",
         "Inputs": [_t("y", "Channel major INT8 format where channel % 16 == 0")], "Outputs": []},
        {"Name": "fc", "LayerType": "CaskGemmConvolution", "Inputs": [_t("z", FP16_NHWC8)], "Outputs": []},
    ]
    report = check_layer_precisions(int8_layers, "int8")
    assert report.compute_by_precision == {"int8": 2, "fp16": 1}
    assert report.reduced_fraction == pytest.approx(2 / 3)


def test_explicit_precision_key_and_names_only_information():
    layers = [{"Name": "mm", "LayerType": "MatrixMultiply", "Precision": "FP32"},
              {"Name": "conv", "LayerType": "Convolution", "Precision": "Half"}]
    assert check_layer_precisions(layers, "fp16").compute_by_precision == {"fp32": 1, "fp16": 1}
    names_only = ["/features.0/Conv", "/head/Gemm"]  # LAYER_NAMES_ONLY verbosity: nothing to judge
    report = check_layer_precisions(names_only, "fp16")
    assert report.compute_layers == 0 and report.reduced_fraction is None
    with pytest.raises(ValueError, match="requested precision"):
        check_layer_precisions(layers, "fp64")


@pytest.mark.parametrize("text, expected", [
    ("Half", "fp16"), ("Float", "fp32"), ("Int8", "int8"), ("BFloat16", "bf16"), ("DataType.HALF", "fp16"),
    (FP16_NHWC8, "fp16"), (FP32_LINEAR, "fp32"), ("Row major linear Int32", "int32"),
    ("Thirty-two wide channel vectorized row major Int8 format", "int8"), ("Row major linear UInt8 format", "uint8"),
    ("Channel major BFloat16 format where channel % 8 == 0", "bf16"), ("Row major linear FP8 format", "fp8"),
    ("Unknown format", None),
])
def test_normalize_precision(text, expected):
    assert normalize_precision(text) == expected


def test_layer_precision_prefers_inputs_then_outputs():
    assert layer_precision({"Inputs": [], "Outputs": [_t("o", FP16_NHWC8)]}) == "fp16"
    assert layer_precision({"Inputs": [_t("i", FP32_LINEAR)], "Outputs": [_t("o", FP16_NHWC8)]}) == "fp32"
    assert layer_precision({"Name": "x"}) is None


# --------------------------------------------------------------------------------------------------
# profile shapes, cache keys, channel multiples

def test_profile_shapes():
    assert profile_shapes((3, 32, 32), 1, 64, 256) == {
        "min": (1, 3, 32, 32), "opt": (64, 3, 32, 32), "max": (256, 3, 32, 32)}
    assert profile_shapes([3, 8, 8], 4, 4, 4)["opt"] == (4, 3, 8, 8)


@pytest.mark.parametrize("shape, batches, message", [
    ((3, 32, 32), (8, 4, 16), "min_batch <= opt_batch <= max_batch"),
    ((3, 32, 32), (1, 32, 16), "min_batch <= opt_batch <= max_batch"),
    ((3, 32, 32), (0, 4, 16), "min_batch must be a positive integer"),
    ((3, 32, 32), (1, 4.0, 16), "opt_batch must be a positive integer"),
    ((3, 32, 32), (1, 4, True), "max_batch must be a positive integer"),
    ((32, 32), (1, 4, 16), "input_shape must be"),
    ((3, -1, 32), (1, 4, 16), "input_shape must be"),
    ((1, 3, 32, 32), (1, 4, 16), "input_shape must be"),
])
def test_profile_shapes_validation(shape, batches, message):
    with pytest.raises(ValueError, match=message):
        profile_shapes(shape, *batches)


KEY_ARGS = dict(
    onnx_bytes_sha256="ab" * 32,
    precision="fp16",
    profile={"min": (1, 3, 32, 32), "opt": (64, 3, 32, 32), "max": (256, 3, 32, 32)},
    trt_version="10.3.0",
    device_name="NVIDIA A100-SXM4-80GB",
)


def test_cache_key_is_stable_and_canonical():
    key = engine_cache_key(**KEY_ARGS)
    assert len(key) == 64 and int(key, 16) >= 0
    assert engine_cache_key(**KEY_ARGS) == key
    same = dict(KEY_ARGS, onnx_bytes_sha256="AB" * 32,
                profile={"max": [256, 3, 32, 32], "min": [1, 3, 32, 32], "opt": [64, 3, 32, 32]})
    assert engine_cache_key(**same) == key


@pytest.mark.parametrize("field, value", [
    ("onnx_bytes_sha256", "cd" * 32),
    ("precision", "int8"),
    ("profile", {"min": (1, 3, 32, 32), "opt": (32, 3, 32, 32), "max": (256, 3, 32, 32)}),
    ("trt_version", "10.4.0"),
    ("device_name", "NVIDIA H100 80GB HBM3"),
])
def test_cache_key_changes_with_each_field(field, value):
    assert engine_cache_key(**dict(KEY_ARGS, **{field: value})) != engine_cache_key(**KEY_ARGS)


@pytest.mark.parametrize("field, value", [
    ("onnx_bytes_sha256", "not-a-digest"), ("precision", "fp64"), ("profile", {"min": (1, 3, 32, 32)}),
])
def test_cache_key_validation(field, value):
    with pytest.raises(ValueError):
        engine_cache_key(**dict(KEY_ARGS, **{field: value}))


def test_preferred_channel_multiple():
    assert [preferred_channel_multiple(p) for p in ("fp32", "fp16", "int8")] == [8, 8, 32]
    with pytest.raises(ValueError):
        preferred_channel_multiple("fp64")


# --------------------------------------------------------------------------------------------------
# availability

def test_unavailable_reason_names_the_extra_or_the_gpu():
    if TRT_OK:
        pytest.skip(TRT_REASON)
    assert TRT_REASON in (NOT_INSTALLED,) or TRT_REASON.startswith(NO_GPU)
    if TRT_REASON == NOT_INSTALLED:
        assert "pip install 'interprune[gpu]'" in TRT_REASON and "NVIDIA GPU" in TRT_REASON


def test_build_and_benchmark_raise_when_unavailable(tmp_path):
    if TRT_OK:
        pytest.skip(TRT_REASON)
    with pytest.raises(TensorRTUnavailable, match="tensorrt|GPU") as info:
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", input_shape=INPUT_SHAPE)
    assert str(info.value) == TRT_REASON
    assert isinstance(info.value, BackendUnavailable) and isinstance(info.value, RuntimeError)
    with pytest.raises(TensorRTUnavailable):
        benchmark_engine(tmp_path / "m.engine", INPUT_SHAPE)


# --------------------------------------------------------------------------------------------------
# on a GPU with TensorRT

def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


@pytest.mark.gpu
@pytest.mark.skipif(not TRT_OK, reason=TRT_REASON)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_and_benchmark_engine(tmp_path, precision):
    onnx_path = export_onnx(_net(), tmp_path / "m.onnx", torch.randn(1, *INPUT_SHAPE)).path
    timing = tmp_path / "timing.cache"
    build = build_engine(onnx_path, tmp_path / "m.engine", precision=precision, input_shape=INPUT_SHAPE,
                         min_batch=1, opt_batch=8, max_batch=16, timing_cache=timing, workspace_gb=1)
    assert build.engine_path.is_file() and build.size_bytes == build.engine_path.stat().st_size
    assert build.layer_info_path.is_file() and timing.is_file()
    assert build.profile["max"] == (16, *INPUT_SHAPE)
    assert len(build.cache_key) == 64
    if precision == "fp16" and build.precision_report.reduced_fraction is not None:
        assert build.precision_report.reduced_fraction >= 0.1
    results = benchmark_engine(build.engine_path, INPUT_SHAPE, (1, 8, 32), precision=precision,
                               warmup_seconds=0.1, min_runs=10, min_seconds_per_batch=0.1,
                               max_seconds_per_batch=1.0)
    ok, outside = results[:2], results[2]
    for result in ok:
        assert result.error is None and result.runs >= 10
        assert result.p50_ms <= result.p90_ms <= result.p99_ms
        assert result.backend == "tensorrt:cuda" and result.precision == precision
    assert outside.error is not None and outside.runs == 0  # batch 32 > max_batch 16


@pytest.mark.gpu
@pytest.mark.skipif(not TRT_OK, reason=TRT_REASON)
def test_build_int8_engine_writes_and_reuses_the_calibration_cache(tmp_path):
    onnx_path = export_onnx(_net(), tmp_path / "m.onnx", torch.randn(1, *INPUT_SHAPE)).path
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((8, *INPUT_SHAPE), dtype=np.float32) for _ in range(4)]
    cache = tmp_path / "calib.cache"
    first = build_engine(onnx_path, tmp_path / "a.engine", precision="int8", input_shape=INPUT_SHAPE,
                         opt_batch=8, max_batch=16, calibration_batches=batches, calibration_cache=cache,
                         workspace_gb=1)
    assert cache.is_file() and cache.stat().st_size > 0
    assert first.precision_report.requested == "int8"
    second = build_engine(onnx_path, tmp_path / "b.engine", precision="int8", input_shape=INPUT_SHAPE,
                          opt_batch=8, max_batch=16, calibration_cache=cache, workspace_gb=1)
    assert second.engine_path.is_file()
