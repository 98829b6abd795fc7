"""The Python client: the service without gRPC.

    from service.client import Client
    with Client("127.0.0.1:50051", token="...") as client:
        job = client.submit(spec)                  # a pipeline.spec.JobSpec; local files are uploaded
        for event in client.watch(job.id):         # resumes by itself after a dropped connection
            print(event.stage, event.fraction, event.message)
        job = client.get(job.id)
        client.download(job.result.outputs["onnx"], "model.onnx")

Every failure is an ``InterpruneClientError``: a local problem (a file that is not there), or its subclass
``InterpruneRPCError`` with a ``status`` (``StatusCode``) and the server's message. Calls take a channel or an
address; tests pass a channel to an in-process server.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator

import grpc

from service._proto.interprune.v1 import compression_pb2 as pb
from service._proto.interprune.v1 import compression_pb2_grpc as pb_grpc
from service.client.packing import pack_folder
from service.client.types import (Accuracy, Artifact, ArtifactPage, ClusterNode, Cost, Device, Devices, Failure,
                                   GateVerdict, InterpruneClientError, InterpruneRPCError, Job, JobEvent, JobPage,
                                   JobResult, LatencyRow, Progress, StatusCode, TargetAccuracy, _artifact, _event, _job)
from service.core.hashing import sha256_file
from service.core.names import artifact_name, job_name
from service.core.states import JobState

__all__ = ["Accuracy", "Artifact", "ArtifactPage", "Client", "ClusterNode", "Cost", "Device", "Devices", "Failure",
           "GateVerdict", "InterpruneClientError", "InterpruneRPCError", "Job", "JobEvent", "JobPage", "JobResult",
           "JobState", "LatencyRow", "Progress", "StatusCode", "TargetAccuracy"]

CHUNK_BYTES = 1 << 20
_DIGEST = re.compile(r"^(artifact:)?([0-9a-f]{64})\Z")


def _retry_config(attempts: int) -> str:
    """Retry UNAVAILABLE (a server restarting, a dropped connection) up to ``attempts`` calls in all."""
    return json.dumps({"methodConfig": [{
        "name": [{"service": "interprune.v1.Compression"}],
        "retryPolicy": {"maxAttempts": max(2, attempts), "initialBackoff": "0.2s", "maxBackoff": "2s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]})


def _artifact_name(artifact_id: str) -> str:
    """``artifacts/{sha256}`` for an id (a name given as the id, or ``artifact:<id>``, is accepted)."""
    return artifact_name(artifact_id.removeprefix("artifacts/").removeprefix("artifact:"))


def _job_name(job_id: str) -> str:
    """``jobs/{id}`` for a job id (a name given as the id is kept)."""
    return job_id if job_id.startswith("jobs/") else job_name(job_id)


class Client:
    """Talks to one interprune server. ``target`` is ``HOST:PORT`` or a ``grpc.Channel`` (yours to close)."""

    def __init__(self, target: str | grpc.Channel, *, token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None, timeout_s: float = 60.0,
                 retry_attempts: int = 4) -> None:
        if isinstance(target, str):
            options = [("grpc.service_config", _retry_config(retry_attempts)), ("grpc.enable_retries", 1),
                       ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                       ("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]
            self._channel = (grpc.secure_channel(target, credentials, options) if credentials
                             else grpc.insecure_channel(target, options))
            self._owns_channel = True
        else:
            self._channel, self._owns_channel = target, False
        self._stub = pb_grpc.CompressionStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout_s = timeout_s

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _unary(self, method, request, timeout_s: float | None = None):
        try:
            return method(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise InterpruneRPCError.from_grpc(error) from None

    # --- artifacts -------------------------------------------------------------------------------

    def get_artifact(self, artifact_id: str) -> Artifact:
        return _artifact(self._unary(self._stub.GetArtifact, pb.GetArtifactRequest(name=artifact_name(artifact_id.removeprefix("artifacts/")))))

    def upload(self, path: str | os.PathLike, kind: str = "model", name: str | None = None) -> Artifact:
        """Upload a file in 1 MiB chunks (skipped when the server already holds its digest)."""
        from service.core.wire import KIND_TO_PROTO

        path = Path(path)
        if not path.is_file():
            raise InterpruneClientError(f"{path} is not a file" + (
                "; upload() takes one file: pack a folder as .tar/.zip, or pass it as the spec's data path to "
                "submit(), which packs it" if path.is_dir() else ""))
        if kind not in KIND_TO_PROTO:
            raise InterpruneClientError(f"unknown artifact kind {kind!r}; use one of {', '.join(KIND_TO_PROTO)}")
        digest, size = sha256_file(path), path.stat().st_size
        try:
            return self.get_artifact(digest)
        except InterpruneRPCError as error:
            if error.status != StatusCode.NOT_FOUND:
                raise
        header = pb.ArtifactHeader(display_name=name or path.name, kind=KIND_TO_PROTO[kind], size_bytes=size, sha256=digest)

        def messages() -> Iterator[pb.UploadArtifactRequest]:
            yield pb.UploadArtifactRequest(header=header)
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
                    yield pb.UploadArtifactRequest(chunk=block)
        try:
            return _artifact(self._stub.UploadArtifact(messages(), metadata=self._metadata))
        except grpc.RpcError as error:
            raise InterpruneRPCError.from_grpc(error) from None

    def list_artifacts(self, kinds: Iterable[str] = (), page_size: int = 50, page_token: str = "") -> ArtifactPage:
        """Stored artifacts, newest first (``kinds``: e.g. ("model", "dataset"); empty = all)."""
        from service.core.wire import KIND_TO_PROTO

        unknown = [k for k in kinds if k not in KIND_TO_PROTO]
        if unknown:
            raise InterpruneClientError(f"unknown artifact kind {unknown[0]!r}; use one of {', '.join(KIND_TO_PROTO)}")
        request = pb.ListArtifactsRequest(page_size=page_size, page_token=page_token,
                                          kinds=[KIND_TO_PROTO[k] for k in kinds])
        response = self._unary(self._stub.ListArtifacts, request)
        return ArtifactPage([_artifact(a) for a in response.artifacts], response.next_page_token)

    def iter_artifacts(self, kinds: Iterable[str] = (), page_size: int = 100) -> Iterator[Artifact]:
        token = ""
        while True:
            page = self.list_artifacts(kinds, page_size, token)
            yield from page.artifacts
            if not page.next_page_token:
                return
            token = page.next_page_token

    def delete_artifact(self, artifact_id: str) -> None:
        """Remove an artifact from the server; FAILED_PRECONDITION while a queued or running job uses it."""
        self._unary(self._stub.DeleteArtifact, pb.DeleteArtifactRequest(name=_artifact_name(artifact_id)))

    def download(self, artifact_id: str, path: str | os.PathLike) -> Path:
        """Stream an artifact into ``path`` atomically; the digest is checked before the file appears."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
        digest, size, info = hashlib.sha256(), 0, None
        try:
            with open(tmp, "wb") as handle:
                for message in self._stub.DownloadArtifact(pb.DownloadArtifactRequest(name=artifact_name(artifact_id.removeprefix("artifacts/"))),
                                                           metadata=self._metadata):
                    if message.WhichOneof("content") == "artifact":
                        info = _artifact(message.artifact)
                        continue
                    digest.update(message.chunk)
                    size += len(message.chunk)
                    handle.write(message.chunk)
            if info is None or digest.hexdigest() != info.id or size != info.size_bytes:
                raise InterpruneClientError(f"download of {artifact_id} arrived incomplete or corrupted "
                                            f"({size} bytes, sha256 {digest.hexdigest()[:12]}...); download it again")
            os.replace(tmp, path)
        except grpc.RpcError as error:
            raise InterpruneRPCError.from_grpc(error) from None
        finally:
            tmp.unlink(missing_ok=True)
        return path

    # --- jobs ------------------------------------------------------------------------------------

    def submit(self, spec, *, request_id: str | None = None, timeout_seconds: float | None = None,
               retry_on_crash: bool = False) -> Job:
        """Queue ``spec`` (a ``pipeline.spec.JobSpec`` or an ``interprune.v1.JobSpec``) and return the job.

        In a ``JobSpec``, the model weights, an ONNX model file and the data path may be local files (uploaded
        first) or artifact ids; an ONNX model's external data files (``model.onnx.data``) go up with it, named in
        ``spec.model.external_data``. A ``request_id`` is generated when none is given, so retries of this call
        never queue twice.
        """
        from service.core.wire import Execution, spec_to_proto

        if not isinstance(spec, pb.JobSpec):
            compress = spec.compress
            external = {location: self._artifact_ref(file, "other")
                        for location, file in model_data_files(compress.model).items()}
            model = self._artifact_ref(compress.model.model_file, "model")
            weights = self._artifact_ref(compress.model.weights, "model")
            data = self._artifact_ref(compress.data.path, "dataset")
            spec = spec_to_proto(spec, weights, data, Execution(timeout_seconds, retry_on_crash), model, external)
        request = pb.SubmitJobRequest(spec=spec, request_id=request_id or f"client-{uuid.uuid4().hex}")
        return _job(self._unary(self._stub.SubmitJob, request))

    def _artifact_ref(self, value: str | None, kind: str) -> str:
        if not value:
            return ""
        match = _DIGEST.match(str(value))
        if match and not Path(value).exists():
            return match.group(2)
        if kind == "dataset" and Path(value).is_dir():        # uploaded as a .tar the server opens as the folder
            with tempfile.TemporaryDirectory(prefix="interprune-pack-") as tmp:
                return self.upload(pack_folder(Path(value), Path(tmp)), kind).id
        return self.upload(value, kind).id

    def get(self, job_id: str) -> Job:
        return _job(self._unary(self._stub.GetJob, pb.GetJobRequest(name=_job_name(job_id))))

    def list(self, states: Iterable[JobState | str] = (), page_size: int = 50, page_token: str = "") -> JobPage:
        from service.core.wire import STATE_TO_PROTO

        request = pb.ListJobsRequest(page_size=page_size, page_token=page_token,
                                     states=[STATE_TO_PROTO[JobState(s)] for s in states])
        response = self._unary(self._stub.ListJobs, request)
        return JobPage([_job(j) for j in response.jobs], response.next_page_token)

    def iter_jobs(self, states: Iterable[JobState | str] = (), page_size: int = 100) -> Iterator[Job]:
        token = ""
        while True:
            page = self.list(states, page_size, token)
            yield from page.jobs
            if not page.next_page_token:
                return
            token = page.next_page_token

    def delete(self, job_id: str) -> list[str]:
        """Remove a finished job; returns the ids of its outputs removed with it (those no other job uses)."""
        response = self._unary(self._stub.DeleteJob, pb.DeleteJobRequest(name=_job_name(job_id)))
        return [name.removeprefix("artifacts/") for name in response.deleted_artifacts]

    def cancel(self, job_id: str) -> Job:
        return _job(self._unary(self._stub.CancelJob, pb.CancelJobRequest(name=_job_name(job_id))))

    def watch(self, job_id: str, after_sequence: int = 0, reconnect_for_s: float = 60.0,
              for_s: float | None = None) -> Iterator[JobEvent]:
        """Events after ``after_sequence`` until the terminal one (or until ``for_s`` seconds have passed; the job
        keeps running). A dropped connection is resumed from the last sequence seen, for up to
        ``reconnect_for_s`` seconds without progress."""
        last, give_up = after_sequence, time.monotonic() + reconnect_for_s
        end = None if for_s is None else time.monotonic() + for_s
        while True:
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            try:
                for message in self._stub.WatchJob(pb.WatchJobRequest(name=_job_name(job_id), after_sequence=last),
                                                   metadata=self._metadata, timeout=remaining):
                    event = _event(message)
                    last, give_up = event.sequence, time.monotonic() + reconnect_for_s
                    yield event
                    if event.terminal:
                        return
                job = self.get(job_id)
                if job.done and last >= job.last_sequence:
                    return
            except (grpc.RpcError, InterpruneRPCError) as error:
                error = error if isinstance(error, InterpruneRPCError) else InterpruneRPCError.from_grpc(error)
                if error.status == StatusCode.DEADLINE_EXCEEDED and end is not None and time.monotonic() >= end:
                    return
                if error.status != StatusCode.UNAVAILABLE or time.monotonic() > give_up:
                    raise error from None
                time.sleep(0.5)

    def list_devices(self, timeout_s: float = 30.0) -> list[Device]:
        """The device agents the server knows, each asked for its description now."""
        return self.devices(timeout_s).agents

    def devices(self, timeout_s: float = 30.0) -> Devices:
        """The device agents, the executor and, with the Ray executor, the cluster's nodes and their free
        CPUs / GPUs."""
        from service.agent.client import info_to_dict

        response = self._unary(self._stub.ListDevices, pb.ListDevicesRequest(), timeout_s)
        agents = [Device(d.name, d.address, d.healthy, d.error, info_to_dict(d.info) if d.HasField("info") else None)
                  for d in response.devices]
        nodes = [ClusterNode(n.node_id, n.address, n.alive, n.cpus, n.free_cpus, n.gpus, n.free_gpus,
                             dict(n.resources)) for n in response.nodes]
        return Devices(agents, response.executor or "local", nodes)

    def wait(self, job_id: str, timeout_s: float | None = None) -> Job:
        """Block until the job ends (at most ``timeout_s`` seconds: then ``TimeoutError``, the job keeps running);
        return it."""
        for _ in self.watch(job_id, for_s=timeout_s):
            pass
        job = self.get(job_id)
        if timeout_s is not None and not job.done:
            raise TimeoutError(f"job {job_id} is still {job.state.name} after {timeout_s:g} s: {job.message}")
        return job


def model_data_files(model) -> dict[str, str]:
    """location -> file (or artifact id) of an ONNX model's external data (torch.onnx.export's default writes
    ``model.onnx.data``), uploaded with the model (``spec.model.external_data``): those the spec names, else those
    a local ``model_file`` names inside its folder; {} for a self-contained model."""
    if model.external_data:
        return dict(model.external_data)
    if not model.model_file or not Path(model.model_file).is_file():
        return {}
    from pruning.errors import ModelError
    from pruning.intake.onnx_source import external_data_beside

    try:
        return {location: str(file) for location, file in external_data_beside(Path(model.model_file)).items()}
    except ModelError as exc:
        raise InterpruneClientError(str(exc)) from None
