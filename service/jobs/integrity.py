"""Blob integrity after an unclean stop, without making the server wait: every blob gets a marker in
``unverified/``; a blob with a marker is re-hashed before its next read (``ensure_verified``: DownloadArtifact, a
worker's materialize), and a background pass (``verify_pending``) works through the rest while the server serves.

A blob whose bytes no longer hash to its name is moved to ``quarantine/`` and its reader gets ``NotFound`` saying
so. Markers are files, so worker processes (which open the store from its URL) see them too.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from typing import Callable

from service.core.errors import NotFound
from service.core.hashing import sha256_file

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    checked: int = 0
    corrupt: list[str] = field(default_factory=list)       # ids moved to quarantine/
    repaired_metadata: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.corrupt


def mark_unverified(store) -> int:
    """Mark every blob of ``store`` for re-hashing before its next read; returns how many (no hashing here)."""
    ids = store.blob_ids()
    for artifact_id in ids:
        (store.unverified / artifact_id).touch()
    return len(ids)


def pending(store) -> list[str]:
    return sorted(p.name for p in store.unverified.iterdir())


def ensure_verified(store, artifact_id: str, report: VerifyReport | None = None) -> None:
    """Re-hash ``artifact_id`` if it is marked; quarantine it (``NotFound``) when its bytes no longer match."""
    marker = store.unverified / artifact_id
    if not marker.exists():
        return
    blob = store.path(artifact_id)
    if not blob.is_file():
        marker.unlink(missing_ok=True)
        return
    if report is not None:
        report.checked += 1
    if sha256_file(blob) != artifact_id:
        try:
            shutil.move(str(blob), str(store.root / "quarantine" / artifact_id))
            log.error("artifact %s does not match its digest; moved to quarantine", artifact_id)
        except FileNotFoundError:           # a concurrent check (a reader or the background pass) moved it first
            pass
        blob.with_suffix(".json").unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        if report is not None:
            report.corrupt.append(artifact_id)
        raise NotFound(f"artifact {artifact_id} failed its integrity check after an unclean server stop and was "
                       "quarantined; upload the file again")
    if store.repair_meta(artifact_id) and report is not None:
        report.repaired_metadata.append(artifact_id)
    marker.unlink(missing_ok=True)


def verify_pending(store, should_stop: Callable[[], bool] = lambda: False) -> VerifyReport:
    """Re-hash every marked blob (until ``should_stop``); the corrupt ones are quarantined and listed."""
    report = VerifyReport()
    for artifact_id in pending(store):
        if should_stop():
            break
        try:
            ensure_verified(store, artifact_id, report)
        except NotFound:
            pass
    return report
