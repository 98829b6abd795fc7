"""Criterion parameters checked before any work: type, finiteness and range.

A criterion's hyperparameters arrive from a command line (``--criterion-param steps=64``, parsed as JSON, so
``NaN`` and ``Infinity`` are numbers) or from any gRPC client (a ``double_value`` may be NaN). A NaN compares False
with every bound, so ``if weight_decay < 0: raise`` lets it through and the job runs on garbage; an unbounded count
(``steps=1e12``) holds a worker for days. ``check_params`` refuses both with one line naming the parameter, the
value and the range, before the job starts (``create_criterion`` calls it, at submit and in a local run).

Each criterion declares the ranges of its parameters (``Scorer.param_ranges``; ``COMMON_RANGES`` hold the ones
several share). A numeric parameter without a declared range must still be a finite number (a whole one when its
default is an int), and a tuple default (``mean``, ``std``) takes a list of finite numbers.

Example::

    check_params({"steps": 10**12}, {"steps": Range(1, 2048, whole=True)}, {"steps": 32})
    # ValueError: steps must be a whole number in [1, 2048], got 1000000000000
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from pruning.errors import clip

MAX_LIST = 16      # values in a list parameter (one per input channel: mean, std)


@dataclass(frozen=True)
class Range:
    """Allowed values of one numeric parameter: ``low`` .. ``high`` (each end excluded when ``open_low`` /
    ``open_high``), a whole number when ``whole``, None too when ``optional`` (the criterion's "not set")."""

    low: float
    high: float
    whole: bool = False
    open_low: bool = False
    open_high: bool = False
    optional: bool = False
    note: str = ""                    # what the values mean, said with the range

    def text(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        low, high = (f"{int(v)}" if self.whole else f"{v:g}" for v in (self.low, self.high))
        interval = f"{'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"
        return (f"{kind} in {interval}" + (" or unset (null)" if self.optional else "")
                + (f" ({self.note})" if self.note else ""))

    def admits(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below and (not self.whole or value == int(value))


# Parameters several criteria take, with the same meaning.
COMMON_RANGES: dict[str, Range] = {
    "refit_window": Range(0.0, 1.0, note="0 = the criterion's order as it is"),
    "depth_share": Range(0.0, 1.0, open_low=True, note="1 = the whole target by removing blocks"),
    "seed": Range(0, 2**32 - 1, whole=True, optional=True),
    "max_batches": Range(1, 1_000_000, whole=True, optional=True),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_number(name: str, value: Any, allowed: Range) -> Any:
    """``value`` when ``allowed`` admits it (an int for a whole number), else ``ValueError`` naming ``name``."""
    if value is None and allowed.optional:
        return None
    if not _is_number(value) or not math.isfinite(value) or not allowed.admits(value):
        raise ValueError(f"{name} must be {allowed.text()}, got {clip(repr(value), 60)}")
    return int(value) if allowed.whole else value


def _check_default_type(name: str, value: Any, default: Any) -> Any:
    """The check for a parameter without a declared range, by its default's type."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {clip(repr(value), 60)}")
        return value
    if _is_number(default):
        whole = isinstance(default, int)
        if not _is_number(value) or not math.isfinite(value) or (whole and value != int(value)):
            raise ValueError(f"{name} must be a finite {'whole ' if whole else ''}number, got {clip(repr(value), 60)}")
        return int(value) if whole else value
    if isinstance(default, tuple) and default and all(_is_number(v) for v in default):
        if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_LIST \
                or not all(_is_number(v) and math.isfinite(v) for v in value):
            raise ValueError(f"{name} must be a list of 1 to {MAX_LIST} finite numbers, got {clip(repr(value), 60)}")
        return tuple(value)
    return value


def check_params(params: Mapping[str, Any], ranges: Mapping[str, Range], defaults: Mapping[str, Any]) -> dict:
    """``params`` checked one by one (``ValueError`` at the first bad one): against ``ranges`` where declared,
    else by the type of ``defaults[name]``. Whole numbers come back as ints (``64.0`` -> ``64``)."""
    out = {}
    for name, value in params.items():
        if name in ranges:
            out[name] = check_number(name, value, ranges[name])
        else:
            out[name] = _check_default_type(name, value, defaults.get(name))
    return out

# Activation maximization (``pruning.visualize``), shared by functionality and visual_similarity: 2048 steps is 8x
# the shared machinery's 256 (ResNet-56 on this project's 2-core CPU: ~26 minutes per 256 steps).
AM_STEPS = Range(1, 2048, whole=True)
AM_LR = Range(0.0, 10.0, open_low=True)
