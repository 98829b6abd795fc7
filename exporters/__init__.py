"""From a PyTorch module to numbers on a target: ONNX export with its own checks, TensorRT engines, and one
latency protocol for every backend (ONNX Runtime, PyTorch, TensorRT).

Knows nothing of gRPC, jobs or `pruning/`: functions take modules, arrays and paths and return dataclasses.
TensorRT and GPU execution providers are the optional `gpu` extra (`pip install 'interprune[gpu]'`).
"""

from .benchmark import (
    BackendUnavailable,
    LatencyResult,
    benchmark_onnxruntime,
    benchmark_torch,
    measure_latency,
    latency_in_turns,
    speedup_table,
)
from .environment import environment
from .onnx import ExportError, NonFiniteError, OnnxExport, Parity, ParityError, check_parity, export_onnx
from .onnx_accuracy import OnnxAccuracy, evaluate_onnx
from .tensorrt import (
    EngineBuild,
    EngineBuildError,
    PrecisionReport,
    SilentFallbackError,
    TensorRTUnavailable,
    benchmark_engine,
    build_engine,
    check_layer_precisions,
    engine_cache_key,
    preferred_channel_multiple,
    profile_shapes,
    tensorrt_available,
)

__all__ = [
    "BackendUnavailable",
    "EngineBuild",
    "EngineBuildError",
    "ExportError",
    "LatencyResult",
    "NonFiniteError",
    "OnnxAccuracy",
    "OnnxExport",
    "Parity",
    "ParityError",
    "PrecisionReport",
    "SilentFallbackError",
    "TensorRTUnavailable",
    "benchmark_engine",
    "benchmark_onnxruntime",
    "benchmark_torch",
    "build_engine",
    "check_layer_precisions",
    "check_parity",
    "engine_cache_key",
    "environment",
    "evaluate_onnx",
    "export_onnx",
    "measure_latency",
    "latency_in_turns",
    "preferred_channel_multiple",
    "profile_shapes",
    "speedup_table",
    "tensorrt_available",
]
