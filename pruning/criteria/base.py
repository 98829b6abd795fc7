"""The scorer interface every criterion implements, and the registry that names them.

A criterion is a small class: ``__init__`` takes its hyperparameters, ``score(ctx)`` returns an importance per
channel of every prunable channel group (higher = keep), or per removable block for layer pruning. Scorers
never prune, never write files and never decide how many channels go: ``allocate.py`` plans, ``surgery.py``
cuts. See ``../shared/CRITERIA.md`` for what each criterion computes.

Example::

    scorer = create_criterion("l1")
    result = scorer.score(ctx)              # ctx: ScoringContext built by pruning.compress
    result.channels["layer1.0.conv1"]       # tensor [16], one importance per output channel
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, ClassVar, Iterator

import torch
import torch.nn as nn

from pruning.criteria.params import COMMON_RANGES, Range, check_params
from pruning.errors import SpecError, clip


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be removed together: the output channels of ``name`` (a conv or linear layer) and
    every dimension coupled to them (its BatchNorm, the next layer's input channels, residual partners).

    ``members`` lists (module name, "out" | "in") for every conv / linear / batch-norm whose width moves with
    the group; ``consumers`` are the conv / linear layers whose *input* channels shrink (they are re-fitted by
    reconstruction).

    ``interleave`` > 1 when grouped convolutions (or GroupNorm) read or write the channels: they split into
    ``interleave`` equal blocks and a removal takes the same offset in every block. ``channel_map[i][k]`` lists
    the channels of member ``i`` that group channel ``k`` is (several for a flatten into a linear layer, an offset
    after a concatenation); empty = the identity.
    """

    name: str
    size: int
    members: tuple[tuple[str, str], ...]
    consumers: tuple[str, ...]
    interleave: int = 1
    channel_map: tuple[tuple[tuple[int, ...], ...], ...] = field(default=(), compare=False, repr=False)

    def member_ratio(self, index: int) -> float:
        """Channels of member ``index`` per group channel (1 unless a flatten or a split changes it)."""
        return self._ratios[index] if self.channel_map else 1.0

    @cached_property
    def _ratios(self) -> tuple[float, ...]:
        return tuple(sum(len(c) for c in per) / max(self.size, 1) for per in self.channel_map)

    def member_channels(self, index: int, group_channels) -> list[int]:
        """The channels of member ``index`` that ``group_channels`` are, sorted."""
        if not self.channel_map:
            return sorted(group_channels)
        per = self.channel_map[index]
        return sorted({c for k in group_channels for c in per[k]})


@dataclass(frozen=True)
class Batch:
    """One calibration batch: normalised images [N, C, H, W], labels [N], optional concept masks [N, H, W]."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None


@dataclass
class ScoringContext:
    """Everything a scorer may read. The model must not be modified (``copy.deepcopy`` it to experiment)."""

    model: nn.Module                         # the unpruned model, eval mode, on CPU
    groups: list[ChannelGroup]               # prunable channel groups (protected layers already excluded)
    blocks: list[str]                        # shape-preserving blocks that layer pruning may remove
    batches: Callable[[], Iterator[Batch]]   # a fresh pass over the calibration set, batch by batch
    input_shape: tuple[int, int, int]        # C, H, W
    num_classes: int
    seed: int = 0
    keep_fraction: float | None = None       # rough fraction of channels that will be kept (for sequential
                                             # criteria that prune as they go); None if unknown
    graph: Any = None                        # torch_pruning.DependencyGraph of ``model`` (for TP importances)

    def group(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)


@dataclass
class ScoreResult:
    """What a scorer found. Every tensor is 1-D float with one entry per channel of its group."""

    channels: dict[str, torch.Tensor] = field(default_factory=dict)      # group name -> [size] importance
    blocks: dict[str, float] = field(default_factory=dict)               # block name -> importance
    # Why each unit got its score, JSON-able: per group a list with one dict per channel (votes, cluster id,
    # similarity partner, ...); per block one dict (probe accuracy, gain, ...).
    reasons: dict[str, list[dict]] = field(default_factory=dict)
    block_reasons: dict[str, dict] = field(default_factory=dict)
    # Activation-maximization images per group, [size, C, H, W] in [0, 1], when the criterion made them.
    visualizations: dict[str, torch.Tensor] = field(default_factory=dict)
    # Blocks the criterion says should go regardless of the target (e.g. probe gain below its threshold).
    remove_blocks: list[str] = field(default_factory=list)


class Scorer(ABC):
    """Base class: subclasses set ``name``, ``kind`` and ``paper``, and implement ``score``."""

    name: ClassVar[str]
    kind: ClassVar[str] = "channel"     # "channel" (filters) or "block" (layer pruning)
    paper: ClassVar[str] = ""
    needs_data: ClassVar[bool] = True
    # How far the re-fit may overrule the order (``redundant_features.guide_by_refit``): at each removal, the
    # fraction of the alive channels, lowest-scored first, among which the one the kept units recover best goes.
    # 0 = the criterion's order as it is. Set per call with the ``refit_window`` parameter every criterion takes.
    default_refit_window: ClassVar[float] = 0.0
    # Allowed values of the numeric parameters (``pruning.criteria.params``), checked by ``create_criterion`` before
    # the scorer is built; ``COMMON_RANGES`` cover refit_window, depth_share, seed and max_batches.
    param_ranges: ClassVar[dict[str, Range]] = {}

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.refit_window = self.default_refit_window
        # Block criteria: the share of the target that removing blocks takes. Below 1, the same scorer also scores
        # ``ctx.groups`` and the rest of the target is removed as channels (``pruning.compress``).
        self.depth_share = 1.0

    @property
    def scores_channels(self) -> bool:
        """Whether ``score`` ranks the channels of ``ctx.groups`` in this configuration."""
        return self.kind == "channel" or self.depth_share < 1.0

    @abstractmethod
    def score(self, ctx: ScoringContext) -> ScoreResult:
        """Return importances for ``ctx.groups`` (channel criteria) or ``ctx.blocks`` (block criteria)."""

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "paper": self.paper, "params": dict(self.params)}


_CRITERIA: dict[str, type[Scorer]] = {}


def register_criterion(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make ``cls`` selectable by ``cls.name``."""
    if cls.name in _CRITERIA:
        raise ValueError(f"criterion {cls.name!r} is registered twice")
    _CRITERIA[cls.name] = cls
    return cls


def list_criteria(kind: str | None = None) -> list[str]:
    return sorted(n for n, c in _CRITERIA.items() if kind is None or c.kind == kind)


def is_criterion(name: str) -> bool:
    return name in _CRITERIA


def criterion_class(name: str) -> type[Scorer]:
    try:
        return _CRITERIA[name]
    except (KeyError, TypeError):
        raise SpecError(f"unknown criterion {clip(name, 80)!r}; choose one of {', '.join(list_criteria())}") from None


def criterion_parameters(name: str) -> dict[str, Any]:
    """The parameters criterion ``name`` takes, with their defaults (``inspect.Parameter.empty`` when required)."""
    import inspect

    cls = criterion_class(name)
    signature = inspect.signature(cls.__init__)
    own = {p.name: p.default for p in signature.parameters.values()
           if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if cls.kind == "channel":
        own["refit_window"] = cls.default_refit_window
    return own


def _refit_window(value: Any) -> float:
    window = float(value)
    if not 0.0 <= window <= 1.0:
        raise ValueError(f"refit_window must be between 0 and 1, got {value!r}")
    return window


def _depth_share(value: Any) -> float:
    share = float(value)
    if not 0.0 < share <= 1.0:
        raise ValueError(f"depth_share must be in (0, 1] (1 = the whole target by removing blocks), got {value!r}")
    return share


def _parameters_text(name: str) -> str:
    import inspect

    shown = [key if default is inspect.Parameter.empty else f"{key} (default {clip(repr(default), 40)})"
             for key, default in criterion_parameters(name).items()]
    return ", ".join(shown) or "none"


def create_criterion(name: str, **params: Any) -> Scorer:
    """The scorer ``name`` with ``params``; ``SpecError`` naming the valid parameters when one is unknown or bad."""
    cls = criterion_class(name)
    unknown = sorted(set(params) - set(criterion_parameters(name)))
    if unknown:
        listed = ", ".join(repr(clip(key, 40)) for key in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise SpecError(f"criterion {name!r} has no parameter {listed}; its parameters are: {_parameters_text(name)}")
    try:
        params = check_params(params, {**COMMON_RANGES, **cls.param_ranges}, criterion_parameters(name))
        window = params.pop("refit_window", None)
        scorer = cls(**params)
        if window is not None:            # checked above (COMMON_RANGES)
            scorer.refit_window = scorer.params["refit_window"] = float(window)
        return scorer
    except (TypeError, ValueError) as exc:
        raise SpecError(f"bad parameter value for criterion {name!r} ({clip(exc, 200)}); its parameters are: "
                        f"{_parameters_text(name)}") from None


def normalise_scores(scores: torch.Tensor) -> torch.Tensor:
    """Scale a group's scores to mean 1 (so groups of different magnitude rank together); float64 [size]."""
    s = scores.detach().double().flatten()
    mean = s.abs().mean()
    return s / mean if mean > 0 else torch.ones_like(s)


ScorerFactory = Callable[..., Scorer]
