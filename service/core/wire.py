"""The wire format both ends share: enum mappings and the job spec <-> ``interprune.v1.JobSpec`` conversion.

- ``spec_to_dict`` / ``spec_to_proto``: a proto ``JobSpec`` <-> the dict form of ``pipeline.spec.JobSpec``
  (artifacts referenced as ``artifact:<id>``), plus the execution settings (timeout, retry on crash).

Used by the server (``service.api``) and the client (``service.client``) so both sides agree on one mapping.
Store records -> messages is ``service.api.convert``; submit-time checks are ``service.api.validate``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from google.protobuf.timestamp_pb2 import Timestamp

from pruning.errors import clip
from service._proto.interprune.v1 import common_pb2 as cpb
from service._proto.interprune.v1 import compression_pb2 as pb
from service.core.errors import InvalidArgument
from service.core.names import artifact_name, parse_artifact_name
from service.core.states import JobState

ARTIFACT_PREFIX = "artifact:"

KIND_TO_PROTO = {"model": pb.ARTIFACT_KIND_MODEL, "dataset": pb.ARTIFACT_KIND_DATASET, "plan": pb.ARTIFACT_KIND_PLAN,
                 "weights": pb.ARTIFACT_KIND_WEIGHTS, "onnx": pb.ARTIFACT_KIND_ONNX,
                 "report_json": pb.ARTIFACT_KIND_REPORT_JSON, "report_html": pb.ARTIFACT_KIND_REPORT_HTML,
                 "other": pb.ARTIFACT_KIND_OTHER}
KIND_FROM_PROTO = {v: k for k, v in KIND_TO_PROTO.items()}
STATE_TO_PROTO = {JobState.QUEUED: pb.JOB_STATE_QUEUED, JobState.RUNNING: pb.JOB_STATE_RUNNING,
                  JobState.SUCCEEDED: pb.JOB_STATE_SUCCEEDED, JobState.FAILED: pb.JOB_STATE_FAILED,
                  JobState.CANCELLED: pb.JOB_STATE_CANCELLED}
STATE_FROM_PROTO = {v: k for k, v in STATE_TO_PROTO.items()}
FAILURE_TO_PROTO = {"invalid_input": pb.FAILURE_KIND_INVALID_INPUT, "export_check": pb.FAILURE_KIND_EXPORT_CHECK,
                    "timed_out": pb.FAILURE_KIND_TIMED_OUT, "crashed": pb.FAILURE_KIND_CRASHED,
                    "server_stopped": pb.FAILURE_KIND_SERVER_STOPPED, "internal": pb.FAILURE_KIND_INTERNAL}
FAILURE_FROM_PROTO = {v: k for k, v in FAILURE_TO_PROTO.items()}
METRIC_FROM_PROTO = {pb.TARGET_METRIC_UNSPECIFIED: None, pb.TARGET_METRIC_MACS: "macs",
                     pb.TARGET_METRIC_PARAMS: "params", pb.TARGET_METRIC_LATENCY: "latency"}
ALLOCATION_FROM_PROTO = {pb.ALLOCATION_UNSPECIFIED: None, pb.ALLOCATION_UNIFORM: "uniform",
                         pb.ALLOCATION_GLOBAL: "global", pb.ALLOCATION_SENSITIVITY: "sensitivity",
                         pb.ALLOCATION_LATENCY: "latency"}
_SCOPE = {pb.REFIT_SCOPE_UNSPECIFIED: None, pb.REFIT_SCOPE_CONSUMERS: "consumers",
          pb.REFIT_SCOPE_DOWNSTREAM: "downstream"}
_BATCHNORM = {pb.BATCH_NORM_MODE_UNSPECIFIED: None, pb.BATCH_NORM_MODE_AUTO: "auto", pb.BATCH_NORM_MODE_ON: "on",
              pb.BATCH_NORM_MODE_OFF: "off"}


@dataclass(frozen=True)
class Execution:
    """How the service runs a job (not part of the pipeline's spec)."""

    timeout_seconds: float | None = None
    retry_on_crash: bool = False


# --- proto JobSpec -> dict ---------------------------------------------------------------------------

def _present(message, names: tuple[str, ...]) -> dict[str, Any]:
    """The optional scalar fields of ``message`` that are set, under the same names."""
    return {name: getattr(message, name) for name in names if message.HasField(name)}


def params_from_proto(values, what: str = "criterion parameter") -> dict[str, Any]:
    return {key: _plain_value(value, f"{what} {clip(key, 80)!r}") for key, value in values.items()}


def _plain_value(value: pb.ParamValue, label: str) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(f"{label} has no value; set one of bool/int/double/string/list/map")
    if kind == "list_value":
        return [_plain_value(item, label) for item in value.list_value.values]
    if kind == "map_value":
        return params_from_proto(value.map_value.values, label)
    return getattr(value, kind)


def _artifact_ref(name: str, field: str) -> str | None:
    return ARTIFACT_PREFIX + parse_artifact_name(name, field) if name else None


PRECISION_TO_PROTO = {"fp32": cpb.PRECISION_FP32, "fp16": cpb.PRECISION_FP16, "int8": cpb.PRECISION_INT8}
PRECISION_FROM_PROTO = {v: k for k, v in PRECISION_TO_PROTO.items()}
LOCAL_TO_PROTO = {"cpu": cpb.LOCAL_DEVICE_CPU, "cuda": cpb.LOCAL_DEVICE_CUDA, "tensorrt": cpb.LOCAL_DEVICE_TENSORRT}
LOCAL_FROM_PROTO = {v: k for k, v in LOCAL_TO_PROTO.items()}


def precision_from_proto(value: int, field: str) -> str | None:
    """The precision's name (None when unset); an unknown number is refused, never read as the default."""
    if value == cpb.PRECISION_UNSPECIFIED:
        return None
    if value not in PRECISION_FROM_PROTO:
        raise InvalidArgument(f"{field} {value} is not a Precision; use FP32, FP16 or INT8")
    return PRECISION_FROM_PROTO[value]


def target_to_text(target: cpb.Target, field: str = "target") -> str:
    """``local:cpu`` / ``local:cuda`` / ``local:tensorrt`` / ``agent:NAME``."""
    kind = target.WhichOneof("kind")
    if kind == "agent":
        return f"agent:{target.agent}"
    if target.local not in (cpb.LOCAL_DEVICE_UNSPECIFIED, *LOCAL_FROM_PROTO):
        raise InvalidArgument(f"{field}: {target.local} is not a LocalDevice; use CPU, CUDA or TENSORRT")
    return f"local:{LOCAL_FROM_PROTO.get(target.local, 'cpu')}"


def target_from_text(text: str) -> cpb.Target:
    kind, _, rest = text.partition(":")
    if kind == "agent":
        return cpb.Target(agent=rest)
    if kind == "local" and rest in LOCAL_TO_PROTO:
        return cpb.Target(local=LOCAL_TO_PROTO[rest])
    raise InvalidArgument(f"benchmark target {clip(text, 80)!r}: use local:cpu, local:cuda, local:tensorrt or "
                          "agent:NAME")


def spec_to_dict(spec: pb.JobSpec) -> tuple[dict, Execution]:
    """The ``pipeline.run.JobSpec.from_dict`` input for ``spec``; unset optional fields are left out, so the
    engine's defaults apply."""
    m, d, p, r, f = spec.model, spec.data, spec.prune, spec.reconstruct, spec.finetune
    model = {"arch": m.arch, "weights": _artifact_ref(m.weights, "spec.model.weights"),
             "model_file": _artifact_ref(m.model, "spec.model.model"), **_present(m, ("num_classes",)),
             "arch_kwargs": params_from_proto(m.arch_kwargs, "arch_kwargs")}
    if m.input_shape:
        model["input_shape"] = list(m.input_shape)
    if m.external_data:
        model["external_data"] = {location: _artifact_ref(ref, f"spec.model.external_data[{location!r}]")
                                  for location, ref in sorted(m.external_data.items())}
    data = {"path": _artifact_ref(d.artifact, "spec.data.artifact"),
            **_present(d, ("calibration_images", "evaluation_images", "finetune_images", "batch_size"))}
    if d.HasField("input_size"):
        data["input_size"] = [d.input_size.height, d.input_size.width]
    if d.mean:
        data["mean"] = [float(v) for v in d.mean]
    if d.std:
        data["std"] = [float(v) for v in d.std]
    prune = {**_present(p, ("target_reduction", "round_to", "min_channels", "layer_share", "latency_budget_ms",
                            "latency_batch", "latency_margin", "allow_shortfall", "block_removal",
                            "sensitivity_images")),
             "criterion_params": params_from_proto(p.criterion_params),
             "layer_criterion_params": params_from_proto(p.layer_criterion_params)}
    if p.criterion:
        prune["criterion"] = p.criterion
    if p.layer_criterion:
        prune["layer_criterion"] = p.layer_criterion
    if p.HasField("latency_target"):
        prune["latency_target"] = target_to_text(p.latency_target, "spec.prune.latency_target")
    if p.protected_layers:
        prune["protected"] = list(p.protected_layers)
    for key, value in (("target_metric", METRIC_FROM_PROTO.get(p.target_metric)),
                       ("allocation", ALLOCATION_FROM_PROTO.get(p.allocation))):
        if value:
            prune[key] = value
    reconstruct = _present(r, ("enabled", "positions_per_image", "ridge", "max_memory_mb", "holdout"))
    if _BATCHNORM.get(r.batchnorm):
        reconstruct["batchnorm"] = _BATCHNORM[r.batchnorm]
    if _SCOPE.get(r.scope):
        reconstruct["scope"] = _SCOPE[r.scope]
    finetune = _present(f, ("epochs", "steps", "images", "minutes", "batch_size", "lr", "distillation",
                            "temperature", "alpha", "augment", "validation_images"))
    compress = {"model": model, "data": data, "prune": prune, "reconstruct": reconstruct, "finetune": finetune,
                **_present(spec.execution, ("seed", "threads"))}
    export = _present(spec.export, ("onnx", "opset", "slim", "parity_atol", "parity_images"))
    b = spec.benchmark
    benchmark = _present(b, ("threads", "seconds_per_batch", "original", "agent_eval_images"))
    precision = precision_from_proto(b.precision, "spec.benchmark.precision")
    if precision:
        benchmark["precision"] = precision
    if b.skip:
        benchmark["targets"] = []
    elif b.targets:
        benchmark["targets"] = [target_to_text(x, "spec.benchmark.targets") for x in b.targets]
    if b.batch_sizes:
        benchmark["batch_sizes"] = list(b.batch_sizes)
    gate = _present(spec.gate, ("max_accuracy_drop",))
    execution = Execution(spec.execution.timeout_seconds if spec.execution.HasField("timeout_seconds") else None,
                          spec.execution.retry_on_crash)
    return {"compress": compress, "export": export, "benchmark": benchmark, "gate": gate}, execution


# --- dataclass JobSpec -> proto (client side) -----------------------------------------------------------

def _param_value(key: str, value: Any) -> pb.ParamValue:
    if isinstance(value, (list, tuple)):
        return pb.ParamValue(list_value=pb.ParamList(values=[_param_value(key, v) for v in value]))
    if isinstance(value, dict):
        out = pb.ParamValue(map_value=pb.ParamMap())
        for k, v in value.items():
            out.map_value.values[str(k)].CopyFrom(_param_value(key, v))
        return out
    if isinstance(value, bool):
        return pb.ParamValue(bool_value=value)
    if isinstance(value, int):
        return pb.ParamValue(int_value=value)
    if isinstance(value, float):
        return pb.ParamValue(double_value=value)
    if isinstance(value, str):
        return pb.ParamValue(string_value=value)
    raise InvalidArgument(f"parameter {clip(key, 80)!r}={clip(repr(value), 80)}: only numbers, strings, booleans, "
                          "lists and maps are supported")


def _set(message, **values: Any) -> None:
    for name, value in values.items():
        if value is not None:
            setattr(message, name, value)


def spec_to_proto(spec, weights_artifact: str = "", data_artifact: str = "", execution: Execution = Execution(),
                  model_artifact: str = "", external_artifacts: Mapping[str, str] | None = None) -> pb.JobSpec:
    """A ``pipeline.spec.JobSpec`` as a message; local paths are replaced by the given artifact ids (sha256);
    ``external_artifacts``: an ONNX model's external data files, location -> artifact id."""
    c = spec.compress
    out = pb.JobSpec()
    out.model.arch = c.model.arch
    out.model.weights = artifact_name(weights_artifact)
    out.model.model = artifact_name(model_artifact)
    for location, artifact_id in (external_artifacts or {}).items():
        out.model.external_data[location] = artifact_name(artifact_id)
    for key, value in dict(c.model.arch_kwargs).items():
        out.model.arch_kwargs[key].CopyFrom(_param_value(key, value))
    out.model.input_shape.extend(c.model.input_shape or ())
    _set(out.model, num_classes=c.model.num_classes)
    d = c.data
    out.data.artifact = artifact_name(data_artifact)
    _set(out.data, calibration_images=d.calibration_images, evaluation_images=d.evaluation_images,
         finetune_images=d.finetune_images, batch_size=d.batch_size)
    if d.input_size:
        out.data.input_size.height, out.data.input_size.width = d.input_size
    out.data.mean.extend(d.mean or ())
    out.data.std.extend(d.std or ())
    p = c.prune
    out.prune.criterion = p.criterion
    for key, value in dict(p.criterion_params).items():
        out.prune.criterion_params[key].CopyFrom(_param_value(key, value))
    out.prune.target_metric = {v: k for k, v in METRIC_FROM_PROTO.items() if v}.get(p.target_metric,
                                                                                 pb.TARGET_METRIC_UNSPECIFIED)
    out.prune.allocation = {v: k for k, v in ALLOCATION_FROM_PROTO.items() if v}.get(p.allocation,
                                                                                 pb.ALLOCATION_UNSPECIFIED)
    _set(out.prune, target_reduction=p.target_reduction, round_to=p.round_to, min_channels=p.min_channels,
         layer_share=p.layer_share, layer_criterion=p.layer_criterion, latency_budget_ms=p.latency_budget_ms,
         latency_batch=p.latency_batch, latency_margin=p.latency_margin, allow_shortfall=p.allow_shortfall,
         block_removal=p.block_removal, sensitivity_images=p.sensitivity_images)
    out.prune.latency_target.CopyFrom(target_from_text(p.latency_target))
    out.prune.protected_layers.extend(p.protected)
    for key, value in dict(p.layer_criterion_params).items():
        out.prune.layer_criterion_params[key].CopyFrom(_param_value(key, value))
    r = c.reconstruct
    _set(out.reconstruct, enabled=r.enabled, positions_per_image=r.positions_per_image, ridge=r.ridge,
         max_memory_mb=r.max_memory_mb, holdout=r.holdout)
    out.reconstruct.batchnorm = {v: k for k, v in _BATCHNORM.items() if v}.get(r.batchnorm, 0)
    out.reconstruct.scope = {v: k for k, v in _SCOPE.items() if v}.get(r.scope, 0)
    f = c.finetune
    _set(out.finetune, epochs=f.epochs, steps=f.steps, images=f.images, minutes=f.minutes, batch_size=f.batch_size,
         lr=f.lr, distillation=f.distillation, temperature=f.temperature, alpha=f.alpha, augment=f.augment,
         validation_images=f.validation_images)
    e = spec.export
    _set(out.export, onnx=e.onnx, opset=e.opset, slim=e.slim, parity_atol=e.parity_atol,
         parity_images=getattr(e, "parity_images", None))
    b = spec.benchmark
    out.benchmark.skip = not b.targets
    out.benchmark.targets.extend(target_from_text(x) for x in b.targets)
    out.benchmark.batch_sizes.extend(b.batch_sizes)
    _set(out.benchmark, threads=b.threads, seconds_per_batch=b.seconds_per_batch, original=getattr(b, "original", None),
         agent_eval_images=getattr(b, "agent_eval_images", None))
    if b.precision not in PRECISION_TO_PROTO:
        raise InvalidArgument(f"benchmark precision {b.precision!r}: choose fp32, fp16 or int8")
    if b.precision != "fp32":
        out.benchmark.precision = PRECISION_TO_PROTO[b.precision]
    _set(out.gate, max_accuracy_drop=spec.gate.max_accuracy_drop)
    _set(out.execution, seed=c.seed, threads=c.threads, timeout_seconds=execution.timeout_seconds)
    out.execution.retry_on_crash = execution.retry_on_crash
    return out


# --- times ---------------------------------------------------------------------------------------------

def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts
