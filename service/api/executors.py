"""Which executor the server runs jobs with (``serve --executor local|ray``), and what remote workers need.

- ``local`` (the default): worker processes on this machine, told where the stores are by URL (SQLite, disk).
- ``ray``: Ray tasks on a cluster's nodes (``service.jobs.ray_executor``). Those workers reach the server's
  stores through the ``JobWorker`` service (registered by the server only then), at ``advertise_address`` or,
  by default, at the listening address (with a wildcard host replaced by this node's IP as Ray sees it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from service.api.settings import ServerSettings
from service.core.errors import FailedPrecondition
from service.jobs.executor import Executor, LocalProcessExecutor, WorkerEnvironment
from service.jobs.job_tokens import JobTokens
from service.jobs.remote_store import WorkerEndpoint

EXECUTORS = ("local", "ray")
_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


def build_executor(settings: ServerSettings, store, artifacts, work_dir: Path, tokens: JobTokens,
                   endpoint: Callable[[], WorkerEndpoint]) -> Executor:
    if settings.executor == "local":
        threads = settings.threads_per_job or max(1, (os.cpu_count() or 1) // max(1, settings.job_workers))
        environment = WorkerEnvironment(store.url, artifacts.url, str(work_dir), threads,
                                        tuple(sorted(settings.allowed_model_packages)))
        return LocalProcessExecutor(environment, warm_spare=settings.warm_spare)
    if settings.executor == "ray":
        if settings.tls_client_ca:
            raise FailedPrecondition("--executor ray cannot be combined with --tls-client-ca yet: remote workers "
                                     "have no client certificate to present")
        from service.jobs.ray_executor import RayExecutor, RaySettings

        ray_settings = RaySettings(address=settings.ray_address,
                                   cpus_per_job=float(settings.threads_per_job or settings.ray_cpus_per_job),
                                   allowed_model_packages=tuple(sorted(settings.allowed_model_packages)))
        return RayExecutor(store, ray_settings, endpoint, tokens)
    raise FailedPrecondition(f"unknown executor {settings.executor!r}; use one of {', '.join(EXECUTORS)}")


def worker_endpoint(settings: ServerSettings, listen: str, port: int) -> WorkerEndpoint:
    """Where remote workers reach this server (``--advertise-address``, else the listening host and port)."""
    address = settings.advertise_address
    if not address:
        host = listen.rpartition(":")[0]
        if host in _WILDCARD_HOSTS:
            from service.jobs.ray_executor import node_ip_address

            host = node_ip_address()
        address = f"{host}:{port}"
    root = Path(settings.tls_cert).read_bytes() if settings.tls_cert else None
    return WorkerEndpoint(address, root)
