"""The job store: jobs, their state machine, their event log and their results, behind one small interface.

States::

    QUEUED ──► RUNNING ──► SUCCEEDED | FAILED | CANCELLED
       └──────────────────────────────► CANCELLED        (cancelled before it started)
               RUNNING ──► QUEUED                        (re-queued by recovery when the spec allows)

Every transition is checked against that table and applied with ``UPDATE ... WHERE state = ?`` (the row count
says whether another process got there first), and appends a ``state`` event in the same transaction. Events
carry per-job sequence numbers 1, 2, 3, ... so watchers can resume after the last one they saw.

Two backends share one contract (``tests/test_service_store.py``): ``SqliteJobStore`` (``sqlite_store.py``; (WAL, busy timeout,
``BEGIN IMMEDIATE`` for every write, parameterised SQL; safe to use from the server's threads and from worker
processes at once) and ``MemoryJobStore`` (``memory_store.py``; one process; for tests and embedding).
``service.jobs.backends.open_job_store(url)`` opens one from a URL.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Iterable, Protocol

from service.core.errors import AlreadyExists, FailedPrecondition, ResourceExhausted
from service.core.states import CRASHED, SERVER_STOPPED, JobState


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset(), JobState.FAILED: frozenset(), JobState.CANCELLED: frozenset(),
}

SERVER_STOPPED_REASON = "server stopped while the job was running"
MAX_ATTEMPTS = 3        # a retry_on_crash job that keeps taking the server down is failed after this many


@dataclass(frozen=True)
class Failure:
    kind: str
    message: str
    error_type: str = ""
    exit_code: int | None = None
    signal: int | None = None


@dataclass(frozen=True)
class Event:
    job_id: str
    sequence: int
    time: float
    type: str                       # "state" | "progress"
    state: JobState                 # the job's state after this event
    stage: str = ""
    fraction: float = 0.0
    message: str = ""

    @property
    def terminal(self) -> bool:
        return self.type == "state" and self.state.terminal


@dataclass(frozen=True)
class JobRecord:
    id: str
    seq: int                                    # creation order (paging cursor)
    state: JobState
    spec: dict                                  # pipeline.run.JobSpec.to_dict(), artifacts as "artifact:<id>"
    request: bytes = b""                        # the submitted request as the client sent it (opaque here)
    request_id: str | None = None
    timeout_seconds: float | None = None
    retry_on_crash: bool = False
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    message: str = ""
    failure: Failure | None = None
    result: dict | None = None
    cancel_requested: bool = False
    worker_pid: int | None = None               # on worker_node
    worker_node: str | None = None              # where the worker runs: "local", "ray node {id} ({ip})"
    attempts: int = 0
    last_sequence: int = 0
    progress: dict | None = None                # the latest progress event: stage, fraction, message
    owner: str | None = None                    # who submitted it (token hash or address), for per-client limits


class JobStore(Protocol):
    def create(self, spec: dict, *, request: bytes = b"", request_id: str | None = None,
               timeout_seconds: float | None = None, retry_on_crash: bool = False, owner: str | None = None,
               max_queued: int | None = None) -> tuple[JobRecord, bool]:
        """Queue a job; with a known ``request_id`` return that job instead (``created`` False). With
        ``max_queued``, ``ResourceExhausted`` when ``owner`` already has that many QUEUED jobs (checked in the
        same transaction)."""

    def delete(self, job_id: str) -> JobRecord:
        """Remove a finished job and its events; ``FailedPrecondition`` for a QUEUED or RUNNING one."""

    def get(self, job_id: str) -> JobRecord: ...

    def list(self, states: Iterable[JobState] = (), page_size: int = 50,
             before_seq: int | None = None) -> tuple[list[JobRecord], int | None]:
        """Newest first; returns the page and the cursor of the next page (None on the last)."""

    def claim_next(self) -> JobRecord | None:
        """Move the oldest QUEUED job to RUNNING and return it (None if none waits)."""

    def set_worker(self, job_id: str, pid: int | None, node: str | None = None) -> None:
        """Record the job's worker: its process id and where it runs (None, None when it has none)."""

    def transition(self, job_id: str, expect: JobState, to: JobState, *, message: str = "",
                   failure: Failure | None = None, result: dict | None = None) -> JobRecord: ...

    def request_cancel(self, job_id: str) -> JobRecord: ...

    def add_progress(self, job_id: str, stage: str, fraction: float, message: str) -> Event | None: ...

    def events(self, job_id: str, after: int = 0, limit: int = 500) -> list[Event]: ...

    def recover(self) -> list[JobRecord]: ...

    def close(self) -> None: ...


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:16]


def check_transition(job_id: str, current: JobState, expect: JobState, to: JobState) -> None:
    if to not in TRANSITIONS[expect]:
        raise FailedPrecondition(f"job {job_id}: a job cannot go from {expect.value} to {to.value}")
    if current != expect:
        raise FailedPrecondition(f"job {job_id} is {current.value}, not {expect.value}; it cannot become {to.value}")


def state_message(to: JobState, message: str) -> str:
    return message or {JobState.QUEUED: "queued", JobState.RUNNING: "started", JobState.SUCCEEDED: "succeeded",
                       JobState.FAILED: "failed", JobState.CANCELLED: "cancelled"}[to]


def recovery_outcome(job: JobRecord) -> tuple[JobState, str, Failure | None]:
    """What recovery does with a job found RUNNING after a restart."""
    if job.cancel_requested:
        return JobState.CANCELLED, "cancelled (the server stopped while the cancellation was in progress)", None
    if job.retry_on_crash and job.attempts < MAX_ATTEMPTS:
        return JobState.QUEUED, f"re-queued: {SERVER_STOPPED_REASON} (attempt {job.attempts} of {MAX_ATTEMPTS})", None
    reason = SERVER_STOPPED_REASON + ("" if not job.retry_on_crash else f", {job.attempts} times")
    return JobState.FAILED, reason, Failure(SERVER_STOPPED, f"{reason}; submit it again", "ServerStopped")


def lost_worker_outcome(job: JobRecord, reason: str) -> tuple[JobState, str, Failure | None]:
    """What happens to a RUNNING job whose worker was lost with its machine (a cluster node died): as after a
    server stop, re-queued when the spec allows (``retry_on_crash``), else failed with ``reason``."""
    if job.cancel_requested:
        return JobState.CANCELLED, f"cancelled ({reason} while the cancellation was in progress)", None
    if job.retry_on_crash and job.attempts < MAX_ATTEMPTS:
        return JobState.QUEUED, f"re-queued: {reason} (attempt {job.attempts} of {MAX_ATTEMPTS})", None
    hint = "submit it again" if job.retry_on_crash else "submit it again (with --retry-on-crash to re-run it " \
                                                          "elsewhere by itself)"
    return JobState.FAILED, reason, Failure(CRASHED, f"{reason}; {hint}", "NodeDied")


# --- SQLite -------------------------------------------------------------------------------------------


def check_deletable(job: JobRecord) -> None:
    if not job.state.terminal:
        raise FailedPrecondition(f"job {job.id} is {job.state.value}; only finished jobs can be deleted (cancel it "
                                 f"first: interprune cancel {job.id})")


def queue_full(owner: str | None, queued: int, max_queued: int) -> ResourceExhausted:
    return ResourceExhausted(f"{owner or 'this client'} already has {queued} queued jobs, the limit "
                             f"max_queued_jobs_per_client={max_queued}; wait for some to start or cancel them")


def same_request(job: JobRecord, request: bytes) -> JobRecord:
    if request and job.request and request != job.request:
        raise AlreadyExists(f"request_id {job.request_id!r} was already used for job {job.id} with a different spec; "
                            "use a new request_id for a new job")
    return job
