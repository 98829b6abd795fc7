"""Data sets: reading them safely, checking them against the model, preprocessing, deterministic splits.

Formats (``load_images``):
- ``.npz``: ``images`` uint8 [N, H, W, C] (or [N, H, W] for greyscale), ``labels`` int [N], optional ``masks``
  int [N, H, W] (one concept id per pixel), optional ``class_names``; other keys are ignored. Loaded with
  ``allow_pickle=False``.
- a folder holding ``train*.npz`` and/or ``test.npz`` (e.g. ``../shared/data/cifar10``): the train files are
  concatenated; ``test.npz`` becomes the evaluation split.
- a folder, ``.tar`` (any compression) or ``.zip`` in ImageFolder layout (``class_name/image.png``), extracted
  safely: no absolute paths, no ``..``, no links or devices (``pruning.archives``, ``pruning.imagefolder``).
  An archive of one of the other folders (``interprune submit --data FOLDER`` packs it so) reads as that folder.

Every format is read within ``DataLimits`` (``pruning.limits``): archive entries and expanded bytes, array
bytes from the .npy headers, image pixels from the image headers and the number of images, all checked
before the data is decompressed. Messages name the user's file (``name``), clipped.
- CIFAR-10's python batches (a ``cifar-10-batches-py`` folder), read with an unpickler that only admits numpy
  arrays, so a crafted batch cannot run code.
"""
from __future__ import annotations

import io
import logging
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pruning.archives import extract_archive, read_npz_headers
from pruning.errors import DataError, clip
from pruning.finite import check_finite_array, check_finite_numbers
from pruning.imagefolder import load_image_folder
from pruning.limits import DEFAULT_DATA_LIMITS, DataLimits

log = logging.getLogger(__name__)

NPZ_KEYS = ("images", "labels", "masks", "class_names")
#: ``check_label_coverage`` reports a split whose distinct labels are fewer than this share of those it could hold.
MIN_LABEL_COVERAGE = 0.5


@dataclass(frozen=True)
class ImageSet:
    """Images as stored: uint8 [N, H, W, C], int64 labels [N], optional int concept masks [N, H, W]."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> "ImageSet":
        return replace(self, images=self.images[index], labels=self.labels[index],
                       masks=None if self.masks is None else self.masks[index])


@dataclass(frozen=True)
class DataSource:
    """What was read from disk: a training pool and, when the source has one, a separate test set."""

    train: ImageSet
    test: ImageSet | None
    description: str


@dataclass(frozen=True)
class Splits:
    """Disjoint calibration / fine-tune / evaluation sets, chosen deterministically from a seed."""

    calibration: ImageSet
    finetune: ImageSet
    evaluation: ImageSet
    finetune_is_calibration: bool = False   # a set too small for both: fine-tuning reuses the calibration images

    def sizes(self) -> dict[str, int]:
        return {"calibration": len(self.calibration), "finetune": len(self.finetune),
                "evaluation": len(self.evaluation)}


@dataclass(frozen=True)
class Preprocess:
    """uint8 NHWC -> float32 NCHW in [0, 1], resized to ``size`` (H, W) if set, normalised by mean/std."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        """Refuse (``SpecError``) a NaN/inf mean or std, or a std <= 0: they turn every pixel into NaN/inf."""
        object.__setattr__(self, "mean", check_finite_numbers(self.mean, "mean"))
        object.__setattr__(self, "std", check_finite_numbers(self.std, "std", positive=True))

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().contiguous().div_(255.0)
        if self.size is not None and tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std


# --- reading ------------------------------------------------------------------------------------

def load_images(path: str | Path, limits: DataLimits = DEFAULT_DATA_LIMITS, *, name: str | None = None,
                scratch_dir: str | Path | None = None) -> DataSource:
    """Read any supported format (see module docstring) within ``limits``; raises ``DataError`` with the reason.

    ``name`` is the file name the user knows (default: the path's), used in every message; archives are
    extracted into a temporary folder under ``scratch_dir`` (default: the system's temporary folder).
    """
    path = Path(path)
    name = name or path.name
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:                      # e.g. a name longer than the file system allows
        raise DataError(f"data path {clip(path)} cannot be used: {clip(exc.strerror)}") from None
    if not exists:
        raise DataError(f"data path {clip(path)} does not exist")
    if is_dir:
        arrays = _array_kind(path)
        if arrays == "npz":
            return _load_npz_folder(path, limits, name)
        if arrays == "cifar":
            return _load_cifar_batches(path, name)
        return DataSource(_load_image_folder(path, limits, name), None, f"ImageFolder {clip(name)}")
    suffixes = "".join(path.suffixes).lower()
    if path.suffix.lower() == ".npz":
        return DataSource(_load_npz(path, limits, name), None, f"npz {clip(name)}")
    if path.suffix.lower() == ".zip" or ".tar" in suffixes or path.suffix.lower() in {".tgz", ".tbz2", ".txz"}:
        with tempfile.TemporaryDirectory(prefix="interprune-data-", dir=scratch_dir) as tmp:
            extract_archive(path, Path(tmp), limits, name)
            arrays = _array_folder(Path(tmp))      # a packed folder of train*.npz / test.npz or CIFAR batches
            if arrays is not None:
                return load_images(arrays, limits, name=name)
            root = _single_top_folder(Path(tmp))
            return DataSource(_load_image_folder(root, limits, name), None, f"ImageFolder archive {clip(name)}")
    raise DataError(f"unsupported data file {clip(name)}: expected .npz, .tar(.gz), .zip, or a folder")


def _load_npz(path: Path, limits: DataLimits = DEFAULT_DATA_LIMITS, name: str | None = None) -> ImageSet:
    """One .npz, its array sizes checked from the .npy headers before any array is read."""
    name = name or path.name
    headers = read_npz_headers(path, NPZ_KEYS, limits, name)
    if not {"images", "labels"} <= set(headers):
        raise DataError(f"{clip(name)} must hold arrays 'images' and 'labels' (found: {clip(sorted(headers))})")
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = archive["images"]
            labels = archive["labels"]
            masks = archive["masks"] if "masks" in headers else None
            names = tuple(str(n) for n in archive["class_names"]) if "class_names" in headers else None
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DataError(f"{clip(name)} contains object arrays (pickled Python objects); refusing to load it. "
                            "Store images as uint8 and labels as int arrays.") from None
        raise DataError(f"cannot read {clip(name)}: {clip(exc)}") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise DataError(f"cannot read {clip(name)}: it is truncated or not an .npz archive ({clip(exc)})") from None
    return check_image_set(images, labels, masks, names, label=name)


def _load_npz_folder(folder: Path, limits: DataLimits, name: str) -> DataSource:
    train_files = sorted(folder.glob("train*.npz"))
    test_file = folder / "test.npz"
    if not train_files and not test_file.exists():
        files = sorted(folder.glob("*.npz"))
        if len(files) == 1:
            return DataSource(_load_npz(files[0], limits, f"{name}/{files[0].name}"), None,
                              f"npz {clip(files[0].name)}")
        raise DataError(f"{clip(name)} holds .npz files but neither train*.npz nor test.npz; pass one file instead")
    files = train_files + ([test_file] if test_file.exists() else [])
    total = sum(h.nbytes for f in files for h in read_npz_headers(f, NPZ_KEYS, limits, f"{name}/{f.name}").values())
    if total > limits.max_array_bytes:
        raise DataError(f"refusing {clip(name)}: its .npz files together declare {total} bytes of arrays, above the "
                        f"limit max_array_bytes={limits.max_array_bytes}")
    test = _load_npz(test_file, limits, f"{name}/test.npz") if test_file.exists() else None
    if not train_files:
        return DataSource(test, None, f"npz folder {clip(name)} (test.npz only)")
    parts = [_load_npz(f, limits, f"{name}/{f.name}") for f in train_files]
    train = concat(parts, label=name)
    return DataSource(train, test, f"npz folder {clip(name)}: {len(train_files)} train files"
                      + (" + test.npz" if test else ""))


def concat(parts: list[ImageSet], label: str) -> ImageSet:
    shapes = {p.images.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise DataError(f"{clip(label)}: files have different image shapes {sorted(shapes)}")
    with_masks = [p.masks is not None for p in parts]
    masks = np.concatenate([p.masks for p in parts]) if all(with_masks) else None
    return ImageSet(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                    masks, parts[0].class_names)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits the few globals a numpy array needs and nothing else."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing a CIFAR batch that references {clip(module, 80)}.{clip(name, 80)}: it could run "
                        "code")


def _load_cifar_batches(folder: Path, name: str) -> DataSource:
    def read(file: Path) -> ImageSet:
        shown = f"{clip(name, 100)}/{file.name}"
        try:
            batch = _NumpyOnlyUnpickler(io.BytesIO(file.read_bytes()), encoding="bytes").load()
            data = np.asarray(batch[b"data"])
            labels = np.asarray(batch.get(b"labels", batch.get(b"fine_labels")), dtype=np.int64)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a foreign pickle is a data error
            raise DataError(f"cannot read CIFAR batch {shown}: {clip(exc)}") from None
        return check_image_set(_cifar_pixels(data, shown), labels, None, None, label=shown)

    train_files = sorted(folder.glob("data_batch_*"))
    train = concat([read(f) for f in train_files], name) if train_files else None
    test = read(folder / "test_batch") if (folder / "test_batch").exists() else None
    if train is None:
        train, test = test, None
    return DataSource(train, test, f"CIFAR python batches {clip(name)}")


def _cifar_pixels(data: np.ndarray, shown: str) -> np.ndarray:
    """[N, 3072] pixel rows as uint8 [N, 32, 32, 3], refusing values a uint8 cast would silently wrap."""
    if data.dtype != np.uint8:
        check_finite_array(data, "pixels", shown)
        if not np.issubdtype(data.dtype, np.number) or (data.size and (data.min() < 0 or data.max() > 255)):
            raise DataError(f"{shown}: pixels must be numbers in 0..255, got {data.dtype}")
    if data.size == 0 or data.size % (3 * 32 * 32):
        raise DataError(f"{shown}: 'data' must be [N, 3072] (3x32x32 pixels per row), got shape {data.shape}")
    return data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _array_kind(folder: Path) -> str | None:
    """"npz" for a folder of .npz files, "cifar" for CIFAR python batches, None otherwise (an image folder)."""
    if any(folder.glob("*.npz")):
        return "npz"
    if (folder / "data_batch_1").exists() or (folder / "test_batch").exists():
        return "cifar"
    return None


def _array_folder(root: Path) -> Path | None:
    """The folder of an extracted archive (``root`` or its one top folder) that holds .npz files or CIFAR python
    batches, as a data folder does (``interprune submit`` packs a folder so); None for an image folder."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    folder = entries[0] if len(entries) == 1 and entries[0].is_dir() else root
    return folder if _array_kind(folder) else None


def _single_top_folder(root: Path) -> Path:
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and any(c.is_dir() for c in entries[0].iterdir()):
        return entries[0]
    return root


def _load_image_folder(root: Path, limits: DataLimits, name: str) -> ImageSet:
    images, labels, classes = load_image_folder(root, limits, name)
    return check_image_set(images, labels, None, classes, label=name)


# --- checks -------------------------------------------------------------------------------------

def check_image_set(images: np.ndarray, labels: np.ndarray, masks: np.ndarray | None,
                    class_names: tuple[str, ...] | None, label: str) -> ImageSet:
    """Validate dtypes and shapes of raw arrays; greyscale [N, H, W] becomes [N, H, W, 1]."""
    label = clip(label)
    if images.dtype != np.uint8:
        check_finite_array(images, "images", label)
        raise DataError(f"{label}: images must be uint8 pixels 0..255, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise DataError(f"{label}: images must be [N, H, W, C] with C in 1/3/4, got shape {images.shape}")
    if images.shape[-1] == 4:
        images = images[..., :3]
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
        raise DataError(f"{label}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise DataError(f"{label}: {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{label}: the data set is empty")
    if labels.min() < 0:
        raise DataError(f"{label}: negative label {int(labels.min())}")
    if masks is not None:
        if masks.shape != images.shape[:3] or not np.issubdtype(masks.dtype, np.integer):
            raise DataError(f"{label}: masks must be integer [N, H, W] = {images.shape[:3]}, got "
                            f"{masks.dtype} {masks.shape}")
    return ImageSet(images, labels.astype(np.int64), masks, class_names)


def check_fits_model(data: ImageSet, input_shape: tuple[int, int, int], num_classes: int, label: str = "data set",
                     resize: bool = False) -> None:
    """Raise ``DataError`` if channels, size (unless resizing) or label range do not fit the model."""
    label = clip(label)
    channels, height, width = input_shape
    if data.images.shape[-1] != channels:
        raise DataError(f"{label} has {data.images.shape[-1]}-channel images but the model expects {channels} "
                        "channels")
    if not resize and tuple(data.images.shape[1:3]) != (height, width):
        h, w = data.images.shape[1:3]
        raise DataError(f"{label} has {h}x{w} images but the model expects {height}x{width}: resize them "
                        f"(--input-size {height}x{width}, data.input_size), or, when the model takes any size (an "
                        f"ONNX graph with symbolic height and width is read as {height}x{width}), give it the data's "
                        f"(--input-shape {channels},{h},{w}, model.input_shape)")
    top = int(data.labels.max())
    if top >= num_classes:
        raise DataError(f"{label} has label {top} but the model has {num_classes} classes (labels must be "
                        f"0..{num_classes - 1})")


def check_label_coverage(splits: Splits, num_classes: int, min_coverage: float = MIN_LABEL_COVERAGE) -> list[str]:
    """Warnings, as values for the report, when the labels cannot show what the model does; ``DataError`` when
    the evaluation split shares no class with the calibration and fine-tune splits.

    A split is reported when its distinct labels are fewer than ``min_coverage`` x min(``num_classes``, its
    size): a 1-class set for a 10-class model measures one class (0% or 100% says nothing of the others).
    """
    seen = set(np.unique(splits.calibration.labels).tolist()) | set(np.unique(splits.finetune.labels).tolist())
    evaluated = set(np.unique(splits.evaluation.labels).tolist())
    if not seen & evaluated:
        raise DataError(f"the evaluation split's classes {_few(evaluated)} share none with the calibration and "
                        f"fine-tune splits' classes {_few(seen)}: the accuracy would measure classes the pruning "
                        "never saw; use a data set whose train and test parts hold the same classes")
    warnings = []
    for split_name, part in (("evaluation", splits.evaluation), ("calibration", splits.calibration)):
        distinct = len(np.unique(part.labels))
        possible = min(num_classes, len(part))
        if distinct < min_coverage * possible:
            warnings.append(f"the {split_name} split has {distinct} distinct label(s) among {len(part)} images for a "
                            f"{num_classes}-class model (fewer than {min_coverage:.0%} of the {possible} it could "
                            f"hold): its accuracy speaks for those classes only")
    for text in warnings:
        log.warning("%s", text)
    return warnings


def _few(labels: set[int], shown: int = 8) -> str:
    ordered = sorted(labels)
    return "{" + ", ".join(map(str, ordered[:shown])) + (", ..." if len(ordered) > shown else "") + "}"


# --- splits and batches -------------------------------------------------------------------------

def make_splits(source: DataSource, calibration: int, evaluation: int | None, finetune: int | None = None,
                seed: int = 0, eval_fraction: float = 0.2) -> Splits:
    """Deterministic, disjoint splits.

    With a separate test set, evaluation = its first ``evaluation`` images (all if None) and calibration and
    fine-tune come from the training pool. With one pool, ``eval_fraction`` of it (or ``evaluation`` images) is
    held out first. Calibration takes the next ``calibration`` images of a seeded permutation; fine-tune the
    rest (at most ``finetune``).
    """
    rng = np.random.default_rng(seed)
    pool = source.train
    order = rng.permutation(len(pool))
    if source.test is not None:
        test = source.test
        eval_set = test if evaluation is None else test.subset(np.arange(min(evaluation, len(test))))
    else:
        n_eval = evaluation if evaluation is not None else max(1, int(round(eval_fraction * len(pool))))
        if n_eval >= len(pool):
            raise DataError(f"data set has {len(pool)} images; cannot hold out {n_eval} for evaluation")
        eval_set = pool.subset(np.sort(order[:n_eval]))
        order = order[n_eval:]
    n_cal = min(calibration, len(order))
    if n_cal == 0:
        raise DataError("no images left for calibration")
    cal_set = pool.subset(order[:n_cal])
    reused = len(order) <= n_cal
    rest = order[:n_cal] if reused else order[n_cal:]            # tiny sets: fine-tune on calibration
    if finetune is not None:
        rest = rest[:finetune]
    return Splits(cal_set, pool.subset(rest), eval_set, finetune_is_calibration=reused)


def split_notes(splits: Splits, calibration: int, evaluation: int | None, finetuning: bool) -> list[str]:
    """What the data set could not give: fewer calibration or evaluation images than asked for, or (when
    ``finetuning``) fine-tuning on the calibration images of a set too small to keep them apart."""
    notes = [f"{name} uses {got} images: the data set has no more to spare ({name}_images is {asked})"
             for name, got, asked in (("calibration", len(splits.calibration), calibration),
                                      ("evaluation", len(splits.evaluation), evaluation))
             if asked is not None and got < asked]
    if finetuning and splits.finetune_is_calibration:
        notes.append("the data set is too small to keep fine-tuning images apart: fine-tuning reuses the "
                     f"{len(splits.calibration)} calibration images")
    return notes


def batches(data: ImageSet, preprocess: Preprocess, batch_size: int, *, shuffle: bool = False, seed: int = 0,
            augment: bool = False, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (float NCHW images, int64 labels); ``augment`` = random horizontal flip and 4-px padded crop."""
    n = len(data) if limit is None else min(limit, len(data))
    order = np.random.default_rng(seed).permutation(len(data))[:n] if shuffle else np.arange(n)
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        x = preprocess(data.images[index])
        if augment:
            x = flip_and_crop(x, gen)
        yield x, torch.from_numpy(data.labels[index])


def flip_and_crop(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image flipped horizontally with probability 1/2 and cropped back to its size at its own random offset
    after zero-padding by 1/8 of its height (4 px at 32x32), as in the usual CIFAR recipe."""
    n, c, h, w = x.shape
    pad = max(1, h // 8)
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]          # [N, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]          # [N, 1, 1, W]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def digits_sample() -> DataSource:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), as uint8 greyscale."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # [N, 8, 8, 1]
    return DataSource(ImageSet(images, digits.target.astype(np.int64), None, tuple(str(i) for i in range(10))),
                      None, "scikit-learn digits (bundled sample data)")
