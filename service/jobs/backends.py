"""Opening the job store and the artifact store from URLs: the one place a new backend is added.

Worker processes get URLs, never file paths, so a backend that workers on other machines can reach plugs in here
without touching the scheduler or the worker:

- ``sqlite:///PATH`` / ``file:///PATH``: the server's own disk (local worker processes);
- ``worker://HOST:PORT``: both stores through the server's ``JobWorker`` service (``service.jobs.remote_store``),
  for a worker on a machine that does not share the server's disk. Such a worker is one job's worker: its
  credentials (``job:attempt:token``) come from ``$INTERPRUNE_WORKER_CREDENTIALS``, never from the URL or the
  command line. The Ray executor builds these stores directly (``remote_store.connect``).
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from service.jobs.artifacts import ArtifactStore
from service.jobs.memory_store import MemoryJobStore
from service.jobs.sqlite_store import SqliteJobStore
from service.jobs.store import JobStore

CREDENTIALS_ENV = "INTERPRUNE_WORKER_CREDENTIALS"


def open_job_store(url: str | Path | None) -> JobStore:
    """``sqlite:///abs/path/jobs.db`` (or a plain path), ``worker://HOST:PORT``, or ``memory:`` (or None) for one
    process."""
    if url is None or str(url) == "memory:":
        return MemoryJobStore()
    text = str(url)
    if text.startswith("worker://"):
        return _remote(text)[0]
    if "://" in text and not text.startswith("sqlite://"):
        raise ValueError(f"unsupported job store URL {text!r}; use sqlite:///PATH, worker://HOST:PORT or memory:")
    return SqliteJobStore(text[len("sqlite://"):] if text.startswith("sqlite://") else text)


def open_artifact_store(url: str):
    """``file:///abs/root?max_artifact_bytes=N&quota_bytes=N`` (blobs on a disk the worker shares), or
    ``worker://HOST:PORT`` (through the server)."""
    if url.startswith("worker://"):
        return _remote(url)[1]
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise ValueError(f"unsupported artifact store URL {url!r}; use file:///PATH or worker://HOST:PORT")
    limits = {key: int(values[0]) for key, values in parse_qs(parsed.query).items()}
    return ArtifactStore(parsed.path, limits.get("max_artifact_bytes", 4 << 30), limits.get("quota_bytes", 100 << 30))


def _remote(url: str):
    from service.jobs.job_tokens import JobCredentials
    from service.jobs.remote_store import WorkerEndpoint, connect

    text = os.environ.get(CREDENTIALS_ENV, "")
    if not text:
        raise ValueError(f"{url}: a worker reaching the server needs its job credentials in ${CREDENTIALS_ENV}")
    return connect(WorkerEndpoint(url[len("worker://"):]), JobCredentials.from_text(text))
