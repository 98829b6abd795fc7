"""The gRPC server for ``interprune.v1.Compression``: a thin servicer (validate, call the store / artifacts /
scheduler, convert messages), health checking and reflection, bearer tokens and TLS, graceful shutdown.

    server, port = create_server("127.0.0.1:0", state_dir="state")
    server.start()
    ...
    server.stop(grace_s=5)        # health NOT_SERVING, refuse new calls, drain, stop workers

State directory::

    jobs.db       SQLite job store (WAL)
    artifacts/    content-addressed blobs (see service.artifacts)
    work/         per-job scratch folders (removed when a job ends)
    server.lock   held (flock) while a server uses the folder; says whether it stopped cleanly

On start after a crash, jobs left RUNNING are failed with a reason (or re-queued when their spec allows) and
every artifact is re-hashed.
"""
from __future__ import annotations

import base64
import fcntl
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service._proto.interprune.v1 import compression_pb2 as pb
from service._proto.interprune.v1 import compression_pb2_grpc as pb_grpc
from service.artifacts import ArtifactStore, VerifyReport, check_id
from service.auth import BearerTokenInterceptor, server_credentials
from service.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable, rpc
from service.jobs import Scheduler, SchedulerSettings
from service.messages import (KIND_FROM_PROTO, STATE_FROM_PROTO, artifact_to_proto, event_to_proto, job_to_proto,
                              spec_to_dict, validate_spec)
from service.store import JobRecord, JobState, SqliteJobStore

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Compression"].full_name
CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 8 << 20          # chunks are 1 MiB; anything near this is a misbehaving client
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class ServerSettings:
    max_upload_bytes: int = 4 << 30          # per artifact
    quota_bytes: int = 100 << 30             # all artifacts together
    job_workers: int = 1                     # concurrent jobs (worker processes)
    job_timeout_s: float | None = None       # default wall-time budget of a job
    threads_per_job: int | None = None
    warm_spare: bool = True                  # keep one worker process started for the next job
    rpc_threads: int = 64                    # a WatchJob stream holds one while it is open
    max_watchers: int | None = None          # open WatchJob streams; default rpc_threads - 8 (leaves room)
    max_concurrent_rpcs: int = 256           # beyond this, calls fail fast with RESOURCE_EXHAUSTED
    watch_poll_s: float = 0.2
    cancel_wait_s: float = 5.0               # CancelJob waits this long for a running job to stop
    run_jobs: bool = True                    # False = accept and queue jobs but run none (API-only)
    tokens: frozenset[str] = field(default_factory=frozenset)   # empty = no authentication
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    agents: dict = field(default_factory=dict)    # name -> service.agent_client.AgentEndpoint (serve --agent)


@dataclass
class Recovery:
    """What the server found on start."""

    unclean_shutdown: bool = False
    jobs: list[JobRecord] = field(default_factory=list)      # jobs that were RUNNING: now failed / re-queued
    verify: VerifyReport | None = None


class CompressionServicer(pb_grpc.CompressionServicer):
    def __init__(self, store: SqliteJobStore, artifacts: ArtifactStore, scheduler: Scheduler,
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
        info = self.artifacts.put_stream(header.name, kind, header.size_bytes, header.sha256,
                                         _chunks(request_iterator))
        log.info("artifact %s (%s, %d bytes) stored", info.id[:12], info.name, info.size_bytes)
        return artifact_to_proto(info)

    @rpc
    def GetArtifact(self, request, context):
        return artifact_to_proto(self.artifacts.get(check_id(request.artifact_id)))

    @rpc
    def DownloadArtifact(self, request, context):
        info = self.artifacts.get(check_id(request.artifact_id))
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
        validate_spec(request.spec, self.artifacts.has)
        spec, execution = spec_to_dict(request.spec)
        benchmark = request.spec.benchmark
        _add_agents(spec, [] if benchmark.skip else benchmark.targets, self.settings.agents)
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
        return job_to_proto(self.store.get(_job_id(request.job_id)))

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
        job_id = _job_id(request.job_id)
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
        job = self.store.request_cancel(_job_id(request.job_id))
        if job.state == JobState.RUNNING:
            self.scheduler.cancel(job.id)
            end = time.monotonic() + self.settings.cancel_wait_s
            while job.state == JobState.RUNNING and time.monotonic() < end and context.is_active():
                time.sleep(0.05)
                job = self.store.get(job.id)
        return job_to_proto(job)

    # --- devices ---------------------------------------------------------------------------------

    @rpc
    def ListDevices(self, request, context):
        from service.agent_client import list_devices

        return pb.ListDevicesResponse(devices=list_devices(self.settings.agents))


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


def _warm_imports() -> None:
    """Import what SubmitJob validates with now, so the first calls do not wait seconds for torch."""
    import pruning.criteria  # noqa: F401
    import pruning.zoo  # noqa: F401
    import service.pipeline  # noqa: F401


def _chunks(request_iterator) -> Iterator[bytes]:
    for message in request_iterator:
        if message.WhichOneof("content") != "chunk":
            raise InvalidArgument("only the first UploadArtifact message may carry a header; later ones carry chunks")
        yield message.chunk


def _job_id(job_id: str) -> str:
    if not job_id:
        raise InvalidArgument("job_id is empty; SubmitJob and ListJobs return job ids")
    return job_id


def _normalize(spec: dict) -> dict:
    """The spec as ``service.pipeline.JobSpec`` reads it back (types checked, defaults filled in)."""
    from pruning.errors import SpecError
    from service.pipeline import JobSpec

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


# --- the server ----------------------------------------------------------------------------------------

class InterpruneServer:
    """A gRPC server with its store, artifact store, scheduler and health service; see ``create_server``."""

    def __init__(self, address: str, state_dir: str | Path, settings: ServerSettings) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self._lock = _StateDirLock(self.state_dir)
        self.store = SqliteJobStore(self.state_dir / "jobs.db")
        self.artifacts = ArtifactStore(self.state_dir / "artifacts", settings.max_upload_bytes, settings.quota_bytes)
        self.recovery = self._recover()
        _warm_imports()
        self.scheduler = Scheduler(self.store, self.state_dir, SchedulerSettings(
            max_workers=settings.job_workers, default_timeout_s=settings.job_timeout_s,
            threads_per_job=settings.threads_per_job, warm_spare=settings.warm_spare,
            artifact_limits=(settings.max_upload_bytes, settings.quota_bytes)))
        self.stopping = threading.Event()
        self.health = health.HealthServicer()
        self.grpc_server = self._build_grpc_server()
        self.port = self._bind(address)
        self._stopped = False

    def _recover(self) -> Recovery:
        recovery = Recovery(unclean_shutdown=self._lock.previous_unclean)
        recovery.jobs = self.store.recover()
        for job in recovery.jobs:
            log.warning("job %s was running when the server stopped: now %s (%s)", job.id, job.state.value, job.message)
        self.artifacts.cleanup_tmp()
        shutil.rmtree(self.state_dir / "work", ignore_errors=True)
        if recovery.unclean_shutdown or recovery.jobs:
            recovery.verify = self.artifacts.verify_all()
            log.warning("unclean shutdown: re-verified %d artifacts, %d corrupt (quarantined)",
                        recovery.verify.checked, len(recovery.verify.corrupt))
        return recovery

    def _build_grpc_server(self) -> grpc.Server:
        from concurrent import futures

        interceptors = [BearerTokenInterceptor(self.settings.tokens)] if self.settings.tokens else []
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.settings.rpc_threads, thread_name_prefix="interprune-rpc"),
            interceptors=interceptors, maximum_concurrent_rpcs=self.settings.max_concurrent_rpcs,
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.so_reuseport", 0)])
        pb_grpc.add_CompressionServicer_to_server(
            CompressionServicer(self.store, self.artifacts, self.scheduler, self.settings, self.stopping), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        return server

    def _bind(self, address: str) -> int:
        s = self.settings
        try:
            if s.tls_cert or s.tls_key:
                if not (s.tls_cert and s.tls_key):
                    raise FailedPrecondition("TLS needs both a certificate and its private key")
                port = self.grpc_server.add_secure_port(address, server_credentials(s.tls_cert, s.tls_key,
                                                                                    s.tls_client_ca))
            else:
                port = self.grpc_server.add_insecure_port(address)
        except RuntimeError as exc:
            self._lock.release(clean=True)
            raise FailedPrecondition(f"cannot listen on {address}: {exc}; is another server using the port?") \
                from None
        if not port:
            self._lock.release(clean=True)
            raise FailedPrecondition(f"cannot listen on {address}; is another server using the port?")
        return port

    def start(self) -> "InterpruneServer":
        if self.settings.run_jobs:
            self.scheduler.start()
        self.grpc_server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on port %d (state %s)", SERVICE_NAME, self.port, self.state_dir)
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """Health NOT_SERVING first, then refuse new calls and let running ones finish (up to ``grace_s``);
        then stop the job workers and record their jobs as recovery would."""
        if self._stopped:
            return
        self._stopped = True
        self.health.enter_graceful_shutdown()
        self.stopping.set()
        self.grpc_server.stop(grace_s).wait()
        self.scheduler.stop()
        self.store.close()
        self._lock.release(clean=True)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def create_server(address: str = "127.0.0.1:0", state_dir: str | Path = "interprune-state",
                  settings: ServerSettings | None = None, **overrides) -> tuple[InterpruneServer, int]:
    """Build (not start) a server on ``address``; returns it and the bound port (useful with port 0)."""
    settings = settings or ServerSettings()
    if overrides:
        from dataclasses import replace

        settings = replace(settings, **overrides)
    server = InterpruneServer(address, state_dir, settings)
    return server, server.port


def serve(address: str, state_dir: str | Path, settings: ServerSettings, ready=None) -> None:
    """Run until SIGTERM / SIGINT, then shut down gracefully. ``ready(server)`` is called once listening."""
    server, _ = create_server(address, state_dir, settings)
    run_until_signalled(server, ready)


def run_until_signalled(server, ready=None) -> None:
    """Start ``server`` (anything with start/stop), call ``ready(server)``, block until SIGTERM or SIGINT, stop it,
    and put the previous signal handlers back."""
    server.start()
    done = threading.Event()

    def on_signal(signum, frame):
        log.warning("received %s: shutting down gracefully", signal.Signals(signum).name)
        done.set()
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if ready is not None:
            ready(server)
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _StateDirLock:
    """``server.lock``: an flock held while a server runs on the folder; its text says whether the last server
    stopped cleanly."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "server.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise FailedPrecondition(f"another interprune server is using {state_dir}; stop it or choose another "
                                     "--state-dir") from None
        self.previous_unclean = os.read(self._fd, 64).startswith(b"running")
        self._write(f"running pid {os.getpid()}\n")

    def _write(self, text: str) -> None:
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, text.encode())
        os.fsync(self._fd)

    def release(self, clean: bool) -> None:
        if self._fd < 0:
            return
        if clean:
            self._write("stopped\n")
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1
