"""Upper bounds on what a job may ask for and on what a data file may expand to, checked before any work.

Two frozen settings objects with defaults sized for a calibration set (a few thousand images, not a training
corpus), and pure checks:

- ``DataLimits``: how far a data file may expand (archives, ``.npz`` arrays, image headers). Checked by
  ``pruning.archives`` and ``pruning.data`` from headers, before decompressing, and again while streaming.
- ``SpecLimits`` + ``check_spec_limits``: the numbers of a job spec (input size, classes, batch, image counts,
  seed, ...), so ``--input-size 100000x100000`` is refused at submit instead of failing a 120 GB allocation.

Every refusal names the field (or file), the value (clipped) and the limit with its value.

Example::

    check_spec_limits(input_size=(100_000, 100_000))
    # SpecError: data.input_size (100000, 100000): side 100000 exceeds the limit max_input_side=4096
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from pruning.errors import SpecError, clip

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def size_text(n: int) -> str:
    """Bytes in the largest binary unit that keeps a value >= 1: 3221225472 -> '3.0 GiB'."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class DataLimits:
    """How much a data file may expand to. The defaults hold CIFAR-10 as arrays (60,000 32x32 images = 184 MB) or
    as PNG folders (60,010 entries), and ImageNet's validation set (50,000 JPEGs, 6.4 GB) only as a subset: a
    calibration run uses a few thousand images (``DataSpec.calibration_images`` = 2,000)."""

    max_expanded_bytes: int = 2 * GiB       # an archive's members together, as extracted to disk
    max_members: int = 100_000              # entries (files and folders) in one zip / tar / .npz archive
    max_array_bytes: int = 2 * GiB          # arrays of .npz files together (from the .npy headers), and the
                                            # decoded pixels of an image folder (e.g. 14,000 images at 224x224 RGB)
    max_image_pixels: int = 4096 * 4096     # one image's width x height, from its header (PIL warns at 89 M)
    max_images: int = 100_000               # images in one image folder or archive
    # declared expanded bytes / bytes on disk, judged once an archive (or a .npz's arrays) declares more than
    # RATIO_FLOOR: photos and uint8 arrays deflate 1-3x, a zip bomb ~1000x
    max_compression_ratio: int = 200

    def __post_init__(self) -> None:
        for f in ("max_expanded_bytes", "max_members", "max_array_bytes", "max_image_pixels", "max_images",
                  "max_compression_ratio"):
            value = getattr(self, f)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DataLimits.{f} must be a positive integer, got {value!r}")


DEFAULT_DATA_LIMITS = DataLimits()


@dataclass(frozen=True)
class SpecLimits:
    """Largest values a job spec may hold. Sized so one batch of inputs stays near 1 GiB of float32 and every
    count is far above what a calibration run needs."""

    max_input_side: int = 4096              # data.input_size: height and width, each
    max_input_pixels: int = 2048 * 2048     # data.input_size: height x width
    max_batch_elements: int = 1 << 28       # batch x C x H x W of one input batch: 2^28 float32 = 1 GiB
    max_classes: int = 100_000              # model.num_classes (ImageNet-21k has 21,841)
    max_batch_size: int = 4096              # data.batch_size, finetune.batch_size, latency_batch, benchmark
    max_calibration_images: int = 50_000    # data.calibration_images (activations are kept for all of them)
    max_images: int = 1_000_000             # data.evaluation_images, finetune_images, finetune.images, ...
    max_seed: int = 2**32 - 1               # seed: 0 .. max_seed (numpy's and torch's seeds both take this range)
    max_threads: int = 1024
    max_channels: int = 16                  # length of data.mean / data.std
    max_name_length: int = 256              # architecture, criterion, target names
    max_path_length: int = 4096             # weights and data paths (Linux PATH_MAX)
    max_finetune_epochs: float = 10_000.0
    max_finetune_steps: int = 100_000_000
    max_finetune_images_seen: int = 1_000_000_000
    max_finetune_minutes: float = 7 * 24 * 60.0


DEFAULT_SPEC_LIMITS = SpecLimits()


def _refuse(field_name: str, value: Any, why: str) -> SpecError:
    return SpecError(f"{field_name} {clip(value, 80)}: {why}")


def _int_in(field_name: str, value: Any, low: int, high: int, limit_name: str) -> int:
    """``value`` as an int in ``low .. high``; the message names ``limit_name``=``high``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value):
        raise _refuse(field_name, value, "must be a whole number")
    number = int(value)
    if number < low:
        raise _refuse(field_name, value, f"must be >= {low}")
    if number > high:
        raise _refuse(field_name, value, f"exceeds the limit {limit_name}={high}")
    return number


def _float_in(field_name: str, value: Any, low: float, high: float, limit_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _refuse(field_name, value, "must be a finite number")
    if value < low:
        raise _refuse(field_name, value, f"must be >= {low}")
    if value > high:
        raise _refuse(field_name, value, f"exceeds the limit {limit_name}={high}")
    return float(value)


def _check_input_size(input_size: Sequence[int], channels: int, batch_sizes: Sequence[int],
                      limits: SpecLimits) -> None:
    if len(input_size) != 2:
        raise _refuse("data.input_size", tuple(input_size), "must be (height, width)")
    shown = tuple(input_size)
    for side_name, side in zip(("height", "width"), shown):
        if isinstance(side, (int, float)) and not isinstance(side, bool) and math.isfinite(side) \
                and side > limits.max_input_side:
            raise _refuse("data.input_size", shown, f"{side_name} {int(side)} exceeds the limit "
                                                    f"max_input_side={limits.max_input_side}")
    h, w = (_int_in("data.input_size", side, 1, limits.max_input_side, "max_input_side") for side in shown)
    if h * w > limits.max_input_pixels:
        raise _refuse("data.input_size", (h, w), f"{h * w} pixels exceed the limit "
                                                 f"max_input_pixels={limits.max_input_pixels}")
    for batch in batch_sizes:
        elements = int(batch) * channels * h * w
        if elements > limits.max_batch_elements:
            raise _refuse("data.input_size", (h, w), f"a batch of {batch} x {channels} x {h} x {w} = {elements} "
                          f"values exceeds the limit max_batch_elements={limits.max_batch_elements}; use a "
                          "smaller batch size or input size")


def _check_text(field_name: str, value: Any, limit: int, limit_name: str) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise _refuse(field_name, value, "must be text")
    if len(value) > limit:
        raise _refuse(field_name, value, f"{len(value)} characters exceed the limit {limit_name}={limit}")
    if "\x00" in value:
        raise _refuse(field_name, value, "contains a NUL character")


# keyword of check_spec_limits -> (field as the user knows it, smallest allowed value, SpecLimits attribute)
_COUNTS: dict[str, tuple[str, int, str]] = {
    "num_classes": ("model.num_classes", 1, "max_classes"),
    "batch_size": ("data.batch_size", 1, "max_batch_size"),
    "calibration_images": ("data.calibration_images", 1, "max_calibration_images"),
    "evaluation_images": ("data.evaluation_images", 1, "max_images"),
    "finetune_images": ("data.finetune_images", 0, "max_images"),
    "finetune_batch_size": ("finetune.batch_size", 1, "max_batch_size"),
    "finetune_steps": ("finetune.steps", 0, "max_finetune_steps"),
    "finetune_images_seen": ("finetune.images", 0, "max_finetune_images_seen"),
    "finetune_validation_images": ("finetune.validation_images", 0, "max_images"),
    "latency_batch": ("prune.latency_batch", 1, "max_batch_size"),
    "parity_images": ("export.parity_images", 1, "max_images"),
    "agent_eval_images": ("benchmark.agent_eval_images", 0, "max_images"),
    "seed": ("seed", 0, "max_seed"),
    "threads": ("threads", 1, "max_threads"),
}
_FLOATS: dict[str, tuple[str, str]] = {
    "finetune_epochs": ("finetune.epochs", "max_finetune_epochs"),
    "finetune_minutes": ("finetune.minutes", "max_finetune_minutes"),
}
# the keywords whose values are batch sizes of input batches of `input_size`
_BATCHES = ("batch_size", "finetune_batch_size", "latency_batch")


def check_spec_limits(*, input_size: Sequence[int] | None = None, channels: int = 3,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      benchmark_batch_sizes: Sequence[int] = (), names: dict[str, str | None] | None = None,
                      paths: dict[str, str | None] | None = None, limits: SpecLimits = DEFAULT_SPEC_LIMITS,
                      **counts: Any) -> None:
    """Raise ``SpecError`` naming the field, its (clipped) value and the limit when a spec value is out of range.

    ``counts`` are the whole-number fields by keyword (``num_classes``, ``batch_size``, ``calibration_images``,
    ``evaluation_images``, ``finetune_images``, ``finetune_batch_size``, ``finetune_steps``,
    ``finetune_images_seen``, ``finetune_validation_images``, ``latency_batch``, ``parity_images``,
    ``agent_eval_images``, ``seed``, ``threads``) and ``finetune_epochs`` / ``finetune_minutes``; None = not set.
    ``names`` / ``paths`` map field names ("model.arch", "data.path") to text checked for length. ``channels``
    is the model's input channels (for the batch size check). Pure: reads nothing, allocates nothing.
    """
    from pruning.finite import check_finite_numbers

    unknown = set(counts) - set(_COUNTS) - set(_FLOATS)
    if unknown:
        raise TypeError(f"check_spec_limits got unknown field(s) {sorted(unknown)}")
    for key, value in counts.items():
        if value is None:
            continue
        if key in _FLOATS:
            field_name, limit_name = _FLOATS[key]
            _float_in(field_name, value, 0.0, getattr(limits, limit_name), limit_name)
        else:
            field_name, low, limit_name = _COUNTS[key]
            _int_in(field_name, value, low, getattr(limits, limit_name), limit_name)
    for batch in benchmark_batch_sizes:
        _int_in("benchmark.batch_sizes", batch, 1, limits.max_batch_size, "max_batch_size")
    if input_size is not None:
        batches = [counts[k] for k in _BATCHES if counts.get(k) is not None] + list(benchmark_batch_sizes)
        _check_input_size(input_size, channels, batches, limits)
    for field_name, values in (("data.mean", mean), ("data.std", std)):
        if values:
            if len(values) > limits.max_channels:
                raise _refuse(field_name, tuple(values), f"{len(values)} values exceed the limit "
                                                         f"max_channels={limits.max_channels}")
            check_finite_numbers(values, field_name, positive=field_name == "data.std")
    for field_name, text in (names or {}).items():
        _check_text(field_name, text, limits.max_name_length, "max_name_length")
    for field_name, text in (paths or {}).items():
        _check_text(field_name, text, limits.max_path_length, "max_path_length")


def check_compress_spec(spec: Any, *, channels: int = 3, limits: SpecLimits = DEFAULT_SPEC_LIMITS) -> None:
    """``check_spec_limits`` on the fields of a ``pruning.compress.CompressSpec`` (read by attribute)."""
    model, data, prune, finetune = spec.model, spec.data, spec.prune, spec.finetune
    check_spec_limits(
        input_size=data.input_size, channels=channels, mean=data.mean, std=data.std, limits=limits,
        names={"model.arch": model.arch, "prune.criterion": prune.criterion,
               "prune.layer_criterion": prune.layer_criterion, "prune.latency_target": prune.latency_target},
        paths={"model.weights": model.weights, "data.path": data.path},
        num_classes=model.num_classes, batch_size=data.batch_size, calibration_images=data.calibration_images,
        evaluation_images=data.evaluation_images, finetune_images=data.finetune_images,
        finetune_batch_size=finetune.batch_size, finetune_steps=finetune.steps, finetune_images_seen=finetune.images,
        finetune_validation_images=finetune.validation_images, finetune_epochs=finetune.epochs,
        finetune_minutes=finetune.minutes, latency_batch=prune.latency_batch, seed=spec.seed, threads=spec.threads)
