"""Kernel reconstruction: re-fit every layer that lost input channels so it reproduces the original model.

For each consumer layer C (a conv or linear whose input channels were pruned), in forward order, with X the
pruned model's input to C (earlier layers already re-fitted) unfolded at a few sampled output positions, and Y
the original model's pre-BatchNorm output of C at the same positions (``../shared/CRITERIA.md``, "After scoring"):

    W' = argmin_W ||Y - X W^T||^2 + lam ||W - W_S||^2        (ridge, prior centred on the kept old weights W_S)
       = (X^T X + lam I)^-1 (X^T Y + lam W_S^T)              solved in float64

with lam = ``ridge`` x trace(X^T X) / d. When C is the last conv of a residual block, the target also absorbs the
shortcut mismatch, so that BN(y) + shortcut(x_pruned) matches BN(y_orig) + shortcut(x_orig):

    Y = Y_orig + (s_orig - s_pruned) / a,     a = gamma / sqrt(running_var + eps) of the BatchNorm after C

The original model runs once; the pruned model runs once per consumer but stops right after that consumer's
input is seen, so the total cost is about half a pass per consumer.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResidualTail:
    """The last conv of a residual block, the BatchNorm after it and how the block's shortcut is computed."""

    block: str
    conv: str
    norm: str
    shortcut: Callable[[nn.Module, torch.Tensor], torch.Tensor]   # (block module, block input) -> shortcut


@dataclass(frozen=True)
class LayerFit:
    name: str
    inputs: int                  # input features per sample (C_in x k x k)
    samples: int
    error_before: float          # ||Y - X W_S^T||^2 / ||Y||^2 on the calibration samples
    error_after: float
    residual_compensated: bool

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def residual_tails(model: nn.Module) -> dict[str, ResidualTail]:
    """consumer conv name -> its residual tail, for the block types interprune knows."""
    from torchvision.models.resnet import BasicBlock as TVBasic
    from torchvision.models.resnet import Bottleneck as TVBottleneck

    from pruning.models.cifar_resnet import BasicBlock as CifarBasic

    tails = {}
    for name, module in model.named_modules():
        if isinstance(module, CifarBasic):
            tails[f"{name}.conv2"] = ResidualTail(name, f"{name}.conv2", f"{name}.bn2", lambda b, x: b.shortcut(x))
        elif isinstance(module, (TVBasic, TVBottleneck)):
            last = "3" if isinstance(module, TVBottleneck) else "2"
            tails[f"{name}.conv{last}"] = ResidualTail(
                name, f"{name}.conv{last}", f"{name}.bn{last}",
                lambda b, x: b.downsample(x) if b.downsample is not None else x)
    return tails


class _Stop(Exception):
    pass


def _positions(name: str, batch_index: int, count: int, spatial: int, per_image: int, seed: int) -> torch.Tensor:
    """Deterministic sampled output positions [count, per_image] for one batch of one layer."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()) + batch_index)
    return torch.randint(0, spatial, (count, min(per_image, spatial)), generator=gen)


def _unfold_at(layer: nn.Module, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Layer input at sampled output positions: conv -> [N*P, C_in*k*k] patches, linear -> [N, in]."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)   # [N, C_in*k*k, L]
    index = pos.unsqueeze(1).expand(-1, cols.shape[1], -1)                               # [N, D, P]
    return cols.gather(2, index).permute(0, 2, 1).reshape(-1, cols.shape[1])              # [N*P, D]


def _output_at(layer: nn.Module, y: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Layer output (or any map of the same size) at sampled positions: [N*P, C_out] (linear: [N, out])."""
    if y.dim() == 2:
        return y
    flat = y.flatten(2)                                                                   # [N, C, L]
    index = pos.unsqueeze(1).expand(-1, flat.shape[1], -1)
    return flat.gather(2, index).permute(0, 2, 1).reshape(-1, flat.shape[1])


def _weight_matrix(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().flatten(1).double()                                      # [C_out, D]


@torch.no_grad()
def reconstruct(original: nn.Module, pruned: nn.Module, consumers: list[str],
                out_channels: dict[str, list[int]], batches: Callable[[], Iterable[torch.Tensor]], *,
                positions_per_image: int = 8, ridge: float = 1e-3, seed: int = 0,
                residual: bool = True) -> list[LayerFit]:
    """Re-fit ``consumers`` of ``pruned`` in place to match ``original`` on calibration ``batches``.

    ``out_channels[name]`` gives, for a consumer whose own output channels were also pruned, the original indices
    it kept (others keep all). ``batches()`` yields normalised image tensors, the same order on every call.
    """
    original.eval()
    pruned.eval()
    order = _forward_order(pruned, consumers)
    tails = residual_tails(pruned) if residual else {}
    targets = _original_targets(original, order, tails, batches, positions_per_image, seed)
    fits = []
    for name in order:
        layer = pruned.get_submodule(name)
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            log.info("reconstruction skips grouped conv %s", name)
            continue
        keep_out = out_channels.get(name)
        fits.append(_refit(pruned, name, layer, targets[name], keep_out, tails.get(name), batches,
                           positions_per_image, ridge, seed))
    return fits


def _forward_order(model: nn.Module, names: list[str]) -> list[str]:
    wanted = set(names)
    return [n for n, _ in model.named_modules() if n in wanted]


def _original_targets(original: nn.Module, order: list[str], tails: dict[str, ResidualTail],
                      batches: Callable[[], Iterable[torch.Tensor]], per_image: int, seed: int
                      ) -> dict[str, dict[str, list[torch.Tensor]]]:
    """One pass of the original model: per consumer, its output (and shortcut) at the sampled positions."""
    store: dict[str, dict[str, list[torch.Tensor]]] = {n: {"y": [], "s": []} for n in order}
    block_inputs: dict[str, torch.Tensor] = {}
    state = {"batch": 0}
    handles = []
    for name in order:
        layer = original.get_submodule(name)
        tail = tails.get(name)

        def on_output(module, inputs, output, name=name, tail=tail):
            spatial = output.shape[-1] * output.shape[-2] if output.dim() == 4 else 1
            pos = _positions(name, state["batch"], output.shape[0], spatial, per_image, seed)
            store[name]["y"].append(_output_at(module, output, pos).float())
            if tail is not None:
                block = original.get_submodule(tail.block)
                shortcut = tail.shortcut(block, block_inputs[tail.block])
                store[name]["s"].append(_output_at(module, shortcut, pos).float())
        handles.append(layer.register_forward_hook(on_output))
        if tail is not None:
            block = original.get_submodule(tail.block)
            handles.append(block.register_forward_pre_hook(
                lambda m, inputs, block_name=tail.block: block_inputs.__setitem__(block_name, inputs[0])))
    try:
        for index, images in enumerate(batches()):
            state["batch"] = index
            original(images)
    finally:
        for h in handles:
            h.remove()
    return store


def _refit(pruned: nn.Module, name: str, layer: nn.Module, target: dict[str, list[torch.Tensor]],
           keep_out: list[int] | None, tail: ResidualTail | None, batches: Callable[[], Iterable[torch.Tensor]],
           per_image: int, ridge: float, seed: int) -> LayerFit:
    has_bias = layer.bias is not None
    w_prior = _weight_matrix(layer)                                          # [C_out', D]
    if has_bias:
        w_prior = torch.cat([w_prior, layer.bias.detach().double().unsqueeze(1)], dim=1)
    d = w_prior.shape[1]
    xtx = torch.zeros(d, d, dtype=torch.float64)
    xty = torch.zeros(d, w_prior.shape[0], dtype=torch.float64)
    yty = 0.0
    samples = 0
    captured: dict[str, torch.Tensor] = {}

    def on_input(module, inputs):
        captured["x"] = inputs[0]
        raise _Stop

    handles = [layer.register_forward_pre_hook(on_input)]
    if tail is not None:
        block = pruned.get_submodule(tail.block)
        handles.append(block.register_forward_pre_hook(lambda m, inputs: captured.__setitem__("block_in", inputs[0])))
        norm = pruned.get_submodule(tail.norm)
        scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).double()   # a, [C_out']
    try:
        for index, images in enumerate(batches()):
            try:
                pruned(images)
            except _Stop:
                pass
            x_full = captured.pop("x")
            y = target["y"][index].double()
            if keep_out is not None:
                y = y[:, keep_out]
            spatial = None
            if isinstance(layer, nn.Conv2d):
                h_out = (x_full.shape[-2] + 2 * layer.padding[0] - layer.dilation[0] * (layer.kernel_size[0] - 1) - 1) \
                    // layer.stride[0] + 1
                w_out = (x_full.shape[-1] + 2 * layer.padding[1] - layer.dilation[1] * (layer.kernel_size[1] - 1) - 1) \
                    // layer.stride[1] + 1
                spatial = h_out * w_out
            pos = _positions(name, index, x_full.shape[0], spatial or 1, per_image, seed)
            x = _unfold_at(layer, x_full, pos).double()                       # [S, D(-1)]
            if tail is not None:
                s_orig = target["s"][index].double()
                if keep_out is not None:
                    s_orig = s_orig[:, keep_out]
                block = pruned.get_submodule(tail.block)
                s_pruned = _output_at(layer, tail.shortcut(block, captured.pop("block_in")), pos).double()
                y = y + (s_orig - s_pruned) / scale
            if has_bias:
                x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
            xtx += x.T @ x
            xty += x.T @ y
            yty += float((y * y).sum())
            samples += x.shape[0]
    finally:
        for h in handles:
            h.remove()
    lam = ridge * float(torch.trace(xtx)) / d
    w_new = torch.linalg.solve(xtx + lam * torch.eye(d, dtype=xtx.dtype), xty + lam * w_prior.T).T   # [C_out', D]
    before = _residual_energy(xtx, xty, yty, w_prior) / max(yty, 1e-12)
    after = _residual_energy(xtx, xty, yty, w_new) / max(yty, 1e-12)
    if after > before:   # never make a layer worse on its own calibration data
        w_new, after = w_prior, before
    _assign(layer, w_new, has_bias)
    return LayerFit(name, d, samples, before, after, tail is not None)


def _residual_energy(xtx: torch.Tensor, xty: torch.Tensor, yty: float, w: torch.Tensor) -> float:
    """||Y - X W^T||^2 from the accumulated Gram matrices."""
    return float(yty - 2 * (xty * w.T).sum() + (w @ xtx * w).sum())


def _assign(layer: nn.Module, w: torch.Tensor, has_bias: bool) -> None:
    if has_bias:
        layer.bias.copy_(w[:, -1].to(layer.bias.dtype))
        w = w[:, :-1]
    layer.weight.copy_(w.reshape(layer.weight.shape).to(layer.weight.dtype))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running mean/var as a plain average over ``batches``; returns the count."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None          # cumulative moving average
    was_training = model.training
    model.train()
    try:
        for images in batches:
            model(images)
    finally:
        model.train(was_training)
        for m, momentum in saved.items():
            m.momentum = momentum
    return len(norms)


def image_batches(batches: Iterator) -> Iterator[torch.Tensor]:
    for item in batches:
        yield item[0] if isinstance(item, (tuple, list)) else getattr(item, "images", item)
