"""Non-finite numbers (NaN, +inf, -inf) found before they turn into a "successful" job.

A NaN weight makes every logit NaN; NaN compares False with everything, so a NaN accuracy or parity error slips
through a ``value > limit`` gate and ``argmax`` of a NaN row picks class 0. These helpers find such values and
name where they are: the tensor (or array, or setting), how many elements, out of how many.

Example::

    sd = {"fc.weight": torch.tensor([1.0, float("nan")])}
    find_nonfinite(sd)                      # [NonFinite(name='fc.weight', count=1, total=2)]
    check_finite_state_dict(sd, "w.pt")     # ModelError: w.pt: tensor 'fc.weight' holds 1 non-finite ...
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import torch

from pruning.errors import DataError, ModelError, SpecError, clip

#: How many offending tensors a message lists by name before "and N more".
LISTED = 3


@dataclass(frozen=True)
class NonFinite:
    """``count`` of the ``total`` elements of ``name`` are NaN or infinite."""

    name: str
    count: int
    total: int

    def describe(self) -> str:
        return f"{clip(self.name, 120)!r} ({self.count} of {self.total} values)"


def count_nonfinite(values: torch.Tensor | np.ndarray) -> int:
    """Number of NaN/inf elements; 0 for integer and boolean data, which cannot hold them."""
    if isinstance(values, torch.Tensor):
        if not (values.is_floating_point() or values.is_complex()):
            return 0
        return int((~torch.isfinite(values.detach())).sum())
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.inexact):
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def find_nonfinite(tensors: Mapping[str, torch.Tensor | np.ndarray]) -> list[NonFinite]:
    """The entries of ``tensors`` (a state dict, a dict of arrays) holding NaN/inf, in their order."""
    found = []
    for name, value in tensors.items():
        if isinstance(value, (torch.Tensor, np.ndarray)):
            count = count_nonfinite(value)
            if count:
                total = value.numel() if isinstance(value, torch.Tensor) else int(value.size)
                found.append(NonFinite(str(name), count, int(total)))
    return found


def summarize(found: list[NonFinite]) -> str:
    """"tensor 'a' (1 of 2 values), tensor 'b' (...) and 4 more tensors"."""
    head = ", ".join(f"tensor {f.describe()}" for f in found[:LISTED])
    more = len(found) - LISTED
    return head + (f" and {more} more tensor{'s' if more > 1 else ''}" if more > 0 else "")


def check_finite_state_dict(state_dict: Mapping[str, torch.Tensor], label: str) -> None:
    """Raise ``ModelError`` if any tensor of the checkpoint ``label`` holds NaN/inf, or a BatchNorm running
    variance (``*.running_var``) a negative value (its square root is NaN at the first forward), naming tensors
    and counts."""
    found = find_nonfinite(state_dict)
    if found:
        raise ModelError(f"{clip(label)}: {summarize(found)} non-finite (NaN or infinite); the weights are corrupt "
                         "or come from a diverged training run — export them again from a healthy checkpoint")
    negative = [NonFinite(name, int((value < 0).sum()), value.numel()) for name, value in state_dict.items()
                if name.endswith("running_var") and torch.is_tensor(value) and value.is_floating_point()
                and bool((value < 0).any())]
    if negative:
        listed = ", ".join(f"tensor {f.describe()}" for f in negative[:LISTED])
        raise ModelError(f"{clip(label)}: {listed} negative; a BatchNorm running variance cannot be: the weights "
                         "are corrupt — export them again from a healthy checkpoint")


def check_finite_array(values: torch.Tensor | np.ndarray, name: str, label: str) -> None:
    """Raise ``DataError`` if the array ``name`` of the data set ``label`` holds NaN/inf."""
    count = count_nonfinite(values)
    if count:
        total = values.numel() if isinstance(values, torch.Tensor) else int(np.asarray(values).size)
        raise DataError(f"{clip(label)}: {name} hold {count} non-finite value(s) (NaN or infinite) of {total}")


def check_finite_numbers(values: Iterable[float], name: str, *, positive: bool = False) -> tuple[float, ...]:
    """``values`` as floats; raise ``SpecError`` naming ``name`` if one is not a finite number (or not > 0)."""
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise SpecError(f"{name} must be numbers, got {clip(values)}") from None
    for i, v in enumerate(numbers):
        if not math.isfinite(v):
            raise SpecError(f"{name}[{i}] is {v}; it must be a finite number")
        if positive and not v > 0:
            raise SpecError(f"{name}[{i}] is {v}; it must be > 0 (it divides the pixels)")
    return numbers
