"""Zip, tar and .npz files opened without trusting them.

A 1.5 MB archive can expand to gigabytes; tar headers and zip sizes are written by whoever made the file.
So, for every archive:

1. the headers are read first (zip: the central directory; tar: member by member; .npz: each array's .npy
   header) and the archive is refused when they name an unsafe path or a link, or declare more entries or
   bytes than ``DataLimits`` allows, before any member is expanded;
2. members are then copied in 1 MiB chunks with a byte budget of ``max_expanded_bytes``, checked before
   each write, so a header that understates its member can never put more than the limit on disk.

Every refusal names the user's file (``name``), the limit and its value.
"""
from __future__ import annotations

import lzma
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from pruning.errors import DataError, clip
from pruning.limits import DataLimits, size_text

CHUNK = 1 << 20
RATIO_FLOOR = 64 << 20      # below this many declared bytes the compression ratio is not judged


@dataclass
class Budget:
    """Bytes that may still be written; ``limit`` is what the message names."""

    left: int
    limit: int


@dataclass(frozen=True)
class ArrayHeader:
    """What a .npy header declares: shape, dtype and the bytes the array would take in memory."""

    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int


def _limit_text(name: str, value: int) -> str:
    return f"the limit {name}={value}" + (f" ({size_text(value)})" if "bytes" in name else "")


def copy_limited(src: BinaryIO, dst: BinaryIO, budget: Budget, archive: str, member: str) -> int:
    """Copy ``src`` to ``dst`` in chunks; raise ``DataError`` before a write would exceed ``budget``."""
    copied = 0
    while True:
        chunk = src.read(CHUNK)
        if not chunk:
            return copied
        if len(chunk) > budget.left:
            raise DataError(f"refusing archive {clip(archive)}: member {clip(member)!r} expands beyond "
                            f"{_limit_text('max_expanded_bytes', budget.limit)} (all members together)")
        dst.write(chunk)
        budget.left -= len(chunk)
        copied += len(chunk)


def _refuse(archive: str, member: str, why: str) -> DataError:
    return DataError(f"refusing archive {clip(archive)}: member {clip(member)!r} {why}")


def _destination(target: Path, member: str, archive: str) -> Path:
    """``target / member`` after refusing absolute paths, ``..`` and drive letters."""
    parts = Path(member).parts
    if member.startswith(("/", "\\")) or ".." in parts or ":" in member or Path(member).is_absolute():
        raise _refuse(archive, member, "points outside the extraction folder")
    return target.joinpath(*parts) if parts else target


class _Declared:
    """Running totals of the entries and bytes the headers declare, refused as soon as one passes its limit."""

    def __init__(self, limits: DataLimits, archive: str) -> None:
        self.limits, self.archive, self.count, self.size = limits, archive, 0, 0

    def add(self, size: int) -> None:
        self.count += 1
        self.size += size
        if self.count > self.limits.max_members:
            raise DataError(f"refusing archive {clip(self.archive)}: it holds more than "
                            f"{self.limits.max_members} entries, {_limit_text('max_members', self.limits.max_members)}")
        if self.size > self.limits.max_expanded_bytes:
            raise DataError(f"refusing archive {clip(self.archive)}: its headers declare at least "
                            f"{size_text(self.size)} ({self.size} bytes) once expanded, above "
                            f"{_limit_text('max_expanded_bytes', self.limits.max_expanded_bytes)}")


def check_ratio(declared: int, on_disk: int, limits: DataLimits, name: str, what: str) -> None:
    """Refuse ``declared`` expanded bytes from ``on_disk`` bytes above ``max_compression_ratio`` (once
    ``declared`` passes ``RATIO_FLOOR``): a compression bomb, refused before it is expanded."""
    if declared <= RATIO_FLOOR or declared <= limits.max_compression_ratio * max(on_disk, 1):
        return
    raise DataError(f"refusing {clip(name)}: {what} declare {size_text(declared)} ({declared} bytes) from "
                    f"{size_text(on_disk)} on disk, {declared / max(on_disk, 1):.0f}:1, above "
                    f"{_limit_text('max_compression_ratio', limits.max_compression_ratio)} (image data compresses "
                    "a few times at most; this looks like a compression bomb)")


def extract_archive(archive: Path, target: Path, limits: DataLimits, name: str | None = None) -> None:
    """Extract a .zip or .tar(.gz/.bz2/.xz) into ``target`` within ``limits``; raise ``DataError`` on refusal."""
    name = name or archive.name
    if archive.suffix.lower() == ".zip":
        _extract_zip(archive, target, limits, name)
    else:
        _extract_tar(archive, target, limits, name)


def _extract_zip(archive: Path, target: Path, limits: DataLimits, name: str) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            declared = _Declared(limits, name)
            infos = zf.infolist()
            for info in infos:
                declared.add(info.file_size)
                _destination(target, info.filename, name)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise _refuse(name, info.filename, "is a symbolic link")
            check_ratio(declared.size, archive.stat().st_size, limits, name, "its headers")
            budget = Budget(limits.max_expanded_bytes, limits.max_expanded_bytes)
            for info in infos:
                _write_member(target, info.filename, info.is_dir(), lambda i=info: zf.open(i), budget, name)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise DataError(f"cannot read {clip(name)}: {clip(exc)}") from None


def _extract_tar(archive: Path, target: Path, limits: DataLimits, name: str) -> None:
    import tarfile

    try:
        with tarfile.open(archive) as tf:
            declared = _Declared(limits, name)
            members = []
            while (member := tf.next()) is not None:      # headers one by one: a bomb is refused at its header
                declared.add(member.size if member.isfile() else 0)
                _destination(target, member.name, name)
                if member.issym() or member.islnk():
                    raise _refuse(name, member.name, "is a link")
                if not (member.isfile() or member.isdir()):
                    raise _refuse(name, member.name, "is not a regular file")
                members.append(member)
            check_ratio(declared.size, archive.stat().st_size, limits, name, "its headers")
            budget = Budget(limits.max_expanded_bytes, limits.max_expanded_bytes)
            for member in members:
                _write_member(target, member.name, member.isdir(), lambda m=member: tf.extractfile(m), budget, name)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
        raise DataError(f"cannot read {clip(name)}: {clip(exc)}") from None


def _write_member(target: Path, member: str, is_dir: bool, open_member, budget: Budget, archive: str) -> None:
    dest = _destination(target, member, archive)
    if is_dir:
        dest.mkdir(parents=True, exist_ok=True)
        return
    if dest == target:
        raise _refuse(archive, member, "has no file name")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open_member() as src, open(dest, "wb") as dst:
        copy_limited(src, dst, budget, archive, member)


# --- .npz ---------------------------------------------------------------------------------------

def read_npy_header(stream: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of a .npy stream, reading nothing after it."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):    # 3.0 differs only by a UTF-8 header, parsed alike for ASCII keys
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(int(d) for d in shape), dtype


def read_npz_headers(path: Path, keys: Iterable[str], limits: DataLimits, name: str | None = None
                     ) -> dict[str, ArrayHeader]:
    """The declared shape, dtype and size of each array of ``keys`` in a .npz, from the .npy headers only.

    Raises ``DataError`` for object arrays, negative dimensions, more entries than ``max_members``, or arrays
    together above ``max_array_bytes``: before any array data is read.
    """
    name, wanted, headers, total = name or path.name, set(keys), {}, 0
    try:
        with zipfile.ZipFile(path) as zf:
            declared = _Declared(limits, name)
            for info in zf.infolist():
                declared.add(0)    # counts entries only: the arrays' bytes are judged from their .npy headers
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if key not in wanted:
                    continue
                with zf.open(info) as stream:
                    shape, dtype = read_npy_header(stream)
                if dtype.hasobject:
                    raise DataError(f"{clip(name)} contains object arrays (pickled Python objects); refusing to "
                                    "load it. Store images as uint8 and labels as int arrays.")
                if any(d < 0 for d in shape):
                    raise DataError(f"{clip(name)}: array {clip(key)!r} declares a negative shape {clip(shape)}")
                nbytes = math.prod(shape) * dtype.itemsize
                total += nbytes
                if total > limits.max_array_bytes:
                    raise DataError(f"refusing {clip(name)}: array {clip(key)!r} declares shape {clip(shape, 80)} "
                                    f"{dtype} = {size_text(nbytes)}; the arrays together would take {size_text(total)}"
                                    f" ({total} bytes), above {_limit_text('max_array_bytes', limits.max_array_bytes)}")
                headers[key] = ArrayHeader(shape, dtype, nbytes)
            check_ratio(total, path.stat().st_size, limits, name, "its arrays")
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise DataError(f"cannot read {clip(name)}: it is truncated or not an .npz archive ({clip(exc)})") from None
    except ValueError as exc:
        raise DataError(f"cannot read {clip(name)}: a .npy header is malformed ({clip(exc)})") from None
    return headers
