"""Calibration data for the re-fit: the original model's outputs at sampled positions, the pruned model's inputs.

- ``original_targets``: one pass of the original model; per consumer, its output (and, for the last conv of a
  residual block, the block's shortcut) at a few sampled output positions per image, and the model output.
- ``BlockInputs``: the pruned model's input to a consumer, per batch, from the cached input of the residual block
  around it (carried block to block) or by a forward pass that stops at the consumer.
- ``rows`` / ``patches``: a layer's output channels / input patches at the sampled positions, as [rows, features]
  (conv: channel axis 1; linear: the last axis, any axes between batch and features are positions).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ResidualTail:
    """The last conv of a residual block, the BatchNorm after it and how the block's shortcut is computed."""

    block: str
    conv: str
    norm: str
    shortcut: Callable[[nn.Module, torch.Tensor], torch.Tensor]   # (block module, block input) -> shortcut


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


def sample_positions(name: str, batch_index: int, count: int, spatial: int, per_image: int, seed: int) -> torch.Tensor:
    """Deterministic sampled output positions [count, per_image] for one batch of one layer."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()) + batch_index)
    return torch.randint(0, spatial, (count, min(per_image, spatial)), generator=gen)


def positions_of(layer: nn.Module, x: torch.Tensor) -> int:
    """Output positions per image of ``layer`` for input ``x``: H_out * W_out for a conv; for a linear layer the
    product of the axes between batch and features (1 for [N, F])."""
    if isinstance(layer, nn.Linear):
        return int(torch.tensor(x.shape[1:-1]).prod()) if x.dim() > 2 else 1
    size = []
    for dim in (0, 1):
        extent = x.shape[-2 + dim] + 2 * layer.padding[dim] - layer.dilation[dim] * (layer.kernel_size[dim] - 1) - 1
        size.append(extent // layer.stride[dim] + 1)
    return size[0] * size[1]


def patches(layer: nn.Module, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Layer input at sampled output positions: conv -> [N*P, C_in*kh*kw] patches, linear -> [N*P, in].

    Only the sampled windows are gathered (no full im2col); the column order (C_in, kh, kw) matches
    ``weight.flatten(1)``.
    """
    if isinstance(layer, nn.Linear):
        flat = x.reshape(x.shape[0], -1, x.shape[-1])                                    # [N, L, F]
        return flat.gather(1, pos[..., None].expand(-1, -1, flat.shape[-1])).reshape(-1, flat.shape[-1])
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    padded = F.pad(x, (pw, pw, ph, ph))                                                  # [N, C, H+2ph, W+2pw]
    w_out = (x.shape[-1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rows = (pos // w_out) * sh                                                            # [N, P] window top
    cols = (pos % w_out) * sw
    rows = rows[:, :, None] + torch.arange(kh) * dh                                       # [N, P, kh]
    cols = cols[:, :, None] + torch.arange(kw) * dw                                       # [N, P, kw]
    batch = torch.arange(x.shape[0])[:, None, None, None]                                 # [N, 1, 1, 1]
    gathered = padded.permute(0, 2, 3, 1)[batch, rows[..., None], cols[:, :, None, :]]   # [N, P, kh, kw, C]
    return gathered.permute(0, 1, 4, 2, 3).reshape(-1, x.shape[1] * kh * kw)            # [N*P, C*kh*kw]


def rows(layer: nn.Module | None, y: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Layer output (or any map of the same layout; ``layer`` None = a conv-layout map) at sampled positions:
    [N*P, C_out]."""
    if isinstance(layer, nn.Linear):
        flat = y.reshape(y.shape[0], -1, y.shape[-1])                                    # [N, L, C]
    else:
        flat = y.flatten(2).transpose(1, 2)                                               # [N, L, C]
    return flat.gather(1, pos[..., None].expand(-1, -1, flat.shape[-1])).reshape(-1, flat.shape[-1])


class BlockInputs:
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


def forward_order(model: nn.Module, names: list[str]) -> list[str]:
    wanted = set(names)
    return [n for n, _ in model.named_modules() if n in wanted]


def original_targets(original: nn.Module, order: list[str], tails: dict[str, ResidualTail],
                      batches: Callable[[], Iterable[torch.Tensor]], per_image: int, seed: int
                      ) -> dict[str, dict[str, list[torch.Tensor]]]:
    """One pass of the original model: per consumer, its output (and shortcut) at the sampled positions; the model
    output per batch under ``store["*"]["out"]``."""
    store: dict[str, dict[str, list[torch.Tensor]]] = {n: {"y": [], "s": []} for n in order}
    store["*"] = {"out": []}
    block_inputs: dict[str, torch.Tensor] = {}
    state = {"batch": 0, "in_shortcut": False}
    handles = []
    for name in order:
        layer = original.get_submodule(name)
        tail = tails.get(name)

        def on_output(module, inputs, output, name=name, tail=tail):
            if state["in_shortcut"]:      # a consumer inside a shortcut (a downsample conv) run by the line below:
                return                    # its own call in the block records it, once per batch
            spatial = positions_of(module, inputs[0])
            pos = sample_positions(name, state["batch"], output.shape[0], spatial, per_image, seed)
            store[name]["y"].append(rows(module, output, pos).float())
            if tail is not None:
                block = original.get_submodule(tail.block)
                state["in_shortcut"] = True
                try:
                    shortcut = tail.shortcut(block, block_inputs[tail.block])
                finally:
                    state["in_shortcut"] = False
                store[name]["s"].append(rows(None, shortcut, pos).float())
        handles.append(layer.register_forward_hook(on_output))
        if tail is not None:
            block = original.get_submodule(tail.block)
            handles.append(block.register_forward_pre_hook(
                lambda m, inputs, block_name=tail.block: block_inputs.__setitem__(block_name, inputs[0])))
    try:
        for index, images in enumerate(batches()):
            state["batch"] = index
            out = original(images)
            store["*"]["out"].append(out.float() if isinstance(out, torch.Tensor) else None)
    finally:
        for h in handles:
            h.remove()
    return store


