"""Kernel reconstruction: re-fit every layer that lost input channels so it reproduces the original model.

For each consumer layer C (a conv or linear whose input channels were pruned), in forward order, with X the
pruned model's input to C (earlier layers already re-fitted) unfolded at a few sampled output positions, and Y
the original model's pre-BatchNorm output of C at the same positions (``../shared/CRITERIA.md``, "After scoring"):

    W' = argmin_W ||Y - X W^T||^2 + lam ||W - W_S||^2        (ridge, prior centred on the kept old weights W_S)
       = (X^T X + lam I)^-1 (X^T Y + lam W_S^T)              solved in float64

with lam = ``ridge`` x trace(X^T X) / d. When C is the last conv of a residual block, the target also absorbs the
shortcut mismatch, so that BN(y) + shortcut(x_pruned) matches BN(y_orig) + shortcut(x_orig):

    Y = Y_orig + (s_orig - s_pruned) / a,     a = gamma / sqrt(running_var + eps) of the BatchNorm after C

The original model runs once. The pruned model's input to a consumer is computed from the cached input of the
residual block around it (carried block to block), or by a forward pass that stops at the consumer.
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


def _stop_at_input(store: dict[str, torch.Tensor]):
    """A forward pre-hook that records the module's input in ``store["x"]`` and stops the forward pass."""
    def on_input(module, inputs):
        store["x"] = inputs[0]
        raise _Stop
    return on_input


def _positions(name: str, batch_index: int, count: int, spatial: int, per_image: int, seed: int) -> torch.Tensor:
    """Deterministic sampled output positions [count, per_image] for one batch of one layer."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()) + batch_index)
    return torch.randint(0, spatial, (count, min(per_image, spatial)), generator=gen)


def _unfold_at(layer: nn.Module, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Layer input at sampled output positions: conv -> [N*P, C_in*kh*kw] patches, linear -> [N, in].

    Only the sampled windows are gathered (no full im2col); the column order (C_in, kh, kw) matches
    ``weight.flatten(1)``.
    """
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    padded = F.pad(x, (pw, pw, ph, ph))                                                  # [N, C, H+2ph, W+2pw]
    w_out = (x.shape[-1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rows = (pos // w_out) * sh                                                            # [N, P] window top
    cols = (pos % w_out) * sw
    rows = rows[:, :, None] + torch.arange(kh) * dh                                       # [N, P, kh]
    cols = cols[:, :, None] + torch.arange(kw) * dw                                       # [N, P, kw]
    batch = torch.arange(x.shape[0])[:, None, None, None]                                 # [N, 1, 1, 1]
    patches = padded.permute(0, 2, 3, 1)[batch, rows[..., None], cols[:, :, None, :]]     # [N, P, kh, kw, C]
    return patches.permute(0, 1, 4, 2, 3).reshape(-1, x.shape[1] * kh * kw)              # [N*P, C*kh*kw]


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
                residual: bool = True, cache_limit_bytes: int = 1 << 30) -> list[LayerFit]:
    """Re-fit ``consumers`` of ``pruned`` in place to match ``original`` on calibration ``batches``.

    ``out_channels[name]`` gives, for a consumer whose own output channels were also pruned, the original indices
    it kept (others keep all). ``batches()`` yields normalised image tensors, the same order on every call.
    Inputs of residual blocks are cached (up to ``cache_limit_bytes``) and carried from block to block when one
    feeds the next directly, so a consumer's input costs one block's forward instead of a prefix of the network.
    """
    original.eval()
    pruned.eval()
    order = _forward_order(pruned, consumers)
    tails = residual_tails(pruned) if residual else {}
    targets = _original_targets(original, order, tails, batches, positions_per_image, seed)
    inputs = _BlockInputs(pruned, batches, cache_limit_bytes)
    fits = []
    for name in order:
        layer = pruned.get_submodule(name)
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            log.info("reconstruction skips grouped conv %s", name)
            continue
        fits.append(_refit(pruned, name, layer, targets[name], out_channels.get(name), tails.get(name), inputs,
                           positions_per_image, ridge, seed))
    return fits


class _BlockInputs:
    """Yields, per calibration batch, (consumer input, enclosing block input) for the pruned model as it is now.

    Consumers inside a known residual block are reached from that block's cached input; the cache advances
    through blocks that feed each other directly. Anything else runs the model from the start, stopping at the
    consumer. Correct as long as consumers are visited in forward order (earlier blocks are final by then).
    """

    def __init__(self, model: nn.Module, batches: Callable[[], Iterable[torch.Tensor]], limit: int) -> None:
        self.model, self.batches, self.limit = model, batches, limit
        self.blocks = _block_chain(model, batches)          # block names in forward order -> fed by previous?
        self.names = list(self.blocks)
        self.cached: tuple[str, list[torch.Tensor]] | None = None

    def block_of(self, name: str) -> str | None:
        owners = [b for b in self.names if name.startswith(b + ".")]
        return max(owners, key=len) if owners else None

    def __call__(self, name: str) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        layer = self.model.get_submodule(name)
        block = self.block_of(name)
        block_inputs = self._inputs_of(block) if block is not None else None
        if block_inputs is None:
            yield from ((x, self._last_block_in) for x in self._prefix(layer, name, block))
            return
        module = self.model.get_submodule(block)
        for x_block in block_inputs:
            yield _run_until(module, layer, x_block), x_block

    def _inputs_of(self, block: str) -> list[torch.Tensor] | None:
        if self.cached is not None and self.cached[0] == block:
            return self.cached[1]
        if self.cached is not None:
            start, values = self.cached
            i, j = self.names.index(start), self.names.index(block)
            if i < j and all(self.blocks[self.names[k]] for k in range(i + 1, j + 1)):
                for k in range(i, j):      # carry forward: blocks i..j-1 are final (forward order)
                    module = self.model.get_submodule(self.names[k])
                    values = [module(x) for x in values]
                self.cached = (block, values)
                return values
        values = list(self._prefix(self.model.get_submodule(block), block, None, pre=True))
        if sum(v.numel() * v.element_size() for v in values) > self.limit:
            self.cached = None
            return None
        self.cached = (block, values)
        return values

    _last_block_in = None

    def _prefix(self, stop_at: nn.Module, name: str, block: str | None, pre: bool = False):
        """Run the whole model on each batch, stopping at ``stop_at``'s input."""
        captured: dict[str, torch.Tensor] = {}
        handles = [stop_at.register_forward_pre_hook(_stop_at_input(captured))]
        if block is not None and not pre:
            handles.append(self.model.get_submodule(block).register_forward_pre_hook(
                lambda m, inputs: captured.__setitem__("block_in", inputs[0])))
        try:
            for images in self.batches():
                try:
                    self.model(images)
                except _Stop:
                    pass
                self._last_block_in = captured.pop("block_in", None)
                yield captured.pop("x")
        finally:
            for h in handles:
                h.remove()


def _run_until(block: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    captured: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_pre_hook(_stop_at_input(captured))
    try:
        block(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["x"]


def _block_chain(model: nn.Module, batches: Callable[[], Iterable[torch.Tensor]]) -> dict[str, bool]:
    """Known residual blocks in forward order -> whether the previous block's output is exactly their input."""
    blocks = {tail.block for tail in residual_tails(model).values()}
    seen: list[tuple[str, int, int]] = []      # (name, id(input), id(output))
    handles = []
    for name, module in model.named_modules():
        if name in blocks:
            handles.append(module.register_forward_hook(
                lambda m, inputs, output, name=name: seen.append((name, id(inputs[0]), id(output)))))
    probe = next(iter(batches()))
    try:
        model(probe[:1])
    finally:
        for h in handles:
            h.remove()
    chain = {}
    for index, (name, in_id, _) in enumerate(seen):
        chain[name] = index > 0 and seen[index - 1][2] == in_id
    return chain


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
           keep_out: list[int] | None, tail: ResidualTail | None, inputs: _BlockInputs,
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
    if tail is not None:
        norm = pruned.get_submodule(tail.norm)
        scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).double()   # a, [C_out']
        block = pruned.get_submodule(tail.block)
    for index, (x_full, block_in) in enumerate(inputs(name)):
        y = target["y"][index].double()
        if keep_out is not None:
            y = y[:, keep_out]
        pos = _positions(name, index, x_full.shape[0], _output_spatial(layer, x_full), per_image, seed)
        x = _unfold_at(layer, x_full, pos).double()                           # [S, D(-1)]
        if tail is not None:
            s_orig = target["s"][index].double()
            if keep_out is not None:
                s_orig = s_orig[:, keep_out]
            s_pruned = _output_at(layer, tail.shortcut(block, block_in), pos).double()
            y = y + (s_orig - s_pruned) / scale
        if has_bias:
            x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
        xtx += x.T @ x
        xty += x.T @ y
        yty += float((y * y).sum())
        samples += x.shape[0]
    lam = ridge * float(torch.trace(xtx)) / d
    w_new = torch.linalg.solve(xtx + lam * torch.eye(d, dtype=xtx.dtype), xty + lam * w_prior.T).T   # [C_out', D]
    before = _residual_energy(xtx, xty, yty, w_prior) / max(yty, 1e-12)
    after = _residual_energy(xtx, xty, yty, w_new) / max(yty, 1e-12)
    if after > before:   # never make a layer worse on its own calibration data
        w_new, after = w_prior, before
    _assign(layer, w_new, has_bias)
    return LayerFit(name, d, samples, before, after, tail is not None)


def _output_spatial(layer: nn.Module, x: torch.Tensor) -> int:
    """H_out * W_out of a conv for input ``x`` (1 for a linear layer)."""
    if not isinstance(layer, nn.Conv2d):
        return 1
    size = []
    for dim in (0, 1):
        extent = x.shape[-2 + dim] + 2 * layer.padding[dim] - layer.dilation[dim] * (layer.kernel_size[dim] - 1) - 1
        size.append(extent // layer.stride[dim] + 1)
    return size[0] * size[1]


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
