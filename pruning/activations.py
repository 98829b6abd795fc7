"""Post-ReLU feature maps of channel groups, streamed over the calibration set through forward hooks.

Several criteria (``../shared/CRITERIA.md``, "Shared machinery") read what each unit *does* on real images rather
than its weights: Network Dissection thresholds and masks (``dissection``), gradient x activation contributions,
probes. They all need the same thing: for every prunable channel group, the feature map of its channels after the
non-linearity, batch by batch, without ever holding the whole calibration set's maps in memory.

Which tensor is a unit's activation A_k. The rule (it holds for every conv -> BatchNorm -> ReLU in our zoo):
hook the group's root layer (``group.name``, a Conv2d or Linear) and apply to its output
  1. the BatchNorm that follows it: the first ``BatchNorm1d/2d`` registered after the root in
     ``model.named_modules()`` order, provided it is a member ``(name, "out")`` of the group (so it really normalises
     these channels); applied with its running statistics, i.e. as in eval mode, whatever mode the model is in;
  2. then ReLU.
No such BatchNorm: ReLU only. Where the real network does something else after the BatchNorm (ReLU6, or a residual
add before the ReLU, as for the last conv of a torchvision Bottleneck) this is an approximation of the tensor the
next layer sees, not that tensor; for the block-internal convs that our CIFAR ResNets prune it is exact.
A Linear root gives maps [N, C, 1, 1]; one applied to channels-last maps [N, H, W, C] (ConvNeXt) gives [N, C, H, W].

Memory. ``collect`` hands each batch's maps to a callback and drops them; ``ChannelStats`` keeps per channel a few
running sums plus a uniform random subsample of at most ``max_samples`` values (default 200,000) for quantiles, so its
memory is ``channels x max_samples x 4`` bytes (plus the batch in flight), whatever the calibration set's size.
Quantiles are exact on that subsample, and exact outright while a channel has seen no more than ``max_samples``
values.

Example::

    from pruning.activations import ChannelStats, collect
    stats = {g.name: ChannelStats(g.size, seed=0) for g in groups}
    collect(model, groups, ctx.batches(), lambda batch, maps, logits: [stats[n].update(a) for n, a in maps.items()])
    stats["layer1.0.conv1"].quantile(0.995)      # [16], the top-0.5% activation of each unit
"""
from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:   # criteria import this module, not the other way round
    from pruning.criteria.base import Batch, ChannelGroup

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)

MapCallback = Callable[["Batch", dict[str, torch.Tensor], torch.Tensor], None]


# --- which tensor ------------------------------------------------------------------------------------

def group_norm_layer(model: nn.Module, group: ChannelGroup) -> str | None:
    """Name of the BatchNorm applied to the root's output (rule in the module docstring), or None."""
    out_members = {name for name, side in group.members if side == "out"}
    seen_root = False
    for name, module in model.named_modules():
        if name == group.name:
            seen_root = True
        elif seen_root and isinstance(module, _NORMS):
            return name if name in out_members and module.num_features == group.size else None
    return None


def group_activation_fn(model: nn.Module, group: ChannelGroup) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function: root output [N, C, H, W] (or [N, C]) -> post-ReLU map [N, C, H, W] (or [N, C, 1, 1]).

    BatchNorm (if the rule finds one) uses its running statistics, as in eval mode; nothing is updated.
    """
    norm_name = group_norm_layer(model, group)
    norm = model.get_submodule(norm_name) if norm_name else None
    channels_last = isinstance(model.get_submodule(group.name), nn.Linear)

    def activation(output: torch.Tensor) -> torch.Tensor:
        x = output.detach()
        if channels_last and x.dim() > 2:              # a Linear on [N, ..., C] (ConvNeXt's pointwise layers)
            x = x.movedim(-1, 1)
            x = x if x.dim() == 4 else x.reshape(x.shape[0], x.shape[1], -1, 1)
        if norm is not None:
            x = F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                             training=norm.running_mean is None, momentum=0.0, eps=norm.eps)
        x = F.relu(x)
        return x if x.dim() == 4 else x.reshape(x.shape[0], x.shape[1], 1, 1)   # [N, C, H, W]
    return activation


# --- hooks -------------------------------------------------------------------------------------------

class FeatureTap:
    """Context manager: while open, every forward of ``model`` leaves ``tap.maps[group.name]`` = the post-ReLU map
    [N, C, H, W] of each group's channels (detached, computed inside the hook). Hooks are removed on exit."""

    def __init__(self, model: nn.Module, groups: Iterable[ChannelGroup]) -> None:
        self.model = model
        self.groups = list(groups)
        self.maps: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "FeatureTap":
        for group in self.groups:
            fn = group_activation_fn(self.model, group)

            def hook(module: nn.Module, inputs: tuple, output: torch.Tensor, name: str = group.name,
                     fn: Callable = fn) -> None:
                with torch.no_grad():
                    self.maps[name] = fn(output)
            self._handles.append(self.model.get_submodule(group.name).register_forward_hook(hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.maps.clear()


def collect(model: nn.Module, groups: Iterable[ChannelGroup], batches: Iterable[Batch], fn: MapCallback, *,
            grad: bool = False, max_batches: int | None = None) -> int:
    """One pass over ``batches``: for each, call ``fn(batch, maps, logits)`` with ``maps[group.name]`` the post-ReLU
    map [N, C, H, W] of every group, then drop the maps. Returns the number of images seen.

    ``grad=True`` runs the forward with autograd on, for callers that differentiate ``logits`` with hooks of their
    own (e.g. Grad-CAM on a copy with frozen weights, whose hook makes one feature map a leaf that requires grad, so
    only the network's tail is recorded); ``maps`` are always detached. The model's mode and weights are left as
    they are.
    """
    seen = 0
    with FeatureTap(model, groups) as tap:
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            with torch.set_grad_enabled(grad):
                logits = model(batch.images)
            fn(batch, dict(tap.maps), logits)
            tap.maps.clear()
            seen += batch.images.shape[0]
    return seen


def module_outputs_in_order(model: nn.Module, example: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape) of every submodule in the order its forward *finished* on ``example`` (a container
    finishes after its children); modules whose output is not a tensor are skipped, the model itself too.
    Runs in eval mode (restored afterwards), so BatchNorm statistics are not touched."""
    order: list[tuple[str, tuple[int, ...]]] = []
    training = model.training
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(module: nn.Module, inputs: tuple, output: object, name: str = name) -> None:
            if isinstance(output, torch.Tensor):
                order.append((name, tuple(output.shape)))
        handles.append(module.register_forward_hook(hook))
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return order


# --- statistics --------------------------------------------------------------------------------------

def quantile_rows(values: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of each row of ``values`` [C, n] -> [C], linear interpolation as ``torch.quantile``
    (which refuses inputs over 2^24 elements; this does not)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    n = values.shape[1]
    if n == 0:
        return torch.full((values.shape[0],), float("nan"))
    position = q * (n - 1)
    lo = int(position)
    hi = min(lo + 1, n - 1)
    if n - lo <= n // 4:                                                # upper tail: a small top-k is cheaper
        top = torch.topk(values, n - lo, dim=1).values                  # [C, n - lo], descending
        v_lo, v_hi = top[:, -1], top[:, n - 1 - hi]
    else:
        v_lo = torch.kthvalue(values, lo + 1, dim=1).values             # [C]
        v_hi = torch.kthvalue(values, hi + 1, dim=1).values if hi != lo else v_lo
    return v_lo + (v_hi - v_lo) * (position - lo)


class ChannelStats:
    """Streaming per-channel statistics of feature maps: count, mean, mean of squares, std, max, and a uniform
    random subsample of at most ``max_samples`` values per channel for exact-on-sample quantiles.

    The subsample is bottom-k sampling: every incoming position (image, y, x) draws a key from a generator seeded
    with ``seed``; the kept positions are the ``max_samples`` with the smallest keys seen so far, a uniform sample
    without replacement of all positions. Positions are shared by the channels of a group (one key per position),
    so each channel's sample is uniform over its own values. Memory: ``channels x max_samples`` floats for the
    sample, plus one batch's values while a merge is pending (chunks are merged only once the sample is full, or
    when it is read, so filling it costs one concatenation, not one per batch).
    """

    def __init__(self, channels: int, max_samples: int = 200_000, seed: int = 0) -> None:
        if max_samples < 1:
            raise ValueError("max_samples must be at least 1")
        self.channels = channels
        self.max_samples = max_samples
        self.count = 0                                        # values seen per channel
        self._sum = torch.zeros(channels, dtype=torch.float64)
        self._sum_sq = torch.zeros(channels, dtype=torch.float64)
        self._max = torch.full((channels,), float("-inf"))
        self._rows = torch.empty(0, channels)                 # [k, C], k <= max_samples: one row per position
        self._keys = torch.empty(0, dtype=torch.float64)      # [k]
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []   # chunks not merged yet (until filled)
        self._pending_size = 0
        self._filled = False                                  # True once more than max_samples were seen
        self._generator = torch.Generator().manual_seed(seed)

    def update(self, maps: torch.Tensor) -> None:
        """Add a batch of maps [N, C, H, W] (or [N, C])."""
        if maps.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got maps of shape {tuple(maps.shape)}")
        x = maps.detach().float()
        x = x.flatten(2) if x.dim() > 2 else x.unsqueeze(2)                  # [N, C, HW]
        self.count += x.shape[0] * x.shape[2]
        self._sum += x.sum((0, 2)).double()
        self._sum_sq += torch.linalg.vector_norm(x, 2, dim=(0, 2)).double().square()
        self._max = torch.maximum(self._max, x.amax((0, 2)))
        self._subsample(x)

    def _subsample(self, x: torch.Tensor) -> None:
        """Bottom-k update with one float64 key per position (ties are then practically impossible)."""
        hw = x.shape[2]
        keys = torch.rand(x.shape[0] * hw, generator=self._generator, dtype=torch.float64)   # [N*HW]
        if self._filled:                                              # only keys below the largest can enter
            pos = (keys < self._keys.max()).nonzero().flatten()
            keys = keys[pos]
            values = x[pos // hw, :, pos % hw]                        # [n', C], only the candidates are copied
        else:
            values = x.transpose(1, 2).reshape(-1, self.channels)     # [N*HW, C], position = n * HW + j
        self._pending.append((keys, values))
        self._pending_size += keys.numel()
        if self._pending_size > self.max_samples or self._filled:
            self._merge()

    def _merge(self) -> None:
        """Fold the pending chunks into the sample, keeping the ``max_samples`` smallest keys."""
        keys = torch.cat([k for k, _ in self._pending])
        values = torch.cat([v for _, v in self._pending])             # [n, C]
        self._pending, self._pending_size = [], 0
        if not self._filled:                                          # first time over the bound (or a read)
            keys = torch.cat([self._keys, keys])
            values = torch.cat([self._rows, values])                  # [k + n, C]
            if keys.numel() > self.max_samples:
                keep = torch.topk(keys, self.max_samples, largest=False, sorted=False).indices
                keys, values = keys[keep], values[keep]
                self._filled = True
            self._keys, self._rows = keys, values.contiguous()
            return
        old = self._keys.numel()
        combined = torch.cat([self._keys, keys])
        keep = torch.zeros(combined.numel(), dtype=torch.bool)
        keep[torch.topk(combined, self.max_samples, largest=False, sorted=False).indices] = True
        freed = (~keep[:old]).nonzero().flatten()                     # as many as enter
        enter = keep[old:].nonzero().flatten()
        self._keys[freed] = keys[enter]
        self._rows[freed] = values[enter]

    @property
    def mean(self) -> torch.Tensor:
        """Mean activation per channel, float32 [C]."""
        return (self._sum / max(self.count, 1)).float()

    @property
    def mean_sq(self) -> torch.Tensor:
        return (self._sum_sq / max(self.count, 1)).float()

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation per channel [C]."""
        mean = self._sum / max(self.count, 1)
        return (self._sum_sq / max(self.count, 1) - mean.square()).clamp_min(0).sqrt().float()

    @property
    def max(self) -> torch.Tensor:
        return self._max.clone()

    @property
    def sample(self) -> torch.Tensor:
        """The kept values [C, k], k = min(count, max_samples)."""
        if self._pending:
            self._merge()
        return self._rows.T                                           # [C, k] (a view)

    @property
    def exact(self) -> bool:
        """True while every value seen is in the sample (quantiles are then exact)."""
        return self.count <= self.max_samples

    def quantile(self, q: float) -> torch.Tensor:
        """q-quantile per channel [C] of the subsample (of all values while ``exact``)."""
        return quantile_rows(self.sample.contiguous(), q)


def stable_seed(seed: int, name: str) -> int:
    """A per-name seed that does not depend on Python's hash randomisation."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)
