"""Store records -> messages: jobs, events, artifacts and results as ``interprune.v1`` messages."""
from __future__ import annotations

import math
from typing import Any

from service._proto.interprune.v1 import common_pb2 as cpb
from service._proto.interprune.v1 import compression_pb2 as pb
from service.core.names import artifact_name, job_name
from service.core.wire import FAILURE_TO_PROTO, KIND_TO_PROTO, STATE_TO_PROTO, timestamp
from service.jobs.store import Event, JobRecord


def artifact_to_proto(info) -> pb.Artifact:
    return pb.Artifact(name=artifact_name(info.id), id=info.id, display_name=info.name, kind=KIND_TO_PROTO.get(info.kind, pb.ARTIFACT_KIND_OTHER),
                       size_bytes=info.size_bytes, create_time=timestamp(info.created))


def job_to_proto(job: JobRecord) -> pb.Job:
    out = pb.Job(name=job_name(job.id), id=job.id, state=STATE_TO_PROTO[job.state], request_id=job.request_id or "", message=job.message,
                 cancel_requested=job.cancel_requested, last_sequence=job.last_sequence,
                 worker_node=job.worker_node or "",
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


def node_to_proto(node) -> pb.ClusterNode:
    """A ``service.jobs.ray_executor.ClusterNode`` as a message."""
    return pb.ClusterNode(node_id=node.node_id, address=node.address, alive=node.alive, cpus=node.cpus,
                          free_cpus=node.free_cpus, gpus=node.gpus, free_gpus=node.free_gpus,
                          resources=node.resources)


def event_to_proto(event: Event) -> pb.JobEvent:
    out = pb.JobEvent(job=job_name(event.job_id), sequence=event.sequence, time=timestamp(event.time),
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
        out.accuracy[stage].CopyFrom(cpb.Accuracy(top1=_num(acc.get("top1")), top5=_num(acc.get("top5")),
                                                 num_images=int(acc.get("num_images") or 0)))
    cost = result.get("cost") or {}
    for key, target in (("original", out.original_cost), ("compressed", out.compressed_cost)):
        c = cost.get(key) or {}
        target.CopyFrom(pb.Cost(macs=int(c.get("macs") or 0), params=int(c.get("params") or 0),
                                size_bytes=int(c.get("size_bytes") or 0)))
    reduction = result.get("reduction") or {}
    out.macs_reduction, out.params_reduction = _num(reduction.get("macs")), _num(reduction.get("params"))
    for row in result.get("latency") or []:
        out.latency.append(cpb.LatencyRow(
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
    out.outputs.CopyFrom(pb.JobOutputs(**{f"{k}_artifact": artifact_name(v) for k, v in outputs.items()
                                          if f"{k}_artifact" in pb.JobOutputs.DESCRIPTOR.fields_by_name}))
    out.warnings.extend(str(w) for w in result.get("warnings") or [])
    for target, error in (result.get("target_errors") or {}).items():
        out.target_errors[target] = str(error)
    for target, entry in (result.get("target_accuracy") or {}).items():
        message = out.target_accuracy[target]
        message.backend, message.precision = entry.get("backend") or "", entry.get("precision") or ""
        message.device = entry.get("device") or ""
        for model in ("original", "compressed"):
            acc = entry.get(model)
            if acc:
                getattr(message, model).CopyFrom(cpb.Accuracy(top1=_num(acc.get("top1")), top5=_num(acc.get("top5")),
                                                              num_images=int(acc.get("num_images") or 0)))
    return out
