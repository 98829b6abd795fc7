"""Jobs on a Ray cluster: ``RayExecutor`` (``interprune serve --executor ray --ray-address ADDRESS``).

Each job is one Ray task that asks for what its spec needs (``job_resources``: one GPU when a benchmark target
or the latency target runs on CUDA / TensorRT, else CPUs), so Ray places it on a node with those resources
free. The task runs ``service.jobs.worker.run_job`` in a Ray worker process against the server's stores through
the worker protocol (``service.jobs.remote_store``): no disk is shared with the server. A GPU job gets a fresh
process (``max_calls=1``, Ray's default for GPU tasks: its CUDA memory is returned when it ends); CPU jobs reuse
Ray's worker processes (the engine is imported once per process, so a job starts at once, as with the local
executor's spare worker; ``RaySettings.reuse_workers=False`` gives every job a fresh process).

The server stays the control plane. The SQLite job store is the record; Ray only runs tasks (``max_retries=0``:
the scheduler decides about re-runs) and is not asked to remember jobs. Tasks belong to the server's Ray
driver, so they end when the server does, and a restarted server recovers RUNNING jobs as with local workers.

- Cancel: the worker polls the job's cancel flag through the server (cooperative); after the scheduler's grace
  period ``stop`` interrupts the task (``ray.cancel``), then kills its process (``ray.cancel(force=True)``).
- A node that dies mid-job: the task ends with ``NodeDiedError``; the handle is marked ``lost`` with the node
  named, and the scheduler fails the job, or re-queues it under ``retry_on_crash`` (it then runs elsewhere).
- Where a job runs: the worker records its node (``ray node {id} ({ip})``) and pid in the job record.

``ray`` is imported only here, and only when a ``RayExecutor`` is made: the local executor needs no Ray.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from service.core.errors import FailedPrecondition
from service.jobs.executor import WorkerHandle
from service.jobs.job_tokens import JobCredentials, JobTokens
from service.jobs.remote_store import WorkerEndpoint
from service.jobs.store import JobStore

log = logging.getLogger(__name__)

GPU_TARGETS = ("local:cuda", "local:tensorrt")      # pipeline.resolve.GPU_TARGETS without agents (they are remote)
_NODE_ID = re.compile(r"node ID: ([0-9a-f]+)")


@dataclass(frozen=True)
class RaySettings:
    address: str = "auto"           # "auto": the running cluster ($RAY_ADDRESS or this machine's); "local": start
                                    # one here; else the head's HOST:PORT (or ray://HOST:PORT for Ray Client)
    cpus_per_job: float = 1.0       # CPUs a job asks for when its spec sets no thread count
    namespace: str = "interprune"
    reuse_workers: bool = True      # CPU jobs may run in a Ray worker process an earlier job used
    allowed_model_packages: tuple[str, ...] = ()    # serve --allow-model-package (installed on every node)


@dataclass(frozen=True)
class ClusterNode:
    node_id: str
    address: str
    alive: bool
    cpus: float
    free_cpus: float
    gpus: float
    free_gpus: float
    resources: dict[str, float] = field(default_factory=dict)


def job_resources(spec: dict, cpus_per_job: float = 1.0) -> tuple[float, int]:
    """(CPUs, GPUs) a job asks Ray for: a GPU when a local benchmark target, or the latency target of a latency
    budget, is CUDA or TensorRT; CPUs from the spec's thread count, else ``cpus_per_job``."""
    compress, bench = spec.get("compress") or {}, spec.get("benchmark") or {}
    targets = [] if bench.get("skip") else list(bench.get("targets") or ())
    prune = compress.get("prune") or {}
    if prune.get("latency_budget_ms") is not None:
        targets.append(prune.get("latency_target") or "local:cpu")
    gpus = 1 if any(t in GPU_TARGETS for t in targets) else 0
    return float(compress.get("threads") or cpus_per_job), gpus


def run_on_node(job_id: str, endpoint: WorkerEndpoint, credentials: JobCredentials, threads: int,
                allowed_packages: tuple[str, ...] = ()) -> dict:
    """The Ray task: run one job on whatever node Ray chose, reaching the server's stores through ``endpoint``."""
    import ray

    from service.jobs.remote_store import connect
    from service.jobs.worker import run_job

    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s worker {job_id} %(name)s: %(message)s",
                        force=True)                    # a reused process: this job's id in its log lines
    node = f"ray node {ray.get_runtime_context().get_node_id()} ({ray.util.get_node_ip_address()})"
    store, artifacts = connect(endpoint, credentials)
    work = _scratch(job_id, credentials.attempt)
    try:
        store.set_worker(job_id, os.getpid(), node)
        run_job(store.get(job_id), store, artifacts, work, threads, allowed_packages)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        store.close()
    return {"node": node, "pid": os.getpid()}


def _scratch(job_id: str, attempt: int) -> Path:
    """A scratch folder on this node; folders of workers that were killed before cleaning up are removed."""
    root = Path(tempfile.gettempdir()) / "interprune-work"
    root.mkdir(parents=True, exist_ok=True)
    for folder in root.iterdir():
        pid = folder.name.rpartition("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)
    work = root / f"{job_id}-{attempt}-{os.getpid()}"
    work.mkdir()
    return work


class RayExecutor:
    """Workers as Ray tasks on a cluster's nodes; see the module's documentation."""

    def __init__(self, store: JobStore, settings: RaySettings, endpoint: Callable[[], WorkerEndpoint],
                 tokens: JobTokens) -> None:
        ray = _ray()
        self.store, self.settings, self.endpoint, self.tokens = store, settings, endpoint, tokens
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            _connect(ray, settings)
        self._fresh = ray.remote(max_retries=0, max_calls=1)(run_on_node)
        self._reused = ray.remote(max_retries=0)(run_on_node) if settings.reuse_workers else self._fresh
        self._stops: dict[str, bool] = {}            # job id -> force (the strongest stop sent)
        log.info("Ray executor on %s: %d nodes", settings.address, sum(n.alive for n in self.nodes()))

    @property
    def description(self) -> str:
        return "ray"

    def capacity(self) -> int:
        """Jobs the cluster can run at once now (CPU slots of ``cpus_per_job``), at least one."""
        slots = sum(int(n.cpus // self.settings.cpus_per_job) for n in self.nodes() if n.alive)
        return max(1, slots)

    def launch(self, job_id: str) -> WorkerHandle:
        job = self.store.get(job_id)
        cpus, gpus = job_resources(job.spec, self.settings.cpus_per_job)
        credentials = self.tokens.credentials(job_id, job.attempts)
        try:
            task = self._fresh if gpus else self._reused
            ref = task.options(num_cpus=cpus, num_gpus=gpus, name=f"interprune {job_id}").remote(
                job_id, self.endpoint(), credentials, max(1, int(cpus)), self.settings.allowed_model_packages)
        except Exception as exc:  # noqa: BLE001 - Ray's errors: the scheduler records them as a failed start
            raise OSError(f"Ray refused the task: {exc}") from exc
        log.info("job %s handed to Ray (%g CPUs, %d GPUs)", job_id, cpus, gpus)
        if not any(n.alive and n.cpus >= cpus and n.gpus >= gpus for n in self.nodes()):
            log.warning("job %s asks for %g CPUs and %d GPUs, more than any node of the cluster has now: it waits "
                        "in Ray's queue until such a node joins (or it is cancelled, or its time budget ends)",
                        job_id, cpus, gpus)
        return WorkerHandle(job_id, None, "ray", ref=ref)

    def poll(self, handle: WorkerHandle) -> int | None:
        ray = _ray()
        ready, _ = ray.wait([handle.ref], timeout=0)
        if not ready:
            return None
        try:
            ray.get(handle.ref)
            return 0
        except ray.exceptions.RayError as exc:
            return self._exit(handle, exc)
        finally:
            self._stops.pop(handle.job_id, None)

    def _exit(self, handle: WorkerHandle, exc: Exception) -> int:
        """Sort a failed task into an exit code, with the reason and whether its node was lost."""
        exceptions = _ray().exceptions
        where = self._where(handle.job_id, exc)
        if isinstance(exc, exceptions.TaskCancelledError):
            if handle.job_id not in self._stops:
                handle.exit_reason = f"the Ray task was cancelled from outside the server ({where})"
            return -(signal.SIGKILL if self._stops.get(handle.job_id) else signal.SIGTERM)
        if isinstance(exc, exceptions.NodeDiedError) or not self._alive(where):
            handle.lost, handle.exit_reason = True, f"the Ray node running the job died ({where})"
            return -signal.SIGKILL
        if isinstance(exc, exceptions.OutOfMemoryError):
            handle.exit_reason = f"Ray's memory monitor killed the worker on {where}: the node ran out of memory"
            return -signal.SIGKILL
        if isinstance(exc, exceptions.WorkerCrashedError):
            handle.exit_reason = f"the worker process on {where} died unexpectedly (killed, or out of memory)"
            return -signal.SIGKILL
        cause = getattr(exc, "cause", None) or exc
        text = (str(cause).strip().splitlines() or [type(cause).__name__])[-1][:300]
        handle.exit_reason = f"the worker on {where} failed without recording a result: {text}"
        log.error("job %s: Ray task failed: %s", handle.job_id, exc)
        return 1

    def _where(self, job_id: str, exc: Exception) -> str:
        node = self.store.get(job_id).worker_node
        if node:
            return node
        found = _NODE_ID.search(str(exc))
        return f"ray node {found.group(1)}" if found else "a Ray node (the worker had not started)"

    def _alive(self, where: str) -> bool:
        found = re.search(r"ray node ([0-9a-f]+)", where)
        if not found:
            return True
        return any(n.node_id == found.group(1) and n.alive for n in self.nodes())

    def stop(self, handle: WorkerHandle, force: bool = False) -> None:
        ray = _ray()
        if handle.ref is None or ray.wait([handle.ref], timeout=0)[0]:
            return                                      # never started, or already ended
        self._stops[handle.job_id] = force or self._stops.get(handle.job_id, False)
        try:
            ray.cancel(handle.ref, force=force, recursive=True)
        except Exception as exc:  # noqa: BLE001 - e.g. the task finished meanwhile
            log.debug("job %s: ray.cancel: %s", handle.job_id, exc)

    def tick(self) -> None:
        pass

    def close(self) -> None:
        if self._owns_ray:
            _ray().shutdown()

    def nodes(self) -> list[ClusterNode]:
        """The cluster's nodes with their total and free CPUs and GPUs (free: not held by running tasks)."""
        ray = _ray()
        free = _free_per_node()
        out = []
        try:
            listed = ray.nodes()
        except Exception as exc:  # noqa: BLE001 - e.g. the head is gone: no nodes to show
            log.warning("cannot list the Ray cluster's nodes: %s", exc)
            return []
        for node in listed:
            total, available = node.get("Resources") or {}, free.get(node["NodeID"], {})
            extra = {k: v for k, v in total.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")
                     and not k.startswith("node:")}
            out.append(ClusterNode(node["NodeID"], node.get("NodeManagerAddress", ""), bool(node.get("Alive")),
                                   total.get("CPU", 0.0), available.get("CPU", 0.0) if node.get("Alive") else 0.0,
                                   total.get("GPU", 0.0), available.get("GPU", 0.0) if node.get("Alive") else 0.0,
                                   extra))
        return sorted(out, key=lambda n: (not n.alive, n.address, n.node_id))


def _free_per_node() -> dict[str, dict[str, float]]:
    """Ray's free resources by node id (a private Ray API: empty when this Ray version lacks it)."""
    try:
        from ray._private import state

        return state.available_resources_per_node()
    except Exception:  # noqa: BLE001 - not part of Ray's public API
        return {}


def node_ip_address() -> str:
    """This machine's IP as Ray sees it (what nodes dial when the server listens on a wildcard address)."""
    return _ray().util.get_node_ip_address()


def _connect(ray, settings: RaySettings) -> None:
    try:
        if settings.address == "local":
            ray.init(namespace=settings.namespace, include_dashboard=False)
        else:
            ray.init(address=settings.address, namespace=settings.namespace)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise FailedPrecondition(f"cannot join the Ray cluster at {settings.address!r}: {exc}; start one with "
                                 "`ray start --head`, pass its address with --ray-address HOST:PORT, or use "
                                 "--ray-address local") from None


def _ray():
    try:
        import ray
    except ImportError:
        raise FailedPrecondition("the Ray executor needs Ray: pip install 'interprune[ray]'") from None
    return ray
