"""The client's view of the service: status codes, errors, and a dataclass per message (no protobuf types leak
to users), with the conversions from messages."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

import grpc

from service._proto.interprune.v1 import compression_pb2 as pb
from service.core.states import JobState


class StatusCode(str, Enum):
    OK = "OK"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"


class InterpruneClientError(Exception):
    """Something the caller can act on; ``str()`` is one line."""


class InterpruneRPCError(InterpruneClientError):
    """The server answered with a non-OK status (or could not be reached: UNAVAILABLE)."""

    def __init__(self, status: StatusCode, message: str) -> None:
        super().__init__(f"{status.value}: {message}")
        self.status = status
        self.message = message

    @classmethod
    def from_grpc(cls, error: grpc.RpcError) -> "InterpruneRPCError":
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = (error.details() if hasattr(error, "details") else None) or str(error)
        return cls(StatusCode[code.name], details)


# --- results as dataclasses ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Artifact:
    id: str
    name: str
    kind: str
    size_bytes: int
    created: datetime | None = None


@dataclass(frozen=True)
class Progress:
    stage: str
    fraction: float
    message: str


@dataclass(frozen=True)
class Failure:
    kind: str                  # invalid_input, export_check, timed_out, crashed, server_stopped, internal
    message: str
    error_type: str = ""
    exit_code: int | None = None
    signal: int | None = None


@dataclass(frozen=True)
class Accuracy:
    top1: float
    top5: float
    num_images: int


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int
    size_bytes: int


@dataclass(frozen=True)
class LatencyRow:
    target: str
    model: str
    backend: str
    batch_size: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_ips: float
    threads: int
    precision: str
    device: str
    error: str
    stable: bool | None = None     # the latency protocol's stability rule was met; None = not judged


@dataclass(frozen=True)
class GateVerdict:
    evaluated: bool
    passed: bool
    max_accuracy_drop: float | None
    accuracy_drop: float
    stage: str


@dataclass(frozen=True)
class TargetAccuracy:
    """Accuracy of the artifact a target built (e.g. a TensorRT engine on a device agent)."""

    original: Accuracy | None
    compressed: Accuracy | None
    backend: str
    precision: str
    device: str


@dataclass(frozen=True)
class Device:
    """A device agent the server knows; ``info`` (DeviceInfo fields) when it answered just now."""

    name: str
    address: str
    healthy: bool
    error: str
    info: dict[str, Any] | None


@dataclass(frozen=True)
class ClusterNode:
    """A node of the Ray cluster the server runs jobs on (``serve --executor ray``)."""

    node_id: str
    address: str
    alive: bool
    cpus: float
    free_cpus: float
    gpus: float
    free_gpus: float
    resources: dict[str, float]


@dataclass(frozen=True)
class Devices:
    """What ListDevices says: the device agents, where jobs run (``local`` or ``ray``) and the cluster's nodes."""

    agents: list[Device]
    executor: str
    nodes: list[ClusterNode]


@dataclass(frozen=True)
class JobResult:
    accuracy: dict[str, Accuracy]
    final_stage: str
    original_cost: Cost
    compressed_cost: Cost
    macs_reduction: float
    params_reduction: float
    latency: list[LatencyRow]
    gate: GateVerdict
    timings: dict[str, float]
    layers: list[dict]
    outputs: dict[str, str]            # plan, weights, onnx, report_json, report_html -> artifact id
    target_errors: dict[str, str]
    target_accuracy: dict[str, TargetAccuracy] = field(default_factory=dict)   # agent target -> accuracy there
    warnings: list[str] = field(default_factory=list)  # the job did less than asked (e.g. an allowed shortfall)


@dataclass(frozen=True)
class Job:
    id: str
    state: JobState
    request_id: str
    message: str
    created: datetime | None
    started: datetime | None
    finished: datetime | None
    progress: Progress | None
    failure: Failure | None
    result: JobResult | None
    cancel_requested: bool
    last_sequence: int
    spec: Any = field(default=None, repr=False)     # the submitted interprune.v1.JobSpec message
    worker_node: str = ""                          # where its worker runs / ran: "local", "ray node {id} ({ip})"

    @property
    def done(self) -> bool:
        return self.state.terminal


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    sequence: int
    time: datetime | None
    type: str                          # "state" | "progress"
    state: JobState
    stage: str
    fraction: float
    message: str
    terminal: bool


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next_page_token: str


@dataclass(frozen=True)
class ArtifactPage:
    artifacts: list[Artifact]
    next_page_token: str


# --- conversions ----------------------------------------------------------------------------------------

def _time(message, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    return getattr(message, name).ToDatetime(tzinfo=timezone.utc)


def _artifact(m: pb.Artifact) -> Artifact:
    from service.core.wire import KIND_FROM_PROTO

    return Artifact(m.id, m.display_name, KIND_FROM_PROTO.get(m.kind, "other"), m.size_bytes, _time(m, "create_time"))


def _result(m: pb.JobResult) -> JobResult:
    outputs = {f.name.removesuffix("_artifact"): getattr(m.outputs, f.name).removeprefix("artifacts/")
               for f in m.outputs.DESCRIPTOR.fields if getattr(m.outputs, f.name)}
    gate = m.gate
    return JobResult(
        accuracy={k: Accuracy(v.top1, v.top5, v.num_images) for k, v in m.accuracy.items()},
        final_stage=m.final_stage,
        original_cost=Cost(m.original_cost.macs, m.original_cost.params, m.original_cost.size_bytes),
        compressed_cost=Cost(m.compressed_cost.macs, m.compressed_cost.params, m.compressed_cost.size_bytes),
        macs_reduction=m.macs_reduction, params_reduction=m.params_reduction,
        latency=[LatencyRow(r.target, r.model, r.backend, r.batch_size, r.runs, r.p50_ms, r.p90_ms, r.p99_ms,
                            r.mean_ms, r.throughput_ips, r.threads, r.precision, r.device, r.error,
                            r.stable if r.HasField("stable") else None) for r in m.latency],
        gate=GateVerdict(gate.evaluated, gate.passed, gate.max_accuracy_drop if gate.evaluated else None,
                         gate.accuracy_drop, gate.stage),
        timings=dict(m.timings_seconds), layers=[{"layer": l.layer, "kept": l.kept, "original": l.original}
                                                 for l in m.layers],
        outputs=outputs, target_errors=dict(m.target_errors),
        target_accuracy={target: TargetAccuracy(_accuracy(t, "original"), _accuracy(t, "compressed"), t.backend,
                                                t.precision, t.device) for target, t in m.target_accuracy.items()},
        warnings=list(m.warnings))


def _accuracy(message, name: str) -> Accuracy | None:
    if not message.HasField(name):
        return None
    a = getattr(message, name)
    return Accuracy(a.top1, a.top5, a.num_images)


def _job(m: pb.Job) -> Job:
    from service.core.wire import FAILURE_FROM_PROTO, STATE_FROM_PROTO

    failure = None
    if m.HasField("failure"):
        f = m.failure
        failure = Failure(FAILURE_FROM_PROTO.get(f.kind, "unspecified"), f.message, f.error_type,
                          f.exit_code if f.HasField("exit_code") else None, f.signal if f.HasField("signal") else None)
    progress = Progress(m.progress.stage, m.progress.fraction, m.progress.message) if m.HasField("progress") else None
    return Job(m.id, STATE_FROM_PROTO[m.state], m.request_id, m.message, _time(m, "create_time"),
               _time(m, "start_time"), _time(m, "end_time"), progress, failure,
               _result(m.result) if m.HasField("result") else None, m.cancel_requested, m.last_sequence, m.spec,
               m.worker_node)


def _event(m: pb.JobEvent) -> JobEvent:
    from service.core.wire import STATE_FROM_PROTO

    kind = "state" if m.type == pb.EVENT_TYPE_STATE else "progress"
    return JobEvent(m.job.removeprefix("jobs/"), m.sequence, _time(m, "time"), kind, STATE_FROM_PROTO[m.state], m.progress.stage,
                    m.progress.fraction, m.message, m.terminal)
