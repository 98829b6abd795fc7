"""Cost and quality of a model: MACs, parameters, size in bytes, top-1/top-5 accuracy.

MACs are multiply-accumulates of one forward pass at batch 1 (ResNet-56 on 32x32: 1.2655e8), counted with
Torch-Pruning's op counter's per-module rules (``pruning.cost_model`` models the same rules as a function of width).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn
from torch_pruning.utils.op_counter import MODULES_MAPPING

from pruning.errors import ModelError, NonFiniteLogits


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int
    size_bytes: int   # float32 state_dict payload

    def to_dict(self) -> dict:
        return {"macs": self.macs, "params": self.params, "size_bytes": self.size_bytes}


@dataclass(frozen=True)
class Accuracy:
    top1: float
    top5: float
    num_images: int

    def to_dict(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "num_images": self.num_images}


def count_cost(model: nn.Module, input_shape: tuple[int, int, int]) -> Cost:
    """MACs and parameters at batch 1 for an input of ``input_shape`` (C, H, W).

    The figures of Torch-Pruning's ``count_ops_and_params`` (its per-module hooks, summed the same way), without
    the deep copy of the model it makes: a VGG's classifier alone is 400 MB.
    """
    counted = _counted_modules(model)
    total = [0.0]

    def on_output(module, inputs, output):
        total[0] += counter_flops(module, inputs, output)
    handles = [m.register_forward_hook(on_output) for m in counted]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values() if t.is_floating_point())
    return Cost(int(total[0]), int(params), int(size))


def _counted_modules(model: nn.Module) -> list[nn.Module]:
    """Modules the op counter charges: those of a counted type, not looking inside them (as it sums)."""
    found, stack = [], [model]
    while stack:
        module = stack.pop()
        if type(module) in MODULES_MAPPING:
            found.append(module)
        else:
            stack.extend(module.children())
    return found


def counter_flops(module: nn.Module, inputs, output) -> float:
    """What Torch-Pruning's op counter charges for one call of ``module`` (its own hook, on a scratch counter)."""
    hook = MODULES_MAPPING.get(type(module))
    if hook is None:
        return 0.0
    saved = module.__dict__.get("__flops__")
    module.__flops__ = 0
    try:
        hook(module, inputs, output)
        return float(module.__flops__)
    finally:
        if saved is None:
            del module.__flops__
        else:
            module.__flops__ = saved


def _check_finite_logits(logits: torch.Tensor, batch_index: int, images_before: int) -> None:
    """Raise ``NonFiniteLogits`` when logits hold NaN/inf: argmax of a NaN row would count as a prediction."""
    bad_rows = int((~torch.isfinite(logits)).flatten(1).any(dim=1).sum()) if logits.is_floating_point() else 0
    if bad_rows:
        raise NonFiniteLogits(
            f"the model gives non-finite logits (NaN or infinite) for {bad_rows} of {logits.shape[0]} images in "
            f"evaluation batch {batch_index} (images {images_before}..{images_before + logits.shape[0] - 1}); "
            "accuracy cannot be measured. Check the weights for NaN/inf values and that the normalisation std "
            "is > 0")


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Accuracy:
    """Top-1 and top-5 accuracy (fractions in [0, 1]) over all batches, in eval mode.

    ``forward``: computes the logits in place of ``model`` (the same model compiled for inference, e.g. in ONNX
    Runtime). Raises ``ModelError`` when the model gives a NaN or infinite logit: such an image is neither right nor
    wrong.
    """
    was_training = model.training
    model.eval()
    correct1 = correct5 = total = 0
    try:
        for index, (images, labels) in enumerate(batches):
            logits = forward(images) if forward is not None else model(images)
            _check_finite_logits(logits, index, total)
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices                      # [N, k]
            hits = top.eq(labels.view(-1, 1))
            correct1 += int(hits[:, 0].sum())
            correct5 += int(hits.any(dim=1).sum())
            total += len(labels)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluation set is empty")
    return Accuracy(correct1 / total, correct5 / total, total)
