"""Kernel reconstruction: re-fit every layer that lost input channels so it reproduces the original model.

For each consumer layer C (a conv or linear whose input channels were pruned), in forward order, with X the
pruned model's input to C (earlier layers already re-fitted) unfolded at a few sampled output positions, and Y
the original model's pre-BatchNorm output of C at the same positions (``../shared/CRITERIA.md``, "After scoring"):

    W' = argmin_W ||Y - X W^T||^2 + lam ||W - W_S||^2        (ridge, prior centred on the kept old weights W_S)

solved in float64 by ``pruning.ridge``: lam is chosen on held-out images (every ``holdout``-th calibration image),
and a layer whose re-fit does not lower the held-out residual keeps W_S (``LayerFit.status == "kept"``). A grouped
conv is re-fitted group by group. When C is the last conv of a residual block, the target also absorbs the
shortcut mismatch, so that BN(y) + shortcut(x_pruned) matches BN(y_orig) + shortcut(x_orig):

    Y = Y_orig + (s_orig - s_pruned) / a,     a = gamma / sqrt(running_var + eps) of the BatchNorm after C

Memory: a layer's least-squares working set stays under ``max_memory_mb`` (Gram form D x D or kernel form
S x S, whichever is smaller; rows subsampled, or the layer skipped with a note, when neither fits); forward passes
(all calibration images at once when they fit, else micro-batches) and cached block inputs take at most half of
it; the weights before the re-fit wait on disk. Finally the whole re-fit is checked end to end: if the pruned model's output on
the held-out images is further from the original's than before the re-fit, every layer goes back (``reverted``).
"""
from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn

from pruning import ridge as ridge_mod
from pruning.errors import EngineError, InterpruneError
from pruning.layer_io import (BlockInputs, ResidualTail, forward_order, original_targets, patches, positions_of,
                              residual_tails, rows, sample_positions)

log = logging.getLogger(__name__)

__all__ = ["LayerFit", "ResidualTail", "reconstruct", "recalibrate_batchnorm", "residual_tails"]


@dataclass(frozen=True)
class LayerFit:
    name: str
    inputs: int                  # input features per sample (C_in x k x k, per conv group)
    samples: int
    error_before: float          # ||Y - X W_S^T||^2 / ||Y||^2 on the calibration samples
    error_after: float
    residual_compensated: bool
    status: str = "refit"        # refit | kept (the re-fit did not lower the held-out residual: W_S stays) |
                                 # skipped (see note) | reverted (the whole re-fit made the output worse)
    note: str = ""
    ridge: float = 0.0           # lam / (trace(X^T X) / D) actually used; 0 when W_S stays
    heldout_before: float | None = None    # relative residual on the held-out images, W_S
    heldout_after: float | None = None     # ... with the chosen ridge (fitted without them)
    method: str = "gram"         # gram (D x D system) | kernel (S x S system)

    def to_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass(frozen=True)
class _Settings:
    per_image: int
    ridge: float
    seed: int
    holdout: int
    budget: int                  # bytes for one layer's least-squares working set


@torch.no_grad()
def reconstruct(original: nn.Module, pruned: nn.Module, consumers: list[str],
                out_channels: dict[str, list[int]], batches: Callable[[], Iterable[torch.Tensor]], *,
                positions_per_image: int = 8, ridge: float = 1e-3, seed: int = 0, residual: bool = True,
                max_memory_mb: float = 1024, holdout: int = 5) -> list[LayerFit]:
    """Re-fit ``consumers`` of ``pruned`` in place to match ``original`` on calibration ``batches``.

    ``out_channels[name]`` gives, for a consumer whose own output channels were also pruned, the original indices
    it keeps (others keep all). ``batches()`` yields normalised image tensors, the same order on every call.
    Every ``holdout``-th image (0 = none) is held out to choose the ridge and to check the result end to end.
    """
    original.eval()
    pruned.eval()
    order = forward_order(pruned, consumers)
    tails = residual_tails(pruned) if residual else {}
    settings = _Settings(positions_per_image, ridge, seed, holdout, int(max_memory_mb * 2 ** 20))
    whole, micro = _as_one_batch(pruned, batches, settings.budget // 2)
    if whole is not None:
        batches = lambda: iter([whole])                                        # noqa: E731
    else:
        batches = _split(batches, micro)
    targets = original_targets(original, order, tails, batches, positions_per_image, seed)
    before = _heldout_output_error(pruned, batches, targets["*"]["out"], holdout)
    backup = _Backup()

    def refit(name: str, pairs) -> LayerFit:
        layer = pruned.get_submodule(name)
        backup.save(name, layer)
        try:
            return _refit(pruned, name, layer, targets.pop(name), out_channels.get(name), tails.get(name), pairs,
                          settings)
        except InterpruneError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug or an unsupported layer: name it
            raise EngineError(f"reconstruction of {name} ({type(layer).__name__}) failed: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc

    with backup:
        if whole is not None:
            fits = _refit_in_one_pass(pruned, order, tails, whole, refit)
        else:
            inputs = BlockInputs(pruned, batches, settings.budget // 2)
            fits = [refit(name, inputs(name)) for name in order]
        after = _heldout_output_error(pruned, batches, targets["*"]["out"], holdout)
        if before is not None and after is not None and after > before:
            backup.restore(pruned)
            note = (f"re-fit reverted: output error on held-out images {after:.4g} > {before:.4g} without it "
                    "(too few calibration images for these layers?)")
            log.warning("reconstruction: %s", note)
            fits = [_reverted(f, note) for f in fits]
    return fits


class _Backup:
    """The consumers' weights before their re-fit, kept on disk (a VGG classifier alone is 400 MB) until the
    end-to-end check decides; a context manager that deletes them."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="interprune-refit-")
        self.files: dict[str, Path] = {}

    def save(self, name: str, layer: nn.Module) -> None:
        path = Path(self.dir.name) / f"{len(self.files)}.pt"
        torch.save([p.detach() for p in layer.parameters(recurse=False)], path)
        self.files[name] = path

    def restore(self, model: nn.Module) -> None:
        for name, path in self.files.items():
            values = torch.load(path, weights_only=True)
            for param, value in zip(model.get_submodule(name).parameters(recurse=False), values):
                param.copy_(value)

    def __enter__(self) -> "_Backup":
        return self

    def __exit__(self, *exc) -> None:
        self.dir.cleanup()


def _as_one_batch(model: nn.Module, batches: Callable[[], Iterable[torch.Tensor]],
                  budget: int) -> tuple[torch.Tensor | None, int]:
    """(all calibration images as one batch, or None when a forward pass of them does not fit ``budget`` bytes;
    the most images per forward pass that do fit). A pass is estimated at six times the largest layer output."""
    images = list(batches())
    largest = [0]

    def on_output(module, inputs, output):
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())
    handles = [m.register_forward_hook(on_output) for m in model.modules() if not list(m.children())]
    try:
        model(images[0][:1])
    finally:
        for h in handles:
            h.remove()
    per_pass = max(1, budget // max(6 * largest[0], 1))
    if sum(len(b) for b in images) > per_pass:
        return None, per_pass
    return (images[0] if len(images) == 1 else torch.cat(images)), per_pass


def _split(batches: Callable[[], Iterable[torch.Tensor]], size: int) -> Callable[[], Iterable[torch.Tensor]]:
    """``batches`` cut into batches of at most ``size`` images (same order every call)."""
    return lambda: (part for images in batches() for part in images.split(size))


def _refit_in_one_pass(model: nn.Module, order: list[str], tails: dict[str, ResidualTail], images: torch.Tensor,
                       refit: Callable) -> list[LayerFit]:
    """One forward pass of all calibration images: each consumer is re-fitted on its input as the pass reaches it
    (earlier consumers are re-fitted by then), and the pass goes on with the new weights."""
    fits: dict[str, LayerFit] = {}
    block_in: dict[str, torch.Tensor] = {}
    handles = []
    for name in order:
        tail = tails.get(name)

        def before(module, inputs, name=name, tail=tail):
            if name not in fits:
                fits[name] = refit(name, [(inputs[0], block_in.get(tail.block) if tail else None)])
        handles.append(model.get_submodule(name).register_forward_pre_hook(before))
    for tail in {t.block: t for t in tails.values()}.values():
        handles.append(model.get_submodule(tail.block).register_forward_pre_hook(
            lambda m, inputs, block=tail.block: block_in.__setitem__(block, inputs[0])))
    try:
        model(images)
    finally:
        for h in handles:
            h.remove()
    return [fits[n] for n in order if n in fits]


def _refit(pruned: nn.Module, name: str, layer: nn.Module, target: dict[str, list[torch.Tensor]],
           keep_out: list[int] | None, tail: ResidualTail | None, pairs: Iterable, s: _Settings) -> LayerFit:
    groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
    prior = _prior(layer, groups)                                                    # [G, C_g, D_g]
    d, c = prior.shape[2], prior.shape[1]
    total = sum(len(y) for y in target["y"])
    method, stride, why = _method(groups, d, c, total, s.budget)
    if method == "skip":
        return LayerFit(name, d, 0, 0.0, 0.0, tail is not None, "skipped", why)
    problem = ridge_mod.Gram(groups, d, c) if method == "gram" else ridge_mod.Samples()
    scale = block = None
    if tail is not None:
        norm = pruned.get_submodule(tail.norm)
        scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).double()   # a, [C_out']
        block = pruned.get_submodule(tail.block)
    offset = used = count = 0
    for index, (x_full, block_in) in enumerate(pairs):
        pos = sample_positions(name, index, x_full.shape[0], positions_of(layer, x_full), s.per_image, s.seed)
        y = target["y"][index].double()
        if keep_out is not None:
            y = y[:, keep_out]
        if tail is not None:
            s_orig = target["s"][index].double()
            s_orig = s_orig[:, keep_out] if keep_out is not None else s_orig
            y = y + (s_orig - rows(None, tail.shortcut(block, block_in), pos).double()) / scale
        x = patches(layer, x_full, pos).double()                                     # [S, D(-1)]
        held = _held_rows(x_full.shape[0], pos.shape[1], offset, s.holdout)
        keep = (torch.arange(len(x)) + used) % stride == 0
        offset, used, count = offset + x_full.shape[0], used + len(x), count + int(keep.sum())
        problem.add(*_grouped(x[keep], y[keep], groups, layer.bias is not None), held[keep])
    solution = problem.solve(prior, s.ridge)
    samples = count
    note = f"rows subsampled 1 in {stride} to stay under max_memory_mb" if stride > 1 else ""
    if solution.weight is None:
        note = (note + "; " if note else "") + "re-fit did not lower the held-out residual: un-refit weights kept"
        return LayerFit(name, d, samples, solution.error_before, solution.error_after, tail is not None, "kept",
                        note, 0.0, solution.heldout_before, solution.heldout_after, _label(method))
    _assign(layer, solution.weight, groups)
    return LayerFit(name, d, samples, solution.error_before, solution.error_after, tail is not None, "refit", note,
                    s.ridge * solution.factor, solution.heldout_before, solution.heldout_after, _label(method))


def _label(method: str) -> str:
    return "kernel" if method == "samples" else method


def _method(groups: int, d: int, c: int, rows_total: int, budget: int) -> tuple[str, int, str]:
    """("gram" | "samples" | "skip", keep 1 row in k, why skipped): the cheaper form that fits ``budget``."""
    gram = ridge_mod.primal_bytes(groups, d, c)
    kernel = ridge_mod.dual_bytes(rows_total, d, c) if groups == 1 else math.inf
    if min(gram, kernel) <= budget:
        return ("gram" if gram <= kernel else "samples"), 1, ""
    if groups == 1:
        fits = ridge_mod.dual_rows(budget, d, c)
        if fits >= max(64, 2 * c) or fits >= rows_total:
            return "samples", math.ceil(rows_total / fits), ""
    need = min(gram, kernel) / 2 ** 20
    return "skip", 1, (f"skipped: the least-squares system needs {need:.0f} MB ({d} inputs, {rows_total} samples), "
                       f"over max_memory_mb={budget / 2 ** 20:.0f}")


def _prior(layer: nn.Module, groups: int) -> torch.Tensor:
    """Kept old weights as [G, C_out/G, D_g] (bias appended as the last column), in the layer's dtype."""
    w = layer.weight.detach().flatten(1)                                             # [C_out, D_g]
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach().unsqueeze(1)], dim=1)
    return w.reshape(groups, w.shape[0] // groups, w.shape[1])


def _grouped(x: torch.Tensor, y: torch.Tensor, groups: int, bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x [S, G*D_g] -> [G, S, D_g(+1)], y [S, G*C_g] -> [G, S, C_g] (conv group j reads channel block j)."""
    xs = x.reshape(x.shape[0], groups, -1).transpose(0, 1)
    if bias:
        xs = torch.cat([xs, torch.ones(groups, x.shape[0], 1, dtype=x.dtype)], dim=2)
    return xs, y.reshape(y.shape[0], groups, -1).transpose(0, 1)


def _held_rows(images: int, per_image: int, offset: int, holdout: int) -> torch.Tensor:
    """[images * per_image] bool: rows of every ``holdout``-th calibration image (counted across batches)."""
    if holdout <= 0:
        return torch.zeros(images * per_image, dtype=torch.bool)
    held = (torch.arange(images) + offset) % holdout == holdout - 1
    return held.repeat_interleave(per_image)


def _assign(layer: nn.Module, w: torch.Tensor, groups: int) -> None:
    w = w.reshape(-1, w.shape[2])                                                     # [C_out, D_g(+1)]
    if layer.bias is not None:
        layer.bias.copy_(w[:, -1].to(layer.bias.dtype))
        w = w[:, :-1]
    layer.weight.copy_(w.reshape(layer.weight.shape).to(layer.weight.dtype))


def _heldout_output_error(model: nn.Module, batches: Callable[[], Iterable[torch.Tensor]],
                          reference: list[torch.Tensor | None], holdout: int) -> float | None:
    """||f(x) - f_orig(x)||^2 / ||f_orig(x)||^2 over the held-out images (None without any)."""
    if holdout <= 0:
        return None
    err = norm = 0.0
    offset = 0
    for images, ref in zip(batches(), reference):
        held = (torch.arange(images.shape[0]) + offset) % holdout == holdout - 1
        offset += images.shape[0]
        if ref is None or not held.any():
            continue
        out = model(images[held]).float()
        err += float((out - ref[held]).pow(2).sum())
        norm += float(ref[held].pow(2).sum())
    return err / max(norm, 1e-12) if norm > 0 else None


def _reverted(fit: LayerFit, note: str) -> LayerFit:
    values = fit.to_dict()
    if fit.status == "refit":
        values.update(status="reverted", error_after=fit.error_before, heldout_after=fit.heldout_before)
    values["note"] = "; ".join(n for n in (fit.note, note) if n)
    return LayerFit(**values)


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
