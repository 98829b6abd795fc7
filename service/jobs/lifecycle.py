"""Removing jobs and artifacts without pulling one from under a job that needs it.

A job refers to artifacts through its spec (``artifact:<sha256>`` anywhere in it: weights, data, a model file)
and its result (the outputs it stored). From that:

- ``delete_job``: a finished job goes with its events; its outputs go too unless another job refers to them;
- ``delete_artifact``: refused (FAILED_PRECONDITION, naming the jobs) while a QUEUED or RUNNING job refers to it;
- ``apply_retention``: finished jobs older than the cutoff, then artifacts older than it that no job refers to.

Callers that create jobs and callers of these functions share one lock (``guard``) so that a submit cannot slip
between "nobody uses this artifact" and its removal.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from service.core.errors import FailedPrecondition, NotFound
from service.core.states import JobState
from service.jobs.artifacts import ArtifactStore
from service.jobs.store import JobRecord, JobStore

log = logging.getLogger(__name__)

ARTIFACT_PREFIX = "artifact:"
ACTIVE = (JobState.QUEUED, JobState.RUNNING)
FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def job_inputs(job: JobRecord) -> set[str]:
    """The artifact ids the job's spec refers to."""
    return {s[len(ARTIFACT_PREFIX):] for s in _strings(job.spec) if s.startswith(ARTIFACT_PREFIX)}


def job_outputs(job: JobRecord) -> set[str]:
    return {str(v) for v in ((job.result or {}).get("outputs") or {}).values() if v}


def all_jobs(store: JobStore, states: Iterable[JobState] = ()) -> Iterator[JobRecord]:
    cursor = None
    while True:
        page, cursor = store.list(list(states), 500, cursor)
        yield from page
        if cursor is None:
            return


def users(store: JobStore, artifact_id: str, states: Iterable[JobState] = ()) -> list[str]:
    """Ids of the jobs (in ``states``; all when empty) that refer to ``artifact_id``."""
    return [job.id for job in all_jobs(store, states) if artifact_id in job_inputs(job) | job_outputs(job)]


def referenced(store: JobStore) -> set[str]:
    found: set[str] = set()
    for job in all_jobs(store):
        found |= job_inputs(job) | job_outputs(job)
    return found


def delete_artifact(store: JobStore, artifacts: ArtifactStore, artifact_id: str) -> None:
    artifacts.get(artifact_id)
    active = users(store, artifact_id, ACTIVE)
    if active:
        shown = ", ".join(active[:5]) + (f" and {len(active) - 5} more" if len(active) > 5 else "")
        raise FailedPrecondition(f"artifact {artifact_id} is used by queued or running job(s) {shown}; cancel them "
                                 "or wait until they finish, then delete it")
    artifacts.delete(artifact_id)
    log.info("artifact %s deleted", artifact_id[:12])


def delete_job(store: JobStore, artifacts: ArtifactStore, job_id: str) -> tuple[JobRecord, list[str]]:
    """Remove a finished job; returns it and the ids of its outputs removed with it (those no other job uses)."""
    job = store.delete(job_id)
    still_used = referenced(store)
    removed = []
    for artifact_id in sorted(job_outputs(job) - still_used):
        try:
            artifacts.delete(artifact_id)
            removed.append(artifact_id)
        except NotFound:
            pass
    log.info("job %s deleted (%d output artifacts removed)", job_id, len(removed))
    return job, removed


@dataclass
class RetentionReport:
    jobs: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)


def apply_retention(store: JobStore, artifacts: ArtifactStore, days: float, now: float | None = None
                    ) -> RetentionReport:
    """Remove finished jobs that ended more than ``days`` ago, then artifacts created more than ``days`` ago that
    no remaining job refers to (a fresh upload waiting for its submit is younger than that)."""
    cutoff = (time.time() if now is None else now) - days * 86400.0
    report = RetentionReport()
    for job in list(all_jobs(store, FINISHED)):
        if (job.finished or job.created) < cutoff:
            store.delete(job.id)
            report.jobs.append(job.id)
    still_used = referenced(store)
    for info in artifacts.list():
        if info.created < cutoff and info.id not in still_used:
            artifacts.delete(info.id)
            report.artifacts.append(info.id)
    if report.jobs or report.artifacts:
        log.info("retention (%g days): removed %d jobs and %d artifacts", days, len(report.jobs),
                 len(report.artifacts))
    return report


class RetentionThread(threading.Thread):
    """Runs ``apply_retention`` every ``interval_s`` under ``guard`` until ``stopping`` is set."""

    def __init__(self, store: JobStore, artifacts: ArtifactStore, days: float, interval_s: float,
                 guard: threading.Lock, stopping: threading.Event) -> None:
        super().__init__(name="retention", daemon=True)
        self.store, self.artifacts, self.days, self.interval_s = store, artifacts, days, interval_s
        self.guard, self.stopping = guard, stopping

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                with self.guard:
                    apply_retention(self.store, self.artifacts, self.days)
            except Exception:  # noqa: BLE001 - a failed pass is logged and retried at the next interval
                log.exception("retention pass failed")
            self.stopping.wait(self.interval_s)
