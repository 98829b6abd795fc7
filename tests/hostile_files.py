"""Hostile data files built by hand in a few milliseconds: decompression bombs whose streams really expand to
gigabytes, archives whose headers lie, and an image whose header claims 20000x20000 pixels.

A deflate stream of N GiB of zeros is one compressed MiB of zeros (ended by a full flush, so it stands alone)
repeated, then an empty final block: ~1 KB per MiB, built without compressing gigabytes.
"""
from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np

MiB, GiB = 1 << 20, 1 << 30
_FINAL_EMPTY_BLOCK = b"\x03\x00"      # BFINAL=1, fixed Huffman, end-of-block


def deflate(prefix: bytes, zeros: int) -> bytes:
    """Raw deflate data of ``prefix`` followed by ``zeros`` zero bytes (a multiple of 1 MiB)."""
    assert zeros % MiB == 0
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = head.compress(prefix) + head.flush(zlib.Z_FULL_FLUSH) if prefix else b""
    body = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = body.compress(bytes(MiB)) + body.flush(zlib.Z_FULL_FLUSH)
    return out + chunk * (zeros // MiB) + _FINAL_EMPTY_BLOCK


def write_zip(path: Path, members: list[tuple]) -> Path:
    """A zip of (name, raw deflate data, declared uncompressed size[, CRC-32]); a missing CRC is 0 (never reached
    when the archive is refused, and reported as corrupt when the member is read to its end)."""
    local, central = io.BytesIO(), io.BytesIO()
    for name, data, declared, *crc in members:
        crc = crc[0] if crc else 0
        encoded = name.encode()
        offset = local.tell()
        local.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 33, crc, len(data), declared,
                                len(encoded), 0) + encoded + data)
        central.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 33, crc, len(data), declared,
                                  len(encoded), 0, 0, 0, 0, 0o644 << 16, offset) + encoded)
    directory = central.getvalue()
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(directory), local.tell(), 0)
    path.write_bytes(local.getvalue() + directory + end)
    return path


def zip_bomb(path: Path, declared: int = 3 * GiB) -> Path:
    """One member ``cls/zeros.png`` whose stream really expands to ``declared`` bytes of zeros (~1 KB per MiB)."""
    return write_zip(path, [("cls/zeros.png", deflate(b"", declared), declared)])


def zip_understating(path: Path, real: int = 64 * MiB, declared: int = 100) -> Path:
    """A member that says it holds ``declared`` bytes while its stream expands to ``real``."""
    return write_zip(path, [("cls/a.png", deflate(b"", real), declared)])


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _gzip(raw_deflate: bytes, size: int) -> bytes:
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + raw_deflate + struct.pack("<II", 0, size & 0xFFFFFFFF)


def tar_gz_bomb(path: Path, size: int = 3 * GiB) -> Path:
    """A .tar.gz whose one member really holds ``size`` zero bytes (a few MB on disk)."""
    header = _tar_header("cls/zeros.png", size)
    path.write_bytes(_gzip(deflate(header, size), len(header) + size))
    return path


def tar_gz_lying(path: Path, declared: int = 3 * GiB) -> Path:
    """A .tar.gz whose header claims ``declared`` bytes although the archive ends 1 KiB later."""
    raw = _tar_header("cls/a.png", declared) + bytes(1024)
    path.write_bytes(_gzip(zlib.compress(raw)[2:-4], len(raw)))
    return path


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": descr, "fortran_order": False, "shape": shape})
    return stream.getvalue()


def npz_bomb(path: Path, shape: tuple[int, ...] = (2500, 1000, 1000, 1)) -> Path:
    """An .npz whose ``images`` really expand to prod(shape) zero bytes; ``labels`` is a normal small array."""
    size = int(np.prod(shape))
    images = npy_header(shape)
    labels = io.BytesIO()
    np.lib.format.write_array(labels, np.zeros(shape[0], np.int64))
    label_bytes = labels.getvalue()
    raw_labels = zlib.compressobj(9, zlib.DEFLATED, -15)
    return write_zip(path, [("images.npy", deflate(images, size), len(images) + size),
                            ("labels.npy", raw_labels.compress(label_bytes) + raw_labels.flush(), len(label_bytes))])


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR says ``width`` x ``height`` RGB; its one IDAT holds a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64)))
                     + chunk(b"IEND", b""))
    return path


def folder_size(root: Path) -> int:
    """Bytes of the files under ``root`` (blocks actually allocated, so sparse files count as written)."""
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file()) if root.exists() else 0
