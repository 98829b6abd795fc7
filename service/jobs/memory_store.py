"""The job store in memory: the same contract as ``SqliteJobStore`` within one process (tests, embedding)."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from typing import Any, Iterable

from service.core.errors import FailedPrecondition, NotFound
from service.jobs.store import (Event, Failure, JobRecord, JobState, check_deletable, check_transition, new_job_id,
                                queue_full, recovery_outcome, same_request, state_message)
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
               timeout_seconds: float | None = None, retry_on_crash: bool = False, owner: str | None = None,
               max_queued: int | None = None) -> tuple[JobRecord, bool]:
        with self._lock:
            if request_id and request_id in self._by_request:
                return same_request(self._jobs[self._by_request[request_id]], request), False
            if max_queued is not None:
                queued = sum(1 for j in self._jobs.values() if j.owner == owner and j.state == JobState.QUEUED)
                if queued >= max_queued:
                    raise queue_full(owner, queued, max_queued)
            self._seq += 1
            job = JobRecord(new_job_id(), self._seq, JobState.QUEUED, json.loads(json.dumps(spec)), request,
                            request_id or None, timeout_seconds, retry_on_crash, created=time.time(), owner=owner)
            self._jobs[job.id], self._events[job.id] = job, []
            if request_id:
                self._by_request[request_id] = job.id
            self._event(job.id, "state", JobState.QUEUED, message="queued")
            return self._jobs[job.id], True

    def delete(self, job_id: str) -> JobRecord:
        with self._lock:
            job = self.get(job_id)
            check_deletable(job)
            del self._jobs[job_id], self._events[job_id]
            if job.request_id:
                self._by_request.pop(job.request_id, None)
            return job

    def claim_next(self) -> JobRecord | None:
        with self._lock:
            queued = sorted((j for j in self._jobs.values() if j.state == JobState.QUEUED), key=lambda j: j.seq)
            if not queued:
                return None
            self._transition(queued[0].id, JobState.QUEUED, JobState.RUNNING, "started")
            self._update(queued[0].id, attempts=self._jobs[queued[0].id].attempts + 1)
            return self._jobs[queued[0].id]

    def set_worker(self, job_id: str, pid: int | None, node: str | None = None) -> None:
        with self._lock:
            self.get(job_id)
            self._update(job_id, worker_pid=pid, worker_node=node)

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
                to, message, failure = recovery_outcome(job)
                self._transition(job.id, JobState.RUNNING, to, message, failure)
                if to == JobState.QUEUED:
                    self._update(job.id, started=None, worker_pid=None, worker_node=None, progress=None)
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
        self._event(job_id, "state", to, message=state_message(to, message))

    def _event(self, job_id: str, type_: str, state: JobState, stage: str = "", fraction: float = 0.0,
               message: str = "") -> Event:
        sequence = self._jobs[job_id].last_sequence + 1
        self._update(job_id, last_sequence=sequence)
        event = Event(job_id, sequence, time.time(), type_, state, stage, float(fraction), message)
        self._events[job_id].append(event)
        return event
