"""The accuracy of an exported ONNX model: top-k of its outputs on preprocessed images, in ONNX Runtime."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .benchmark import create_session
from .onnx import NonFiniteError, count_nonfinite


@dataclass(frozen=True)
class OnnxAccuracy:
    """Accuracy of an exported model: fraction of images whose label is among the top-k outputs.

    `top1`/`top5` are in [0, 1]; `by_k` has every k that was requested (k larger than the number of
    classes counts as the number of classes).
    """

    top1: float
    top5: float
    num_images: int
    by_k: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict."""
        return {"top1": self.top1, "top5": self.top5, "num_images": self.num_images,
                "by_k": {str(k): v for k, v in self.by_k.items()}}


def evaluate_onnx(
    onnx_path: str | Path,
    images: np.ndarray | Iterable[tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray | None = None,
    *,
    batch_size: int = 256,
    provider: str = "cpu",
    topk: Sequence[int] = (1, 5),
) -> OnnxAccuracy:
    """Top-k accuracy of the exported model itself on preprocessed images.

    `images` is either an (N, C, H, W) float32 array (already normalised) with `labels` (N,) ints, or an
    iterable of (images, labels) numpy batches with `labels=None`, so a large set need not be one array.
    """
    session = create_session(onnx_path, provider)
    input_name = session.get_inputs()[0].name
    ks = sorted({1, 5, *(int(k) for k in topk)})
    if ks[0] < 1:
        raise ValueError(f"top-k values must be >= 1, got {list(topk)}")
    hits = {k: 0 for k in ks}
    total = 0
    for batch, batch_labels in _batches(images, labels, batch_size):
        logits = session.run(None, {input_name: batch})[0]
        logits = np.asarray(logits).reshape(batch.shape[0], -1)
        check_labels(batch_labels, logits.shape[1])
        for k, correct in topk_correct(logits, batch_labels, ks).items():
            hits[k] += correct
        total += batch.shape[0]
    if total == 0:
        raise ValueError("evaluate_onnx got no images")
    by_k = {k: hits[k] / total for k in ks}
    return OnnxAccuracy(top1=by_k[1], top5=by_k[5], num_images=total, by_k=by_k)


def _batches(images, labels, batch_size: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Yield (float32 images, int64 labels) batches from an array pair or an iterable of pairs."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(images, np.ndarray):
        if labels is None:
            raise ValueError("labels are required when images is an array")
        pairs: Iterable = [(images, labels)]
    else:
        if labels is not None:
            raise ValueError("pass labels inside the (images, labels) batches when images is an iterable")
        pairs = images
    for batch_images, batch_labels in pairs:
        batch_images = np.ascontiguousarray(batch_images, dtype=np.float32)
        batch_labels = np.asarray(batch_labels).astype(np.int64).reshape(-1)
        if batch_images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {batch_images.shape}")
        if batch_labels.shape[0] != batch_images.shape[0]:
            raise ValueError(f"{batch_images.shape[0]} images but {batch_labels.shape[0]} labels")
        for start in range(0, batch_images.shape[0], batch_size):
            yield batch_images[start : start + batch_size], batch_labels[start : start + batch_size]


def check_labels(labels: np.ndarray, num_classes: int) -> None:
    """ValueError naming the range when a label is not a class index of a model with ``num_classes`` outputs."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}) for a model with {num_classes} outputs, "
                         f"got range [{labels.min()}, {labels.max()}]")


def topk_correct(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int]) -> dict[int, int]:
    """Number of rows whose label is among the k largest logits, for each k.

    Ties are broken like `argmax`: among equal logits the lower class index ranks first, so a constant
    output does not count as correct for every label. NaN/inf logits raise `NonFiniteError`: a NaN compares
    False with everything, so it would rank first and count as correct.
    """
    if count_nonfinite(logits):
        bad_rows = int((~np.isfinite(logits)).reshape(logits.shape[0], -1).any(axis=1).sum())
        raise NonFiniteError(f"the model gives non-finite outputs (NaN or infinite) for {bad_rows} of "
                             f"{logits.shape[0]} images; accuracy cannot be measured")
    label_logit = logits[np.arange(labels.shape[0]), labels][:, None]
    lower_index = np.arange(logits.shape[1])[None, :] < labels[:, None]
    rank = ((logits > label_logit) | ((logits == label_logit) & lower_index)).sum(axis=1)  # 0 = top-1
    return {k: int((rank < k).sum()) for k in ks}
