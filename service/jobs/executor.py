"""Where jobs run: the ``Executor`` seam, and today's ``LocalProcessExecutor``.

The scheduler decides *when* a job runs and records *how it ended*; an executor only starts a worker for a job
(``launch``), says whether it is still running (``poll``) and stops it (``stop``: politely, then by force). A worker
is ``python -m service.jobs.worker`` wherever it runs; it reaches the job store and the artifact store through the
URLs it is given, so an executor that places workers on other machines implements these methods and hands them
reachable stores: ``service.jobs.ray_executor.RayExecutor`` runs jobs as Ray tasks whose workers reach the stores
through the server (``service.jobs.remote_store``).

``LocalProcessExecutor``: each worker is a fresh interpreter (spawned: exec'd, not forked, so no threads, locks or
CUDA state are inherited) in its own process group (``process_group=0``: ``setpgid`` before exec, so no kill can
miss it); stop signals the whole group (SIGTERM, then SIGKILL). One spare worker is kept started (the engine
imported, a few seconds on a CPU) and handed the next job id on stdin, so a job starts at once.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class WorkerHandle:
    """A started worker, as its executor knows it; ``where`` says where it runs (host, node), for the record.

    A remote worker's pid is not known at launch (None): the worker records it, and its node, itself. ``poll``
    may set ``exit_reason`` (what ended it, when the executor knows more than an exit code) and ``lost`` (the
    machine it ran on is gone: not the job's fault, so ``retry_on_crash`` re-queues the job)."""

    job_id: str
    pid: int | None
    where: str = "local"
    process: subprocess.Popen | None = None
    ref: Any = None                         # the executor's own handle (a Ray ObjectRef)
    exit_reason: str | None = None
    lost: bool = False


class Executor(Protocol):
    def launch(self, job_id: str) -> WorkerHandle:
        """Start a worker for ``job_id`` (RUNNING in the store); raises OSError when it cannot."""

    def poll(self, handle: WorkerHandle) -> int | None:
        """None while the worker runs; then its exit code (negative: the signal that ended it)."""

    def stop(self, handle: WorkerHandle, force: bool = False) -> None:
        """Ask the worker to stop (SIGTERM), or end it and everything it started (``force``)."""

    def tick(self) -> None:
        """Housekeeping between scheduler iterations (e.g. keep a spare worker started)."""

    def close(self) -> None:
        """Stop spare workers; running ones are stopped by the scheduler first."""


@dataclass(frozen=True)
class WorkerEnvironment:
    """What a worker is told: where the stores are and where to work."""

    job_store_url: str
    artifact_store_url: str
    work_dir: str
    threads: int = 1
    allowed_model_packages: tuple[str, ...] = ()    # serve --allow-model-package: python: architectures from these


class LocalProcessExecutor:
    """Workers as child processes of the server, each in its own process group."""

    def __init__(self, environment: WorkerEnvironment, warm_spare: bool = True) -> None:
        self.environment = environment
        self.warm_spare = warm_spare
        self._spare: subprocess.Popen | None = None      # a started worker waiting for a job id on stdin
        self._spare_retry = 0.0

    @property
    def spare_pid(self) -> int | None:
        spare = self._spare
        return spare.pid if spare is not None and spare.poll() is None else None

    def launch(self, job_id: str) -> WorkerHandle:
        process = self._take_spare(job_id) or self._spawn(job_id)
        return WorkerHandle(job_id, process.pid, "local", process)

    def poll(self, handle: WorkerHandle) -> int | None:
        return handle.process.poll()

    def stop(self, handle: WorkerHandle, force: bool = False) -> None:
        kill_group(handle.pid, signal.SIGKILL if force else signal.SIGTERM)

    def tick(self) -> None:
        if not self.warm_spare:
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

    def close(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            kill_group(spare.pid, signal.SIGKILL)
            spare.wait()

    def _spawn(self, job_id: str | None) -> subprocess.Popen:
        env = self.environment
        command = [sys.executable, "-m", "service.jobs.worker", job_id or "--standby",
                   "--job-store", env.job_store_url, "--artifact-store", env.artifact_store_url,
                   "--work-dir", env.work_dir, "--threads", str(env.threads), "--parent-pid", str(os.getpid()),
                   *[a for package in env.allowed_model_packages for a in ("--allow-model-package", package)]]
        path = os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))
        return subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=path), process_group=0, close_fds=True,
                                text=True, stdin=subprocess.DEVNULL if job_id else subprocess.PIPE)

    def _take_spare(self, job_id: str) -> subprocess.Popen | None:
        spare, self._spare = self._spare, None
        if spare is None or spare.poll() is not None:
            return None
        try:
            spare.stdin.write(job_id + "\n")
            spare.stdin.close()
        except OSError:
            kill_group(spare.pid, signal.SIGKILL)
            spare.wait()
            return None
        return spare


def kill_group(pgid: int | None, sig: int) -> None:
    """Signal a worker's process group (its id is the worker's pid: the worker leads it from exec on)."""
    if not pgid:
        return
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("not allowed to signal process group %d", pgid)
