"""ImageFolder layout (``class_name/image.png``) read within ``DataLimits``.

Nothing is decoded before it is checked: the files are counted first (``max_images``), then each image's
header gives its size (PIL's ``Image.open`` reads only the header) and the image is refused above
``max_image_pixels``, or when the pixels decoded so far would pass ``max_array_bytes``; only then is it
decoded. A header beyond PIL's own bomb threshold is refused with the same message.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pruning.errors import DataError, clip
from pruning.limits import DataLimits, size_text

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff"}
_GREY_MODES = ("L", "I", "I;16", "1", "F")


def list_images(root: Path, limits: DataLimits, name: str) -> tuple[list[str], list[tuple[int, Path]]]:
    """Class names and (label, file) pairs, refusing more than ``limits.max_images`` files."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{clip(name)} has no class folders (ImageFolder layout: class_name/image.png)")
    files: list[tuple[int, Path]] = []
    for label, class_name in enumerate(classes):
        for file in sorted((root / class_name).rglob("*")):
            if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                files.append((label, file))
                if len(files) > limits.max_images:
                    raise DataError(f"refusing {clip(name)}: it holds more than {limits.max_images} images, the "
                                    f"limit max_images={limits.max_images}")
    if not files:
        raise DataError(f"{clip(name)} holds no readable images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return classes, files


def read_image(file: Path, shown: str, limits: DataLimits, budget: list[int]) -> np.ndarray:
    """uint8 [H, W, C] pixels of one image; ``budget[0]`` = decoded bytes still allowed, decreased here."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:                     # reads the header only
            width, height = img.size
            if width * height > limits.max_image_pixels:
                raise _too_large(shown, width, height, limits)
            grey = img.mode in _GREY_MODES
            decoded = width * height * (1 if grey else 3)
            if decoded > budget[0]:
                raise DataError(f"refusing {shown}: the images decoded so far and this one would take more than "
                                f"the limit max_array_bytes={limits.max_array_bytes} "
                                f"({size_text(limits.max_array_bytes)})")
            budget[0] -= decoded
            if img.mode == "F":
                _check_finite_pixels(np.asarray(img), shown)
            array = np.asarray(img.convert("L" if grey else "RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as exc:     # PIL's own check, at twice its MAX_IMAGE_PIXELS
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise DataError(f"refusing image {shown}: its header says {pixels.group(1) if pixels else 'too many'} "
                        f"pixels, above the limit max_image_pixels={limits.max_image_pixels}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image {shown}: {clip(exc)}") from None
    return array[..., None] if array.ndim == 2 else array


def _too_large(shown: str, width: int, height: int, limits: DataLimits) -> DataError:
    return DataError(f"refusing image {shown}: its header says {width}x{height} = {width * height} pixels, above "
                     f"the limit max_image_pixels={limits.max_image_pixels}")


def _check_finite_pixels(pixels: np.ndarray, shown: str) -> None:
    bad = int(pixels.size - np.count_nonzero(np.isfinite(pixels)))
    if bad:
        raise DataError(f"image {shown} holds {bad} non-finite pixel value(s) (NaN or infinite) of {pixels.size}")


def load_image_folder(root: Path, limits: DataLimits, name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(uint8 images [N, H, W, C], int64 labels [N], class names) of an ImageFolder tree, within ``limits``."""
    classes, files = list_images(root, limits, name)
    images: np.ndarray | None = None
    budget = [limits.max_array_bytes]
    for index, (_, file) in enumerate(files):
        shown = f"{clip(name, 100)}/{clip(file.relative_to(root), 100)}"
        array = read_image(file, shown, limits, budget)
        if images is None:      # filled in place (no second copy by np.stack); pages are committed as written
            images = np.empty((len(files), *array.shape), np.uint8)
        elif array.shape != images.shape[1:]:
            raise DataError(f"images differ in size: {shown} is {array.shape}, earlier ones {images.shape[1:]}; "
                            "resize them to one size first")
        images[index] = array
    return images, np.asarray([label for label, _ in files], dtype=np.int64), tuple(classes)
