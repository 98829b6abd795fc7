"""Gram statistics of layers' inputs, from calibration images: what a ridge re-fit of a conv or linear layer needs.

For each named consumer (a conv or linear layer), one pass over the images accumulates X^T X and X^T Y of its input
patches X (sampled output positions, columns in ``weight.flatten(1)`` order, a ones column last when the layer has a
bias) and its outputs Y, per conv group. ``pruning.sensitivity`` re-fits consumers from them; the ``redundancy``
criterion ranks channels by what the re-fit cannot recover.

Example::

    stats = collect_stats(model, ["layer1.0.conv2"], [images], positions_per_image=8, seed=0, budget_bytes=2**28)
    stats["layer1.0.conv2"].xtx        # [groups, D, D] float64
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from pruning.layer_io import patches, positions_of, rows, sample_positions


@dataclass
class ConsumerStats:
    """One consumer's sufficient statistics, conv groups leading (None when they did not fit the budget)."""

    layer: nn.Module
    fits: bool                               # within the memory budget (else: measured without its re-fit)
    xtx: torch.Tensor | None = None          # [G, D, D]
    xty: torch.Tensor | None = None          # [G, D, C_g]


def conv_groups(layer: nn.Module) -> int:
    return layer.groups if isinstance(layer, nn.Conv2d) else 1


def input_columns(layer: nn.Module) -> int:
    """Inputs per conv group, bias column included."""
    return layer.weight[0].numel() + (1 if layer.bias is not None else 0)


@torch.no_grad()
def collect_stats(model: nn.Module, consumers: list[str], images: list[torch.Tensor], *, positions_per_image: int,
                  seed: int, budget_bytes: int) -> dict[str, ConsumerStats]:
    """One forward pass per batch of ``images``: each consumer's Gram statistics at sampled positions."""
    stats, spent = {}, 0
    for name in consumers:
        layer = model.get_submodule(name)
        need = 8 * conv_groups(layer) * input_columns(layer) * (input_columns(layer) + layer.weight.shape[0])
        stats[name] = ConsumerStats(layer, spent + need <= budget_bytes)
        spent += need if stats[name].fits else 0
    wanted = [n for n in consumers if stats[n].fits]
    batch_index = [0]

    def on_output(module, inputs, output, name):
        x = inputs[0]
        pos = sample_positions(name, batch_index[0], x.shape[0], positions_of(module, x), positions_per_image, seed)
        _accumulate(stats[name], patches(module, x, pos).double(), rows(module, output, pos).double())

    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: on_output(m, i, o, n))
               for n in wanted]
    try:
        for index, batch in enumerate(images):
            batch_index[0] = index
            model(batch)
    finally:
        for h in handles:
            h.remove()
    return stats


def _accumulate(s: ConsumerStats, xs: torch.Tensor, ys: torch.Tensor) -> None:
    groups = conv_groups(s.layer)
    if s.layer.bias is not None:
        xs = torch.cat([xs.reshape(len(xs), groups, -1), torch.ones(len(xs), groups, 1, dtype=xs.dtype)], 2)
    xg = xs.reshape(len(xs), groups, -1).transpose(0, 1)                               # [G, S, D]
    yg = ys.reshape(len(ys), groups, -1).transpose(0, 1)                               # [G, S, C_g]
    xtx, xty = xg.transpose(1, 2) @ xg, xg.transpose(1, 2) @ yg
    if s.xtx is None:
        s.xtx, s.xty = xtx, xty
    else:
        s.xtx += xtx
        s.xty += xty
