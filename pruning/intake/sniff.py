"""What kind of model file is this? Told by content, not by name, so a wrong file gets a useful answer.

``classify(head, size, zip_names)`` is pure: the first bytes, the file size and (for zip archives) the member
names decide. ``identify(path)`` reads those from disk. ``weights_advice(kind, name)`` says what to do when a
file of that kind was given where a weights-only checkpoint belongs.

Kinds: ``empty``, ``torch`` (``torch.save``, zip or legacy pickle), ``safetensors``, ``onnx``, ``torchscript``
(``torch.jit.save``), ``torch.export`` (``torch.export.save``, ``.pt2``), ``numpy``, ``hdf5`` (Keras), ``tflite``,
``json``, ``unknown``.
"""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Sequence

HEAD_BYTES = 64
SAFETENSORS_MAX_HEADER = 100_000_000
_ONNX_NEXT_FIELDS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}   # ModelProto fields 2..8 after ir_version (field 1)


def classify(head: bytes, size: int, zip_names: Sequence[str] | None = None) -> str:
    """The kind of a file from its first bytes, its size and, for a zip archive, its member names."""
    if size == 0:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return _classify_zip(zip_names)
    if _is_safetensors(head, size):
        return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "torch"                                   # legacy (non-zip) torch.save: a pickle stream
    if _is_onnx(head):
        return "onnx"
    if head.startswith(b"\x93NUMPY"):
        return "numpy"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head[4:8] == b"TFL3":
        return "tflite"
    if head.lstrip()[:1] in (b"{", b"["):
        return "json"
    return "unknown"


def _classify_zip(names: Sequence[str] | None) -> str:
    if names is None:
        return "torch"                                   # unreadable directory: a truncated torch.save, most likely
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("archive_format") or n.endswith("models/model.json") for n in names):
        return "torch.export"
    if names and all(n.endswith(".npy") for n in names):
        return "numpy"
    return "torch"


def _is_safetensors(head: bytes, size: int) -> bool:
    """8-byte little-endian header length (below safetensors' 100 MB limit), then a JSON object.

    A file shorter than its header says is still safetensors (a truncated one: reading it says so)."""
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < header_len <= SAFETENSORS_MAX_HEADER


def _is_onnx(head: bytes) -> bool:
    """A protobuf ModelProto: field 1 (ir_version, a small varint) first, then another ModelProto field."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 30 and head[2] in _ONNX_NEXT_FIELDS


def not_a_file(path: Path, what: str) -> str | None:
    """Why ``path`` cannot be read as ``what`` ("weights file", "model file"), or None when it is a regular file."""
    if path.is_file():
        return None
    if path.is_dir():
        return f"{what} {path} is a folder, not a file; give the file inside it"
    if path.exists():
        return f"{what} {path} is not a regular file"
    return f"{what} {path} does not exist"


def identify(path: str | Path) -> str:
    """``classify`` applied to the file at ``path``."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(HEAD_BYTES)
    names = None
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            names = None
    return classify(head, size, names)


def model_file_advice(kind: str, name: str) -> str:
    """Why ``name`` (of ``kind``, not ``onnx``) is not an ONNX model file, and what to do instead."""
    export = "torch.onnx.export(model, example_input, 'model.onnx') and pass --model model.onnx"
    advice = {
        "empty": f"{name} is empty (0 bytes): the upload or copy did not finish; send the file again",
        "torch": f"{name} is a PyTorch checkpoint, not an ONNX model: pass it as --weights with the architecture "
                 f"it belongs to (--arch), or {export}",
        "safetensors": f"{name} is a safetensors weights file, not an ONNX model: pass it as --weights with the "
                       "architecture it belongs to (--arch)",
        "torchscript": f"{name} is a TorchScript archive (torch.jit.save), which interprune does not load; {export}",
        "torch.export": f"{name} is a torch.export program (.pt2), which interprune does not load; {export}",
        "hdf5": f"{name} is an HDF5 (Keras) file; convert the model to ONNX (e.g. tf2onnx) and pass --model model.onnx",
        "tflite": f"{name} is a TensorFlow Lite model; convert it to ONNX (e.g. tflite2onnx)",
        "unknown": f"{name} is not an ONNX model (unrecognised content: corrupt, truncated or another format); "
                   f"{export}",
    }
    return advice.get(kind, f"{name} is a {kind} file, not an ONNX model; {export}")


def weights_advice(kind: str, name: str) -> str:
    """Why ``name`` (of ``kind``) is not a weights file, and what to pass instead."""
    save = "torch.save(model.state_dict(), 'weights.pt') or safetensors.torch.save_file(model.state_dict(), ...)"
    advice = {
        "empty": f"{name} is empty (0 bytes): the upload or copy did not finish; send the file again",
        "onnx": f"{name} is an ONNX model, not a weights file; pass it as --model {name}, not --weights",
        "torchscript": f"{name} is a TorchScript archive (torch.jit.save), which interprune does not load; save "
                       f"the weights only: {save}, or export to ONNX and pass --model model.onnx",
        "torch.export": f"{name} is a torch.export program (.pt2), which interprune does not load; save the "
                        f"weights only ({save}; for an ExportedProgram ep: ep.module().state_dict()), or export "
                        "to ONNX and pass --model model.onnx",
        "numpy": f"{name} holds NumPy arrays, not a PyTorch state_dict; save the weights with {save}",
        "hdf5": f"{name} is an HDF5 (Keras) file; convert the model to ONNX (e.g. tf2onnx) and pass --model "
                "model.onnx",
        "tflite": f"{name} is a TensorFlow Lite model; interprune reads PyTorch weights or ONNX models",
        "json": f"{name} is a JSON file (an interprune plan.json?), not weights; pass the weights file "
                "(weights.pt) here",
        "unknown": f"{name} is not a PyTorch checkpoint, a safetensors file or an ONNX model (unrecognised "
                   f"content); save the weights with {save}",
    }
    return advice.get(kind, f"{name} is a {kind} file, not a weights-only checkpoint; save the weights with {save}")
