"""Re-run a model on fixed images when only some modules' weights changed, skipping the work before the first of them.

The sensitivity measurement runs the same loss images through the network once per (group, depth), each time with
the weights of a few modules changed. Every module that ran *before* the first changed one (in the order of the
reference forward pass) sees exactly the inputs it saw then, so its output is the one recorded then. ``PrefixCache``
records the outputs of the expensive leaf modules (convolutions, linear layers) during one reference pass, within a
byte budget, and on later passes swaps those modules' ``forward`` for a copy of the recorded output when they ran
before every changed module. The result is bit-for-bit the full forward's: nothing is approximated, only skipped.

Not cached: modules called more than once per forward (shared weights; their second call may see other inputs)
and outputs that are not a single tensor. A changed module the reference pass never ran disables the skipping
for that pass.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.nn as nn

CACHED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class PrefixCache:
    """``reference`` = ``model(images)``; ``forward(changed)`` = the same pass after the modules named in
    ``changed`` had their weights altered (and only those)."""

    def __init__(self, model: nn.Module, images: torch.Tensor, budget_bytes: int) -> None:
        self.model, self.images = model, images
        self.order: dict[str, int] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        calls: dict[str, int] = {}
        used = 0
        leaves = {name: m for name, m in model.named_modules() if not any(True for _ in m.children())}

        def record(name: str, module: nn.Module):
            def hook(_module, _inputs, output):
                nonlocal used
                calls[name] = calls.get(name, 0) + 1
                self.order.setdefault(name, len(self.order))
                if not isinstance(module, CACHED_TYPES) or not isinstance(output, torch.Tensor):
                    return
                size = output.numel() * output.element_size()
                if calls[name] == 1 and used + size <= budget_bytes:
                    self.outputs[name] = output.detach().clone()
                    used += size
            return hook

        handles = [m.register_forward_hook(record(name, m)) for name, m in leaves.items()]
        try:
            with torch.no_grad():
                self.reference = model(images)
        finally:
            for handle in handles:
                handle.remove()
        for name, count in calls.items():
            if count > 1:
                self.outputs.pop(name, None)
        self.cached_bytes = sum(t.numel() * t.element_size() for t in self.outputs.values())

    def skippable(self, changed: Iterable[str]) -> list[str]:
        """The cached modules that ran before every module in ``changed``."""
        positions = [self.order.get(name) for name in changed]
        if not positions or any(p is None for p in positions):
            return []
        first = min(positions)
        return [name for name in self.outputs if self.order[name] < first]

    def forward(self, changed: Iterable[str]) -> torch.Tensor:
        with self._replayed(self.skippable(changed)):
            return self.model(self.images)

    @contextmanager
    def _replayed(self, names: list[str]) -> Iterator[None]:
        modules = [self.model.get_submodule(name) for name in names]
        for name, module in zip(names, modules):
            output = self.outputs[name]
            module.forward = lambda *args, _out=output, **kwargs: _out.clone()   # the caller may modify it in place
        try:
            yield
        finally:
            for module in modules:
                del module.forward
