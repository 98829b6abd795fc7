"""What a device agent does with a model it was sent: build it for this hardware, time it, measure its accuracy.

    outcome = run_benchmark(Path("model.onnx"), BenchSettings(batch_sizes=(1, 8), input_shape=(3, 32, 32)),
                            evaluation=Path("eval.npz"))
    outcome.backend, outcome.latency, outcome.accuracy

Backend: TensorRT (``exporters.tensorrt.build_engine`` + ``benchmark_engine``; accuracy through the engine) when
``tensorrt_available()`` and the settings allow it, else ONNX Runtime (CUDA provider when present, else CPU;
``benchmark_onnxruntime`` + ``evaluate_onnx``). Nothing here knows gRPC; the problems a caller can fix raise
``service.core.errors`` types (INVALID_ARGUMENT, FAILED_PRECONDITION), which the agent's servicer turns into codes.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pruning.errors import clip
from pruning.limits import DEFAULT_DATA_LIMITS, DataLimits
from service.core.errors import Cancelled, FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "int8")
EVAL_BATCH = 64                   # evaluation batch; TensorRT profiles cover it
CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class BenchSettings:
    input_shape: tuple[int, int, int]
    batch_sizes: tuple[int, ...] = (1,)
    precision: str = "fp32"
    backend: str = "auto"
    seconds_per_batch: float = 3.0
    warmup_seconds: float = 0.5
    threads: int | None = None
    label: str = ""

    def check(self) -> None:
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise InvalidArgument(f"input_shape must be C, H, W with positive sizes, got {list(self.input_shape)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or max(self.batch_sizes) > 4096:
            raise InvalidArgument(f"batch_sizes must be 1..4096, got {list(self.batch_sizes)}")
        if self.precision not in PRECISIONS:
            raise InvalidArgument(f"precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.backend not in BACKENDS:
            raise InvalidArgument(f"backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if not 0 < self.seconds_per_batch <= 600 or not 0 <= self.warmup_seconds <= 600:
            raise InvalidArgument("seconds_per_batch must be in (0, 600] and warmup_seconds in [0, 600]")
        if self.threads is not None and self.threads < 1:
            raise InvalidArgument("threads must be >= 1")


@dataclass
class Outcome:
    backend: str
    precision: str
    latency: list                  # exporters.LatencyResult
    accuracy: object | None        # exporters.OnnxAccuracy
    build_seconds: float
    notes: list[str] = field(default_factory=list)


def choose_backend(settings: BenchSettings, tensorrt: tuple[bool, str]) -> str:
    """"tensorrt" or "onnxruntime" for these settings on this machine; raises when they cannot be met."""
    trt_ok, trt_reason = tensorrt
    if settings.backend == "tensorrt" and not trt_ok:
        raise FailedPrecondition(f"backend tensorrt was asked for, but this agent cannot run it ({trt_reason}); "
                                 "ask for backend auto or onnxruntime, or use an agent with TensorRT")
    if settings.backend == "onnxruntime" and settings.precision != "fp32":
        raise InvalidArgument(f"ONNX Runtime runs the model as exported (fp32), not {settings.precision}; ask for "
                              "fp32, or backend tensorrt/auto on an agent with TensorRT")
    if settings.backend == "auto" and not trt_ok and settings.precision != "fp32":
        raise FailedPrecondition(f"precision {settings.precision} needs TensorRT, and this agent has none "
                                 f"({trt_reason}); ask for fp32, or use an agent with TensorRT")
    return "tensorrt" if settings.backend != "onnxruntime" and trt_ok else "onnxruntime"


def load_images(path: Path, input_shape: tuple[int, ...], what: str, need_labels: bool = True,
                limits: DataLimits = DEFAULT_DATA_LIMITS) -> tuple[np.ndarray, np.ndarray | None]:
    """``images`` (N, C, H, W) float32 and ``labels`` (N,) int64 from an .npz; InvalidArgument when malformed.

    The arrays' sizes are checked from their .npy headers before any is read (``pruning.archives``: a small
    upload that would expand to gigabytes is refused), and NaN/inf pixels are refused (``pruning.finite``)."""
    from pruning.archives import read_npz_headers
    from pruning.errors import DataError
    from pruning.finite import check_finite_array

    label = f"the {what} data"
    try:
        headers = read_npz_headers(path, ("images", "labels"), limits, label)
        if "images" not in headers:
            raise KeyError("images")
        with np.load(path, allow_pickle=False) as data:
            images, labels = data["images"], (data["labels"] if "labels" in headers else None)
        check_finite_array(images, "images", label)
    except KeyError:
        raise InvalidArgument(f"the {what} .npz has no 'images' array; send images (N, C, H, W) float32 and "
                              "labels (N,)") from None
    except DataError as exc:
        raise InvalidArgument(str(exc)) from None
    except (OSError, ValueError, EOFError) as exc:
        raise InvalidArgument(f"the {what} data is not a readable .npz: {clip(exc)}") from None
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(input_shape) or images.dtype != np.float32:
        raise InvalidArgument(f"the {what} images are {images.dtype} {list(images.shape)}; expected float32 "
                              f"[N, {', '.join(map(str, input_shape))}], preprocessed as the model expects")
    if need_labels:
        if labels is None or labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.dtype.kind not in "iu":
            raise InvalidArgument(f"the {what} .npz needs integer labels of shape [{images.shape[0]}]")
        labels = labels.astype(np.int64)
    return images, labels


def run_benchmark(model: Path, settings: BenchSettings, evaluation: Path | None = None,
                  calibration: Path | None = None, should_stop: Callable[[], bool] = lambda: False,
                  tensorrt: tuple[bool, str] | None = None, work_dir: Path | None = None) -> Outcome:
    """Build ``model`` for this machine, time it at each batch size, and measure its accuracy on ``evaluation``."""
    settings.check()
    if tensorrt is None:
        from exporters.tensorrt import tensorrt_available

        tensorrt = tensorrt_available()
    backend = choose_backend(settings, tensorrt)
    eval_data = load_images(evaluation, settings.input_shape, "evaluation") if evaluation else None
    log.info("benchmark %s: %s %s, batches %s", settings.label or model.name, backend, settings.precision,
             list(settings.batch_sizes))
    if backend == "tensorrt":
        return _tensorrt(model, settings, eval_data, calibration, work_dir or model.parent)
    return _onnxruntime(model, settings, eval_data, should_stop)


def _timing(settings: BenchSettings) -> dict:
    s = settings.seconds_per_batch
    return dict(warmup_seconds=settings.warmup_seconds, min_seconds_per_batch=min(1.0, s), max_seconds_per_batch=s)


# --- ONNX Runtime ----------------------------------------------------------------------------------------

def _onnxruntime(model: Path, settings: BenchSettings, eval_data, should_stop) -> Outcome:
    import onnxruntime as ort

    from exporters.benchmark import benchmark_onnxruntime, create_session
    from exporters.onnx_accuracy import evaluate_onnx

    provider = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    started = time.perf_counter()
    try:
        session = create_session(model, provider, settings.threads)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types: a model it cannot load
        raise InvalidArgument(f"ONNX Runtime cannot load the model: {str(exc).splitlines()[0]}") from None
    build_seconds = time.perf_counter() - started
    _check_input(session, settings.input_shape)
    del session
    rows = []
    for batch in settings.batch_sizes:
        if should_stop():
            raise Cancelled("the caller went away; benchmark abandoned")
        try:
            rows += benchmark_onnxruntime(model, settings.input_shape, (batch,), provider=provider,
                                          threads=settings.threads, **_timing(settings))
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors: the model fails on such input
            raise InvalidArgument(f"the model fails to run at batch {batch}: {str(exc).splitlines()[0]}") from None
    accuracy = None
    if eval_data is not None:
        try:
            accuracy = evaluate_onnx(model, eval_data[0], eval_data[1], batch_size=EVAL_BATCH, provider=provider)
        except ValueError as exc:
            raise InvalidArgument(f"the evaluation data does not fit the model: {exc}") from None
    return Outcome(f"onnxruntime:{provider}", "fp32", rows, accuracy, build_seconds)


def _check_input(session, input_shape: tuple[int, ...]) -> None:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise InvalidArgument(f"the model has {len(inputs)} inputs; the agent benchmarks single-input models")
    dims = list(inputs[0].shape)
    fixed = [(want, got) for want, got in zip(input_shape, dims[1:]) if isinstance(got, int)]
    if len(dims) != 4 or any(want != got for want, got in fixed):
        raise InvalidArgument(f"the model's input is {dims}, which does not take images of shape "
                              f"{list(input_shape)}; send the input shape the model was exported with")


# --- TensorRT --------------------------------------------------------------------------------------------

def _tensorrt(model: Path, settings: BenchSettings, eval_data, calibration: Path | None, work: Path) -> Outcome:
    from exporters.tensorrt import EngineBuildError, SilentFallbackError, benchmark_engine, build_engine

    calib = None
    if settings.precision == "int8":
        if calibration is None:
            raise InvalidArgument("int8 needs calibration images: send the calibration blob (preprocessed images)")
        images, _ = load_images(calibration, settings.input_shape, "calibration", need_labels=False)
        calib = [images[i:i + CALIBRATION_BATCH] for i in range(0, len(images) - CALIBRATION_BATCH + 1,
                                                                  CALIBRATION_BATCH)]
        if not calib:
            raise InvalidArgument(f"int8 calibration needs at least {CALIBRATION_BATCH} images")
    try:
        build = build_engine(model, work / "model.engine", precision=settings.precision,
                             input_shape=settings.input_shape, min_batch=1, opt_batch=max(settings.batch_sizes),
                             max_batch=max(*settings.batch_sizes, EVAL_BATCH), calibration_batches=calib,
                             calibration_cache=work / "calibration.cache" if calib else None)
    except SilentFallbackError as exc:
        raise FailedPrecondition(f"this device cannot run the model in {settings.precision}: {exc}") from None
    except (EngineBuildError, ValueError) as exc:
        raise InvalidArgument(f"TensorRT cannot build the model: {exc}") from None
    rows = benchmark_engine(build.engine_path, settings.input_shape, settings.batch_sizes,
                            precision=build.precision, **_timing(settings))
    notes, accuracy = [], None
    if eval_data is not None:
        try:
            accuracy = evaluate_engine(build.engine_path, *eval_data)
        except Exception as exc:  # noqa: BLE001 - fall back to the ONNX model, and say so
            from exporters.onnx_accuracy import evaluate_onnx

            log.warning("accuracy through the engine failed: %s", exc)
            notes.append(f"accuracy measured with ONNX Runtime (fp32), not the engine: {exc}")
            accuracy = evaluate_onnx(model, eval_data[0], eval_data[1], batch_size=EVAL_BATCH)
    return Outcome("tensorrt:cuda", build.precision, rows, accuracy, build.build_seconds, notes)


def evaluate_engine(engine_path: Path, images: np.ndarray, labels: np.ndarray, batch_size: int = EVAL_BATCH):
    """Top-1/top-5 of a serialized TensorRT engine on preprocessed images (needs tensorrt and a CUDA GPU)."""
    import tensorrt as trt
    import torch

    from exporters.onnx_accuracy import OnnxAccuracy, check_labels, topk_correct
    from exporters.tensorrt import torch_dtype

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    input_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    output_name = next(n for n in names if n != input_name)
    stream = torch.cuda.Stream()
    hits, total = {1: 0, 5: 0}, 0
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).cuda()
        x = x.to(torch_dtype(trt, engine.get_tensor_dtype(input_name)))
        context.set_input_shape(input_name, tuple(x.shape))
        out = torch.empty(tuple(context.get_tensor_shape(output_name)),
                          dtype=torch_dtype(trt, engine.get_tensor_dtype(output_name)), device="cuda")
        context.set_tensor_address(input_name, int(x.data_ptr()))
        context.set_tensor_address(output_name, int(out.data_ptr()))
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("execute_async_v3 failed")
        stream.synchronize()
        logits = out.float().cpu().numpy().reshape(x.shape[0], -1)
        batch_labels = labels[start:start + batch_size]
        check_labels(batch_labels, logits.shape[1])
        for k, correct in topk_correct(logits, batch_labels, (1, 5)).items():
            hits[k] += correct
        total += x.shape[0]
    del context, engine
    return OnnxAccuracy(top1=hits[1] / total, top5=hits[5] / total, num_images=total,
                        by_k={k: v / total for k, v in hits.items()})
