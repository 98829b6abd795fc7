"""The ``interprune.v1.Compression`` servicer: thin — validate, call the job store / artifact store / scheduler,
convert messages. Conversions live in ``service.api.convert``, submit-time checks in ``service.api.validate``."""
from __future__ import annotations

import base64
import logging
import math
import threading
from typing import Iterator

from pruning.errors import clip
from service._proto.interprune.v1 import compression_pb2 as pb
from service._proto.interprune.v1 import compression_pb2_grpc as pb_grpc
from service.api.convert import artifact_to_proto, event_to_proto, job_to_proto, node_to_proto
from service.api.settings import ServerSettings
from service.core.streams import IdleReader, UploadCancelled, UploadSlots, at_least_rate, client_key
from service.api.validate import check_artifact_kinds, validate_spec
from service.core.names import artifact_name, parse_artifact_name, parse_job_name
from service.core.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable, rpc
from service.core.wire import KIND_FROM_PROTO, STATE_FROM_PROTO, spec_to_dict
from service.jobs.artifacts import ArtifactStore, clean_name
from service.jobs.lifecycle import delete_artifact, delete_job
from service.jobs.scheduler import Scheduler
from service.jobs.store import JobState, JobStore

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
MAX_PAGE_SIZE = 500
MAX_PAGE_BYTES = 2 << 20       # a ListJobs page stops before this many bytes of jobs


class CompressionServicer(pb_grpc.CompressionServicer):
    def __init__(self, store: JobStore, artifacts: ArtifactStore, scheduler: Scheduler,
                 settings: ServerSettings, stopping: threading.Event, guard: threading.Lock | None = None) -> None:
        self.store, self.artifacts, self.scheduler = store, artifacts, scheduler
        self.settings, self.stopping = settings, stopping
        self.guard = guard or threading.Lock()      # submit vs. deleting what a job is about to use
        self._watchers = threading.BoundedSemaphore(settings.watch_limit)
        self.uploads = UploadSlots(settings.max_uploads, settings.max_uploads_per_client)

    # --- artifacts -------------------------------------------------------------------------------

    @rpc
    def UploadArtifact(self, request_iterator, context):
        with self.uploads.slot(self._client(context)):
            reader = IdleReader(request_iterator, self.settings.upload_idle_timeout_s, context=context)
            try:
                try:
                    return self._upload(reader)
                except InvalidArgument:             # a stream cut short: by the client leaving, or a bad client
                    if reader.client_gone():
                        raise UploadCancelled(f"{reader.what} was cancelled by the client") from None
                    raise
            except UploadCancelled:
                log.info("upload cancelled by the client")
                raise
            except DeadlineExceeded as exc:
                log.info("upload ended: %s", exc.message)
                raise
            finally:
                reader.close()

    def _upload(self, reader: IdleReader) -> pb.Artifact:
        first = reader.next_message()
        if first is None or first.WhichOneof("content") != "header":
            raise InvalidArgument("the first UploadArtifact message must carry the header (name, kind, size_bytes, "
                                  "sha256); the bytes follow in later messages")
        header = first.header
        kind = KIND_FROM_PROTO.get(header.kind)
        if kind is None:
            raise InvalidArgument("the upload header must set kind (MODEL, DATASET, ...)")
        reader.what = f"the upload of {clean_name(header.display_name)}"
        chunks = at_least_rate(_chunks(reader.messages()), self.settings.upload_min_rate_kib_s * 1024, reader.what)
        info = self.artifacts.put_stream(header.display_name, kind, header.size_bytes, header.sha256, chunks)
        log.info("artifact %s (%s, %d bytes) stored", info.id[:12], info.name, info.size_bytes)
        return artifact_to_proto(info)

    @rpc
    def GetArtifact(self, request, context):
        return artifact_to_proto(self.artifacts.get(parse_artifact_name(request.name)))

    @rpc
    def DownloadArtifact(self, request, context):
        info = self.artifacts.get(parse_artifact_name(request.name))
        self.artifacts.verify(info.id)
        yield pb.DownloadArtifactResponse(artifact=artifact_to_proto(info))
        for chunk in self.artifacts.read_chunks(info.id, CHUNK_BYTES):
            if not context.is_active():
                return
            yield pb.DownloadArtifactResponse(chunk=chunk)

    @rpc
    def ListArtifacts(self, request, context):
        size = _page_size(request.page_size)
        kinds = []
        for kind in request.kinds:
            if kind not in KIND_FROM_PROTO:
                raise InvalidArgument(f"unknown artifact kind {kind} in the filter")
            kinds.append(KIND_FROM_PROTO[kind])
        page, cursor = self.artifacts.page(kinds, size, _decode_artifact_token(request.page_token))
        return pb.ListArtifactsResponse(artifacts=[artifact_to_proto(a) for a in page],
                                        next_page_token=_encode_token(cursor and f"{cursor[0]!r}:{cursor[1]}"))

    @rpc
    def DeleteArtifact(self, request, context):
        artifact_id = parse_artifact_name(request.name)
        with self.guard:
            delete_artifact(self.store, self.artifacts, artifact_id)
        return pb.DeleteArtifactResponse(name=request.name)

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
        with self.guard:       # the artifacts it uses cannot be deleted between this check and the job's creation
            check_artifact_kinds(request.spec, self._describe)
            job, created = self.store.create(normalized, request=request.spec.SerializeToString(deterministic=True),
                                             request_id=request.request_id or None,
                                             timeout_seconds=execution.timeout_seconds,
                                             retry_on_crash=execution.retry_on_crash, owner=self._client(context),
                                             max_queued=self.settings.max_queued_jobs_per_client)
        if created:
            log.info("job %s queued (%s, %s)", job.id, clip(request.spec.model.arch, 80),
                     clip(request.spec.prune.criterion or "l1", 80))
            self.scheduler.wake()
        return job_to_proto(job)

    def _client(self, context) -> str:
        """Who the caller is for per-client limits: its token only when the server verified it."""
        return client_key(context, tokens_verified=bool(self.settings.tokens))

    def _describe(self, artifact_id: str) -> tuple[str, str]:
        info = self.artifacts.get(artifact_id)
        return info.kind, info.name

    @rpc
    def GetJob(self, request, context):
        return job_to_proto(self.store.get(parse_job_name(request.name)))

    @rpc
    def ListJobs(self, request, context):
        size = _page_size(request.page_size)
        states = []
        for state in request.states:
            if state not in STATE_FROM_PROTO:
                raise InvalidArgument(f"unknown job state {state} in the filter")
            states.append(STATE_FROM_PROTO[state])
        jobs, cursor = self.store.list(states, size, _decode_job_token(request.page_token))
        page, spent = [], 0
        for job in jobs:            # a page also ends at MAX_PAGE_BYTES: large jobs must not push it past the
            message = job_to_proto(job)         # message limit and break listing for every client
            spent += message.ByteSize()
            if page and spent > MAX_PAGE_BYTES:
                cursor = page_end
                break
            page.append(message)
            page_end = job.seq
        return pb.ListJobsResponse(jobs=page, next_page_token=_encode_token(cursor))

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

    @rpc
    def DeleteJob(self, request, context):
        with self.guard:
            _, removed = delete_job(self.store, self.artifacts, parse_job_name(request.name))
        return pb.DeleteJobResponse(name=request.name, deleted_artifacts=[artifact_name(a) for a in removed])

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
    """The spec as ``pipeline.spec.JobSpec`` reads it back (types checked, defaults filled in), its numbers
    within the server's limits and finite (``pipeline.checks``)."""
    from pruning.errors import SpecError
    from pipeline.checks import check_job_limits
    from pipeline.spec import JobSpec

    try:
        job_spec = JobSpec.from_dict(spec)
        check_job_limits(job_spec)
        return job_spec.to_dict()
    except SpecError as exc:
        raise InvalidArgument(str(exc)) from None


def _page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must be >= 0 (0 = the default of 50)")
    return min(requested or 50, MAX_PAGE_SIZE)


def _encode_token(cursor) -> str:
    return "" if cursor is None else base64.urlsafe_b64encode(f"v1:{cursor}".encode()).decode()


def _decode_token(token: str) -> str | None:
    if not token:
        return None
    try:
        version, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if version != "v1":
            raise ValueError(version)
        return value
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("page_token is not one this server issued; start again without it") from None


def _decode_job_token(token: str) -> int | None:
    value = _decode_token(token)
    try:
        cursor = None if value is None else int(value)
        if cursor is not None and not 0 <= cursor < 2 ** 63:     # a row id: what SQLite can hold
            raise ValueError(cursor)
        return cursor
    except ValueError:
        raise InvalidArgument("page_token is not one this server issued; start again without it") from None


def _decode_artifact_token(token: str) -> tuple[float, str] | None:
    value = _decode_token(token)
    if value is None:
        return None
    created, _, artifact_id = value.rpartition(":")
    try:
        if not math.isfinite(float(created)):
            raise ValueError(created)
        return float(created), artifact_id
    except ValueError:
        raise InvalidArgument("page_token is not one this server issued; start again without it") from None
