"""Re-run a model on fixed images when only some modules' weights changed, skipping the work before the first of them.

The sensitivity measurement runs the same loss images through the network once per (group, depth), each time with
the weights of a few modules changed. Every module that finished *before* the first changed one started (in the
order of the reference forward pass) computed exactly what it computed then, so its output is the one recorded
then. ``PrefixCache`` records module outputs during one reference pass, within a byte budget, and on later passes
swaps the forward of the outermost recorded modules that finished before every changed module for a copy of the
recorded output. The result is bit-for-bit the full forward's: nothing is approximated, only skipped.

Which outputs are recorded: a probe pass on one image (all of them if the model fails on one) gives each module's completion order, call count and output
size; the budget goes to the shallowest modules first (a ResNet's stages, then its blocks, then the layers inside
them), because one replayed block skips its convolutions, normalisations, activations and additions at once, where
replayed convolutions alone leave the rest to run.

Not cached: the model itself, modules called more than once per forward (shared weights; their second call may see
other inputs) and outputs that are not a single tensor. A changed module the reference pass never ran disables the
skipping for that pass.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn as nn

class PrefixCache:
    """``reference`` = ``model(images)``; ``forward(changed)`` = the same pass after the modules named in
    ``changed`` (and only those, with whatever they contain) had their weights altered."""

    def __init__(self, model: nn.Module, images: torch.Tensor, budget_bytes: int) -> None:
        self.model, self.images = model, images
        try:
            probe = _trace(model, images[:1])
        except Exception:  # noqa: BLE001 - a model that needs more than one image: probe with all of them
            probe = _trace(model, images)
        self.order = {name: seen.order for name, seen in probe.items()}
        chosen = _within_budget(probe, len(images), budget_bytes)
        self.outputs: dict[str, torch.Tensor] = {}
        calls: dict[str, int] = {}
        used = 0

        def record(name: str):
            def hook(_module, _inputs, output):
                nonlocal used
                calls[name] = calls.get(name, 0) + 1
                size = output.numel() * output.element_size()
                if calls[name] == 1 and used + size <= budget_bytes:
                    self.outputs[name] = output.detach().clone()
                    used += size
            return hook

        handles = [model.get_submodule(name).register_forward_hook(record(name)) for name in chosen]
        try:
            with torch.no_grad():
                self.reference = model(images)
        finally:
            for handle in handles:
                handle.remove()
        for name, count in calls.items():
            if count > 1:                   # ran more often than in the probe: its later calls saw other inputs
                self.outputs.pop(name, None)
        self.cached_bytes = sum(t.numel() * t.element_size() for t in self.outputs.values())

    def skippable(self, changed: Iterable[str]) -> list[str]:
        """The outermost cached modules that finished before every module in ``changed`` (and their contents)."""
        changed = list(changed)
        if not changed or any(name not in self.order for name in changed):
            return []
        first = min(self.order[name] for name in self.order
                    if any(name == c or name.startswith(c + ".") for c in changed))
        done = [name for name in self.outputs if self.order[name] < first]
        return [name for name in done if not any(name.startswith(outer + ".") for outer in done)]

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


@dataclass
class _Seen:
    order: int           # completion position in the forward pass
    calls: int
    bytes: int           # output bytes per image (0: not a single tensor)


def _trace(model: nn.Module, image: torch.Tensor) -> dict[str, _Seen]:
    """Every submodule that ran on ``image`` (a batch): completion order, calls, output bytes per image."""
    seen: dict[str, _Seen] = {}

    def hook(name: str):
        def on_output(_module, _inputs, output):
            size = output.numel() * output.element_size() // max(1, len(image)) \
                if isinstance(output, torch.Tensor) else 0
            if name in seen:
                seen[name].calls += 1
            else:
                seen[name] = _Seen(len(seen), 1, size)
        return on_output

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _within_budget(probe: dict[str, _Seen], images: int, budget_bytes: int) -> list[str]:
    """The modules whose outputs to record: called once, a tensor out, shallowest first, within the budget."""
    candidates = sorted((name for name, s in probe.items() if s.calls == 1 and s.bytes > 0),
                        key=lambda name: (name.count("."), probe[name].order))
    chosen, used = [], 0
    for name in candidates:
        size = probe[name].bytes * images
        if used + size <= budget_bytes:
            chosen.append(name)
            used += size
    return chosen
