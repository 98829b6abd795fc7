"""A randomly initialised CIFAR ResNet-20 (seed 0) taken apart the way the allocators see it, for the latency and
allocation tests: its zoo entry, the model, its channel groups, its MACs / params and their ``CostModel``."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from pruning import allocate, surgery, zoo
from pruning.measure import count_cost


def resnet20_parts() -> SimpleNamespace:
    entry = zoo.get_entry("cifar/resnet20")
    torch.manual_seed(0)
    model = zoo.create_model("cifar/resnet20").eval()
    groups = surgery.channel_groups(model, entry.input_shape, entry.protected(model))
    base = count_cost(model, entry.input_shape)
    costs = allocate.CostModel(model, entry.input_shape, base.macs, base.params)
    return SimpleNamespace(entry=entry, model=model, groups=groups, base=base, costs=costs)
