"""The job store: jobs, their state machine, their event log and their results, behind one small interface.

States::

    QUEUED ──► RUNNING ──► SUCCEEDED | FAILED | CANCELLED
       └──────────────────────────────► CANCELLED        (cancelled before it started)
               RUNNING ──► QUEUED                        (re-queued by recovery when the spec allows)

Every transition is checked against that table and applied with ``UPDATE ... WHERE state = ?`` (the row count
says whether another process got there first), and appends a ``state`` event in the same transaction. Events
carry per-job sequence numbers 1, 2, 3, ... so watchers can resume after the last one they saw.

Two backends share one contract (``tests/test_service_store.py``): ``SqliteJobStore`` (WAL, busy timeout,
``BEGIN IMMEDIATE`` for every write, parameterised SQL; safe to use from the server's threads and from worker
processes at once) and ``MemoryJobStore`` (one process; for tests and embedding).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

from service.errors import AlreadyExists, FailedPrecondition, NotFound


class JobState(str, Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset(), JobState.FAILED: frozenset(), JobState.CANCELLED: frozenset(),
}

# Failure kinds (mirrored by the proto's FailureKind).
INVALID_INPUT, EXPORT_CHECK, TIMED_OUT, CRASHED, SERVER_STOPPED, INTERNAL = (
    "invalid_input", "export_check", "timed_out", "crashed", "server_stopped", "internal")

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
    spec: dict                                  # service.pipeline.JobSpec.to_dict(), artifacts as "artifact:<id>"
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
    worker_pid: int | None = None
    attempts: int = 0
    last_sequence: int = 0
    progress: dict | None = None                # the latest progress event: stage, fraction, message


class JobStore(Protocol):
    def create(self, spec: dict, *, request: bytes = b"", request_id: str | None = None,
               timeout_seconds: float | None = None, retry_on_crash: bool = False) -> tuple[JobRecord, bool]:
        """Queue a job; with a known ``request_id`` return that job instead (``created`` False)."""

    def get(self, job_id: str) -> JobRecord: ...

    def list(self, states: Iterable[JobState] = (), page_size: int = 50,
             before_seq: int | None = None) -> tuple[list[JobRecord], int | None]:
        """Newest first; returns the page and the cursor of the next page (None on the last)."""

    def claim_next(self) -> JobRecord | None:
        """Move the oldest QUEUED job to RUNNING and return it (None if none waits)."""

    def set_worker(self, job_id: str, pid: int | None) -> None: ...

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


def _state_message(to: JobState, message: str) -> str:
    return message or {JobState.QUEUED: "queued", JobState.RUNNING: "started", JobState.SUCCEEDED: "succeeded",
                       JobState.FAILED: "failed", JobState.CANCELLED: "cancelled"}[to]


def _recovery(job: JobRecord) -> tuple[JobState, str, Failure | None]:
    """What recovery does with a job found RUNNING after a restart."""
    if job.cancel_requested:
        return JobState.CANCELLED, "cancelled (the server stopped while the cancellation was in progress)", None
    if job.retry_on_crash and job.attempts < MAX_ATTEMPTS:
        return JobState.QUEUED, f"re-queued: {SERVER_STOPPED_REASON} (attempt {job.attempts} of {MAX_ATTEMPTS})", None
    reason = SERVER_STOPPED_REASON + ("" if not job.retry_on_crash else f", {job.attempts} times")
    return JobState.FAILED, reason, Failure(SERVER_STOPPED, f"{reason}; submit it again", "ServerStopped")


# --- SQLite -------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    request BLOB NOT NULL DEFAULT x'',
    request_id TEXT UNIQUE,
    timeout_seconds REAL,
    retry_on_crash INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    message TEXT NOT NULL DEFAULT '',
    failure TEXT,
    result TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_sequence INTEGER NOT NULL DEFAULT 0,
    progress TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    time REAL NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT '',
    fraction REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
"""


class SqliteJobStore:
    """SQLite in WAL mode; one connection per thread, every write in ``BEGIN IMMEDIATE``."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        with self._write() as c:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                c.execute(statement)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:   # made in another thread; closed with it
                    pass
            self._connections.clear()
        self._local = threading.local()

    # --- reading ---------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id!r} on this server; ListJobs shows the jobs it has")
        return _record(row)

    def list(self, states: Iterable[JobState] = (), page_size: int = 50,
             before_seq: int | None = None) -> tuple[list[JobRecord], int | None]:
        states = [JobState(s).value for s in states]
        sql, params = "SELECT * FROM jobs WHERE seq < ?", [before_seq if before_seq is not None else 2 ** 62]
        if states:
            sql += f" AND state IN ({', '.join('?' for _ in states)})"
            params += states
        rows = self._conn().execute(sql + " ORDER BY seq DESC LIMIT ?", (*params, page_size + 1)).fetchall()
        page = [_record(r) for r in rows[:page_size]]
        return page, (page[-1].seq if len(rows) > page_size else None)

    def events(self, job_id: str, after: int = 0, limit: int = 500) -> list[Event]:
        rows = self._conn().execute(
            "SELECT * FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
            (job_id, after, limit)).fetchall()
        return [Event(r["job_id"], r["sequence"], r["time"], r["type"], JobState(r["state"]), r["stage"],
                      r["fraction"], r["message"]) for r in rows]

    # --- writing ---------------------------------------------------------------------------------

    def create(self, spec: dict, *, request: bytes = b"", request_id: str | None = None,
               timeout_seconds: float | None = None, retry_on_crash: bool = False) -> tuple[JobRecord, bool]:
        with self._write() as c:
            if request_id:
                row = c.execute("SELECT * FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
                if row is not None:
                    return _same_request(_record(row), request), False
            job_id, now = new_job_id(), time.time()
            c.execute("INSERT INTO jobs (id, state, spec, request, request_id, timeout_seconds, retry_on_crash, "
                      "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      (job_id, JobState.QUEUED.value, json.dumps(spec), request, request_id or None,
                       timeout_seconds, int(retry_on_crash), now))
            self._event(c, job_id, "state", JobState.QUEUED, message="queued")
        return self.get(job_id), True

    def claim_next(self) -> JobRecord | None:
        with self._write() as c:
            row = c.execute("SELECT id FROM jobs WHERE state = ? ORDER BY seq LIMIT 1",
                            (JobState.QUEUED.value,)).fetchone()
            if row is None:
                return None
            self._transition(c, row["id"], JobState.QUEUED, JobState.RUNNING, "started")
            c.execute("UPDATE jobs SET attempts = attempts + 1 WHERE id = ?", (row["id"],))
        return self.get(row["id"])

    def set_worker(self, job_id: str, pid: int | None) -> None:
        with self._write() as c:
            c.execute("UPDATE jobs SET worker_pid = ? WHERE id = ?", (pid, job_id))

    def transition(self, job_id: str, expect: JobState, to: JobState, *, message: str = "",
                   failure: Failure | None = None, result: dict | None = None) -> JobRecord:
        with self._write() as c:
            self._transition(c, job_id, expect, to, message, failure, result)
        return self.get(job_id)

    def request_cancel(self, job_id: str) -> JobRecord:
        with self._write() as c:
            job = self._get(c, job_id)
            if job.state == JobState.QUEUED:
                self._transition(c, job_id, JobState.QUEUED, JobState.CANCELLED, "cancelled before it started")
            elif job.state == JobState.RUNNING:
                c.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = ?",
                          (job_id, JobState.RUNNING.value))
            elif job.state != JobState.CANCELLED:
                raise FailedPrecondition(f"job {job_id} already {job.state.value}; there is nothing to cancel")
        return self.get(job_id)

    def add_progress(self, job_id: str, stage: str, fraction: float, message: str) -> Event | None:
        with self._write() as c:
            job = self._get(c, job_id)
            if job.state != JobState.RUNNING:
                return None
            progress = {"stage": stage, "fraction": float(fraction), "message": message}
            c.execute("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(progress), job_id))
            return self._event(c, job_id, "progress", job.state, stage, fraction, message)

    def recover(self) -> list[JobRecord]:
        changed = []
        with self._write() as c:
            rows = c.execute("SELECT * FROM jobs WHERE state = ? ORDER BY seq", (JobState.RUNNING.value,)).fetchall()
            for job in map(_record, rows):
                to, message, failure = _recovery(job)
                self._transition(c, job.id, JobState.RUNNING, to, message, failure)
                if to == JobState.QUEUED:
                    c.execute("UPDATE jobs SET started = NULL, worker_pid = NULL, progress = NULL WHERE id = ?",
                              (job.id,))
                changed.append(job.id)
        return [self.get(job_id) for job_id in changed]

    # --- inside a transaction --------------------------------------------------------------------

    def _get(self, c: sqlite3.Connection, job_id: str) -> JobRecord:
        row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id!r} on this server; ListJobs shows the jobs it has")
        return _record(row)

    def _transition(self, c: sqlite3.Connection, job_id: str, expect: JobState, to: JobState, message: str = "",
                    failure: Failure | None = None, result: dict | None = None) -> None:
        if to not in TRANSITIONS[expect]:
            check_transition(job_id, expect, expect, to)
        now = time.time()
        cursor = c.execute(
            "UPDATE jobs SET state = ?, message = ?, failure = ?, result = COALESCE(?, result), "
            "started = CASE WHEN ? THEN ? ELSE started END, finished = CASE WHEN ? THEN ? ELSE finished END "
            "WHERE id = ? AND state = ?",
            (to.value, message, json.dumps(failure.__dict__) if failure else None,
             json.dumps(result) if result is not None else None, to == JobState.RUNNING, now, to.terminal, now,
             job_id, expect.value))
        if cursor.rowcount != 1:
            check_transition(job_id, self._get(c, job_id).state, expect, to)
        self._event(c, job_id, "state", to, message=_state_message(to, message))

    def _event(self, c: sqlite3.Connection, job_id: str, type_: str, state: JobState, stage: str = "",
               fraction: float = 0.0, message: str = "") -> Event:
        sequence = c.execute("UPDATE jobs SET last_sequence = last_sequence + 1 WHERE id = ? RETURNING last_sequence",
                             (job_id,)).fetchone()[0]
        event = Event(job_id, sequence, time.time(), type_, state, stage, float(fraction), message)
        c.execute("INSERT INTO events (job_id, sequence, time, type, state, stage, fraction, message) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (job_id, sequence, event.time, type_, state.value, stage, event.fraction, message))
        return event


def _record(row: sqlite3.Row) -> JobRecord:
    failure = json.loads(row["failure"]) if row["failure"] else None
    return JobRecord(
        id=row["id"], seq=row["seq"], state=JobState(row["state"]), spec=json.loads(row["spec"]),
        request=bytes(row["request"]), request_id=row["request_id"], timeout_seconds=row["timeout_seconds"],
        retry_on_crash=bool(row["retry_on_crash"]), created=row["created"], started=row["started"],
        finished=row["finished"], message=row["message"], failure=Failure(**failure) if failure else None,
        result=json.loads(row["result"]) if row["result"] else None, cancel_requested=bool(row["cancel_requested"]),
        worker_pid=row["worker_pid"], attempts=row["attempts"], last_sequence=row["last_sequence"],
        progress=json.loads(row["progress"]) if row["progress"] else None)


def _same_request(job: JobRecord, request: bytes) -> JobRecord:
    if request and job.request and request != job.request:
        raise AlreadyExists(f"request_id {job.request_id!r} was already used for job {job.id} with a different spec; "
                            "use a new request_id for a new job")
    return job


# --- in memory ----------------------------------------------------------------------------------------

class MemoryJobStore:
    """Dicts behind one lock: the same contract as ``SqliteJobStore`` within one process."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobRecord] = {}
        self._events: dict[str, list[Event]] = {}
        self._by_request: dict[str, str] = {}
        self._lock = threading.RLock()
        self._seq = 0

    def close(self) -> None:
        pass

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            try:
                return self._jobs[job_id]
            except KeyError:
                raise NotFound(f"no job {job_id!r} on this server; ListJobs shows the jobs it has") from None

    def list(self, states: Iterable[JobState] = (), page_size: int = 50,
             before_seq: int | None = None) -> tuple[list[JobRecord], int | None]:
        wanted = {JobState(s) for s in states}
        with self._lock:
            jobs = sorted((j for j in self._jobs.values() if (not wanted or j.state in wanted)
                           and (before_seq is None or j.seq < before_seq)), key=lambda j: -j.seq)
        page = jobs[:page_size]
        return page, (page[-1].seq if len(jobs) > page_size else None)

    def events(self, job_id: str, after: int = 0, limit: int = 500) -> list[Event]:
        with self._lock:
            return [e for e in self._events.get(job_id, []) if e.sequence > after][:limit]

    def create(self, spec: dict, *, request: bytes = b"", request_id: str | None = None,
               timeout_seconds: float | None = None, retry_on_crash: bool = False) -> tuple[JobRecord, bool]:
        with self._lock:
            if request_id and request_id in self._by_request:
                return _same_request(self._jobs[self._by_request[request_id]], request), False
            self._seq += 1
            job = JobRecord(new_job_id(), self._seq, JobState.QUEUED, json.loads(json.dumps(spec)), request,
                            request_id or None, timeout_seconds, retry_on_crash, created=time.time())
            self._jobs[job.id], self._events[job.id] = job, []
            if request_id:
                self._by_request[request_id] = job.id
            self._event(job.id, "state", JobState.QUEUED, message="queued")
            return self._jobs[job.id], True

    def claim_next(self) -> JobRecord | None:
        with self._lock:
            queued = sorted((j for j in self._jobs.values() if j.state == JobState.QUEUED), key=lambda j: j.seq)
            if not queued:
                return None
            self._transition(queued[0].id, JobState.QUEUED, JobState.RUNNING, "started")
            self._update(queued[0].id, attempts=self._jobs[queued[0].id].attempts + 1)
            return self._jobs[queued[0].id]

    def set_worker(self, job_id: str, pid: int | None) -> None:
        with self._lock:
            self.get(job_id)
            self._update(job_id, worker_pid=pid)

    def transition(self, job_id: str, expect: JobState, to: JobState, *, message: str = "",
                   failure: Failure | None = None, result: dict | None = None) -> JobRecord:
        with self._lock:
            self._transition(job_id, expect, to, message, failure, result)
            return self._jobs[job_id]

    def request_cancel(self, job_id: str) -> JobRecord:
        with self._lock:
            job = self.get(job_id)
            if job.state == JobState.QUEUED:
                self._transition(job_id, JobState.QUEUED, JobState.CANCELLED, "cancelled before it started")
            elif job.state == JobState.RUNNING:
                self._update(job_id, cancel_requested=True)
            elif job.state != JobState.CANCELLED:
                raise FailedPrecondition(f"job {job_id} already {job.state.value}; there is nothing to cancel")
            return self._jobs[job_id]

    def add_progress(self, job_id: str, stage: str, fraction: float, message: str) -> Event | None:
        with self._lock:
            job = self.get(job_id)
            if job.state != JobState.RUNNING:
                return None
            self._update(job_id, progress={"stage": stage, "fraction": float(fraction), "message": message})
            return self._event(job_id, "progress", job.state, stage, fraction, message)

    def recover(self) -> list[JobRecord]:
        with self._lock:
            running = sorted((j for j in self._jobs.values() if j.state == JobState.RUNNING), key=lambda j: j.seq)
            for job in running:
                to, message, failure = _recovery(job)
                self._transition(job.id, JobState.RUNNING, to, message, failure)
                if to == JobState.QUEUED:
                    self._update(job.id, started=None, worker_pid=None, progress=None)
            return [self._jobs[j.id] for j in running]

    def _update(self, job_id: str, **changes: Any) -> None:
        self._jobs[job_id] = replace(self._jobs[job_id], **changes)

    def _transition(self, job_id: str, expect: JobState, to: JobState, message: str = "",
                    failure: Failure | None = None, result: dict | None = None) -> None:
        job = self.get(job_id)
        check_transition(job_id, job.state, expect, to)
        now = time.time()
        self._update(job_id, state=to, message=message, failure=failure,
                     result=json.loads(json.dumps(result)) if result is not None else job.result,
                     started=now if to == JobState.RUNNING else job.started,
                     finished=now if to.terminal else job.finished)
        self._event(job_id, "state", to, message=_state_message(to, message))

    def _event(self, job_id: str, type_: str, state: JobState, stage: str = "", fraction: float = 0.0,
               message: str = "") -> Event:
        sequence = self._jobs[job_id].last_sequence + 1
        self._update(job_id, last_sequence=sequence)
        event = Event(job_id, sequence, time.time(), type_, state, stage, float(fraction), message)
        self._events[job_id].append(event)
        return event


def open_store(path: str | Path | None) -> JobStore:
    """SQLite at ``path``, or in memory when ``path`` is None."""
    return MemoryJobStore() if path is None else SqliteJobStore(path)


__all__ = ["Event", "Failure", "JobRecord", "JobState", "JobStore", "MemoryJobStore", "SqliteJobStore",
           "TRANSITIONS", "open_store"]
