"""What skipping a shape-preserving block costs the network once the layers after it are re-fitted.

Allocation "latency" may remove a residual block instead of narrowing its inner channels (``pruning.allocate``'s
``whole``). Its price on the loss side is measured like a channel removal's (``pruning.sensitivity``): the rise of
the logits' squared error against the unpruned model on the loss images, after a re-fit. A narrowed group's re-fit
is its consumer's; a skipped block changes the residual stream itself, which one layer cannot put back, so the
``refit_layers`` conv / linear layers after the block are re-fitted in order (``pruning.reconstruct``, as the
reconstruct stage will) on the fit images. Measured once on three ResNet-56 stage-1 blocks (CIFAR-10, 512 fit
images): skipping one without a re-fit cost 6-12x the loss of narrowing it to half, with the next two layers
re-fitted 1.6-2.9x, with every later layer re-fitted at most as much.

    loss = bypass_loss(model, "layer1.3", fit_batches, loss_images, reference)
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from pruning.reconstruct import reconstruct
from pruning.surgery import layers_after, remove_blocks

REFIT_LAYERS = 2        # layers re-fitted after a skipped block: its successor block's two convs in a ResNet
FIT_IMAGES = 128        # of the fit images, for each skipped block's re-fit (a re-fit runs both models over them)


@torch.no_grad()
def bypass_loss(model: nn.Module, block: str, fit_batches: list[torch.Tensor], loss_images: torch.Tensor,
                reference: torch.Tensor, *, refit: bool = True, refit_layers: int = REFIT_LAYERS,
                positions_per_image: int = 8, ridge: float = 1e-3, seed: int = 0,
                max_memory_mb: float = 1024) -> float:
    """Mean over ``loss_images`` of ||f'(x) - reference||^2, f' = ``model`` without ``block`` (its output = its
    input) and, with ``refit``, its next ``refit_layers`` layers re-fitted on the first ``FIT_IMAGES`` of
    ``fit_batches``. ``model`` is not modified; the re-fit keeps a layer's weights when they do better on held-out
    images (``reconstruct``)."""
    skipped = copy.deepcopy(model).eval()
    remove_blocks(skipped, [block])
    following = layers_after(skipped, block, refit_layers) if refit else []
    if following:
        images = torch.cat(fit_batches)[:FIT_IMAGES]
        reconstruct(model, skipped, following, {}, lambda: iter(images.split(len(fit_batches[0]))),
                    positions_per_image=positions_per_image, ridge=ridge, seed=seed, max_memory_mb=max_memory_mb)
    return float(((skipped(loss_images) - reference) ** 2).sum(1).mean())
