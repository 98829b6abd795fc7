"""The server's settings (``interprune serve`` flags).

Streams hold an RPC thread while they are open (an upload until its last chunk, a WatchJob until the job ends), so
both are bounded well below ``rpc_threads``: ``max_uploads`` + the watchers' limit leave at least
``RESERVED_THREADS`` threads for short calls, health checks among them, however many streams clients open. A
stream over its limit is refused at once with RESOURCE_EXHAUSTED naming the limit; an upload that sends nothing
for ``upload_idle_timeout_s`` is ended with DEADLINE_EXCEEDED.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

RESERVED_THREADS = 16        # RPC threads streams may never take: unary calls and health checks run on these


@dataclass(frozen=True)
class ServerSettings:
    max_upload_bytes: int = 4 << 30          # per artifact
    quota_bytes: int = 100 << 30             # all artifacts together
    job_workers: int = 1                     # concurrent jobs (worker processes); 0 = what the executor can run
    job_timeout_s: float | None = None       # default wall-time budget of a job
    threads_per_job: int | None = None
    warm_spare: bool = True                  # keep one worker process started for the next job
    rpc_threads: int = 64                    # a WatchJob or upload stream holds one while it is open
    max_watchers: int | None = None          # open WatchJob streams; default: what uploads and RESERVED_THREADS
                                             # leave of rpc_threads (32 with the defaults)
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
    upload_idle_timeout_s: float = 30.0      # an upload stream silent this long is ended (DEADLINE_EXCEEDED)
    upload_min_rate_kib_s: float = 16.0      # an upload averaging less once it has run 60 s is ended; 0 = off
    max_uploads: int = 16                    # upload streams open at once, all clients together
    max_uploads_per_client: int = 4          # per client (its bearer token, else its address)
    max_queued_jobs_per_client: int = 100    # QUEUED jobs per client; more are refused (RESOURCE_EXHAUSTED)
    retention_days: float | None = None      # remove finished jobs and unreferenced artifacts older than this;
                                             # None = keep everything
    retention_interval_s: float = 3600.0     # how often the retention pass runs

    @property
    def watch_limit(self) -> int:
        """Open WatchJob streams allowed: ``max_watchers``, else what uploads and the reserve leave."""
        return self.max_watchers or max(1, self.rpc_threads - self.max_uploads - RESERVED_THREADS)

    def check(self) -> None:
        """Raise ``ValueError`` naming the setting when the limits are impossible or would starve short calls."""
        for name in ("rpc_threads", "max_uploads", "max_uploads_per_client", "max_queued_jobs_per_client"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.job_workers < 0:
            raise ValueError(f"job_workers must be >= 0 (0 = what the executor can run), got {self.job_workers}")
        if not self.upload_idle_timeout_s > 0:
            raise ValueError(f"upload_idle_timeout_s must be > 0, got {self.upload_idle_timeout_s}")
        if not 0 <= self.upload_min_rate_kib_s < math.inf:
            raise ValueError(f"upload_min_rate_kib_s must be a finite number >= 0, got {self.upload_min_rate_kib_s}")
        if self.retention_days is not None and not self.retention_days > 0:
            raise ValueError(f"retention_days must be > 0 (None = keep everything), got {self.retention_days}")
        streams = self.max_uploads + self.watch_limit
        if streams > self.rpc_threads - RESERVED_THREADS:
            raise ValueError(f"max_uploads ({self.max_uploads}) + watchers ({self.watch_limit}) = {streams} streams "
                             f"would leave fewer than {RESERVED_THREADS} of the {self.rpc_threads} rpc_threads for "
                             "other calls and health checks; lower them or raise rpc_threads")
