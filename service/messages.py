"""Conversions between the contract's messages (``interprune.v1``) and the service's Python types.

- ``spec_to_dict`` / ``spec_to_proto``: a proto ``JobSpec`` <-> the dict form of ``service.pipeline.JobSpec``
  (artifacts referenced as ``artifact:<id>``), plus the execution settings (timeout, retry on crash).
- ``validate_spec``: the checks the server makes at submit time (cheap: names, ranges, artifacts present).
- ``job_to_proto``, ``event_to_proto``, ``artifact_to_proto``, ``result_to_proto``: store records -> messages.

Shared by ``server.py`` and ``client.py`` so both sides agree on one mapping.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from google.protobuf.timestamp_pb2 import Timestamp

from service._proto.interprune.v1 import compression_pb2 as pb
from service.errors import InvalidArgument
from service.store import Event, JobRecord, JobState

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
_METRIC = {pb.TARGET_METRIC_UNSPECIFIED: None, pb.TARGET_METRIC_MACS: "macs", pb.TARGET_METRIC_PARAMS: "params"}
_ALLOCATION = {pb.ALLOCATION_UNSPECIFIED: None, pb.ALLOCATION_UNIFORM: "uniform", pb.ALLOCATION_GLOBAL: "global"}
_BATCHNORM = {pb.BATCH_NORM_MODE_UNSPECIFIED: None, pb.BATCH_NORM_MODE_AUTO: "auto", pb.BATCH_NORM_MODE_ON: "on",
              pb.BATCH_NORM_MODE_OFF: "off"}
_TARGET = re.compile(r"^(local:(cpu|cuda|tensorrt)|agent:[A-Za-z0-9_.-]{1,64})$")


@dataclass(frozen=True)
class Execution:
    """How the service runs a job (not part of the pipeline's spec)."""

    timeout_seconds: float | None = None
    retry_on_crash: bool = False


# --- proto JobSpec -> dict ---------------------------------------------------------------------------

def _present(message, names: tuple[str, ...]) -> dict[str, Any]:
    """The optional scalar fields of ``message`` that are set, under the same names."""
    return {name: getattr(message, name) for name in names if message.HasField(name)}


def _params(values) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        kind = value.WhichOneof("kind")
        if kind is None:
            raise InvalidArgument(f"criterion parameter {key!r} has no value; set one of bool/int/double/string")
        out[key] = getattr(value, kind)
    return out


def _artifact_ref(artifact_id: str) -> str | None:
    return ARTIFACT_PREFIX + artifact_id if artifact_id else None


def spec_to_dict(spec: pb.JobSpec) -> tuple[dict, Execution]:
    """The ``service.pipeline.JobSpec.from_dict`` input for ``spec``; unset optional fields are left out, so the
    engine's defaults apply."""
    m, d, p, r, f = spec.model, spec.data, spec.prune, spec.reconstruct, spec.finetune
    model = {"arch": m.arch, "weights": _artifact_ref(m.weights_artifact_id), **_present(m, ("num_classes",))}
    data = {"path": _artifact_ref(d.artifact_id),
            **_present(d, ("calibration_images", "evaluation_images", "finetune_images", "batch_size"))}
    if d.HasField("input_size"):
        data["input_size"] = [d.input_size.height, d.input_size.width]
    if d.mean:
        data["mean"] = [float(v) for v in d.mean]
    if d.std:
        data["std"] = [float(v) for v in d.std]
    prune = {**_present(p, ("target_reduction", "round_to", "min_channels", "layer_share", "latency_budget_ms",
                            "latency_batch")),
             "criterion_params": _params(p.criterion_params),
             "layer_criterion_params": _params(p.layer_criterion_params)}
    if p.criterion:
        prune["criterion"] = p.criterion
    if p.layer_criterion:
        prune["layer_criterion"] = p.layer_criterion
    if p.latency_target:
        prune["latency_target"] = p.latency_target
    if p.protected_layers:
        prune["protected"] = list(p.protected_layers)
    for key, value in (("target_metric", _METRIC.get(p.target_metric)), ("allocation", _ALLOCATION.get(p.allocation))):
        if value:
            prune[key] = value
    reconstruct = _present(r, ("enabled", "positions_per_image", "ridge"))
    if _BATCHNORM.get(r.batchnorm):
        reconstruct["batchnorm"] = _BATCHNORM[r.batchnorm]
    finetune = _present(f, ("epochs", "steps", "images", "minutes", "batch_size", "lr", "temperature", "alpha",
                            "augment", "validation_images"))
    compress = {"model": model, "data": data, "prune": prune, "reconstruct": reconstruct, "finetune": finetune,
                **_present(spec.execution, ("seed", "threads"))}
    export = _present(spec.export, ("onnx", "opset", "slim", "parity_atol", "parity_images"))
    b = spec.benchmark
    benchmark = _present(b, ("threads", "seconds_per_batch", "original", "agent_eval_images"))
    if b.precision:
        benchmark["precision"] = b.precision
    if b.skip:
        benchmark["targets"] = []
    elif b.targets:
        benchmark["targets"] = list(b.targets)
    if b.batch_sizes:
        benchmark["batch_sizes"] = list(b.batch_sizes)
    gate = _present(spec.gate, ("max_accuracy_drop",))
    execution = Execution(spec.execution.timeout_seconds if spec.execution.HasField("timeout_seconds") else None,
                          spec.execution.retry_on_crash)
    return {"compress": compress, "export": export, "benchmark": benchmark, "gate": gate}, execution


# --- submit-time checks ---------------------------------------------------------------------------

def validate_spec(spec: pb.JobSpec, has_artifact: Callable[[str], bool]) -> None:
    """Raise ``InvalidArgument`` (or ``NotFound`` for a missing artifact) for what can be checked cheaply."""
    from pruning import zoo
    from pruning.criteria import create_criterion, is_criterion, list_criteria
    from pruning.errors import SpecError
    from service.artifacts import check_id
    from service.errors import NotFound

    if not spec.model.arch:
        examples = ", ".join(zoo.list_models()[:4])
        raise InvalidArgument(f"spec.model.arch is empty; name an architecture, e.g. {examples}")
    if not zoo.is_model(spec.model.arch):
        try:
            zoo.get_entry(spec.model.arch)
        except Exception as exc:  # noqa: BLE001 - ModelError with the did-you-mean text
            raise InvalidArgument(str(exc)) from None
    for field, artifact_id, what in (("spec.model.weights_artifact_id", spec.model.weights_artifact_id, "model"),
                                     ("spec.data.artifact_id", spec.data.artifact_id, "data")):
        if artifact_id:
            try:
                check_id(artifact_id)
            except InvalidArgument as exc:
                raise InvalidArgument(f"{field}: {exc}") from None
            if not has_artifact(artifact_id):
                raise NotFound(f"{field}: the {what} artifact {artifact_id} is not on this server; upload it first "
                               "(UploadArtifact)")
    p = spec.prune
    for name, params, kind in ((p.criterion or "l1", p.criterion_params, None),
                               (p.layer_criterion, p.layer_criterion_params, "block")):
        if not name:
            continue
        if not is_criterion(name):
            raise InvalidArgument(f"unknown criterion {name!r}; choose one of {', '.join(list_criteria())}")
        try:
            scorer = create_criterion(name, **_params(params))
        except SpecError as exc:
            raise InvalidArgument(str(exc)) from None
        if kind and scorer.kind != kind:
            raise InvalidArgument(f"layer_criterion {name!r} scores channels, not blocks; choose one of "
                                  f"{', '.join(list_criteria('block')) or '(none registered)'}")
    _check_ranges(spec)


def _check_ranges(spec: pb.JobSpec) -> None:
    p, d, f, b, x = spec.prune, spec.data, spec.finetune, spec.benchmark, spec.execution
    checks = [
        (p.HasField("target_reduction") and not (0.0 <= p.target_reduction < 1.0),
         f"spec.prune.target_reduction {p.target_reduction:g} is impossible: it is the fraction of the cost to "
         "remove, in [0, 1) (0.5 removes half)"),
        (p.HasField("round_to") and p.round_to < 1, "spec.prune.round_to must be >= 1 (1 = no rounding)"),
        (p.HasField("min_channels") and p.min_channels < 1, "spec.prune.min_channels must be >= 1"),
        (p.HasField("layer_share") and not 0.0 <= p.layer_share <= 1.0, "spec.prune.layer_share must be in [0, 1]"),
        (p.HasField("latency_budget_ms") and not p.latency_budget_ms > 0,
         "spec.prune.latency_budget_ms must be a positive number of milliseconds"),
        (p.HasField("latency_batch") and p.latency_batch < 1, "spec.prune.latency_batch must be >= 1"),
        (p.latency_target not in ("", "local:cpu", "local:cuda", "local:tensorrt"),
         f"spec.prune.latency_target {p.latency_target!r}: latency budgets are measured on local:cpu, local:cuda or "
         "local:tensorrt"),
        (spec.model.HasField("num_classes") and spec.model.num_classes < 1, "spec.model.num_classes must be >= 1"),
        (any(d.HasField(n) and getattr(d, n) < 0 for n in ("calibration_images", "evaluation_images",
                                                           "finetune_images")), "spec.data image counts must be >= 0"),
        (d.HasField("batch_size") and d.batch_size < 1, "spec.data.batch_size must be >= 1"),
        (d.HasField("input_size") and min(d.input_size.height, d.input_size.width) < 1,
         "spec.data.input_size must be positive (height and width in pixels)"),
        (len(d.mean) != len(d.std), f"spec.data.mean has {len(d.mean)} values and std {len(d.std)}; give one per "
                                    "channel for both"),
        (any(v <= 0 for v in d.std), "spec.data.std values must be > 0"),
        (any(f.HasField(n) and not getattr(f, n) >= 0 for n in ("epochs", "steps", "images", "minutes")),
         "spec.finetune budget values must be >= 0"),
        (f.HasField("batch_size") and f.batch_size < 1, "spec.finetune.batch_size must be >= 1"),
        (f.HasField("lr") and not f.lr > 0, "spec.finetune.lr must be > 0"),
        (any(v < 1 for v in b.batch_sizes), "spec.benchmark.batch_sizes must be >= 1"),
        (b.HasField("seconds_per_batch") and not b.seconds_per_batch > 0,
         "spec.benchmark.seconds_per_batch must be > 0"),
        (b.HasField("agent_eval_images") and b.agent_eval_images < 0,
         "spec.benchmark.agent_eval_images must be >= 0 (0 = no accuracy measured on agents)"),
        (b.precision not in ("", "fp32", "fp16", "int8"),
         f"spec.benchmark.precision {b.precision!r}: choose fp32, fp16 or int8 (fp16/int8 need TensorRT on the agent)"),
        (any(not _TARGET.match(t) for t in b.targets),
         f"spec.benchmark.targets {list(b.targets)}: each must be local:cpu, local:cuda, local:tensorrt or agent:NAME"),
        (spec.gate.HasField("max_accuracy_drop") and not math.isfinite(spec.gate.max_accuracy_drop),
         "spec.gate.max_accuracy_drop must be a finite number (a fraction: 0.01 = one point)"),
        (x.HasField("timeout_seconds") and not x.timeout_seconds > 0,
         "spec.execution.timeout_seconds must be > 0 (leave it unset for the server's default)"),
        (x.HasField("threads") and x.threads < 1, "spec.execution.threads must be >= 1"),
        (spec.export.HasField("opset") and not 7 <= spec.export.opset <= 30, "spec.export.opset must be in 7..30"),
        (spec.export.HasField("parity_atol") and not spec.export.parity_atol > 0,
         "spec.export.parity_atol must be > 0"),
    ]
    for failed, message in checks:
        if failed:
            raise InvalidArgument(message)


# --- dataclass JobSpec -> proto (client side) -----------------------------------------------------------

def _param_value(key: str, value: Any) -> pb.ParamValue:
    if isinstance(value, bool):
        return pb.ParamValue(bool_value=value)
    if isinstance(value, int):
        return pb.ParamValue(int_value=value)
    if isinstance(value, float):
        return pb.ParamValue(double_value=value)
    if isinstance(value, str):
        return pb.ParamValue(string_value=value)
    raise InvalidArgument(f"criterion parameter {key!r}={value!r}: only numbers, strings and booleans are supported")


def _set(message, **values: Any) -> None:
    for name, value in values.items():
        if value is not None:
            setattr(message, name, value)


def spec_to_proto(spec, weights_artifact_id: str = "", data_artifact_id: str = "",
                  execution: Execution = Execution()) -> pb.JobSpec:
    """A ``service.pipeline.JobSpec`` as a message; local paths are replaced by the given artifact ids."""
    c = spec.compress
    out = pb.JobSpec()
    out.model.arch = c.model.arch
    out.model.weights_artifact_id = weights_artifact_id
    _set(out.model, num_classes=c.model.num_classes)
    d = c.data
    out.data.artifact_id = data_artifact_id
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
    out.prune.target_metric = {"macs": pb.TARGET_METRIC_MACS, "params": pb.TARGET_METRIC_PARAMS}.get(
        p.target_metric, pb.TARGET_METRIC_UNSPECIFIED)
    out.prune.allocation = {"uniform": pb.ALLOCATION_UNIFORM, "global": pb.ALLOCATION_GLOBAL}.get(
        p.allocation, pb.ALLOCATION_UNSPECIFIED)
    _set(out.prune, target_reduction=p.target_reduction, round_to=p.round_to, min_channels=p.min_channels,
         layer_share=p.layer_share, layer_criterion=p.layer_criterion, latency_budget_ms=p.latency_budget_ms,
         latency_batch=p.latency_batch, latency_target=p.latency_target)
    out.prune.protected_layers.extend(p.protected)
    for key, value in dict(p.layer_criterion_params).items():
        out.prune.layer_criterion_params[key].CopyFrom(_param_value(key, value))
    r = c.reconstruct
    _set(out.reconstruct, enabled=r.enabled, positions_per_image=r.positions_per_image, ridge=r.ridge)
    out.reconstruct.batchnorm = {v: k for k, v in _BATCHNORM.items() if v}.get(r.batchnorm, 0)
    f = c.finetune
    _set(out.finetune, epochs=f.epochs, steps=f.steps, images=f.images, minutes=f.minutes, batch_size=f.batch_size,
         lr=f.lr, temperature=f.temperature, alpha=f.alpha, augment=f.augment, validation_images=f.validation_images)
    e = spec.export
    _set(out.export, onnx=e.onnx, opset=e.opset, slim=e.slim, parity_atol=e.parity_atol,
         parity_images=getattr(e, "parity_images", None))
    b = spec.benchmark
    out.benchmark.skip = not b.targets
    out.benchmark.targets.extend(b.targets)
    out.benchmark.batch_sizes.extend(b.batch_sizes)
    _set(out.benchmark, threads=b.threads, seconds_per_batch=b.seconds_per_batch, original=getattr(b, "original", None),
         agent_eval_images=getattr(b, "agent_eval_images", None))
    if getattr(b, "precision", "fp32") != "fp32":
        out.benchmark.precision = b.precision
    _set(out.gate, max_accuracy_drop=spec.gate.max_accuracy_drop)
    _set(out.execution, seed=c.seed, threads=c.threads, timeout_seconds=execution.timeout_seconds)
    out.execution.retry_on_crash = execution.retry_on_crash
    return out


# --- records -> messages -----------------------------------------------------------------------------

def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def artifact_to_proto(info) -> pb.Artifact:
    return pb.Artifact(id=info.id, name=info.name, kind=KIND_TO_PROTO.get(info.kind, pb.ARTIFACT_KIND_OTHER),
                       size_bytes=info.size_bytes, create_time=timestamp(info.created))


def job_to_proto(job: JobRecord) -> pb.Job:
    out = pb.Job(id=job.id, state=STATE_TO_PROTO[job.state], request_id=job.request_id or "", message=job.message,
                 cancel_requested=job.cancel_requested, last_sequence=job.last_sequence,
                 create_time=timestamp(job.created), start_time=timestamp(job.started),
                 end_time=timestamp(job.finished))
    if job.request:
        out.spec.ParseFromString(job.request)
    if job.progress:
        out.progress.CopyFrom(pb.Progress(**job.progress))
    if job.failure:
        f = job.failure
        out.failure.CopyFrom(pb.Failure(kind=FAILURE_TO_PROTO.get(f.kind, pb.FAILURE_KIND_UNSPECIFIED),
                                        message=f.message, error_type=f.error_type, exit_code=f.exit_code,
                                        signal=f.signal))
    if job.result is not None:
        out.result.CopyFrom(result_to_proto(job.result))
    return out


def event_to_proto(event: Event) -> pb.JobEvent:
    out = pb.JobEvent(job_id=event.job_id, sequence=event.sequence, time=timestamp(event.time),
                      type=pb.EVENT_TYPE_STATE if event.type == "state" else pb.EVENT_TYPE_PROGRESS,
                      state=STATE_TO_PROTO[event.state], message=event.message, terminal=event.terminal)
    if event.type == "progress":
        out.progress.CopyFrom(pb.Progress(stage=event.stage, fraction=event.fraction, message=event.message))
    return out


def _num(value: Any, default: float = 0.0) -> float:
    return default if value is None else float(value)


def result_to_proto(result: dict) -> pb.JobResult:
    out = pb.JobResult(final_stage=result.get("final_stage") or "")
    for stage, acc in (result.get("accuracy") or {}).items():
        out.accuracy[stage].CopyFrom(pb.Accuracy(top1=_num(acc.get("top1")), top5=_num(acc.get("top5")),
                                                 num_images=int(acc.get("num_images") or 0)))
    cost = result.get("cost") or {}
    for key, target in (("original", out.original_cost), ("compressed", out.compressed_cost)):
        c = cost.get(key) or {}
        target.CopyFrom(pb.Cost(macs=int(c.get("macs") or 0), params=int(c.get("params") or 0),
                                size_bytes=int(c.get("size_bytes") or 0)))
    reduction = result.get("reduction") or {}
    out.macs_reduction, out.params_reduction = _num(reduction.get("macs")), _num(reduction.get("params"))
    for row in result.get("latency") or []:
        out.latency.append(pb.LatencyRow(
            target=row.get("target") or "", model=row.get("model") or "", backend=row.get("backend") or "",
            batch_size=int(row.get("batch_size") or 0), runs=int(row.get("runs") or 0),
            p50_ms=_num(row.get("p50_ms"), math.nan), p90_ms=_num(row.get("p90_ms"), math.nan),
            p99_ms=_num(row.get("p99_ms"), math.nan), mean_ms=_num(row.get("mean_ms"), math.nan),
            throughput_ips=_num(row.get("throughput_ips"), math.nan), threads=int(row.get("threads") or 0),
            precision=row.get("precision") or "", device=row.get("device") or "", error=row.get("error") or "",
            stable=row.get("stable")))
    gate = result.get("gate") or {}
    out.gate.CopyFrom(pb.GateVerdict(evaluated=gate.get("max_accuracy_drop") is not None
                                     or gate.get("latency_budget_met") is not None,
                                     passed=bool(gate.get("passed", True)),
                                     max_accuracy_drop=_num(gate.get("max_accuracy_drop")),
                                     accuracy_drop=_num(gate.get("accuracy_drop")), stage=gate.get("stage") or ""))
    for stage, seconds in (result.get("timings") or {}).items():
        out.timings_seconds[stage] = _num(seconds)
    for layer in result.get("layers") or []:
        out.layers.append(pb.LayerWidth(layer=layer.get("layer", ""), kept=int(layer.get("kept", 0)),
                                        original=int(layer.get("original", 0))))
    outputs = result.get("outputs") or {}
    out.outputs.CopyFrom(pb.JobOutputs(**{f"{k}_artifact_id": v for k, v in outputs.items()
                                          if f"{k}_artifact_id" in pb.JobOutputs.DESCRIPTOR.fields_by_name}))
    for target, error in (result.get("target_errors") or {}).items():
        out.target_errors[target] = str(error)
    for target, entry in (result.get("target_accuracy") or {}).items():
        message = out.target_accuracy[target]
        message.backend, message.precision = entry.get("backend") or "", entry.get("precision") or ""
        message.device = entry.get("device") or ""
        for model in ("original", "compressed"):
            acc = entry.get(model)
            if acc:
                getattr(message, model).CopyFrom(pb.Accuracy(top1=_num(acc.get("top1")), top5=_num(acc.get("top5")),
                                                              num_images=int(acc.get("num_images") or 0)))
    return out
