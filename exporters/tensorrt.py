"""TensorRT engines from ONNX files: build (fp32 / fp16 / int8), check what precision the layers really
run in, and benchmark with the common latency protocol of `exporters.benchmark`.

`tensorrt` is an optional extra (`pip install 'interprune[gpu]'`) and needs an NVIDIA GPU; it is imported
only inside the functions that need it. Without it, `build_engine` and `benchmark_engine` raise
`TensorRTUnavailable` with the reason from `tensorrt_available()`. The pure functions (`profile_shapes`,
`engine_cache_key`, `check_layer_precisions`, `preferred_channel_multiple`) work everywhere.

Written against the TensorRT 10 Python API (explicit-batch networks, `execute_async_v3`, named I/O tensors).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .benchmark import (
    BackendUnavailable,
    LatencyResult,
    failed_result,
    measure_latency,
    random_batch,
    summarize,
)
from .onnx import ExportError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")

NOT_INSTALLED = "tensorrt is not installed: pip install 'interprune[gpu]' on a machine with an NVIDIA GPU"
NO_GPU = "no CUDA GPU visible"

#: Reduced precisions that count as "ran as requested" for each requested precision. int8 falling back to
#: fp16 everywhere is a silent fallback too (usually missing calibration scales).
_ACCEPTED = {"fp16": {"fp16", "bf16", "int8", "fp8"}, "int8": {"int8", "fp8"}}

#: Substrings (lower case) of a layer's "LayerType"/"ParameterType" that mark a compute-heavy layer:
#: CaskConvolution, CaskGemmConvolution, CaskDeconvolution, Convolution, MatrixMultiply, gemm, FullyConnected.
_COMPUTE_MARKERS = ("conv", "gemm", "matrixmultiply", "fullyconnected")


class TensorRTUnavailable(BackendUnavailable):
    """TensorRT or a CUDA GPU is not available here (a `RuntimeError`, like every `BackendUnavailable`)."""


class EngineBuildError(ExportError):
    """TensorRT could not parse the ONNX file or build an engine from it."""


class SilentFallbackError(EngineBuildError):
    """fp16/int8 was requested but (nearly) all compute layers of the engine run in a wider precision."""


# --------------------------------------------------------------------------------------------------
# availability


def tensorrt_available() -> tuple[bool, str]:
    """(True, "TensorRT <version> on <GPU>") or (False, why not) — the reason is meant for skip messages."""
    try:
        import tensorrt as trt
    except Exception:  # noqa: BLE001 - ImportError or a broken install: either way not usable
        return False, NOT_INSTALLED
    try:
        import torch

        if not torch.cuda.is_available():
            return False, NO_GPU
        return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name()}"
    except Exception as exc:  # noqa: BLE001
        return False, f"{NO_GPU} ({exc})"


def _require_tensorrt():
    """Import and return the `tensorrt` module, or raise `TensorRTUnavailable`."""
    ok, reason = tensorrt_available()
    if not ok:
        raise TensorRTUnavailable(reason)
    import tensorrt as trt

    return trt


# --------------------------------------------------------------------------------------------------
# pure logic


def profile_shapes(
    input_shape: Sequence[int], min_batch: int, opt_batch: int, max_batch: int
) -> dict[str, tuple[int, ...]]:
    """Optimisation-profile shapes {"min", "opt", "max"} -> (batch, C, H, W) for a (C, H, W) input.

    Raises `ValueError` unless `input_shape` has three positive ints and 1 <= min <= opt <= max.
    """
    dims = tuple(input_shape)
    if len(dims) != 3 or not all(_is_positive_int(d) for d in dims):
        raise ValueError(f"input_shape must be (C, H, W) with positive integer sizes, got {dims!r}")
    batches = {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch}
    for name, value in batches.items():
        if not _is_positive_int(value):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    return {"min": (int(min_batch), *map(int, dims)), "opt": (int(opt_batch), *map(int, dims)),
            "max": (int(max_batch), *map(int, dims))}


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def engine_cache_key(
    onnx_bytes_sha256: str,
    precision: str,
    profile: Mapping[str, Sequence[int]],
    trt_version: str,
    device_name: str,
) -> str:
    """A hex sha256 naming an engine: same ONNX bytes, precision, profile, TensorRT version and GPU -> same key.

    An engine is only valid for the TensorRT version and GPU model it was built with, so both are part of
    the key. The profile must have "min", "opt" and "max".
    """
    digest = onnx_bytes_sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"onnx_bytes_sha256 must be a 64-character hex sha256, got {onnx_bytes_sha256!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if set(profile) != {"min", "opt", "max"}:
        raise ValueError(f"profile must have exactly the keys min, opt, max, got {sorted(profile)}")
    payload = {
        "schema": 1,
        "onnx_sha256": digest,
        "precision": precision,
        "profile": {k: [int(d) for d in profile[k]] for k in ("min", "opt", "max")},
        "tensorrt": str(trt_version),
        "device": str(device_name),
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def preferred_channel_multiple(precision: str) -> int:
    """Channel count multiple that keeps TensorRT's fastest kernels free of padding, for pruning to round to.

    - fp16 / bf16: 8 — tensor-core kernels use channel-major layouts with channel % 8 == 0 (16 bytes).
    - fp32: 8 — TensorRT runs fp32 convolutions as TF32 on tensor cores by default (Ampere+), which need
      channel % 4 == 0; 8 is used so one pruned model suits fp32 and fp16 engines alike.
    - int8: 32 — int8 kernels use 32-wide channel-vectorised layouts (NC/32HW32); other counts are padded.
    """
    multiples = {"fp32": 8, "tf32": 8, "fp16": 8, "bf16": 8, "int8": 32}
    try:
        return multiples[precision]
    except KeyError:
        raise ValueError(f"precision must be one of {sorted(multiples)}, got {precision!r}") from None


@dataclass(frozen=True)
class PrecisionReport:
    """Per-precision layer counts of an engine, from the engine inspector's layer information.

    `layers_by_precision` counts every layer whose precision could be read; `compute_by_precision` only
    compute layers (convolutions, matrix multiplies). `reduced_fraction` is the fraction of compute layers
    running in a precision accepted for `requested` (None for fp32 or when there is no compute layer).
    `wide_compute_layers` names the compute layers that did not.
    """

    requested: str
    layers_by_precision: dict[str, int]
    compute_by_precision: dict[str, int]
    compute_layers: int
    reduced_fraction: float | None
    wide_compute_layers: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict."""
        return {
            "requested": self.requested,
            "layers_by_precision": dict(self.layers_by_precision),
            "compute_by_precision": dict(self.compute_by_precision),
            "compute_layers": self.compute_layers,
            "reduced_fraction": self.reduced_fraction,
            "wide_compute_layers": list(self.wide_compute_layers),
        }


def layer_precision(layer: Mapping[str, Any]) -> str | None:
    """A layer's precision ("fp32", "fp16", "bf16", "int8", "fp8", "int32", ...) or None if unreadable.

    Read from an explicit "Precision" key when present, else from the "Format/Datatype" of the first
    input (the data the kernel reads; weights are listed apart), else of the first output.
    """
    if layer.get("Precision"):
        return normalize_precision(str(layer["Precision"]))
    for key in ("Inputs", "Outputs"):
        tensors = layer.get(key) or []
        if tensors and isinstance(tensors[0], Mapping) and tensors[0].get("Format/Datatype"):
            return normalize_precision(str(tensors[0]["Format/Datatype"]))
    return None


_PRECISION_PATTERNS = (  # order matters: bfloat16 before float, int8 before int
    ("bf16", r"bfloat16|\bbf16\b"),
    ("fp8", r"\bfp8\b|float8"),
    ("fp16", r"\bfp16\b|\bhalf\b|float16"),
    ("int8", r"\bint8\b"),
    ("uint8", r"\buint8\b"),
    ("int32", r"\bint32\b"),
    ("int64", r"\bint64\b"),
    ("bool", r"\bbool\b"),
    ("fp32", r"\bfp32\b|\bfloat\b|float32|\btf32\b"),
)


def normalize_precision(text: str) -> str | None:
    """Map a TensorRT datatype/format description ("Half", "Channel major FP16 format where channel % 8 == 0",
    "Row major linear FP32", "Int8", "DataType.HALF") to a short precision name, or None if unknown."""
    lowered = text.lower().replace("datatype.", " ").replace("_", " ")
    for name, pattern in _PRECISION_PATTERNS:
        if re.search(pattern, lowered):
            return name
    return None


def is_compute_layer(layer: Mapping[str, Any]) -> bool:
    """True for convolution / matrix-multiply layers (by "LayerType" or "ParameterType")."""
    kinds = f"{layer.get('LayerType', '')} {layer.get('ParameterType', '')}".lower()
    return any(marker in kinds for marker in _COMPUTE_MARKERS)


def check_layer_precisions(
    layer_info: Iterable[Mapping[str, Any]], requested: str, *, min_reduced_fraction: float = 0.1
) -> PrecisionReport:
    """Count layers per precision and detect a silent fallback.

    `layer_info` is the "Layers" list of the engine inspector's JSON (`ProfilingVerbosity.DETAILED`). For
    requested "fp16" (accepting fp16/bf16/int8/fp8) or "int8" (accepting int8/fp8), raises
    `SilentFallbackError` when fewer than `min_reduced_fraction` of the compute layers run in an accepted
    precision — i.e. (nearly) all of them stayed wide. fp32 is never an error; neither is an engine with
    no recognisable compute layer (Myelin-fused graphs may hide them), which gives `reduced_fraction=None`.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"requested precision must be one of {PRECISIONS}, got {requested!r}")
    all_counts: Counter[str] = Counter()
    compute_counts: Counter[str] = Counter()
    wide: list[str] = []
    accepted = _ACCEPTED.get(requested)
    for layer in layer_info:
        if not isinstance(layer, Mapping):
            continue  # LAYER_NAMES_ONLY verbosity gives bare names: nothing to count
        precision = layer_precision(layer)
        if precision is None:
            continue
        all_counts[precision] += 1
        if is_compute_layer(layer):
            compute_counts[precision] += 1
            if accepted is not None and precision not in accepted:
                wide.append(str(layer.get("Name", "?")))
    n_compute = sum(compute_counts.values())
    fraction = None if accepted is None or n_compute == 0 else 1.0 - len(wide) / n_compute
    report = PrecisionReport(requested, dict(all_counts), dict(compute_counts), n_compute, fraction, tuple(wide))
    if fraction is not None and fraction < min_reduced_fraction:
        raise SilentFallbackError(
            f"{requested} was requested but {len(wide)} of {n_compute} compute layers run in "
            f"{_format_counts(compute_counts)} (only {fraction:.0%} in {'/'.join(sorted(accepted))}); "
            f"{_FALLBACK_HINT[requested]}; "
            f"first wide layers: {', '.join(wide[:5])}"
        )
    return report


_FALLBACK_HINT = {
    "fp16": "this GPU may lack fast fp16 kernels for these layers (check its compute capability)",
    "int8": "calibration may not have produced scales for these layers, or the GPU lacks int8 kernels for them",
}


def _format_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {p}" for p, n in sorted(counts.items(), key=lambda kv: -kv[1]))


# --------------------------------------------------------------------------------------------------
# build


@dataclass(frozen=True)
class EngineBuild:
    """What `build_engine` wrote. Sizes in bytes, times in seconds; `profile` as in `profile_shapes`."""

    engine_path: Path
    precision: str
    input_name: str
    profile: dict[str, tuple[int, ...]]
    size_bytes: int
    build_seconds: float
    cache_key: str
    tensorrt_version: str
    device_name: str
    precision_report: PrecisionReport
    layer_info_path: Path | None = None
    timing_cache: Path | None = None
    calibration_cache: Path | None = None


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    precision: str = "fp16",
    input_shape: Sequence[int],
    min_batch: int = 1,
    opt_batch: int = 64,
    max_batch: int = 256,
    calibration_batches: Iterable[np.ndarray] | None = None,
    calibration_cache: str | Path | None = None,
    timing_cache: str | Path | None = None,
    workspace_gb: float = 4.0,
    min_reduced_fraction: float = 0.1,
) -> EngineBuild:
    """Build a TensorRT engine for `onnx_path` and write it (atomically) to `engine_path`.

    - precision "fp32" | "fp16" | "int8"; int8 also enables fp16 for layers without int8 kernels and
      needs `calibration_batches` ((B, C, H, W) float32 arrays, preprocessed like the evaluation data, all
      with the batch size of the first one) or an existing `calibration_cache` (read if present, written
      after calibration).
    - one optimisation profile covering batch sizes [min_batch, max_batch], tuned for `opt_batch`.
    - `timing_cache` (file) is loaded when present and saved after the build, to speed up rebuilds.
    - the engine's per-layer information (`ProfilingVerbosity.DETAILED`) is checked with
      `check_layer_precisions` (raises `SilentFallbackError`) and saved next to the engine as
      `<engine>.layers.json`.

    Raises `TensorRTUnavailable` without TensorRT or a GPU, `EngineBuildError` when parsing or building fails.
    """
    trt = _require_tensorrt()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    calibration_cache = Path(calibration_cache) if calibration_cache else None
    if precision == "int8" and calibration_batches is None and not (calibration_cache and calibration_cache.exists()):
        raise ValueError("int8 needs calibration_batches or an existing calibration_cache")
    profile = profile_shapes(input_shape, min_batch, opt_batch, max_batch)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    timing_cache = Path(timing_cache) if timing_cache else None
    started = time.perf_counter()

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    _parse_onnx(parser, onnx_path)
    input_name = _single_input_name(network)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(input_name, profile["min"], profile["opt"], profile["max"])
    config.add_optimization_profile(trt_profile)
    _load_timing_cache(config, timing_cache)

    calibrator = None
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        calibrator = _setup_int8(trt, builder, config, input_name, input_shape, calibration_batches,
                                 calibration_cache)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build a {precision} engine from {onnx_path} "
                               f"(see the TensorRT log above for the failing layer)")
    engine_bytes = bytes(serialized)
    _save_timing_cache(config, timing_cache)
    del calibrator  # keep it alive until the build is done

    layers = _inspect_layers(trt, logger, engine_bytes)
    report = check_layer_precisions(layers, precision, min_reduced_fraction=min_reduced_fraction)
    _atomic_write(engine_path, engine_bytes)
    layer_info_path = engine_path.with_name(engine_path.name + ".layers.json")
    _atomic_write(layer_info_path, json.dumps(layers, indent=1).encode())

    device_name = _device_name()
    result = EngineBuild(
        engine_path=engine_path,
        precision=precision,
        input_name=input_name,
        profile=profile,
        size_bytes=len(engine_bytes),
        build_seconds=time.perf_counter() - started,
        cache_key=engine_cache_key(_sha256_file(onnx_path), precision, profile, trt.__version__, device_name),
        tensorrt_version=str(trt.__version__),
        device_name=device_name,
        precision_report=report,
        layer_info_path=layer_info_path,
        timing_cache=timing_cache,
        calibration_cache=calibration_cache,
    )
    log.info("built %s engine %s (%d bytes) in %.1f s: compute layers %s", precision, engine_path,
             result.size_bytes, result.build_seconds, report.compute_by_precision)
    return result


def _parse_onnx(parser, onnx_path: Path) -> None:
    """Parse the ONNX file into the network; raise `EngineBuildError` listing every parser error."""
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_path}")
    if parser.parse_from_file(str(onnx_path)):
        return
    errors = [_describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
    raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path}: " + "; ".join(errors or ["no details"]))


def _describe_parser_error(error) -> str:
    """'node <name> (<op>): <desc>' from an IParserError, using what this TensorRT version offers."""
    name, op = (_call_or_none(error, attr) for attr in ("node_name", "node_operator"))
    desc = _call_or_none(error, "desc") or str(error)
    where = f"node {name or '?'}" + (f" ({op})" if op else "") + ": " if (name or op) else ""
    return where + desc


def _call_or_none(obj, method: str) -> str | None:
    """`str(obj.method())`, or None when this TensorRT version lacks the method or it fails."""
    getter = getattr(obj, method, None)
    try:
        value = getter() if callable(getter) else None
    except Exception:  # noqa: BLE001
        return None
    return str(value) if value not in (None, "") else None


def _single_input_name(network) -> str:
    if network.num_inputs != 1:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise EngineBuildError(f"expected a network with one input, got {network.num_inputs}: {names}")
    return network.get_input(0).name


def _load_timing_cache(config, path: Path | None) -> None:
    """Attach a timing cache to the builder config, seeded from `path` when the file exists."""
    data = path.read_bytes() if path and path.exists() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, False)  # False: do not accept a cache from another TensorRT/GPU


def _save_timing_cache(config, path: Path | None) -> None:
    if path is None:
        return
    cache = config.get_timing_cache()
    if cache is not None:
        _atomic_write(path, bytes(cache.serialize()))


def _setup_int8(trt, builder, config, input_name: str, input_shape: Sequence[int],
                batches: Iterable[np.ndarray] | None, cache_path: Path | None):
    """Enable INT8 with an entropy calibrator; return the calibrator (it must outlive the build).

    TensorRT calibrates at the calibration profile's (opt) shape, so a fixed-shape calibration profile is
    set at the batch size of the first calibration batch (batch 1 when only a cache is read).
    """
    config.set_flag(trt.BuilderFlag.INT8)
    iterator: Iterator[np.ndarray] = iter(batches) if batches is not None else iter(())
    first = next(iterator, None)
    calib_batch = int(first.shape[0]) if first is not None else 1
    shape = (calib_batch, *map(int, input_shape))
    calib_profile = builder.create_optimization_profile()
    calib_profile.set_shape(input_name, shape, shape, shape)
    config.set_calibration_profile(calib_profile)
    source = itertools.chain([first], iterator) if first is not None else iter(())
    calibrator = _make_calibrator(trt, source, shape, cache_path)
    config.int8_calibrator = calibrator
    return calibrator


def _make_calibrator(trt, batches: Iterator[np.ndarray], shape: tuple[int, ...], cache_path: Path | None):
    """An `IInt8EntropyCalibrator2` feeding `batches` of exactly `shape` from GPU memory (via torch)."""
    import torch

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._device = torch.empty(shape, dtype=torch.float32, device="cuda")
            self.batches_used = 0

        def get_batch_size(self) -> int:
            return shape[0]

        def get_batch(self, names):  # noqa: ARG002 - one input
            for batch in batches:
                array = np.ascontiguousarray(batch, dtype=np.float32)
                if array.shape != shape:
                    log.warning("calibration batch of shape %s skipped: expected %s", array.shape, shape)
                    continue
                self._device.copy_(torch.from_numpy(array))
                torch.cuda.synchronize()
                self.batches_used += 1
                return [int(self._device.data_ptr())]
            return None

        def read_calibration_cache(self):
            if cache_path is not None and cache_path.exists():
                log.info("using calibration cache %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache) -> None:
            if cache_path is not None:
                _atomic_write(cache_path, bytes(cache))

    return _EntropyCalibrator()


def _inspect_layers(trt, logger, engine_bytes: bytes) -> list[Any]:
    """The "Layers" list of the engine inspector's JSON for a serialized engine."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise EngineBuildError("TensorRT could not deserialize the engine it just built")
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    del inspector, engine  # before the runtime that created them
    return list(info.get("Layers", [])) if isinstance(info, dict) else list(info)


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else ""


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder and `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# benchmark


def benchmark_engine(
    engine_path: str | Path,
    input_shape: tuple[int, int, int],
    batch_sizes: Sequence[int] = (1, 64),
    *,
    precision: str = "",
    warmup_seconds: float = 1.0,
    min_runs: int = 20,
    min_seconds_per_batch: float = 1.0,
    max_seconds_per_batch: float = 10.0,
    seed: int = 0,
) -> list[LatencyResult]:
    """Latency of a serialized engine, one `LatencyResult` per batch size, by the common protocol.

    Each timed run is `execute_async_v3` on a dedicated CUDA stream followed by that stream's
    synchronisation; input and output live on the GPU (torch tensors). A batch size outside the engine's
    profile, or out of memory, gives a result with `error` set. `precision` is recorded as given (e.g.
    `EngineBuild.precision`). Backend label: "tensorrt:cuda".
    """
    trt = _require_tensorrt()
    if len(input_shape) != 3 or not all(_is_positive_int(d) for d in input_shape):
        raise ValueError(f"input_shape must be (C, H, W) with positive integer sizes, got {tuple(input_shape)!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise EngineBuildError(f"could not load {engine_path}: built with another TensorRT version or GPU?")
    settings = dict(warmup_seconds=warmup_seconds, min_runs=min_runs, min_seconds_per_batch=min_seconds_per_batch,
                    max_seconds_per_batch=max_seconds_per_batch)
    try:
        return _benchmark_loaded_engine(trt, engine, input_shape, batch_sizes, precision, seed, settings)
    finally:
        del engine  # engine (and its contexts) before the runtime that created it


def _benchmark_loaded_engine(trt, engine, input_shape, batch_sizes: Sequence[int], precision: str, seed: int,
                             settings: dict[str, Any]) -> list[LatencyResult]:
    """`benchmark_engine` once the engine is deserialized."""
    import torch

    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    if len(inputs) != 1:
        raise EngineBuildError(f"expected an engine with one input, got {inputs}")
    outputs = [n for n in names if n not in inputs]
    stream = torch.cuda.Stream()
    common = dict(backend="tensorrt:cuda", threads=torch.get_num_threads(), precision=precision,
                  device=torch.cuda.get_device_name())
    results = []
    for batch_size in batch_sizes:
        try:
            run_once = _engine_runner(trt, engine, context, stream, inputs[0], outputs,
                                      random_batch(batch_size, input_shape, seed))
            timings = measure_latency(run_once, **settings)
        except (ValueError, torch.cuda.OutOfMemoryError) as exc:
            log.warning("tensorrt batch %d: %s", batch_size, exc)
            results.append(failed_result(batch_size=batch_size, error=str(exc).splitlines()[0], **common))
            continue
        results.append(summarize(timings, batch_size=batch_size, **common))
    return results


def _engine_runner(trt, engine, context, stream, input_name: str, outputs: list[str], x: np.ndarray):
    """Bind device buffers for one batch and return a callable that runs it synchronously."""
    import torch

    if not context.set_input_shape(input_name, tuple(x.shape)):
        raise ValueError(f"input shape {tuple(x.shape)} is outside the engine's optimisation profile")
    x_dev = torch.from_numpy(x).to("cuda").to(torch_dtype(trt, engine.get_tensor_dtype(input_name)))
    buffers = {input_name: x_dev}
    for name in outputs:
        shape = tuple(context.get_tensor_shape(name))
        buffers[name] = torch.empty(shape, dtype=torch_dtype(trt, engine.get_tensor_dtype(name)), device="cuda")
    for name, tensor in buffers.items():
        context.set_tensor_address(name, int(tensor.data_ptr()))
    torch.cuda.synchronize()

    def run_once() -> None:
        if not context.execute_async_v3(stream.cuda_stream):
            raise EngineBuildError("execute_async_v3 failed")
        stream.synchronize()

    run_once.buffers = buffers  # keep the device memory alive as long as the runner
    return run_once


def torch_dtype(trt, dtype):
    """torch dtype for a TensorRT DataType (via numpy; bfloat16 has no numpy type)."""
    import torch

    if str(dtype).upper().endswith("BF16"):
        return torch.bfloat16
    return torch.from_numpy(np.empty(0, dtype=trt.nptype(dtype))).dtype
