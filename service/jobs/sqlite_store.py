"""The job store in SQLite: WAL, busy timeout, ``BEGIN IMMEDIATE`` for every write, parameterised SQL; safe from
the server's threads and from worker processes at once."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from service.core.errors import FailedPrecondition, NotFound
from service.jobs.store import (TRANSITIONS, Event, Failure, JobRecord, JobState, check_deletable, check_transition,
                                new_job_id, queue_full, recovery_outcome, same_request, state_message)

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
    worker_node TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_sequence INTEGER NOT NULL DEFAULT 0,
    progress TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, state);
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
_ADDED_COLUMNS = (("worker_node", "TEXT"),)      # columns added after the first release: (name, type)


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
                if "jobs_by_owner" in statement:
                    _add_owner_column(c)
                c.execute(statement)
            columns = {row["name"] for row in c.execute("PRAGMA table_info(jobs)")}
            for column, kind in _ADDED_COLUMNS:
                if column not in columns:                       # a store made before the column existed
                    c.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")

    @property
    def url(self) -> str:
        """What ``open_job_store`` opens this store from, in another process."""
        return f"sqlite://{self.path.resolve()}"

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
               timeout_seconds: float | None = None, retry_on_crash: bool = False, owner: str | None = None,
               max_queued: int | None = None) -> tuple[JobRecord, bool]:
        with self._write() as c:
            if request_id:
                row = c.execute("SELECT * FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
                if row is not None:
                    return same_request(_record(row), request), False
            if max_queued is not None:
                queued = c.execute("SELECT COUNT(*) FROM jobs WHERE owner IS ? AND state = ?",
                                   (owner, JobState.QUEUED.value)).fetchone()[0]
                if queued >= max_queued:
                    raise queue_full(owner, queued, max_queued)
            job_id, now = new_job_id(), time.time()
            c.execute("INSERT INTO jobs (id, state, spec, request, request_id, timeout_seconds, retry_on_crash, "
                      "created, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (job_id, JobState.QUEUED.value, json.dumps(spec), request, request_id or None,
                       timeout_seconds, int(retry_on_crash), now, owner))
            self._event(c, job_id, "state", JobState.QUEUED, message="queued")
        return self.get(job_id), True

    def delete(self, job_id: str) -> JobRecord:
        with self._write() as c:
            job = self._get(c, job_id)
            check_deletable(job)
            c.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            c.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return job

    def claim_next(self) -> JobRecord | None:
        with self._write() as c:
            row = c.execute("SELECT id FROM jobs WHERE state = ? ORDER BY seq LIMIT 1",
                            (JobState.QUEUED.value,)).fetchone()
            if row is None:
                return None
            self._transition(c, row["id"], JobState.QUEUED, JobState.RUNNING, "started")
            c.execute("UPDATE jobs SET attempts = attempts + 1 WHERE id = ?", (row["id"],))
        return self.get(row["id"])

    def set_worker(self, job_id: str, pid: int | None, node: str | None = None) -> None:
        with self._write() as c:
            c.execute("UPDATE jobs SET worker_pid = ?, worker_node = ? WHERE id = ?", (pid, node, job_id))

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
                to, message, failure = recovery_outcome(job)
                self._transition(c, job.id, JobState.RUNNING, to, message, failure)
                if to == JobState.QUEUED:
                    c.execute("UPDATE jobs SET started = NULL, worker_pid = NULL, worker_node = NULL, progress = NULL "
                              "WHERE id = ?",
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
        self._event(c, job_id, "state", to, message=state_message(to, message))

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
        worker_pid=row["worker_pid"], worker_node=row["worker_node"],
        attempts=row["attempts"], last_sequence=row["last_sequence"],
        progress=json.loads(row["progress"]) if row["progress"] else None, owner=row["owner"])


def _add_owner_column(c: sqlite3.Connection) -> None:
    """Stores made before per-client limits have no ``owner`` column: add it (NULL for their jobs)."""
    if "owner" not in {r["name"] for r in c.execute("PRAGMA table_info(jobs)").fetchall()}:
        c.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
