"""Activation maximization (AM) for every filter of a layer at once.

Erhan, Bengio, Courville, Vincent, "Visualizing Higher-Layer Features of a Deep Network" (2009), with the
regularisers of Yosinski et al., "Understanding Neural Networks Through Deep Visualization" (2015) and Olah et al.,
"Feature Visualization" (Distill 2017): random jitter, periodic Gaussian blur and a small L2 penalty on the image.
Used by the ``functionality`` and ``visual_similarity`` criteria (``../shared/CRITERIA.md`` §2 and §5) and by the
report.

What is computed, for a layer with K output channels (or the ``channels`` asked for):

- a batch of K images ``x`` [K, C, H, W] in the model's *normalised* input space (canvas = the model's input size),
  all started from the same small seeded noise image around the data mean (``0.01 * randn``) and jittered by the
  same shifts, so that differences between the images come from the filters alone (identical filters give
  identical images);
- image k maximises ``a_k(x_k) = mean_{h,w} f(R(x_k))[k, h, w]`` where ``R`` is the layer's *response*: the output of
  the BatchNorm that directly follows the conv when there is one (so a negative BN scale cannot turn maximization
  into minimization), else the conv output; ``f`` is ``activation_fn``, by default a leaky ReLU (slope 0.01): the
  rectified response the next layer sees, whose spatial mean rewards edges and textures anywhere in the image (the
  plain pre-ReLU mean of a zero-sum filter, e.g. an edge detector, hardly depends on the image at all), while the
  small negative slope keeps a gradient for a filter that starts negative everywhere (Adam's step size does not
  depend on the gradient's scale, so 0.01 is enough to escape); pass ``activation_fn=identity`` for pre-ReLU;
- Adam (lr 0.05) on ``-Σ_k a_k + l2 · Σ_k mean(x_k²)``, each step on a copy of the batch rolled by a random shift of
  up to ±``jitter`` px; every ``blur_every`` steps the images are smoothed by a 3x3 Gaussian ([1, 2, 1] / 4 outer
  product, reflect padding); after every step they are clamped so that the de-normalised pixels stay in [0, 1];
- the model runs only up to the response layer: a forward hook there raises ``_StopForward``. Images do not
  interact (eval-mode BatchNorm, per-element Adam), so the joint optimisation equals K separate ones.

Returned: the images de-normalised to [0, 1] [K, C, H, W] and the achieved activation ``a_k`` of each final image
(no jitter) [K]. The model is not modified (its parameters receive no gradients; its train/eval mode is restored).

Cost: one truncated forward + backward (input gradient only) of a batch of K images per step, ≈ 160 GMAC per step
for all 27 prunable layers of ResNet-56 (16/32/64 filters; the stage-3 layers are 3/4 of it). Measured on the
project's 2-core CPU machine: ≈ 6 CPU-seconds per step (one thread), i.e. ≈ 26 minutes at 256 steps — which is why
the criteria default to ``steps=32`` (≈ 3.3 minutes; see their ``steps`` parameter). On shared cores prefer
``torch.set_num_threads(1)``: two intra-op threads competing with other processes ran 3x slower than one.

Example::

    from pruning import zoo
    from pruning.visualize import save_grid, visualize_layer

    model = zoo.load_model("cifar/resnet56", "../shared/data/weights/resnet56-4bfd9763.th")
    entry = zoo.get_entry("cifar/resnet56")
    vis = visualize_layer(model, "layer1.0.conv1", entry.input_shape, entry.mean, entry.std, steps=64)
    vis.images.shape, vis.activation.shape     # [16, 3, 32, 32] in [0, 1], [16]
    save_grid(vis.images, "layer1.0.conv1.png")
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class Visualization:
    """AM images of a layer's filters, in [0, 1] [K, C, H, W], and the response each achieves [K]."""

    images: torch.Tensor
    activation: torch.Tensor


class _StopForward(Exception):
    """Raised by the hook on the response layer: the rest of the network is not needed."""


# --- pure helpers -------------------------------------------------------------------------------

def gaussian_blur3(x: torch.Tensor) -> torch.Tensor:
    """3x3 Gaussian blur ([1, 2, 1] / 4 in each direction), per channel, reflect padding; [N, C, H, W] -> same."""
    k1 = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device) / 4.0
    kernel = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 3, 3)   # [C, 1, 3, 3]
    mode = "reflect" if min(x.shape[-2:]) > 1 else "replicate"
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode=mode), kernel, groups=x.shape[1])


def pixel_bounds(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds in normalised space of pixels in [0, 1]: ((0 - mean) / std, (1 - mean) / std), each [1, C, 1, 1]."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (0.0 - m) / s, (1.0 - m) / s


def denormalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised images [N, C, H, W] -> pixels in [0, 1] (clamped)."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x * s + m).clamp(0.0, 1.0)


def default_objective(response: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU (slope 0.01) of the response: post-ReLU-like, never without a gradient."""
    return F.leaky_relu(response, negative_slope=0.01)


def identity(response: torch.Tensor) -> torch.Tensor:
    """The pre-ReLU objective (``activation_fn=identity``)."""
    return response


def channel_objective(response: torch.Tensor, channels: torch.Tensor,
                      activation_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Mean of ``activation_fn`` (None: ``default_objective``) of channel ``channels[k]``'s response to image k:
    [K, C', H', W'] (or [K, C']) -> [K]."""
    response = (activation_fn or default_objective)(response)
    picked = response[torch.arange(response.shape[0]), channels]   # [K, H', W'] or [K]
    return picked.flatten(1).mean(1) if picked.dim() > 1 else picked


# --- model plumbing -----------------------------------------------------------------------------

def response_layer(model: nn.Module, layer_name: str, input_shape: tuple[int, int, int]) -> str:
    """The module whose output is ``layer_name``'s response: the BatchNorm applied directly to its output if
    there is one (found by tracing one forward pass of a zero image, stopped there), else ``layer_name`` itself."""
    layer = model.get_submodule(layer_name)
    seen: dict[str, torch.Tensor] = {}
    found: list[str] = []
    hooks = [layer.register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))]
    for name, module in model.named_modules():
        if isinstance(module, _NORMS):
            def pre(m, inputs, name=name):
                if "out" in seen and inputs[0] is seen["out"] and not found:
                    found.append(name)
                    raise _StopForward
            hooks.append(module.register_forward_pre_hook(pre))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    except _StopForward:
        pass
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return found[0] if found else layer_name


def _forward_to(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on ``x`` only as far as ``module``; return its output."""
    captured: list[torch.Tensor] = []

    def hook(m, inputs, output):
        captured.append(output)
        raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("the response layer was not reached in the forward pass")
    return captured[0]


# --- activation maximization --------------------------------------------------------------------

def visualize_layer(model: nn.Module, layer_name: str, input_shape: tuple[int, int, int],
                    mean: Sequence[float], std: Sequence[float], *, steps: int = 256, lr: float = 0.05,
                    seed: int = 0, channels: Sequence[int] | None = None,
                    activation_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    jitter: int = 2, blur_every: int = 4, l2: float = 1e-3, init_std: float = 0.01,
                    after_norm: bool = True) -> Visualization:
    """AM images for the output channels of ``layer_name`` (all, or ``channels``), optimised jointly.

    ``after_norm``: read the response at the BatchNorm directly after the layer (default; see module docstring).
    ``activation_fn``: applied to the response before the spatial mean; None = ``default_objective`` (leaky
    ReLU), ``identity`` = pre-ReLU, ``torch.relu`` = post-ReLU. Deterministic for a given ``seed`` (and thread
    count).
    """
    layer = model.get_submodule(layer_name)
    size = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    chans = torch.arange(size) if channels is None else torch.as_tensor(list(channels), dtype=torch.long)
    target_name = response_layer(model, layer_name, input_shape) if after_norm else layer_name
    target = model.get_submodule(target_name)
    lo, hi = pixel_bounds(mean, std)
    gen = torch.Generator().manual_seed(seed)
    k = len(chans)
    start = init_std * torch.randn(1, *input_shape, generator=gen)                 # [1, C, H, W]
    x = start.expand(k, *input_shape).clone().clamp_(lo, hi).requires_grad_(True)  # [K, C, H, W]
    optimiser = torch.optim.Adam([x], lr=lr)
    was_training = model.training
    model.eval()
    try:
        for step in range(steps):
            dy, dx = (torch.randint(-jitter, jitter + 1, (2,), generator=gen).tolist() if jitter else (0, 0))
            shifted = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            objective = channel_objective(_forward_to(model, target, shifted), chans, activation_fn)  # [K]
            loss = -objective.sum() + l2 * x.pow(2).flatten(1).mean(1).sum()
            (grad,) = torch.autograd.grad(loss, [x])    # no gradients reach the model's parameters
            optimiser.zero_grad(set_to_none=True)
            x.grad = grad
            optimiser.step()
            with torch.no_grad():
                if blur_every and (step + 1) % blur_every == 0:
                    x.copy_(gaussian_blur3(x))
                x.copy_(torch.maximum(torch.minimum(x, hi), lo))
        with torch.no_grad():
            activation = channel_objective(_forward_to(model, target, x), chans, activation_fn)
    finally:
        model.train(was_training)
    log.debug("AM %s (%s): %d filters, %d steps, mean activation %.3f", layer_name, target_name, k, steps,
              float(activation.mean()))
    return Visualization(denormalise(x.detach(), mean, std), activation.detach().float())


def measure_response(model: nn.Module, layer_name: str, images: torch.Tensor, mean: Sequence[float],
                     std: Sequence[float], *, channels: Sequence[int] | None = None,
                     activation_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     after_norm: bool = True) -> torch.Tensor:
    """Response of channel ``channels[k]`` (default k) to image k, images [K, C, H, W] in [0, 1] -> [K]
    (same objective as ``visualize_layer``; e.g. ``activation_fn=torch.relu`` for the post-ReLU strength)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = (images.float() - m) / s                                          # [K, C, H, W] normalised
    chans = torch.arange(len(images)) if channels is None else torch.as_tensor(list(channels), dtype=torch.long)
    name = response_layer(model, layer_name, tuple(images.shape[1:])) if after_norm else layer_name
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return channel_objective(_forward_to(model, model.get_submodule(name), x), chans, activation_fn).float()
    finally:
        model.train(was_training)


def input_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[tuple[float, ...],
                                                                                   tuple[float, ...]]:
    """``mean`` / ``std`` fitted to ``channels`` input channels: as given when the lengths match, a single value
    repeated, otherwise (e.g. ImageNet defaults on a greyscale model) their average, with a warning."""
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) == channels and len(std) == channels:
        return mean, std
    if len(mean) != 1 or len(std) != 1:
        log.warning("mean/std have %d/%d values for a %d-channel input; using their average (pass the model's "
                    "own mean/std, e.g. pruning.zoo.get_entry(arch).mean)", len(mean), len(std), channels)
    return (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels


# --- output -------------------------------------------------------------------------------------

def stretch(images: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-image contrast stretch to [0, 1]: [N, C, H, W] -> same (a constant image becomes 0.5)."""
    flat = images.flatten(1)                                     # [N, C*H*W]
    lo, hi = flat.min(1).values, flat.max(1).values
    span = (hi - lo).clamp_min(eps).view(-1, 1, 1, 1)
    out = (images - lo.view(-1, 1, 1, 1)) / span
    return torch.where((hi - lo).view(-1, 1, 1, 1) > eps, out, torch.full_like(images, 0.5))


def save_grid(images: torch.Tensor, path: str | Path, ncols: int | None = None, *, normalize: bool = True,
              pad: int = 1, scale: int = 2) -> Path:
    """Write images [N, C, H, W] in [0, 1] as one PNG grid (``ncols`` default ≈ √N), each image contrast-stretched
    when ``normalize``; C is 1 (greyscale) or 3. Returns the path."""
    import numpy as np
    from PIL import Image

    images = images.detach().float().cpu()
    if normalize:
        images = stretch(images)
    n, c, h, w = images.shape
    ncols = ncols or max(1, math.ceil(math.sqrt(n)))
    nrows = max(1, math.ceil(n / ncols))
    grid = torch.ones(c, nrows * (h + pad) + pad, ncols * (w + pad) + pad)
    for index in range(n):
        r, col = divmod(index, ncols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = images[index]
    array = (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)   # [H', W', C]
    image = Image.fromarray(array[..., 0] if c == 1 else array, mode="L" if c == 1 else "RGB")
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
