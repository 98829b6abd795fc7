"""Feature hints for distillation: the student also matches the teacher's outputs of chosen modules.

Logit distillation tells a network that lost whole residual blocks only what its last layer should say; the
outputs of each stage (the container that held the removed blocks) keep their shape through block removal, so the
teacher can say what every stage should hand on (FitNets, Romero et al. 2015, with the student's own module as the
hint layer: no regressor is needed where the shapes match).

    pairs = hint_pairs(student, teacher, ["layer1", "layer2", "layer3"])
    with FeatureHints(pairs) as hints:
        logits = student(x)
        with torch.no_grad():
            teacher(x)
        loss = kd + weight * hints.loss()

``hint_loss`` is the mean over pairs of the squared error relative to the teacher's mean square (scale-free, so a
wide late stage does not outweigh an early one).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

HintPair = tuple[str, nn.Module, nn.Module]      # (module name, the student's module, the teacher's)


def stage_names(block_names: Iterable[str]) -> list[str]:
    """The containers of residual blocks ("layer1.0" -> "layer1"), in first-seen order; top-level blocks have
    none."""
    seen: list[str] = []
    for name in block_names:
        parent = name.rpartition(".")[0]
        if parent and parent not in seen:
            seen.append(parent)
    return seen


def hint_pairs(student: nn.Module, teacher: nn.Module, names: Sequence[str]) -> list[HintPair]:
    """(name, student module, teacher module) for each of ``names`` that both models have."""
    mine, theirs = dict(student.named_modules()), dict(teacher.named_modules())
    return [(name, mine[name], theirs[name]) for name in names if name in mine and name in theirs]


def hint_loss(student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over pairs of ||s - t||^2 / ||t||^2 (per element means); pairs whose shapes differ are skipped.
    Zero (with a gradient path) when no pair matches."""
    terms = [((s - t.detach()) ** 2).mean() / (t.detach() ** 2).mean().clamp_min(1e-12)
             for s, t in zip(student_features, teacher_features) if s.shape == t.shape]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).mean()


class FeatureHints:
    """Forward hooks on both sides of each pair while the context is open; ``loss()`` compares the outputs of the
    last forward passes and clears them."""

    def __init__(self, pairs: Sequence[HintPair]) -> None:
        self.pairs = list(pairs)
        self._student: dict[str, torch.Tensor] = {}
        self._teacher: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> FeatureHints:
        for name, mine, theirs in self.pairs:
            self._handles.append(mine.register_forward_hook(self._keeper(self._student, name)))
            self._handles.append(theirs.register_forward_hook(self._keeper(self._teacher, name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._student.clear()
        self._teacher.clear()

    @staticmethod
    def _keeper(store: dict[str, torch.Tensor], name: str):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                store[name] = output
        return hook

    def matched(self) -> list[str]:
        """Names whose last outputs had the same shape on both sides."""
        return [n for n, _, _ in self.pairs
                if n in self._student and n in self._teacher and self._student[n].shape == self._teacher[n].shape]

    def loss(self) -> torch.Tensor:
        names = [n for n, _, _ in self.pairs if n in self._student and n in self._teacher]
        value = hint_loss([self._student[n] for n in names], [self._teacher[n] for n in names])
        self._student.clear()
        self._teacher.clear()
        return value
