"""The least-squares re-fit of one layer, regularised and checked on held-out samples (pure functions of tensors).

With X [S, D] the pruned model's inputs of a layer (unfolded patches; a column of ones for the bias), Y [S, C] the
original model's outputs there and W_S [C, D] the kept old weights (``reconstruct.py`` builds these):

    W'(lam) = argmin_W ||Y - X W^T||^2 + lam ||W - W_S||^2
            = W_S + ((X^T X + lam I)^-1 X^T R)^T      R = Y - X W_S^T        (primal: a D x D system)
            = W_S + (X^T (X X^T + lam I)^-1 R)^T                            (dual: an S x S system, same W')

lam = factor x ridge x trace(X^T X) / D. A few factors are fitted on 4/5 of the images and scored on the held-out
fifth; the best is re-fitted on all samples, unless none beats W_S on the held-out images — then W_S stays (with
few samples per input, D >~ S, the unregularised fit memorises the calibration set). A grouped conv is G
independent problems, solved as a batch (leading dimension G).

Memory: primal ~8 G (3 D^2 + 3 D C) bytes (two Gram matrices and a factor, float64), dual ~8 (S (D + C) + 2 S^2)
+ 8 C D bytes (rows and kernel in float64, the new weights in float32 — a classifier with 25,088 inputs never
gets a float64 copy);
``reconstruct`` picks the cheaper and subsamples rows or skips a layer that does not fit its budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FACTORS = (1.0, 10.0, 100.0, 1000.0)


@dataclass
class Solution:
    weight: torch.Tensor | None     # [G, C, D] the re-fitted weights, None = keep W_S
    factor: float                   # the chosen multiple of the base ridge (0 when W_S is kept)
    error_before: float             # ||Y - X W_S^T||^2 / ||Y||^2 on all samples
    error_after: float
    heldout_before: float | None    # the same on the held-out samples (None: too few images to hold any out)
    heldout_after: float | None


def primal_bytes(groups: int, d: int, c: int) -> int:
    return 8 * groups * (3 * d * d + 3 * d * c)


def dual_bytes(samples: int, d: int, c: int) -> int:
    """X and Y rows, the kernel and its factor (float64); the prior and the new weights (float32)."""
    return 8 * (samples * (d + c) + 2 * samples * samples) + 8 * c * d


def dual_rows(budget: int, d: int, c: int) -> int:
    """The most samples whose dual system fits ``budget`` bytes: 16 S^2 + 8 S (D + C) + 8 C D <= budget."""
    b, rest = 8 * (d + c), budget - 8 * c * d
    return max(0, int((-b + math.sqrt(b * b + 64 * rest)) / 32)) if rest > 0 else 0


class Gram:
    """Sufficient statistics X^T X [G, D, D], X^T Y [G, D, C], ||Y||^2 [G] of the fit and held-out rows."""

    def __init__(self, groups: int, d: int, c: int) -> None:
        self.xtx = [torch.zeros(groups, d, d, dtype=torch.float64) for _ in range(2)]     # fit, held
        self.xty = [torch.zeros(groups, d, c, dtype=torch.float64) for _ in range(2)]
        self.yty = [torch.zeros(groups, dtype=torch.float64) for _ in range(2)]
        self.rows = [0, 0]

    def add(self, x: torch.Tensor, y: torch.Tensor, held: torch.Tensor) -> None:
        """x [G, S, D], y [G, S, C] float64, held [S] bool."""
        for part, mask in enumerate((~held, held)):
            if mask.any():
                xs, ys = x[:, mask], y[:, mask]
                self.xtx[part] += xs.transpose(1, 2) @ xs
                self.xty[part] += xs.transpose(1, 2) @ ys
                self.yty[part] += (ys * ys).sum((1, 2))
                self.rows[part] += int(mask.sum())

    def solve(self, prior: torch.Tensor, ridge: float, factors=FACTORS) -> Solution:
        """prior [G, C, D] -> the chosen re-fit (see the module docstring)."""
        prior = prior.double()
        fit, held = 0, 1
        base = ridge * _trace(self.xtx[fit] + self.xtx[held]) / prior.shape[-1]             # [G]
        held_prior = _relative(self._energy(held, prior), self.yty[held]) if self.rows[held] else None
        best, best_err = None, held_prior
        if self.rows[held] and self.rows[fit]:
            for f in factors:
                err = _relative(self._energy(held, _ridge(self.xtx[fit], self.xty[fit], prior, f * base)),
                                self.yty[held])
                if best_err is None or err < best_err * (1 - 1e-9):
                    best, best_err = f, err
        elif not self.rows[held]:
            best = max(factors[0], prior.shape[-1] / max(self.rows[fit], 1))   # no hold-out: ridge by D / S
        for part in ("xtx", "xty", "yty"):                       # from here on: all rows, in the fit slot
            getattr(self, part)[fit] += getattr(self, part)[held]
        self.rows = [sum(self.rows), self.rows[held]]
        before = _relative(self._energy(fit, prior), self.yty[fit])
        if best is None:
            return Solution(None, 0.0, before, before, held_prior, held_prior)
        weight = _ridge(self.xtx[fit], self.xty[fit], prior, best * base)
        after = _relative(self._energy(fit, weight), self.yty[fit])
        if after > before:
            return Solution(None, 0.0, before, before, held_prior, held_prior)
        return Solution(weight, best, before, after, held_prior, best_err)

    def _energy(self, part: int, w: torch.Tensor) -> torch.Tensor:
        """||Y - X W^T||^2 per group from the statistics: yty - 2 <X^T Y, W^T> + <W X^T X, W>."""
        cross = (self.xty[part] * w.transpose(1, 2)).sum((1, 2))
        quad = ((w @ self.xtx[part]) * w).sum((1, 2))
        return self.yty[part] - 2 * cross + quad


class Samples:
    """The rows themselves (dual form, one group): X [S, D], Y [S, C], held [S]."""

    def __init__(self) -> None:
        self.x: list[torch.Tensor] = []
        self.y: list[torch.Tensor] = []
        self.held: list[torch.Tensor] = []

    def add(self, x: torch.Tensor, y: torch.Tensor, held: torch.Tensor) -> None:
        self.x.append(x[0])
        self.y.append(y[0])
        self.held.append(held)

    def solve(self, prior: torch.Tensor, ridge: float, factors=FACTORS) -> Solution:
        """Every product with D columns is made once (the kernel X X^T, X W_S^T, the final update); each ridge
        candidate then costs an S x S eigen-solve."""
        x, y, held = torch.cat(self.x), torch.cat(self.y), torch.cat(self.held)             # [S, D], [S, C], [S]
        self.x, self.y = [], []
        w0 = prior[0]                                                                        # [C, D], float32
        r = y - (x.to(w0.dtype) @ w0.T).double()                                             # [S, C]
        kernel = x @ x.T                                                                     # [S, S]
        base = ridge * float(kernel.diagonal().sum()) / x.shape[1]
        fit = ~held
        held_prior = _relative(_sq(r[held]), _sq(y[held])) if held.any() else None
        best, best_err = None, held_prior
        if held.any() and fit.any():
            values, vectors = torch.linalg.eigh(kernel[fit][:, fit])                        # K_ff = U L U^T
            rotated = vectors.T @ r[fit]                                                     # U^T R_f
            cross = kernel[held][:, fit] @ vectors                                           # K_hf U
            for f in factors:
                alpha = rotated / (values.clamp_min(0) + f * base)[:, None]                 # U^T alpha
                err = _relative(_sq(r[held] - cross @ alpha), _sq(y[held]))
                if best_err is None or err < best_err * (1 - 1e-9):
                    best, best_err = f, err
        elif not held.any():
            best = max(factors[0], x.shape[1] / max(len(x), 1))                 # no hold-out: ridge by D / S
        before = _relative(_sq(r), _sq(y))
        if best is None:
            return Solution(None, 0.0, before, before, held_prior, held_prior)
        alpha = _dual(kernel.clone(), r, best * base)                                        # [S, C]
        after = _relative(_sq(r - kernel @ alpha), _sq(y))
        if after > before:
            return Solution(None, 0.0, before, before, held_prior, held_prior)
        weight = w0.clone()
        weight.addmm_(alpha.T.to(w0.dtype), x.to(w0.dtype))                                  # W_S + alpha^T X
        return Solution(weight.unsqueeze(0), best, before, after, held_prior, best_err)


def _ridge(xtx: torch.Tensor, xty: torch.Tensor, prior: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """(X^T X + lam I)^-1 (X^T Y + lam W_S^T), transposed: [G, C, D]; lam [G]. Adds lam to xtx's diagonal in
    place and takes it off again (no D x D copy)."""
    diag = xtx.diagonal(dim1=1, dim2=2)
    diag += lam[:, None]
    try:
        rhs = xty + lam[:, None, None] * prior.transpose(1, 2)
        factor, info = torch.linalg.cholesky_ex(xtx)
        if bool((info == 0).all()):
            w = torch.cholesky_solve(rhs, factor)
        else:
            w = torch.linalg.lstsq(xtx, rhs).solution
    finally:
        diag -= lam[:, None]
    return w.transpose(1, 2)


def _dual(kernel: torch.Tensor, r: torch.Tensor, lam: float) -> torch.Tensor:
    """(K + lam I)^-1 R: [S, C] (``kernel`` is overwritten)."""
    kernel.diagonal().add_(max(lam, 1e-12))
    factor, info = torch.linalg.cholesky_ex(kernel)
    if int(info) == 0:
        return torch.cholesky_solve(r, factor)
    return torch.linalg.lstsq(kernel, r).solution


def _trace(xtx: torch.Tensor) -> torch.Tensor:
    return xtx.diagonal(dim1=1, dim2=2).sum(1).clamp_min(1e-12)


def _sq(t: torch.Tensor) -> float:
    return float((t * t).sum())


def _relative(energy, norm) -> float:
    """Total residual energy / total target energy (summed over groups)."""
    e = float(energy.sum()) if isinstance(energy, torch.Tensor) else float(energy)
    n = float(norm.sum()) if isinstance(norm, torch.Tensor) else float(norm)
    return max(e, 0.0) / max(n, 1e-12)
