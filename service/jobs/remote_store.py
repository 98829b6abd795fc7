"""The job store and the artifact store as a worker on another machine sees them: through the server.

A worker placed on a cluster node (``service.jobs.ray_executor``) has no access to the server's disk. These two
classes implement what ``service.jobs.worker.run_job`` needs of a ``JobStore`` and of ``Artifacts`` with calls
to the server's ``interprune.v1.JobWorker`` service (``proto/interprune/v1/worker.proto``; served by
``service.api.worker_servicer``), authenticated by the job's credentials (``service.jobs.job_tokens``):

- the job: its record (spec, state, cancel flag: ``CancelFlag`` polls it), progress events (appended by the
  server in the order the calls arrive, so ``WatchJob`` streams them in order), the terminal transition;
- artifacts: the inputs the job's spec names are streamed to the node and their SHA-256 checked before use;
  outputs are streamed to the server, which checks the digest before keeping them (as ``UploadArtifact`` does).

Errors come back as the ``service.core.errors`` class of the status code (``NotFound``, ``FailedPrecondition``,
...), so the worker handles them as it handles the local stores' errors.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc

from service._proto.interprune.v1 import compression_pb2 as pb
from service._proto.interprune.v1 import worker_pb2 as wpb
from service._proto.interprune.v1 import worker_pb2_grpc as wpb_grpc
from service.core.errors import Internal, ServiceError
from service.core.hashing import sha256_file
from service.core.names import artifact_name
from service.core.wire import FAILURE_TO_PROTO, KIND_FROM_PROTO, KIND_TO_PROTO, STATE_FROM_PROTO, STATE_TO_PROTO
from service.jobs.artifacts import CHUNK_BYTES, ArtifactInfo, check_id
from service.jobs.job_tokens import JobCredentials
from service.jobs.store import Failure, JobRecord, JobState

_RETRY_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "interprune.v1.JobWorker"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "3s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]}}]})
_ERRORS = {cls.code: cls for cls in ServiceError.__subclasses__()}
CALL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class WorkerEndpoint:
    """Where remote workers reach the server: ``HOST:PORT``, and the PEM certificates to trust when the server
    uses TLS (None: plaintext)."""

    address: str
    root_certificates: bytes | None = None

    @property
    def url(self) -> str:
        return f"worker://{self.address}"


def connect(endpoint: WorkerEndpoint, credentials: JobCredentials) -> tuple["RemoteJobStore", "RemoteArtifacts"]:
    """Both stores over one channel to the server."""
    options = [("grpc.service_config", _RETRY_CONFIG), ("grpc.enable_retries", 1),
               ("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]
    if endpoint.root_certificates is not None:
        channel = grpc.secure_channel(endpoint.address,
                                      grpc.ssl_channel_credentials(endpoint.root_certificates), options)
    else:
        channel = grpc.insecure_channel(endpoint.address, options)
    stub = wpb_grpc.JobWorkerStub(channel)
    return RemoteJobStore(stub, channel, credentials, endpoint.url), RemoteArtifacts(stub, credentials, endpoint.url)


def _service_error(error: grpc.RpcError) -> ServiceError:
    cls = _ERRORS.get(error.code(), Internal)
    return cls(f"the server answered {error.code().name}: {error.details()}")


class _Calls:
    def __init__(self, stub: wpb_grpc.JobWorkerStub, credentials: JobCredentials, url: str) -> None:
        self._stub, self.credentials, self.url = stub, credentials, url
        self._metadata = credentials.metadata()

    def _unary(self, method, request):
        try:
            return method(request, timeout=CALL_TIMEOUT_S, metadata=self._metadata)
        except grpc.RpcError as error:
            raise _service_error(error) from None

    def _own(self, job_id: str) -> None:
        if job_id != self.credentials.job_id:
            raise ValueError(f"this worker's credentials are for job {self.credentials.job_id}, not {job_id}")


class RemoteJobStore(_Calls):
    """The worker's side of the job store: ``get``, ``set_worker``, ``add_progress``, ``transition``, ``close``
    for its own job (``JobStore``'s other methods are the server's)."""

    def __init__(self, stub, channel: grpc.Channel, credentials: JobCredentials, url: str) -> None:
        super().__init__(stub, credentials, url)
        self._channel = channel

    def get(self, job_id: str) -> JobRecord:
        self._own(job_id)
        return _record(self._unary(self._stub.GetWorkerJob, wpb.GetWorkerJobRequest()))

    def set_worker(self, job_id: str, pid: int | None, node: str | None = None) -> None:
        self._own(job_id)
        self._unary(self._stub.AttachWorker, wpb.AttachWorkerRequest(pid=pid or 0, node=node or ""))

    def add_progress(self, job_id: str, stage: str, fraction: float, message: str) -> None:
        self._own(job_id)
        self._unary(self._stub.ReportProgress, wpb.ReportProgressRequest(
            progress=pb.Progress(stage=stage, fraction=float(fraction), message=message)))

    def transition(self, job_id: str, expect: JobState, to: JobState, *, message: str = "",
                   failure: Failure | None = None, result: dict | None = None) -> JobRecord:
        self._own(job_id)
        if expect != JobState.RUNNING or not to.terminal:
            raise ValueError(f"a worker records only its job's end (RUNNING -> a terminal state), not {to.value}")
        request = wpb.FinishJobRequest(state=STATE_TO_PROTO[to], message=message,
                                       result_json=json.dumps(result) if result is not None else "")
        if failure is not None:
            request.failure.CopyFrom(pb.Failure(kind=FAILURE_TO_PROTO.get(failure.kind, pb.FAILURE_KIND_UNSPECIFIED),
                                                message=failure.message, error_type=failure.error_type,
                                                exit_code=failure.exit_code, signal=failure.signal))
        return _record(self._unary(self._stub.FinishJob, request))

    def agent_token(self, job_id: str, agent: str) -> str | None:
        """The token of device agent ``agent`` (an ``agent:`` target of the job), as the server reads it."""
        self._own(job_id)
        return self._unary(self._stub.GetAgentToken, wpb.AgentTokenRequest(agent=agent)).token or None

    def close(self) -> None:
        self._channel.close()


class RemoteArtifacts(_Calls):
    """The worker's side of the artifact store: its job's inputs in, its outputs out, digests checked."""

    def has(self, artifact_id: str) -> bool:
        from service.core.errors import NotFound

        try:
            self.get(artifact_id)
        except NotFound:
            return False
        return True

    def get(self, artifact_id: str) -> ArtifactInfo:
        request = wpb.JobArtifactRequest(name=artifact_name(check_id(artifact_id)))
        return _info(self._unary(self._stub.GetJobArtifact, request))

    def read_chunks(self, artifact_id: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The artifact's bytes as the server sends them (``materialize`` checks the digest)."""
        request = wpb.JobArtifactRequest(name=artifact_name(check_id(artifact_id)))
        try:
            for message in self._stub.ReadJobArtifact(request, timeout=3600, metadata=self._metadata):
                if message.WhichOneof("content") == "chunk":
                    yield message.chunk
        except grpc.RpcError as error:
            raise _service_error(error) from None

    def materialize(self, artifact_id: str, dest: Path) -> Path:
        """Stream the artifact to ``dest``; the file appears only when its SHA-256 is the artifact's id."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as handle:
                for chunk in self.read_chunks(artifact_id):
                    digest.update(chunk)
                    handle.write(chunk)
            if digest.hexdigest() != artifact_id:
                raise Internal(f"artifact {artifact_id} arrived corrupted (its bytes hash to {digest.hexdigest()}); "
                               "nothing was used")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def put_file(self, path: str | Path, name: str, kind: str) -> ArtifactInfo:
        """Stream a job output to the server, which keeps it only if its bytes hash to the digest sent first."""
        path = Path(path)
        size, digest = path.stat().st_size, sha256_file(path)
        header = pb.ArtifactHeader(display_name=name, kind=KIND_TO_PROTO[kind], size_bytes=size, sha256=digest)

        def messages() -> Iterator[pb.UploadArtifactRequest]:
            yield pb.UploadArtifactRequest(header=header)
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
                    yield pb.UploadArtifactRequest(chunk=block)
        for attempt in range(4):                        # a client stream is not retried by gRPC itself
            try:
                info = _info(self._stub.WriteJobArtifact(messages(), timeout=3600, metadata=self._metadata))
                break
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == 3:
                    raise _service_error(error) from None
                time.sleep(0.5 * 2 ** attempt)
        if info.id != digest:
            raise Internal(f"the server stored {name} as {info.id}, not {digest}")
        return info


def _record(message: wpb.WorkerJob) -> JobRecord:
    return JobRecord(id=message.id, seq=0, state=STATE_FROM_PROTO[message.state], spec=json.loads(message.spec_json),
                     cancel_requested=message.cancel_requested, attempts=message.attempt)


def _info(message: pb.Artifact) -> ArtifactInfo:
    return ArtifactInfo(message.id, message.display_name, KIND_FROM_PROTO.get(message.kind, "other"),
                        message.size_bytes, message.create_time.ToSeconds())
