"""The gRPC server for ``interprune.v1.Compression``: a thin servicer (validate, call the store / artifacts /
scheduler, convert messages), health checking and reflection, bearer tokens and TLS, graceful shutdown.

    server, port = create_server("127.0.0.1:0", state_dir="state")
    server.start()
    ...
    server.stop(grace_s=5)        # health NOT_SERVING, refuse new calls, drain, stop workers

State directory::

    jobs.db       SQLite job store (WAL)
    artifacts/    content-addressed blobs (see service.jobs.artifacts)
    work/         per-job scratch folders (removed when a job ends)
    server.lock   held (flock) while a server uses the folder; says whether it stopped cleanly

On start after a crash, jobs left RUNNING are failed with a reason (or re-queued when their spec allows) and
every artifact is marked for re-hashing: a background thread re-hashes them while the server already serves, and
a blob not yet checked is re-hashed before it is read (DownloadArtifact, a worker's materialize), so a large store
does not delay listening. With ``retention_days`` a thread removes old finished jobs and unreferenced artifacts.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service._proto.interprune.v1 import compression_pb2 as pb
from service._proto.interprune.v1 import compression_pb2_grpc as pb_grpc
from service.jobs.artifacts import ArtifactStore, VerifyReport
from service._proto.interprune.v1 import worker_pb2 as wpb
from service._proto.interprune.v1 import worker_pb2_grpc as wpb_grpc
from service.api.worker_servicer import JobWorkerServicer
from service.jobs.integrity import mark_unverified, pending, verify_pending
from service.jobs.lifecycle import RetentionThread
from service.core.auth import OPEN_METHOD_PREFIXES, BearerTokenInterceptor, server_credentials
from service.core.errors import FailedPrecondition
from service.api.executors import build_executor, worker_endpoint
from service.jobs.job_tokens import JobTokens
from service.jobs.scheduler import Scheduler, SchedulerSettings
from service.api.servicer import CompressionServicer
from service.api.settings import ServerSettings
from service.core.lifecycle import run_until_signalled
from service.jobs.sqlite_store import SqliteJobStore
from service.jobs.store import JobRecord

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Compression"].full_name
WORKER_SERVICE = wpb.DESCRIPTOR.services_by_name["JobWorker"].full_name
CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 8 << 20          # chunks are 1 MiB; anything near this is a misbehaving client
MAX_PAGE_SIZE = 500


@dataclass
class Recovery:
    """What the server found on start."""

    unclean_shutdown: bool = False
    jobs: list[JobRecord] = field(default_factory=list)      # jobs that were RUNNING: now failed / re-queued
    verify: VerifyReport | None = None                        # the background re-hash, once it has finished
    marked: int = 0                                           # artifacts marked for re-hashing


def _warm_imports() -> None:
    """Import what SubmitJob validates with now, so the first calls do not wait seconds for torch."""
    import pruning.criteria  # noqa: F401
    import pruning.zoo  # noqa: F401
    import pipeline.run  # noqa: F401


# --- the server ----------------------------------------------------------------------------------------

class InterpruneServer:
    """A gRPC server with its store, artifact store, scheduler and health service; see ``create_server``."""

    def __init__(self, address: str, state_dir: str | Path, settings: ServerSettings) -> None:
        settings.check()
        self.state_dir = Path(state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.stopping = threading.Event()
        self.guard = threading.Lock()       # job creation vs. removal of what jobs use (see service.jobs.lifecycle)
        self._lock = _StateDirLock(self.state_dir)
        self.store = SqliteJobStore(self.state_dir / "jobs.db")
        self.artifacts = ArtifactStore(self.state_dir / "artifacts", settings.max_upload_bytes, settings.quota_bytes)
        self.recovery = self._recover()
        _warm_imports()
        self.address, self.port = address, 0
        self.job_tokens = JobTokens()                   # credentials of remote workers (executor "ray")
        try:
            executor = build_executor(settings, self.store, self.artifacts, self.state_dir / "work", self.job_tokens,
                                      lambda: worker_endpoint(settings, self.address, self.port))
        except BaseException:
            self.store.close()
            self._lock.release(clean=True)
            raise
        workers = settings.job_workers or getattr(executor, "capacity", lambda: 1)()
        self.scheduler = Scheduler(self.store, executor, self.state_dir / "work", SchedulerSettings(
            max_workers=workers, default_timeout_s=settings.job_timeout_s))
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
            recovery.marked = mark_unverified(self.artifacts)
            log.warning("unclean shutdown: %d artifacts will be re-verified in the background (and before any read)",
                        recovery.marked)
        return recovery

    def _verify_in_background(self) -> None:
        """Re-hash the marked blobs (those a read has not re-hashed first); log the pass's outcome."""
        marked = len(pending(self.artifacts))
        report = verify_pending(self.artifacts, self.stopping.is_set)
        self.recovery.verify = report
        if not self.stopping.is_set():
            log.warning("unclean shutdown: re-verified %d artifacts, %d corrupt (quarantined)", marked,
                        len(report.corrupt))

    def _build_grpc_server(self) -> grpc.Server:
        from concurrent import futures

        remote = self.settings.executor != "local"      # workers elsewhere: serve them the JobWorker protocol
        open_prefixes = OPEN_METHOD_PREFIXES + ((f"/{WORKER_SERVICE}/",) if remote else ())  # job tokens instead
        interceptors = [BearerTokenInterceptor(self.settings.tokens, open_prefixes)] if self.settings.tokens else []
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.settings.rpc_threads, thread_name_prefix="interprune-rpc"),
            interceptors=interceptors, maximum_concurrent_rpcs=self.settings.max_concurrent_rpcs,
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.so_reuseport", 0)])
        self.servicer = CompressionServicer(self.store, self.artifacts, self.scheduler, self.settings, self.stopping,
                                            self.guard)
        pb_grpc.add_CompressionServicer_to_server(self.servicer, server)
        if remote:
            wpb_grpc.add_JobWorkerServicer_to_server(JobWorkerServicer(self.store, self.artifacts, self.job_tokens),
                                                     server)
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
        if pending(self.artifacts):
            threading.Thread(target=self._verify_in_background, name="verify-artifacts", daemon=True).start()
        if self.settings.retention_days:
            RetentionThread(self.store, self.artifacts, self.settings.retention_days,
                            self.settings.retention_interval_s, self.guard, self.stopping).start()
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
        with self.guard:                    # a retention pass in progress finishes first
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
