"""The scheduler: each job runs in its own worker process, so a crash or an out-of-memory kill cannot take the
server down.

- A worker is a fresh interpreter (spawned: exec'd, not forked, so no threads, locks or CUDA state are inherited)
  running ``python -m service.jobs JOB_ID --db ... --state-dir ...`` -> ``worker_main``. It is started in its own
  process group (``process_group=0``, i.e. ``setpgid`` before exec, so there is no window in which a kill could
  miss it); it reads the spec from the store, calls ``service.pipeline.run_pipeline``, stores the output files as
  artifacts and records the result. Unlike ``multiprocessing``'s spawn context it does not re-import the
  parent's ``__main__``, so a server embedded in a script without an ``if __name__ == "__main__"`` guard works.
- Progress events are written by the worker straight into the SQLite store (WAL; a killed worker cannot corrupt
  it), from where ``WatchJob`` streams them.
- Cancel and the job's wall-time budget stop the whole process group (``os.killpg``: SIGTERM, then SIGKILL after
  a grace period). When a worker exits and the job is still RUNNING, the scheduler records why: cancelled by
  request, exceeded its time budget, or crashed (with the exit code or the signal).
- A worker whose server dies (kill -9) notices that its parent changed and kills its own group.
- One spare worker is kept started (``--standby``: the interpreter and the engine imported, a few seconds on a
  CPU) and handed the next job id on stdin, so a job starts at once; it is started again after each hand-over.
"""
from __future__ import annotations

import logging
import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from service.store import (CRASHED, EXPORT_CHECK, INTERNAL, INVALID_INPUT, TIMED_OUT, Failure, JobRecord, JobState,
                           SqliteJobStore)

log = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parents[1]
ARTIFACT_PREFIX = "artifact:"
OUTPUT_FILES = (("plan", "plan.json", "plan"), ("weights", "weights.pt", "weights"), ("onnx", "model.onnx", "onnx"),
                ("report_json", "report.json", "report_json"), ("report_html", "report.html", "report_html"))


@dataclass(frozen=True)
class SchedulerSettings:
    max_workers: int = 1                    # concurrent jobs; one on a CPU machine
    default_timeout_s: float | None = None  # wall-time budget of jobs whose spec sets none
    threads_per_job: int | None = None      # torch threads in a worker; None = CPUs / max_workers
    cancel_grace_s: float = 2.0             # SIGTERM -> SIGKILL
    warm_spare: bool = True                 # keep one worker started (imports done) for the next job
    poll_s: float = 0.2
    artifact_limits: tuple[int, int] = (4 << 30, 100 << 30)   # (per artifact, quota) bytes, for outputs


@dataclass
class _Running:
    job_id: str
    process: subprocess.Popen
    started: float                          # monotonic
    deadline: float | None
    stop_reason: str | None = None          # "cancel" | "timeout" | "shutdown"
    term_sent: float | None = None
    killed: bool = False
    timeout_s: float | None = None


class Scheduler:
    """Claims QUEUED jobs from the store and runs each in a worker process, at most ``max_workers`` at once."""

    def __init__(self, store: SqliteJobStore, state_dir: str | Path, settings: SchedulerSettings = SchedulerSettings()):
        self.store = store                  # SQLite: the workers write their progress and results into it
        self.db_path = store.path.resolve()
        self.state_dir = Path(state_dir).resolve()
        self.settings = settings
        self._running: dict[str, _Running] = {}
        self._wake = threading.Condition()
        self._stopping = False
        self._accepting = True
        self._thread: threading.Thread | None = None
        self._spare: subprocess.Popen | None = None     # a started worker waiting for a job id on stdin
        self._spare_retry = 0.0

    # --- control ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="interprune-scheduler", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def cancel(self, job_id: str) -> None:
        """Stop the worker of a RUNNING job whose cancellation the store has recorded."""
        with self._wake:
            running = self._running.get(job_id)
            if running is not None and running.stop_reason is None:
                running.stop_reason = "cancel"
            self._wake.notify_all()

    def worker_pid(self, job_id: str) -> int | None:
        running = self._running.get(job_id)
        return running.process.pid if running else None

    @property
    def spare_pid(self) -> int | None:
        """The pid of the started worker waiting for the next job, if any."""
        spare = self._spare
        return spare.pid if spare is not None and spare.poll() is None else None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop claiming jobs, stop running workers, and record them as recovery would (failed or re-queued)."""
        with self._wake:
            self._accepting = False
            for running in self._running.values():
                running.stop_reason = running.stop_reason or "shutdown"
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
            _kill_group(running.process.pid, signal.SIGKILL)
        self._drop_spare()
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
        if not (self._accepting and self.settings.warm_spare):
            return
        if self._spare is not None and self._spare.poll() is not None:     # died while waiting: retry, slowly
            log.warning("spare worker exited with code %s; starting another in 10 s", self._spare.returncode)
            self._spare, self._spare_retry = None, time.monotonic() + 10
        if self._spare is None and time.monotonic() >= self._spare_retry:
            try:
                self._spare = self._spawn(None)
            except OSError as exc:
                log.warning("cannot start a spare worker: %s", exc)
                self._spare_retry = time.monotonic() + 10

    def _spawn(self, job_id: str | None) -> subprocess.Popen:
        """A worker process in its own process group; without ``job_id`` it waits for one on stdin."""
        threads = self.settings.threads_per_job or max(1, (os.cpu_count() or 1) // self.settings.max_workers)
        per_artifact, quota = self.settings.artifact_limits
        command = [sys.executable, "-m", "service.jobs", job_id or "--standby", "--db", str(self.db_path),
                   "--state-dir", str(self.state_dir), "--threads", str(threads), "--parent-pid", str(os.getpid()),
                   "--max-artifact-bytes", str(per_artifact), "--quota-bytes", str(quota)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])))
        return subprocess.Popen(command, env=env, process_group=0, close_fds=True, text=True,
                                stdin=subprocess.DEVNULL if job_id else subprocess.PIPE)

    def _take_spare(self, job_id: str) -> subprocess.Popen | None:
        spare, self._spare = self._spare, None
        if spare is None or spare.poll() is not None:
            return None
        try:
            spare.stdin.write(job_id + "\n")
            spare.stdin.close()
        except OSError:
            _kill_group(spare.pid, signal.SIGKILL)
            spare.wait()
            return None
        return spare

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            _kill_group(spare.pid, signal.SIGKILL)
            spare.wait()

    def _launch(self, job: JobRecord) -> None:
        try:
            process = self._take_spare(job.id) or self._spawn(job.id)
        except OSError as exc:
            self.store.transition(job.id, JobState.RUNNING, JobState.FAILED, message=f"cannot start a worker: {exc}",
                                  failure=Failure(CRASHED, f"cannot start a worker process: {exc}", "OSError"))
            return
        timeout = job.timeout_seconds or self.settings.default_timeout_s
        now = time.monotonic()
        self._running[job.id] = _Running(job.id, process, now, now + timeout if timeout else None, timeout_s=timeout)
        self.store.set_worker(job.id, process.pid)
        log.info("job %s started in worker pid %d", job.id, process.pid)

    def _enforce(self) -> None:
        now = time.monotonic()
        for running in list(self._running.values()):
            if running.stop_reason is None and running.deadline is not None and now > running.deadline:
                running.stop_reason = "timeout"
            if running.stop_reason is None and self.store.get(running.job_id).cancel_requested:
                running.stop_reason = "cancel"
            if running.stop_reason is None or running.killed:
                continue
            if running.term_sent is None:
                _kill_group(running.process.pid, signal.SIGTERM)
                running.term_sent = now
            elif now - running.term_sent > self.settings.cancel_grace_s:
                _kill_group(running.process.pid, signal.SIGKILL)
                running.killed = True

    def _reap(self) -> None:
        for running in list(self._running.values()):
            if running.process.poll() is None:
                continue
            _kill_group(running.process.pid, signal.SIGKILL)      # leftovers the worker may have started
            self._record_exit(running)
            del self._running[running.job_id]
            shutil.rmtree(self.state_dir / "work" / running.job_id, ignore_errors=True)

    def _record_exit(self, running: _Running) -> None:
        job = self.store.get(running.job_id)
        if job.state != JobState.RUNNING:
            return                                              # the worker recorded the outcome itself
        code = running.process.returncode
        if running.stop_reason == "cancel":
            self._finish(job, JobState.CANCELLED, "cancelled by request")
        elif running.stop_reason == "timeout":
            message = (f"exceeded its time budget of {running.timeout_s:g} s and was stopped; raise "
                       "execution.timeout_seconds or give it a smaller fine-tune budget")
            self._finish(job, JobState.FAILED, message, Failure(TIMED_OUT, message, "TimedOut"))
        elif running.stop_reason == "shutdown":
            pass                                                # stop() applies the recovery rules
        else:
            self._finish(job, JobState.FAILED, *_crash(code))

    def _finish(self, job: JobRecord, to: JobState, message: str, failure: Failure | None = None) -> None:
        try:
            self.store.transition(job.id, JobState.RUNNING, to, message=message, failure=failure)
        except Exception:  # noqa: BLE001 - e.g. the worker finished at the same moment
            log.warning("job %s: could not record %s", job.id, to.value, exc_info=True)


def _crash(code: int | None) -> tuple[str, Failure]:
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


def _kill_group(pgid: int | None, sig: int) -> None:
    """Signal a worker's process group (its id is the worker's pid: the worker leads it from exec on)."""
    if not pgid:
        return
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("not allowed to signal process group %d", pgid)


# --- the worker process ---------------------------------------------------------------------------------

def worker_main(job_id: str | None, db_path: str, state_dir: str, artifact_limits: tuple[int, int], threads: int,
                parent_pid: int) -> None:
    """Entry point of a worker process: run one job and record its outcome in the store. With ``job_id`` None
    (a spare), import the pipeline first, then wait for the job id on stdin (EOF = not needed; exit)."""
    if os.getpgrp() != os.getpid():
        os.setpgrp()
    _exit_with_parent(parent_pid)
    if job_id is None:
        import service.pipeline  # noqa: F401 - the slow part of a worker's start: torch, the engine
        import service.report  # noqa: F401
        import exporters  # noqa: F401

        job_id = sys.stdin.readline().strip()
        if not job_id:
            return
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s worker {job_id} %(name)s: %(message)s")
    from service.artifacts import ArtifactStore

    store = SqliteJobStore(db_path)
    artifacts = ArtifactStore(Path(state_dir) / "artifacts", *artifact_limits)
    work = Path(state_dir) / "work" / job_id
    try:
        run_job(store.get(job_id), store, artifacts, work, threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        store.close()


def _exit_with_parent(parent_pid: int) -> None:
    """Kill this worker's group when the server that started it is gone (e.g. after kill -9)."""
    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os.killpg(0, signal.SIGKILL)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_job(job: JobRecord, store: SqliteJobStore, artifacts, work: Path, threads: int) -> None:
    """Run ``job`` (RUNNING) to a terminal state, recording it in ``store``."""
    import torch

    from pruning.errors import Cancelled, InterpruneError
    from service.pipeline import ExportCheckFailed, JobSpec, run_pipeline

    torch.set_num_threads(max(1, threads))
    out = work / "out"
    try:
        spec = JobSpec.from_dict(resolve_artifacts(job.spec, artifacts, work))
        report = run_pipeline(spec, out, progress=_Progress(store, job.id), should_stop=None)
        outputs = store_outputs(out, artifacts)
        result = summarize(report, outputs)
        store.transition(job.id, JobState.RUNNING, JobState.SUCCEEDED, message=_success_line(result),
                         result=result)
    except Cancelled as exc:
        store.transition(job.id, JobState.RUNNING, JobState.CANCELLED, message=str(exc))
    except ExportCheckFailed as exc:
        _fail(store, job.id, Failure(EXPORT_CHECK, str(exc), type(exc).__name__))
    except InterpruneError as exc:
        _fail(store, job.id, Failure(INVALID_INPUT, str(exc), type(exc).__name__))
    except MemoryError:
        _fail(store, job.id, Failure(CRASHED, "the job ran out of memory; give it less data or a smaller batch size",
                                     "MemoryError"))
    except Exception as exc:  # noqa: BLE001 - a bug: keep the traceback in the log, give the user an id
        error_id = uuid.uuid4().hex[:12]
        log.exception("job %s: internal error %s", job.id, error_id)
        _fail(store, job.id, Failure(INTERNAL, f"internal error (error id {error_id}, {type(exc).__name__}); the "
                                               "server log has the traceback", type(exc).__name__))


def _fail(store: SqliteJobStore, job_id: str, failure: Failure) -> None:
    store.transition(job_id, JobState.RUNNING, JobState.FAILED, message=failure.message, failure=failure)


class _Progress:
    """Writes pipeline progress into the store: every stage start and end, otherwise at most twice a second."""

    def __init__(self, store: SqliteJobStore, job_id: str, min_interval_s: float = 0.5) -> None:
        self.store, self.job_id, self.min_interval_s = store, job_id, min_interval_s
        self._last = 0.0

    def __call__(self, event) -> None:
        now = time.monotonic()
        if event.fraction not in (0.0, 1.0) and now - self._last < self.min_interval_s:
            return
        self._last = now
        self.store.add_progress(self.job_id, event.stage, event.fraction, event.message)


def resolve_artifacts(spec: dict, artifacts, work: Path) -> dict:
    """Replace ``artifact:<id>`` references by paths: the blob for weights, a link with the format's suffix for
    data (the data loader tells formats apart by suffix; the suffix comes from a whitelist)."""
    from pruning.errors import DataError, ModelError
    from service.artifacts import data_suffix
    from service.errors import NotFound

    spec = {**spec, "compress": {**spec["compress"]}}
    model, data = dict(spec["compress"]["model"]), dict(spec["compress"].get("data", {}))
    try:
        if str(model.get("weights") or "").startswith(ARTIFACT_PREFIX):
            model["weights"] = str(artifacts.path(artifacts.get(model["weights"][len(ARTIFACT_PREFIX):]).id))
    except NotFound as exc:
        raise ModelError(f"the model artifact is gone from the server: {exc}") from None
    try:
        if str(data.get("path") or "").startswith(ARTIFACT_PREFIX):
            info = artifacts.get(data["path"][len(ARTIFACT_PREFIX):])
            work.mkdir(parents=True, exist_ok=True)
            link = work / f"data{data_suffix(info.name)}"
            link.unlink(missing_ok=True)
            link.symlink_to(artifacts.path(info.id))
            data["path"] = str(link)
    except NotFound as exc:
        raise DataError(f"the data artifact is gone from the server: {exc}") from None
    spec["compress"]["model"], spec["compress"]["data"] = model, data
    return spec


def store_outputs(out: Path, artifacts) -> dict[str, str]:
    """Store the pipeline's output files as artifacts; returns output name -> artifact id."""
    outputs = {}
    for key, filename, kind in OUTPUT_FILES:
        if (out / filename).is_file():
            outputs[key] = artifacts.put_file(out / filename, filename, kind).id
    return outputs


def summarize(report: dict, outputs: dict[str, str]) -> dict:
    """The parts of the report a ``JobResult`` carries (all JSON-able), plus the output artifact ids."""
    keys = ("accuracy", "final_stage", "cost", "reduction", "latency", "gate", "timings", "layers", "target_errors",
            "target_accuracy")
    result = {key: report.get(key) for key in keys}
    result["outputs"] = outputs
    return _plain(result)


def _plain(value):
    """JSON-able copy: numpy scalars to Python numbers, NaN to None."""
    import math

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _success_line(result: dict) -> str:
    final = (result.get("accuracy") or {}).get(result.get("final_stage") or "", {})
    reduction = (result.get("reduction") or {}).get("macs")
    gate = result.get("gate") or {}
    parts = ["succeeded"]
    if reduction is not None:
        parts.append(f"{reduction:.1%} MACs removed")
    if final.get("top1") is not None:
        parts.append(f"top-1 {final['top1']:.2%}")
    if gate.get("max_accuracy_drop") is not None:
        parts.append("quality gate " + ("passed" if gate.get("passed") else "FAILED"))
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> None:
    """``python -m service.jobs JOB_ID ...``: the worker process the scheduler starts."""
    parser = argparse.ArgumentParser(description="interprune job worker (started by the server)")
    parser.add_argument("job_id", nargs="?", help="the job to run (omit with --standby)")
    parser.add_argument("--standby", action="store_true", help="start, import, then read the job id from stdin")
    parser.add_argument("--db", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--max-artifact-bytes", type=int, default=4 << 30)
    parser.add_argument("--quota-bytes", type=int, default=100 << 30)
    args = parser.parse_args(argv)
    if not args.standby and not args.job_id:
        parser.error("give a job id or --standby")
    worker_main(None if args.standby else args.job_id, args.db, args.state_dir,
                (args.max_artifact_bytes, args.quota_bytes), args.threads, args.parent_pid)


if __name__ == "__main__":
    main()
