"""Which input channels a layer can lose at least cost once it is re-fitted: greedy elimination on Gram statistics.

A consumer layer computes Y = X W^T from input columns X (a channel's ``r`` columns side by side: its kernel taps,
channel-major as in ``weight.flatten(1)``; a bias column may follow and is never removed). Remove a set of channels
and re-fit the weights on the columns left, by least squares against the original outputs: the error that stays is
what no re-fit can recover. With the (ridge-regularised) Gram matrix G = X^T X + lam I, its inverse P and the current
optimal weights A (W at first), removing the columns B of one channel raises the error by

    delta_B = trace(A_B (P_BB)^-1 A_B^T)

and the re-fit of the others becomes A <- A - A_B (P_BB)^-1 P_B,: , P <- P - P_:,B (P_BB)^-1 P_B,: (the block form
of Optimal Brain Surgeon; Hassibi & Stork 1993 — the same update folds the removed channel's contribution into the
kept ones). Greedy elimination removes, step by step, the channel with the least summed rise over all the channel's
consumers, each consumer's rise divided by its output energy trace(W G W^T) so that every consumer weighs the same.

The order is nested (the first n removed are the n-deep removal), which is what the allocator needs. Per removed
channel the elimination also says how much of what it passed on was recovered (``explained``: 1 - rise / the rise
without re-fit) and which kept channel absorbed most of it (``absorbed_by``), so a report can explain the choice.

Example::

    result = eliminate([Consumer(gram=G, weight=W, per_channel=9)], channels=16)
    result.order[:4]              # the four channels to remove first
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Consumer:
    """One layer reading the channels: Gram matrix [D, D] of its inputs, weights [O, D] (same column order),
    ``per_channel`` columns per input channel; columns past ``channels x per_channel`` (a bias) are never removed."""

    gram: torch.Tensor
    weight: torch.Tensor
    per_channel: int


@dataclass(frozen=True)
class Elimination:
    """``order``: channels in removal order (all but ``keep`` of them); ``cost[i]``: summed normalised error after
    removing ``order[:i + 1]``; ``explained[i]`` and ``absorbed_by[i]`` describe the i-th removal."""

    order: list[int]
    cost: list[float]
    explained: list[float]
    absorbed_by: list[int | None]


class _State:
    """One consumer during the elimination: the inverse Gram P and the current re-fitted weights A."""

    def __init__(self, consumer: Consumer, channels: int, ridge: float) -> None:
        g = consumer.gram.double()
        lam = ridge * float(g.diagonal().sum().clamp_min(1e-12)) / len(g)
        self.gram = g
        self.p = torch.linalg.inv(g + lam * torch.eye(len(g), dtype=g.dtype))
        self.a = consumer.weight.double().clone()                                            # [O, D]
        self.r = consumer.per_channel
        self.channels = channels
        energy = float(torch.einsum("od,de,oe->", self.a, g, self.a))
        self.scale = 1.0 / max(energy, 1e-30)

    def _cols(self, k: int) -> slice:
        return slice(k * self.r, (k + 1) * self.r)

    def blocks(self, alive: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """P's diagonal blocks [K, r, r] and A's column blocks [O, K, r] of the channels still in."""
        body = self.channels * self.r
        p = self.p[:body, :body].reshape(self.channels, self.r, self.channels, self.r)
        idx = torch.tensor(alive)
        diag = p[idx, :, idx, :]                                                             # [K, r, r]
        a = self.a[:, :body].reshape(-1, self.channels, self.r)[:, idx]                      # [O, K, r]
        return diag, a

    def rises(self, alive: list[int]) -> torch.Tensor:
        """Normalised error rise of removing each channel in ``alive`` next [K]."""
        diag, a = self.blocks(alive)
        inv = torch.linalg.pinv(diag, hermitian=True)                                        # [K, r, r]
        return torch.einsum("okr,krs,oks->k", a, inv, a) * self.scale

    def plain_rise(self, k: int) -> float:
        """Normalised rise of removing channel k with no re-fit (its weights just dropped)."""
        cols = self._cols(k)
        a_b = self.a[:, cols]
        # error of dropping A_B: A_B X_B with X_B's full correlation with the rest ignored by the dropped weights
        return float(torch.einsum("or,rs,os->", a_b, self.gram[cols, cols], a_b)) * self.scale

    def remove(self, k: int) -> torch.Tensor:
        """Remove channel k: downdate P, re-fit A. Returns the change of A [O, D]."""
        cols = self._cols(k)
        inv = torch.linalg.pinv(self.p[cols, cols], hermitian=True)                          # [r, r]
        row = self.p[cols, :]                                                                # [r, D]
        delta = -(self.a[:, cols] @ inv) @ row                                               # [O, D]
        self.a += delta
        self.a[:, cols] = 0.0
        self.p -= row.T @ inv @ row
        self.p[cols, :] = 0.0
        self.p[:, cols] = 0.0
        self.p[cols, cols] = torch.eye(self.r, dtype=self.p.dtype)                           # keeps later blocks invertible
        return delta


def eliminate(consumers: list[Consumer], channels: int, *, ridge: float = 1e-3, keep: int = 1,
              priority: torch.Tensor | None = None, window: float = 1.0) -> Elimination:
    """Greedy elimination of ``channels`` input channels shared by ``consumers`` (see the module docstring) until
    ``keep`` remain.

    With ``priority`` (one score per channel, higher = keep, e.g. a criterion's), each step chooses only among the
    ``ceil(window x alive)`` alive channels of lowest priority: the priority nominates, the re-fit picks. ``window``
    1 ignores the priority; a window that admits one channel follows the priority's order exactly."""
    if not 0.0 < window <= 1.0:
        raise ValueError(f"window must be in (0, 1], got {window}")
    if not consumers:
        raise ValueError("eliminate needs at least one consumer")
    states = [_State(c, channels, ridge) for c in consumers]
    alive = list(range(channels))
    order, cost, explained, absorbed = [], [], [], []
    total = 0.0
    while len(alive) > max(keep, 0):
        rise = sum(s.rises(alive) for s in states)                                           # [K]
        rise = torch.nan_to_num(rise, nan=float("inf"))
        if priority is not None and window < 1.0:
            rise = rise.masked_fill(~nominated(priority[alive], window), float("inf"))
        pick = int(torch.argmin(rise))
        k = alive[pick]
        plain = sum(s.plain_rise(k) for s in states)
        gain = torch.zeros(channels, dtype=torch.float64)
        for s in states:
            delta = s.remove(k)
            body = delta[:, :channels * s.r].reshape(-1, channels, s.r)
            gain += body.pow(2).sum((0, 2)) * s.scale
        alive.pop(pick)
        gain[k] = -1.0
        total += max(float(rise[pick]), 0.0)
        order.append(k)
        cost.append(total)
        explained.append(max(0.0, 1.0 - float(rise[pick]) / plain) if plain > 0 else 1.0)
        absorbed.append(int(torch.argmax(gain)) if alive and float(gain.max()) > 0 else None)
    return Elimination(order, cost, explained, absorbed)


def nominated(priority: torch.Tensor, window: float) -> torch.Tensor:
    """Mask [K] of the ``ceil(window x K)`` entries of lowest ``priority`` (ties: lower index first)."""
    count = max(1, math.ceil(window * len(priority) - 1e-9))
    order = torch.sort(priority.double(), stable=True).indices
    mask = torch.zeros(len(priority), dtype=torch.bool)
    mask[order[:count]] = True
    return mask


def elimination_scores(result: Elimination, channels: int) -> torch.Tensor:
    """Scores for the allocator (lowest removed first): the i-th removed channel gets i, the kept ones ``channels``
    and up, float32 [channels]."""
    scores = torch.full((channels,), float(channels), dtype=torch.float32)
    for step, k in enumerate(result.order):
        scores[k] = float(step)
    return scores
