"""A data folder as one file to upload: the server takes artifacts, not folders, and opens a .tar of a folder as
the folder itself (``pruning.data.load_images``: train*.npz / test.npz, CIFAR python batches, or ImageFolder).

The tar is uncompressed and deterministic (sorted names, mtime 0, owner 0, mode 0644 / 0755), so the same folder
always packs to the same bytes: a retried submit reuses the upload already stored (artifacts are content-addressed).
Links and special files are refused: the server would refuse them too, after the upload.

Example::

    tar = pack_folder(Path("cifar10"), Path(tmp))     # tmp/cifar10.tar, members cifar10/test.npz, ...
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from service.client.types import InterpruneClientError


def pack_folder(folder: Path, dest_dir: Path) -> Path:
    """``folder`` as ``dest_dir/{folder name}.tar`` (members under ``{folder name}/``); hidden entries are left out.
    Raises ``InterpruneClientError`` naming a link or special file, or an empty folder."""
    folder = Path(folder)
    top = folder.resolve().name or "data"
    entries = sorted(p for p in folder.rglob("*") if not any(part.startswith(".")
                                                             for part in p.relative_to(folder).parts))
    if not any(p.is_file() and not p.is_symlink() for p in entries):
        raise InterpruneClientError(f"{folder} holds no files to upload")
    dest = Path(dest_dir) / f"{top}.tar"
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in entries:
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise InterpruneClientError(f"{path} is a link or special file; the server accepts only plain files "
                                            "and folders (copy the file in its place)")
            info = tarfile.TarInfo(f"{top}/{path.relative_to(folder).as_posix()}")
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = path.stat().st_size, 0o644
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
    return dest
