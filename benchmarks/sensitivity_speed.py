"""What the prefix cache saves in the sensitivity stage: ResNet-56 (CIFAR-10 weights), every channel group at the
depths ``--allocation sensitivity --round-to 1`` measures (L1 order), curves measured twice, with the cache (each
forward starts at the group's first layer) and without it (every forward from the input), on the stage's image
counts (Gram statistics of 512 training images, loss on 256 others).

    .venv/bin/python -m benchmarks.sensitivity_speed [--data-root ../shared/data] [--round-to 1]

Prints both wall times (2 threads), the cache's size and the largest difference between the two sets of curves
(the cache skips work, it changes no number: the difference must be 0).
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.refit_selection import load
from pruning import prefix_cache, sensitivity, surgery
from pruning.allocate import removal_units
from pruning.stages import SENSITIVITY_FIT_IMAGES, SENSITIVITY_LOSS_IMAGES, sensitivity_depths
from benchmarks.shared_data import add_data_root



class _NoCache(prefix_cache.PrefixCache):
    """Records nothing: every forward runs from the input."""

    def __init__(self, model, images, budget_bytes):
        super().__init__(model, images, budget_bytes=0)


def measure(model, groups, removal, depths, fit, loss_images, cache_class) -> tuple[float, dict]:
    sensitivity.PrefixCache = cache_class
    try:
        start = time.perf_counter()
        curves = sensitivity.measure_sensitivity(model, groups, removal, depths, fit, loss_images).curves
        return time.perf_counter() - start, curves
    finally:
        sensitivity.PrefixCache = prefix_cache.PrefixCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_root(parser)
    parser.add_argument("--round-to", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, x = load(args.data_root)
    fit = list(x[:SENSITIVITY_FIT_IMAGES].split(200))
    loss_images = x[SENSITIVITY_FIT_IMAGES:SENSITIVITY_FIT_IMAGES + SENSITIVITY_LOSS_IMAGES]
    groups = surgery.channel_groups(model, (3, 32, 32))
    scores = {g.name: model.get_submodule(g.name).weight.detach().abs().flatten(1).sum(1) for g in groups}
    units = removal_units(groups, scores, args.round_to)
    depths = sensitivity_depths(units)
    removal = {name: (lambda n, u=u: u.channels(u.order[:n])) for name, u in units.items()}
    cached_bytes = prefix_cache.PrefixCache(model, loss_images, budget_bytes=2 ** 29).cached_bytes
    with torch.no_grad():
        slow, slow_curves = measure(model, groups, removal, depths, fit, loss_images, _NoCache)
        fast, fast_curves = measure(model, groups, removal, depths, fit, loss_images, prefix_cache.PrefixCache)
    diff = max(abs(a - b) for n in slow_curves for a, b in zip(slow_curves[n].loss, fast_curves[n].loss))
    forwards = sum(len(d) for d in depths.values())
    print(f"ResNet-56, {len(groups)} groups, {forwards} (group, depth) forwards of {len(loss_images)} images, "
          f"round-to {args.round_to}, {torch.get_num_threads()} threads")
    print(f"without the prefix cache: {slow:.1f} s")
    print(f"with it:                  {fast:.1f} s ({slow / fast:.2f}x; cache {cached_bytes / 2 ** 20:.0f} MiB)")
    print(f"largest difference between the two sets of curves: {diff:.3g}")


if __name__ == "__main__":
    main()
