"""Opening the job store and the artifact store from URLs: the one place a new backend is added.

Worker processes get URLs, never file paths, so a backend that workers on other machines can reach (Postgres for
the jobs, an object store for the artifacts) plugs in here without touching the scheduler or the worker.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlparse

from service.jobs.artifacts import ArtifactStore
from service.jobs.memory_store import MemoryJobStore
from service.jobs.sqlite_store import SqliteJobStore
from service.jobs.store import JobStore


def open_job_store(url: str | Path | None) -> JobStore:
    """``sqlite:///abs/path/jobs.db`` (or a plain path), or ``memory:`` (or None) for one process."""
    if url is None or str(url) == "memory:":
        return MemoryJobStore()
    text = str(url)
    if "://" in text and not text.startswith("sqlite://"):
        raise ValueError(f"unsupported job store URL {text!r}; use sqlite:///PATH or memory:")
    return SqliteJobStore(text[len("sqlite://"):] if text.startswith("sqlite://") else text)


def open_artifact_store(url: str) -> ArtifactStore:
    """``file:///abs/root?max_artifact_bytes=N&quota_bytes=N``: blobs on a disk the worker shares."""
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise ValueError(f"unsupported artifact store URL {url!r}; use file:///PATH")
    limits = {key: int(values[0]) for key, values in parse_qs(parsed.query).items()}
    return ArtifactStore(parsed.path, limits.get("max_artifact_bytes", 4 << 30), limits.get("quota_bytes", 100 << 30))
