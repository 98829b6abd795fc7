"""Content-addressed artifact store: models, data sets and job outputs, named by the SHA-256 of their bytes.

Layout under ``root`` (``STATE_DIR/artifacts``)::

    blobs/ab/abcdef...          the bytes (read-only once written); ab = the first two hex digits
    blobs/ab/abcdef....json     metadata sidecar: name, kind, size, created
    tmp/                        uploads in progress (removed on failure and at start)
    quarantine/                 blobs whose bytes no longer match their digest (``service.jobs.integrity``)
    unverified/abcdef...        markers: blobs to re-hash before their next read (set after an unclean stop)

No path is ever derived from a client-supplied name: paths come from the digest, which is checked to be 64 hex
characters. Writes are atomic (temporary file, fsync, rename). The digest and size are verified before an
upload is kept, and also when the digest is already stored (the bytes are read and hashed, never trusted). The
per-artifact size limit and the free quota are checked against the declared size before the first byte is
written; while bytes arrive the quota counts what was actually received, held only while the stream lasts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol

from pruning.errors import clip
from service.core.hashing import sha256_file  # noqa: F401 - part of this module's API
from service.core.errors import InvalidArgument, NotFound, ResourceExhausted
from service.jobs.integrity import VerifyReport, ensure_verified, mark_unverified, verify_pending

log = logging.getLogger(__name__)

KINDS = ("model", "dataset", "plan", "weights", "onnx", "report_json", "report_html", "other")
CHUNK_BYTES = 1 << 20
_DIGEST = re.compile(r"^[0-9a-f]{64}\Z")
# Suffixes the data loader tells formats apart by; the only thing a client's file name may influence.
DATA_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip", ".npz")


@dataclass(frozen=True)
class ArtifactInfo:
    id: str
    name: str
    kind: str
    size_bytes: int
    created: float


def check_id(artifact_id: str) -> str:
    if not isinstance(artifact_id, str) or not _DIGEST.match(artifact_id):
        raise InvalidArgument(f"artifact id {clip(artifact_id, 80)!r} is not a SHA-256 digest (64 lowercase hex "
                              "characters)")
    return artifact_id


def data_suffix(name: str) -> str:
    """The data-format suffix of a file name from the whitelist (``.npz`` when none matches)."""
    lower = name.lower()
    return next((s for s in DATA_SUFFIXES if lower.endswith(s)), ".npz")


def clean_name(name: str) -> str:
    """A display name: the last path component, printable, at most 200 characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:200] or "unnamed"


class Artifacts(Protocol):
    """What the server and the workers need of an artifact store; ``open_artifact_store(url)`` opens one.

    ``ArtifactStore`` (blobs on the local disk) is today's only backend; a store that remote workers can reach
    (gRPC streaming from the server, an object store) implements the same methods."""

    url: str

    def verify(self, artifact_id: str) -> None:
        """Re-hash the artifact now if it awaits verification (after an unclean stop); ``NotFound`` if corrupt."""
        ensure_verified(self, artifact_id)

    def has(self, artifact_id: str) -> bool: ...

    def get(self, artifact_id: str) -> ArtifactInfo: ...

    def read_chunks(self, artifact_id: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]: ...

    def put_file(self, path: str | Path, name: str, kind: str) -> ArtifactInfo: ...

    def materialize(self, artifact_id: str, dest: Path) -> Path: ...


class ArtifactStore:
    """Blobs on the local disk; safe to share between the server and its worker processes."""

    def __init__(self, root: str | Path, max_artifact_bytes: int = 4 << 30, quota_bytes: int = 100 << 30) -> None:
        self.root = Path(root).resolve()
        self.max_artifact_bytes = int(max_artifact_bytes)
        self.quota_bytes = int(quota_bytes)
        self._blobs = self.root / "blobs"
        self._tmp = self.root / "tmp"
        self.unverified = self.root / "unverified"
        for folder in (self._blobs, self._tmp, self.root / "quarantine", self.unverified):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._reserved = 0          # bytes received by uploads in progress (released when their stream ends)
        self._used = 0              # bytes of stored blobs, scanned when an upload starts

    @property
    def url(self) -> str:
        """What ``open_artifact_store`` opens this store from, in another process."""
        return f"file://{self.root}?max_artifact_bytes={self.max_artifact_bytes}&quota_bytes={self.quota_bytes}"

    # --- reading ---------------------------------------------------------------------------------

    def materialize(self, artifact_id: str, dest: Path) -> Path:
        """Make the artifact readable at ``dest`` (here: a symbolic link to the blob; a remote store copies)."""
        info = self.get(artifact_id)
        ensure_verified(self, info.id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        dest.symlink_to(self.path(info.id))
        return dest

    def path(self, artifact_id: str) -> Path:
        check_id(artifact_id)
        return self._blobs / artifact_id[:2] / artifact_id

    def verify(self, artifact_id: str) -> None:
        """Re-hash the artifact now if it awaits verification (after an unclean stop); ``NotFound`` if corrupt."""
        ensure_verified(self, artifact_id)

    def has(self, artifact_id: str) -> bool:
        return self.path(artifact_id).is_file()

    def get(self, artifact_id: str) -> ArtifactInfo:
        blob = self.path(artifact_id)
        if not blob.is_file():
            raise NotFound(f"artifact {artifact_id} is not on this server; upload it first (UploadArtifact)")
        try:
            return ArtifactInfo(**json.loads(blob.with_suffix(".json").read_text()))
        except (OSError, ValueError, TypeError):
            return ArtifactInfo(artifact_id, "unnamed", "other", blob.stat().st_size, blob.stat().st_mtime)

    def read_chunks(self, artifact_id: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        self.get(artifact_id)
        ensure_verified(self, artifact_id)
        with open(self.path(artifact_id), "rb") as handle:
            yield from iter(lambda: handle.read(chunk_bytes), b"")

    def list(self) -> list[ArtifactInfo]:
        return [self.get(p.name) for p in sorted(self._blobs.glob("??/*")) if _DIGEST.match(p.name)]

    def page(self, kinds: Iterable[str] = (), page_size: int = 50, after: tuple[float, str] | None = None
             ) -> tuple[list[ArtifactInfo], tuple[float, str] | None]:
        """Newest first, only ``kinds`` (all when empty), after the cursor ``after`` = (created, id) of the last
        artifact of the previous page; returns the page and the next cursor (None on the last page)."""
        wanted = set(kinds)
        found = sorted((a for a in self.list() if not wanted or a.kind in wanted), key=lambda a: (-a.created, a.id))
        if after is not None:
            found = [a for a in found if (-a.created, a.id) > (-after[0], after[1])]
        page = found[:page_size]
        return page, ((page[-1].created, page[-1].id) if len(found) > page_size else None)

    def usage(self) -> int:
        """Bytes held by stored blobs (scanned, so outputs written by worker processes count too)."""
        return sum(p.stat().st_size for p in self._blobs.glob("??/*") if _DIGEST.match(p.name))

    # --- writing ---------------------------------------------------------------------------------

    def put_stream(self, name: str, kind: str, size_bytes: int, sha256: str, chunks: Iterable[bytes],
                   limit: bool = True) -> ArtifactInfo:
        """Store the bytes of ``chunks`` if they are ``size_bytes`` long and hash to ``sha256``.

        An already stored digest is not written again, but its bytes are still read and checked (an upload that
        only names a digest proves nothing). Raises ``InvalidArgument`` on a size or digest mismatch,
        ``ResourceExhausted`` past the size limit or the quota; nothing is kept then.
        """
        sha256 = (sha256 or "").lower()
        if not _DIGEST.match(sha256):
            raise InvalidArgument("the upload header must carry the SHA-256 of the file as 64 hex characters "
                                  f"(got {sha256[:80]!r})")
        if kind not in KINDS:
            raise InvalidArgument(f"unknown artifact kind {clip(kind, 40)!r}; use one of {', '.join(KINDS)}")
        if size_bytes <= 0:
            raise InvalidArgument(f"the upload header must give the file's size in bytes (> 0), got {size_bytes}")
        if limit and size_bytes > self.max_artifact_bytes:
            raise ResourceExhausted(f"{clean_name(name)} is {_mib(size_bytes)}; this server accepts artifacts up to "
                                    f"{_mib(self.max_artifact_bytes)} (serve --max-upload-mb raises the limit)")
        if self.has(sha256):
            self._receive(None, chunks, size_bytes, sha256, clean_name(name), limit, lambda n: None)
            return self.get(sha256)
        with self._reservation(size_bytes) as reserve:
            tmp = self._tmp / f"{uuid.uuid4().hex}.part"
            try:
                self._receive(tmp, chunks, size_bytes, sha256, clean_name(name), limit, reserve)
                return self._commit(tmp, sha256, clean_name(name), kind, size_bytes)
            finally:
                tmp.unlink(missing_ok=True)

    def delete(self, artifact_id: str) -> ArtifactInfo:
        """Remove an artifact's bytes and metadata (``NotFound`` when absent); callers check it is unused."""
        info = self.get(artifact_id)
        for path in (self.path(info.id), self.path(info.id).with_suffix(".json"), self.unverified / info.id):
            path.unlink(missing_ok=True)
        with self._lock:
            self._used = max(0, self._used - info.size_bytes)
        return info

    def put_file(self, path: str | Path, name: str, kind: str) -> ArtifactInfo:
        """Store a local file (job outputs); the quota applies, the upload size limit does not."""
        path = Path(path)
        size, digest = path.stat().st_size, sha256_file(path)

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as handle:
                yield from iter(lambda: handle.read(CHUNK_BYTES), b"")
        return self.put_stream(name, kind, size, digest, chunks(), limit=False)

    def _receive(self, tmp: Path | None, chunks: Iterable[bytes], size: int, sha256: str, name: str, limit: bool,
                 reserve) -> None:
        """Hash (and, with ``tmp``, write) the bytes; ``reserve(n)`` counts each chunk against the quota first.
        Only errors of the disk are reported as such; an error of ``chunks`` (the client's stream) passes."""
        digest, received = hashlib.sha256(), 0
        with _disk(name):
            handle = open(tmp if tmp is not None else os.devnull, "wb")
        with handle:
            for chunk in chunks:
                received += len(chunk)
                if limit and received > self.max_artifact_bytes:
                    raise ResourceExhausted(f"{name} exceeds this server's artifact size limit of "
                                            f"{_mib(self.max_artifact_bytes)}; nothing was kept")
                if received > size:
                    raise InvalidArgument(f"{name}: more bytes arrived than the {size} declared in the header; "
                                          "send the file's exact size")
                reserve(len(chunk))
                digest.update(chunk)
                with _disk(name):
                    handle.write(chunk)
            with _disk(name):
                handle.flush()
                if tmp is not None:
                    os.fsync(handle.fileno())
        if received != size:
            raise InvalidArgument(f"{name}: the upload ended after {received} of the {size} bytes declared; "
                                  "upload the whole file again")
        if digest.hexdigest() != sha256:
            raise InvalidArgument(f"{name}: the bytes received hash to {digest.hexdigest()}, not the declared "
                                  f"{sha256}; the file changed or was corrupted in transit, upload it again")

    def _commit(self, tmp: Path, sha256: str, name: str, kind: str, size: int) -> ArtifactInfo:
        blob = self.path(sha256)
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, blob)
        info = ArtifactInfo(sha256, name, kind, size, time.time())
        self._write_meta(info)
        _fsync_dir(blob.parent)
        with self._lock:
            self._used += size
        return info

    def _write_meta(self, info: ArtifactInfo) -> None:
        meta = self.path(info.id).with_suffix(".json")
        tmp = self._tmp / f"{uuid.uuid4().hex}.json"
        tmp.write_text(json.dumps(asdict(info)))
        os.replace(tmp, meta)

    @contextmanager
    def _reservation(self, declared: int):
        """Refuse an upload whose declared size does not fit in the free quota; then yield ``reserve(n)``, which
        holds ``n`` more received bytes of the quota (refusing past it) until the stream ends."""
        with self._lock:
            self._used = self.usage()
            used = self._used + self._reserved
            if used + declared > self.quota_bytes:
                raise ResourceExhausted(f"the artifact store is full: {_mib(used)} of {_mib(self.quota_bytes)} used, "
                                        f"{_mib(declared)} more requested; ask the operator to raise the quota "
                                        "(serve --quota-gb) or remove old artifacts (interprune delete-artifact)")
        held = 0

        def reserve(n: int) -> None:
            nonlocal held
            with self._lock:
                if self._used + self._reserved + n > self.quota_bytes:
                    raise ResourceExhausted(f"the artifact store filled up during the upload (quota "
                                            f"{_mib(self.quota_bytes)}); nothing was kept")
                self._reserved += n
                held += n
        try:
            yield reserve
        finally:
            with self._lock:
                self._reserved -= held

    # --- maintenance -----------------------------------------------------------------------------

    def cleanup_tmp(self) -> int:
        """Remove uploads left half-written by a crash; returns how many."""
        leftovers = list(self._tmp.iterdir())
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)

    def verify_all(self) -> VerifyReport:
        """Re-hash every blob now; move mismatching ones to ``quarantine/`` and rebuild missing metadata."""
        mark_unverified(self)
        return verify_pending(self)

    def blob_ids(self) -> list[str]:
        return [p.name for p in sorted(self._blobs.glob("??/*")) if _DIGEST.match(p.name)]

    def repair_meta(self, artifact_id: str) -> bool:
        """Write the metadata of a blob that has none (as "unnamed", kind "other"); True if it was missing."""
        blob = self.path(artifact_id)
        if blob.with_suffix(".json").is_file():
            return False
        self._write_meta(ArtifactInfo(artifact_id, "unnamed", "other", blob.stat().st_size, blob.stat().st_mtime))
        return True


@contextmanager
def _disk(name: str):
    """A failing write (disk full, I/O error) as RESOURCE_EXHAUSTED that names the file."""
    try:
        yield
    except OSError as exc:
        raise ResourceExhausted(f"cannot store {name} on the server ({exc.strerror or exc}); free disk space on the "
                                "server or ask its operator") from None


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

