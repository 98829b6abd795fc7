"""The ``interprune.v1.Compression`` servicer: thin — validate, call the job store / artifact store / scheduler,
convert messages. Conversions live in ``service.api.convert``, submit-time checks in ``service.api.validate``."""
from __future__ import annotations

import base64
import logging
import threading
from typing import Iterator

from service._proto.interprune.v1 import compression_pb2 as pb
from service._proto.interprune.v1 import compression_pb2_grpc as pb_grpc
from service.api.convert import artifact_to_proto, event_to_proto, job_to_proto, node_to_proto
from service.api.validate import validate_spec
from service.api.settings import ServerSettings
from service.core.names import parse_artifact_name, parse_job_name
from service.core.errors import InvalidArgument, ResourceExhausted, Unavailable, rpc
from service.core.wire import KIND_FROM_PROTO, STATE_FROM_PROTO, spec_to_dict
from service.jobs.artifacts import ArtifactStore
from service.jobs.scheduler import Scheduler
from service.jobs.store import JobState, JobStore

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
MAX_PAGE_SIZE = 500


class CompressionServicer(pb_grpc.CompressionServicer):
    def __init__(self, store: JobStore, artifacts: ArtifactStore, scheduler: Scheduler,
                 settings: ServerSettings, stopping: threading.Event) -> None:
        self.store, self.artifacts, self.scheduler = store, artifacts, scheduler
        self.settings, self.stopping = settings, stopping
        self._watchers = threading.BoundedSemaphore(settings.max_watchers or max(1, settings.rpc_threads - 8))

    # --- artifacts -------------------------------------------------------------------------------

    @rpc
    def UploadArtifact(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("content") != "header":
            raise InvalidArgument("the first UploadArtifact message must carry the header (name, kind, size_bytes, "
                                  "sha256); the bytes follow in later messages")
        header = first.header
        kind = KIND_FROM_PROTO.get(header.kind)
        if kind is None:
            raise InvalidArgument("the upload header must set kind (MODEL, DATASET, ...)")
        info = self.artifacts.put_stream(header.display_name, kind, header.size_bytes, header.sha256,
                                         _chunks(request_iterator))
        log.info("artifact %s (%s, %d bytes) stored", info.id[:12], info.name, info.size_bytes)
        return artifact_to_proto(info)

    @rpc
    def GetArtifact(self, request, context):
        return artifact_to_proto(self.artifacts.get(parse_artifact_name(request.name)))

    @rpc
    def DownloadArtifact(self, request, context):
        info = self.artifacts.get(parse_artifact_name(request.name))
        yield pb.DownloadArtifactResponse(artifact=artifact_to_proto(info))
        for chunk in self.artifacts.read_chunks(info.id, CHUNK_BYTES):
            if not context.is_active():
                return
            yield pb.DownloadArtifactResponse(chunk=chunk)

    # --- jobs ------------------------------------------------------------------------------------

    @rpc
    def SubmitJob(self, request, context):
        if self.stopping.is_set():
            raise Unavailable("the server is shutting down; submit again in a moment (with the same request_id)")
        if len(request.request_id) > 200:
            raise InvalidArgument("request_id is longer than 200 characters")
        validate_spec(request.spec, self.artifacts.has, self.settings.allowed_model_packages)
        spec, execution = spec_to_dict(request.spec)
        _add_agents(spec, spec["benchmark"].get("targets", ()), self.settings.agents)
        normalized = _normalize(spec)
        job, created = self.store.create(normalized, request=request.spec.SerializeToString(deterministic=True),
                                         request_id=request.request_id or None,
                                         timeout_seconds=execution.timeout_seconds,
                                         retry_on_crash=execution.retry_on_crash)
        if created:
            log.info("job %s queued (%s, %s)", job.id, request.spec.model.arch, request.spec.prune.criterion or "l1")
            self.scheduler.wake()
        return job_to_proto(job)

    @rpc
    def GetJob(self, request, context):
        return job_to_proto(self.store.get(parse_job_name(request.name)))

    @rpc
    def ListJobs(self, request, context):
        if request.page_size < 0:
            raise InvalidArgument("page_size must be >= 0 (0 = the default of 50)")
        size = min(request.page_size or 50, MAX_PAGE_SIZE)
        states = []
        for state in request.states:
            if state not in STATE_FROM_PROTO:
                raise InvalidArgument(f"unknown job state {state} in the filter")
            states.append(STATE_FROM_PROTO[state])
        jobs, cursor = self.store.list(states, size, _decode_token(request.page_token))
        return pb.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs], next_page_token=_encode_token(cursor))

    @rpc
    def WatchJob(self, request, context):
        job_id = parse_job_name(request.name)
        if request.after_sequence < 0:
            raise InvalidArgument("after_sequence must be >= 0")
        self.store.get(job_id)
        if not self._watchers.acquire(blocking=False):
            raise ResourceExhausted("too many open WatchJob streams on this server; retry in a few seconds, or poll "
                                    "GetJob")
        try:
            yield from self._watch(job_id, request.after_sequence, context)
        finally:
            self._watchers.release()

    def _watch(self, job_id: str, after: int, context) -> Iterator[pb.JobEvent]:
        while context.is_active():
            events = self.store.events(job_id, after)
            for event in events:
                yield event_to_proto(event)
                after = event.sequence
                if event.terminal:
                    return
            if events:
                continue
            job = self.store.get(job_id)
            if job.state.terminal and after >= job.last_sequence:
                return
            if self.stopping.wait(self.settings.watch_poll_s):
                raise Unavailable(f"the server is shutting down; watch again with after_sequence={after}")

    @rpc
    def CancelJob(self, request, context):
        job = self.store.request_cancel(parse_job_name(request.name))
        if job.state == JobState.RUNNING:
            self.scheduler.cancel(job.id)       # returns at once: the job reaches CANCELLED on its own
        return job_to_proto(job)

    # --- devices ---------------------------------------------------------------------------------

    @rpc
    def ListDevices(self, request, context):
        from service.agent.client import list_devices

        nodes = getattr(self.scheduler.executor, "nodes", None)
        return pb.ListDevicesResponse(devices=list_devices(self.settings.agents), executor=self.settings.executor,
                                      nodes=[node_to_proto(n) for n in (nodes() if nodes else ())])


def _add_agents(spec: dict, targets, agents: dict) -> None:
    """Give the job the addresses (and token files) of the agents its targets name; unknown names are refused."""
    named = [t.split(":", 1)[1] for t in targets if t.startswith("agent:")]
    unknown = [name for name in named if name not in agents]
    if unknown:
        known = ", ".join(f"agent:{n}" for n in agents) or "none (start the server with --agent NAME=HOST:PORT)"
        raise InvalidArgument(f"spec.benchmark.targets: unknown agent {', '.join(unknown)}; this server knows "
                              f"{known}")
    if named:
        spec["benchmark"]["agents"] = {n: agents[n].address for n in named}
        tokens = {n: agents[n].token_file for n in named if agents[n].token_file}
        if tokens:
            spec["benchmark"]["agent_token_files"] = tokens


def _chunks(request_iterator) -> Iterator[bytes]:
    for message in request_iterator:
        if message.WhichOneof("content") != "chunk":
            raise InvalidArgument("only the first UploadArtifact message may carry a header; later ones carry chunks")
        yield message.chunk


def _normalize(spec: dict) -> dict:
    """The spec as ``pipeline.spec.JobSpec`` reads it back (types checked, defaults filled in)."""
    from pruning.errors import SpecError
    from pipeline.spec import JobSpec

    try:
        return JobSpec.from_dict(spec).to_dict()
    except SpecError as exc:
        raise InvalidArgument(str(exc)) from None


def _encode_token(cursor: int | None) -> str:
    return "" if cursor is None else base64.urlsafe_b64encode(f"v1:{cursor}".encode()).decode()


def _decode_token(token: str) -> int | None:
    if not token:
        return None
    try:
        version, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if version != "v1":
            raise ValueError(version)
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token is not one this server issued; start again without it") from None
