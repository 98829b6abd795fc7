"""The scheduler: claims QUEUED jobs from the job store and runs each through an executor
(``service.jobs.executor``), at most ``max_workers`` at once; enforces time budgets and cancellation, and
records how a worker ended when the worker could not record it itself.

- Progress events and results are written by the worker straight into the job store, from where ``WatchJob``
  streams them.
- Cancel is cooperative first: the worker's engine polls the store's cancel flag (``worker.CancelFlag``) and
  stops at the next check, recording CANCELLED itself. A worker that has not stopped ``cancel_cooperative_s``
  after the request is stopped by the executor (SIGTERM, then SIGKILL after ``cancel_grace_s``). A job over its
  wall-time budget, and every job at shutdown, is stopped at once.
- When a worker exits and the job is still RUNNING, the scheduler records why: cancelled by request, exceeded
  its time budget, or crashed (with the exit code or the signal, or the executor's reason). A worker lost with
  its machine (``WorkerHandle.lost``: a Ray node died) is not the job's fault: the job is re-queued under
  ``retry_on_crash``, else failed naming the machine (``store.lost_worker_outcome``).
"""
from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from service.core.states import CRASHED, TIMED_OUT
from service.jobs.executor import Executor, WorkerHandle
from service.jobs.store import Failure, JobRecord, JobState, JobStore, lost_worker_outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerSettings:
    max_workers: int = 1                    # concurrent jobs; one on a CPU machine
    default_timeout_s: float | None = None  # wall-time budget of jobs whose spec sets none
    cancel_cooperative_s: float = 3.0       # cancel requested -> the executor stops the worker
    cancel_grace_s: float = 2.0             # SIGTERM -> SIGKILL
    poll_s: float = 0.2


@dataclass
class _Running:
    job_id: str
    handle: WorkerHandle
    started: float                          # monotonic
    deadline: float | None
    stop_reason: str | None = None          # "cancel" | "timeout" | "shutdown"
    stop_asked: float | None = None         # monotonic time of the stop request
    term_sent: float | None = None
    killed: bool = False
    timeout_s: float | None = None


class Scheduler:
    """Claims QUEUED jobs from the store and runs each through ``executor``, at most ``max_workers`` at once."""

    def __init__(self, store: JobStore, executor: Executor, work_dir: str | Path,
                 settings: SchedulerSettings = SchedulerSettings()):
        self.store, self.executor, self.settings = store, executor, settings
        self.work_dir = Path(work_dir).resolve()
        self._running: dict[str, _Running] = {}
        self._wake = threading.Condition()
        self._stopping = False
        self._accepting = True
        self._thread: threading.Thread | None = None

    # --- control ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="interprune-scheduler", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def cancel(self, job_id: str) -> None:
        """Note the cancel of a RUNNING job the store has recorded; the worker is stopped if it does not stop."""
        with self._wake:
            running = self._running.get(job_id)
            if running is not None and running.stop_reason is None:
                running.stop_reason, running.stop_asked = "cancel", time.monotonic()
            self._wake.notify_all()

    def worker_pid(self, job_id: str) -> int | None:
        running = self._running.get(job_id)
        return running.handle.pid if running else None

    @property
    def spare_pid(self) -> int | None:
        """The pid of the started worker waiting for the next job, if the executor keeps one."""
        return getattr(self.executor, "spare_pid", None)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop claiming jobs, stop running workers, and record them as recovery would (failed or re-queued)."""
        with self._wake:
            self._accepting = False
            for running in self._running.values():
                running.stop_reason = running.stop_reason or "shutdown"
                running.stop_asked = running.stop_asked or time.monotonic()
            self._wake.notify_all()
        end = time.monotonic() + timeout_s
        while self._running and time.monotonic() < end:
            time.sleep(0.05)
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for running in list(self._running.values()):
            self.executor.stop(running.handle, force=True)
        self.executor.close()
        self.store.recover()

    # --- the loop --------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
            try:
                self._reap()
                self._enforce()
                self._fill()
            except Exception:  # noqa: BLE001 - the loop must survive a bad job or a busy database
                log.exception("scheduler iteration failed; retrying")
            with self._wake:
                if not self._stopping:
                    self._wake.wait(self.settings.poll_s)

    def _fill(self) -> None:
        while self._accepting and len(self._running) < self.settings.max_workers:
            job = self.store.claim_next()
            if job is None:
                break
            self._launch(job)
        if self._accepting:
            self.executor.tick()

    def _launch(self, job: JobRecord) -> None:
        try:
            handle = self.executor.launch(job.id)
        except OSError as exc:
            self.store.transition(job.id, JobState.RUNNING, JobState.FAILED, message=f"cannot start a worker: {exc}",
                                  failure=Failure(CRASHED, f"cannot start a worker process: {exc}", "OSError"))
            return
        timeout = job.timeout_seconds or self.settings.default_timeout_s
        now = time.monotonic()
        self._running[job.id] = _Running(job.id, handle, now, now + timeout if timeout else None, timeout_s=timeout)
        if handle.pid is not None:                  # a remote worker records its pid and node itself
            self.store.set_worker(job.id, handle.pid, handle.where)
        log.info("job %s started in worker pid %s (%s)", job.id, handle.pid, handle.where)

    def _enforce(self) -> None:
        now = time.monotonic()
        for running in list(self._running.values()):
            if running.stop_reason is None and running.deadline is not None and now > running.deadline:
                running.stop_reason, running.stop_asked = "timeout", now
            if running.stop_reason is None and self.store.get(running.job_id).cancel_requested:
                running.stop_reason, running.stop_asked = "cancel", now
            if running.stop_reason is None or running.killed:
                continue
            if running.stop_reason == "cancel" and now - running.stop_asked < self.settings.cancel_cooperative_s:
                continue                                        # the worker's engine polls the cancel flag
            if running.term_sent is None:
                self.executor.stop(running.handle)
                running.term_sent = now
            elif now - running.term_sent > self.settings.cancel_grace_s:
                self.executor.stop(running.handle, force=True)
                running.killed = True

    def _reap(self) -> None:
        for running in list(self._running.values()):
            code = self.executor.poll(running.handle)
            if code is None:
                continue
            self.executor.stop(running.handle, force=True)          # leftovers the worker may have started
            self._record_exit(running, code)
            del self._running[running.job_id]
            shutil.rmtree(self.work_dir / running.job_id, ignore_errors=True)

    def _record_exit(self, running: _Running, code: int) -> None:
        job = self.store.get(running.job_id)
        if job.state != JobState.RUNNING:
            return                                              # the worker recorded the outcome itself
        if running.stop_reason == "cancel":
            self._finish(job, JobState.CANCELLED, "cancelled by request; the worker did not stop by itself within "
                                                  f"{self.settings.cancel_cooperative_s:g} s and was stopped")
        elif running.stop_reason == "timeout":
            message = (f"exceeded its time budget of {running.timeout_s:g} s and was stopped; raise "
                       "execution.timeout_seconds or give it a smaller fine-tune budget")
            self._finish(job, JobState.FAILED, message, Failure(TIMED_OUT, message, "TimedOut"))
        elif running.stop_reason == "shutdown":
            pass                                                # stop() applies the recovery rules
        elif running.handle.lost:
            self._lost(job, running.handle.exit_reason or "the machine running the worker was lost")
        else:
            self._finish(job, JobState.FAILED, *_crash(code, running.handle.exit_reason))

    def _lost(self, job: JobRecord, reason: str) -> None:
        to, message, failure = lost_worker_outcome(job, reason)
        log.warning("job %s: %s; now %s", job.id, reason, to.value)
        if to == JobState.QUEUED:
            self.store.set_worker(job.id, None, None)
        self._finish(job, to, message, failure)

    def _finish(self, job: JobRecord, to: JobState, message: str, failure: Failure | None = None) -> None:
        try:
            self.store.transition(job.id, JobState.RUNNING, to, message=message, failure=failure)
        except Exception:  # noqa: BLE001 - e.g. the worker finished at the same moment
            log.warning("job %s: could not record %s", job.id, to.value, exc_info=True)


def _crash(code: int | None, reason: str | None = None) -> tuple[str, Failure]:
    if reason:
        return reason, Failure(CRASHED, reason, "WorkerCrashed", exit_code=code if code and code > 0 else None,
                               signal=-code if code and code < 0 else None)
    if code is not None and code < 0:
        number = -code
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        hint = " (often the out-of-memory killer: give the job less data or a smaller batch size)" \
            if number == signal.SIGKILL else ""
        message = f"the worker process was killed by {name}{hint}"
        return message, Failure(CRASHED, message, "WorkerCrashed", signal=number)
    message = f"the worker process exited with code {code} without recording a result; see the server log"
    return message, Failure(CRASHED, message, "WorkerCrashed", exit_code=code)
