"""Safe weight loading: weights-only ``torch.load`` or safetensors, nothing that runs code from the file.

``read_state_dict`` first tells the file's kind by content (``sniff``): a PyTorch checkpoint loads with
``torch.load(weights_only=True)`` and no fallback (a checkpoint that needs pickled code is refused, with the
offending global named); a safetensors file loads with ``safetensors.torch.load_file``; anything else (an ONNX
model, a TorchScript or torch.export archive, an empty file, random bytes) is refused with what the file is and
what to pass instead. ``load_weights`` copies a state_dict into a model and names what does not fit.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from pruning.errors import ModelError
from pruning.finite import check_finite_state_dict
from pruning.intake.sniff import identify, not_a_file, weights_advice

_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors: a ``torch.save`` file (weights only) or a ``.safetensors`` file.

    Accepts a plain state_dict or a dict holding one under ``state_dict`` / ``model`` / ``model_state_dict``;
    strips a ``module.`` (DataParallel) prefix. Raises ``ModelError`` with a reason a person can act on, also when
    a tensor holds NaN or infinite values (``pruning.finite``): such weights would give NaN logits and a
    meaningless "successful" job.
    """
    path = Path(path)
    if problem := not_a_file(path, "weights file"):
        raise ModelError(problem)
    kind = identify(path)
    if kind == "safetensors":
        state_dict = _unwrap_state_dict(_read_safetensors(path), path.name)
    elif kind == "torch":
        state_dict = _unwrap_state_dict(_read_torch(path), path.name)
    else:
        raise ModelError(f"cannot use {path.name} as weights: {weights_advice(kind, path.name)}")
    check_finite_state_dict(state_dict, path.name)
    return state_dict


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSAFE_GLOBAL.search(str(exc))
        what = f" (it references {found.group(1)})" if found else ""
        raise ModelError(
            f"refusing {path.name}: the checkpoint needs pickled code to load{what}. Save only tensors: "
            "torch.save(model.state_dict(), path)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ModelError(f"cannot read weights file {path.name}: it is truncated or not a PyTorch checkpoint "
                         f"({type(exc).__name__}: {first})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ModelError(f"{path.name} is a safetensors file and the safetensors package is not installed: "
                         "pip install safetensors") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError and OSError/ValueError
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ModelError(f"cannot read safetensors file {path.name}: it is truncated or corrupt ({first})") from None


def _unwrap_state_dict(obj: object, label: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{label} holds no state_dict of tensors (expected a dict of name -> tensor)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], label: str = "weights") -> None:
    """Copy ``state_dict`` into ``model``; only BatchNorm's ``num_batches_tracked`` may be missing."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} with other shapes (e.g. {'; '.join(wrong[:2])})")
        raise ModelError(f"{label} do not fit this architecture: " + ", ".join(parts)
                         + ". Check --arch, --arch-kwargs and --num-classes.")
    model.load_state_dict(state_dict, strict=False)


def load_file_weights(model: nn.Module, path: str | Path | None) -> nn.Module:
    """``model`` with the weights of ``path`` loaded (unchanged when ``path`` is None)."""
    if path is not None:
        load_weights(model, read_state_dict(path), label=f"weights {Path(path).name}")
    return model
