"""The server's settings (``interprune serve`` flags)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServerSettings:
    max_upload_bytes: int = 4 << 30          # per artifact
    quota_bytes: int = 100 << 30             # all artifacts together
    job_workers: int = 1                     # concurrent jobs (worker processes); 0 = what the executor can run
    job_timeout_s: float | None = None       # default wall-time budget of a job
    threads_per_job: int | None = None
    warm_spare: bool = True                  # keep one worker process started for the next job
    rpc_threads: int = 64                    # a WatchJob stream holds one while it is open
    max_watchers: int | None = None          # open WatchJob streams; default rpc_threads - 8 (leaves room)
    max_concurrent_rpcs: int = 256           # beyond this, calls fail fast with RESOURCE_EXHAUSTED
    watch_poll_s: float = 0.2
    run_jobs: bool = True                    # False = accept and queue jobs but run none (API-only)
    tokens: frozenset[str] = field(default_factory=frozenset)   # empty = no authentication
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    agents: dict = field(default_factory=dict)    # name -> service.agent.client.AgentEndpoint (serve --agent)
    # Top-level packages `python:PKG.MODULE:FACTORY` architectures may come from (serve --allow-model-package);
    # none by default: a server runs no user-named code unless its operator installed and allowed it.
    allowed_model_packages: frozenset[str] = frozenset()
    executor: str = "local"                  # where jobs run: "local" processes or "ray" (service.api.executors)
    ray_address: str = "auto"                # with executor "ray": "auto", "local" or the head's HOST:PORT
    ray_cpus_per_job: float = 1.0            # CPUs a Ray job asks for when its spec sets no thread count
    advertise_address: str | None = None     # HOST:PORT remote workers reach this server at (default: --listen)
