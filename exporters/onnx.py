"""ONNX export of a PyTorch module, with its own checks.

`export_onnx` writes the file (TorchScript-based exporter, CPU, eval mode, dynamic batch axis), runs
`onnx.checker`, optionally slims it with onnxslim, and writes atomically. `check_parity` runs the written
file in ONNX Runtime (CPU) and the module in PyTorch on the same real inputs and returns the errors as
values; the caller decides the threshold (`Parity.assert_within`).

Example::

    exp = export_onnx(model, "out/model.onnx", torch.randn(1, 3, 32, 32))
    parity = check_parity(exp.path, model, calibration_images)
    parity.assert_within(atol=1e-4)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

#: Denominator floor of the relative error, only so an all-zero reference output does not divide by zero: a larger
#: floor would make the relative error of a model with tiny outputs (an untrained head, logits ~1e-9) as blind as
#: the absolute one.
REL_ERROR_FLOOR = 1e-30


class ExportError(RuntimeError):
    """An export failed or produced a model that does not pass its checks."""


class ParityError(ExportError):
    """The exported model's outputs differ from PyTorch's by more than the accepted tolerance."""


class NonFiniteError(ExportError):
    """A model output or a measured figure is NaN or infinite, so no comparison with a threshold can hold."""


def count_nonfinite(values: np.ndarray) -> int:
    """Number of NaN/inf elements of a numeric array (0 for integer arrays)."""
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.inexact):
        return 0
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def check_tolerance(name: str, value: float) -> float:
    """``value`` if it is a finite number >= 0; a NaN or infinite tolerance would let every error pass."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (np.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {str(value)[:80]}")
    return number


@dataclass(frozen=True)
class OnnxExport:
    """What `export_onnx` wrote.

    `size_bytes` is the file size on disk, `sha256` the hex digest of the file's bytes,
    `export_seconds` the wall-clock time of the whole call (export, checks, slimming, write).
    """

    path: Path
    opset: int
    size_bytes: int
    sha256: str
    slimmed: bool
    slim_error: str | None
    input_name: str
    output_name: str
    export_seconds: float


@dataclass(frozen=True)
class Parity:
    """Agreement between an ONNX model (ONNX Runtime, CPU) and its PyTorch module on the same inputs.

    - `max_abs_error`: max over all outputs of |onnx - torch|.
    - `max_rel_error`: `max_abs_error / max(max |torch|, 1e-30)`, i.e. the largest absolute error relative
      to the largest torch output magnitude (a norm-wise relative error; element-wise ratios explode
      where a logit is near zero and say little).
    - `mean_abs_error`: mean over all output elements of |onnx - torch|.
    - `num_inputs`: number of input samples compared.
    - `top1_agreement`: fraction of samples whose argmax over the flattened output is the same.
    """

    max_abs_error: float
    max_rel_error: float
    mean_abs_error: float
    num_inputs: int
    top1_agreement: float

    def assert_within(self, atol: float, rtol: float | None = None) -> None:
        """Raise `ParityError` if `max_abs_error > atol` (or `max_rel_error > rtol` when given), or if an error is
        NaN: every comparison is written `not (error <= tolerance)`, which a NaN fails."""
        check_tolerance("atol", atol)
        if rtol is not None:
            check_tolerance("rtol", rtol)
        if not self.max_abs_error <= atol:  # also catches NaN
            raise ParityError(
                f"ONNX output differs from PyTorch: max_abs_error={self.max_abs_error:.3g} exceeds "
                f"atol={atol:.3g} (max_rel_error={self.max_rel_error:.3g}, "
                f"top1_agreement={self.top1_agreement:.4f} over {self.num_inputs} inputs)"
            )
        if rtol is not None and not self.max_rel_error <= rtol:
            raise ParityError(
                f"ONNX output differs from PyTorch: max_rel_error={self.max_rel_error:.3g} exceeds "
                f"rtol={rtol:.3g} (max_abs_error={self.max_abs_error:.3g} over {self.num_inputs} inputs)"
            )

    def to_dict(self) -> dict[str, float | int]:
        """The fields as a JSON-able dict."""
        return {
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "mean_abs_error": self.mean_abs_error,
            "num_inputs": self.num_inputs,
            "top1_agreement": self.top1_agreement,
        }


# --------------------------------------------------------------------------------------------------
# model preparation (shared with benchmark.py)


def _is_on(model: torch.nn.Module, device: torch.device) -> bool:
    """True if every parameter and buffer is on `device` and every floating one is float32."""
    tensors = [*model.parameters(), *model.buffers()]
    return all(
        t.device.type == device.type
        and (device.index is None or t.device.index in (None, device.index))
        and (not t.is_floating_point() or t.dtype == torch.float32)
        for t in tensors
    )


@contextlib.contextmanager
def eval_float32(model: torch.nn.Module, device: str | torch.device = "cpu") -> Iterator[torch.nn.Module]:
    """Yield `model` in eval mode, float32, on `device`, without changing the caller's module for good.

    When the module is already float32 on `device` it is used in place and its train/eval mode is restored
    on exit; otherwise a deep copy is moved and cast (the original keeps its device and dtype).
    """
    device = torch.device(device)
    target = model if _is_on(model, device) else copy.deepcopy(model).to(device=device, dtype=torch.float32)
    was_training = model.training
    target.eval()
    try:
        yield target
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------------
# export


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    example_input: torch.Tensor,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    slim: bool = False,
    input_name: str = "input",
    output_name: str = "logits",
) -> OnnxExport:
    """Export `model` to ONNX at `path` and check the result.

    The module runs on CPU in eval mode, float32 (a copy is used when it lives elsewhere). Axis 0 of the
    input and output is named "batch" and dynamic when `dynamic_batch`. Missing parent folders are
    created. The file appears at `path` only once it passed `onnx.checker` (temp file in the same folder,
    then `os.replace`). If `slim` and onnxslim fails (or its output fails the checker), the unslimmed model
    is kept and the error is recorded in `slim_error`.

    Raises `ExportError` naming the unsupported operator and, where it can be found, the module path
    (e.g. "layer2.0.conv1") that calls it.
    """
    import onnx

    started = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example_input = example_input.detach().to(device="cpu", dtype=torch.float32)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with eval_float32(model, "cpu") as cpu_model:
            _torch_export(cpu_model, tmp, example_input, opset, dynamic_batch, input_name, output_name)
        proto = onnx.load(str(tmp))
        _check(proto, "torch.onnx.export")
        slim_error: str | None = None
        if slim:
            proto, slim_error = _slim(proto)
            onnx.save(proto, str(tmp))
        tmp.chmod(0o644)  # mkstemp creates 0600; an export is meant to be read by others
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    data = path.read_bytes()
    result = OnnxExport(
        path=path,
        opset=opset,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        slimmed=slim and slim_error is None,
        slim_error=slim_error,
        input_name=input_name,
        output_name=output_name,
        export_seconds=time.perf_counter() - started,
    )
    log.info("exported %s (%d bytes, opset %d, slimmed=%s)", path, result.size_bytes, opset, result.slimmed)
    return result


def _torch_export(
    model: torch.nn.Module,
    dest: Path,
    example_input: torch.Tensor,
    opset: int,
    dynamic_batch: bool,
    input_name: str,
    output_name: str,
) -> None:
    """Run the TorchScript-based `torch.onnx.export` into `dest`, turning failures into `ExportError`."""
    dynamic_axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    _route_torch_onnx_log_to_stderr()
    stack: list[str] = []
    handles = _track_modules(model, stack)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example_input,),
                str(dest),
                dynamo=False,
                opset_version=opset,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                export_params=True,
            )
    except Exception as exc:  # torch raises many types here; all become one clear error
        raise ExportError(_describe_failure(model, example_input, exc, stack, opset)) from exc
    finally:
        for handle in handles:
            handle.remove()


def _route_torch_onnx_log_to_stderr() -> None:
    """Send torch's C++ ONNX log (it dumps the whole graph on failure) to stderr, keeping stdout clean.

    The TorchScript exporter turns that log on unconditionally in torch 2.x; the setter is private, so
    this is best effort and process-wide.
    """
    setter = getattr(torch._C, "_jit_set_onnx_log_output_stream", None)
    if setter is not None:
        try:
            setter("stderr")
        except Exception:  # noqa: BLE001
            log.debug("could not redirect torch's ONNX log", exc_info=True)


def _track_modules(model: torch.nn.Module, stack: list[str]) -> list:
    """Register hooks keeping `stack` = qualified names of the modules currently inside `forward`.

    After an exception during tracing, `stack[-1]` is the innermost module that was running.
    """
    handles = []
    for name, module in model.named_modules():
        label = name or type(module).__name__

        def push(_mod, _args, label=label):
            stack.append(label)

        def pop(_mod, _args, _out):
            if stack:
                stack.pop()

        handles.append(module.register_forward_pre_hook(push))
        handles.append(module.register_forward_hook(pop))
    return handles


def _describe_failure(
    model: torch.nn.Module, example_input: torch.Tensor, exc: Exception, stack: list[str], opset: int
) -> str:
    """A one-paragraph message: what failed, which operator, and in which module."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    parts = [f"torch.onnx.export failed for {type(model).__name__} at opset {opset}: {message}"]
    op = re.search(r"'?(aten|prim|onnx)::(\w+)'?", str(exc))
    if op:
        op_name = f"{op.group(1)}::{op.group(2)}"
        where = _locate_op(model, example_input, op_name)
        parts.append(f"operator {op_name}" + (f" called from module {', '.join(where)}" if where else ""))
    elif stack:
        parts.append(f"raised inside module {stack[-1]}")
    return "; ".join(parts)


def _locate_op(model: torch.nn.Module, example_input: torch.Tensor, op_name: str) -> list[str]:
    """Module paths whose forward calls `op_name`, found by tracing (best effort: [] when tracing fails)."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, (example_input,), check_trace=False)
        scopes = []
        for node in traced.inlined_graph.nodes():
            if node.kind() == op_name:
                # scopeName is "__module.a/__module.a.b": the last segment is the qualified module name
                scope = node.scopeName().split("/")[-1].replace("__module.", "").replace("__module", "") or "<root>"
                if scope not in scopes:
                    scopes.append(scope)
        return scopes
    except Exception:  # noqa: BLE001 - locating is a courtesy; the original error is what matters
        log.debug("could not locate %s by tracing", op_name, exc_info=True)
        return []


def _check(proto, stage: str) -> None:
    """Run `onnx.checker.check_model` (with shape inference); raise `ExportError` naming `stage`."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError
        raise ExportError(f"onnx.checker rejected the model produced by {stage}: {exc}") from exc


def _slim(proto):
    """Return (slimmed model, None), or (the original model, error text) when onnxslim fails."""
    try:
        import onnxslim

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slimmed = onnxslim.slim(copy.deepcopy(proto))
        if slimmed is None:
            raise RuntimeError("onnxslim.slim returned None")
        _check(slimmed, "onnxslim")
        return slimmed, None
    except Exception as exc:  # noqa: BLE001 - slimming is optional; keep the unslimmed model
        error = f"{type(exc).__name__}: {exc}"
        log.warning("onnxslim failed, keeping the unslimmed model: %s", error)
        return proto, error


# --------------------------------------------------------------------------------------------------
# parity


def check_parity(
    onnx_path: str | Path,
    model: torch.nn.Module,
    inputs: torch.Tensor | np.ndarray,
    *,
    batch_size: int = 64,
) -> Parity:
    """Compare ONNX Runtime (CPU) on `onnx_path` with `model` (eval, no_grad, float32, CPU) on `inputs`.

    `inputs` is an (N, C, H, W) batch of real, preprocessed samples; it is fed in chunks of `batch_size`.
    Returns the errors as values (see `Parity`); no tolerance is enforced here. Raises `NonFiniteError` when the
    inputs or either model's outputs hold NaN/inf: such outputs have no error to report.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    data = _as_float32_numpy(inputs)
    if data.ndim < 1 or data.shape[0] == 0:
        raise ValueError(f"check_parity needs at least one input sample, got shape {data.shape}")
    if count_nonfinite(data):
        raise NonFiniteError(f"the parity inputs hold {count_nonfinite(data)} non-finite value(s) (NaN or "
                             f"infinite) of {data.size}; pass real, normalised images")
    session = _cpu_session(onnx_path)
    input_name = session.get_inputs()[0].name
    onnx_chunks, torch_chunks = [], []
    with eval_float32(model, "cpu") as cpu_model, torch.no_grad():
        for start in range(0, data.shape[0], batch_size):
            batch = data[start : start + batch_size]
            onnx_chunks.append(np.asarray(session.run(None, {input_name: batch})[0], dtype=np.float64))
            torch_chunks.append(cpu_model(torch.from_numpy(batch)).numpy().astype(np.float64))
    return _compare(np.concatenate(onnx_chunks), np.concatenate(torch_chunks))


def _as_float32_numpy(inputs: torch.Tensor | np.ndarray) -> np.ndarray:
    """`inputs` as a C-contiguous float32 numpy array on the host."""
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.detach().to(device="cpu", dtype=torch.float32).numpy()
    return np.ascontiguousarray(inputs, dtype=np.float32)


def _cpu_session(onnx_path: str | Path):
    """An ONNX Runtime CPU session with all graph optimisations (what a CPU deployment runs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def _compare(onnx_out: np.ndarray, torch_out: np.ndarray) -> Parity:
    """Parity numbers between two (N, ...) output arrays (float64); `NonFiniteError` if either holds NaN/inf."""
    if onnx_out.shape != torch_out.shape:
        raise ExportError(f"ONNX output shape {onnx_out.shape} differs from PyTorch output shape {torch_out.shape}")
    for side, out in (("PyTorch", torch_out), ("ONNX Runtime", onnx_out)):
        bad = count_nonfinite(out)
        if bad:
            raise NonFiniteError(f"the {side} outputs hold {bad} non-finite value(s) (NaN or infinite) of {out.size} "
                                 f"over {out.shape[0]} inputs: parity cannot be measured; check the weights for "
                                 "NaN/inf and the input normalisation")
    diff = np.abs(onnx_out - torch_out)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = max(float(np.abs(torch_out).max()) if torch_out.size else 0.0, REL_ERROR_FLOOR)
    n = onnx_out.shape[0]
    agree = np.argmax(onnx_out.reshape(n, -1), axis=1) == np.argmax(torch_out.reshape(n, -1), axis=1)
    return Parity(
        max_abs_error=max_abs,
        max_rel_error=max_abs / scale,
        mean_abs_error=float(diff.mean()) if diff.size else 0.0,
        num_inputs=int(n),
        top1_agreement=float(agree.mean()),
    )
