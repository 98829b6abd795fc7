"""What one ``pruning.compress.compress`` call produces and how it reports: the result, progress events and the
stage clock (``StageRunner``) that the pipeline's stages (``compress``, ``stages``) share."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from pruning import data as data_mod
from pruning.criteria import ScoreResult
from pruning.errors import Cancelled, EngineError, InterpruneError
from pruning.finetune import FinetuneReport
from pruning.measure import Accuracy, Cost
from pruning.plan import PruningPlan
from pruning.reconstruct import LayerFit
from pruning.sensitivity import Sensitivity
from pruning.spec import CompressSpec

# (model, C,H,W, batch) -> p90 ms; may carry ``in_turns(model, other, C,H,W, batch) -> ((p50, p90), (p50, p90))``,
# the two measured with their runs interleaved (``pipeline.benchmark.latency_probe``'s does)
LatencyProbe = Callable[[nn.Module, tuple[int, int, int], int], float]
# (model, C,H,W, number of images to evaluate) -> a function from a batch of preprocessed images to the model's
# logits that runs faster than the module itself (e.g. the model in ONNX Runtime), or None: run the module
Inference = Callable[[nn.Module, tuple[int, int, int], int], Callable[[torch.Tensor], torch.Tensor] | None]


@dataclass(frozen=True)
class ProgressEvent:
    stage: str
    fraction: float        # of this stage, 0..1
    message: str


@dataclass
class CompressResult:
    spec: CompressSpec
    original: nn.Module
    model: nn.Module
    plan: PruningPlan
    splits: data_mod.Splits
    preprocess: data_mod.Preprocess
    input_shape: tuple[int, int, int]
    accuracy: dict[str, Accuracy] = field(default_factory=dict)   # original, pruned, reconstructed, finetuned
    cost: dict[str, Cost] = field(default_factory=dict)           # original, compressed
    timings: dict[str, float] = field(default_factory=dict)       # seconds per stage
    scores: ScoreResult | None = None
    block_scores: ScoreResult | None = None
    sensitivity: Sensitivity | None = None                          # per-group loss curves ("sensitivity")
    fits: list[LayerFit] = field(default_factory=list)
    finetune: FinetuneReport | None = None
    layers: list[dict] = field(default_factory=list)             # per group: kept / original width
    latency_search: list[dict] = field(default_factory=list)     # probes of a latency-budget search
    latency_allocation: dict | None = None                       # allocation "latency": target, predicted and
                                                                 # measured p90 (pruning.latency_alloc)
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)             # the job did less than asked (a shortfall, ...)

    @property
    def final_accuracy(self) -> Accuracy:
        for stage in ("finetuned", "reconstructed", "pruned"):
            if stage in self.accuracy:
                return self.accuracy[stage]
        return self.accuracy["original"]

    def reduction(self, metric: str = "macs") -> float:
        before = getattr(self.cost["original"], metric)
        return 1.0 - getattr(self.cost["compressed"], metric) / before


Progress = Callable[[ProgressEvent], None]


class StageRunner:
    """Holds the callbacks and the stage clock for one ``compress`` call."""

    def __init__(self, progress: Progress | None, should_stop: Callable[[], bool] | None) -> None:
        self.progress = progress
        self.should_stop = should_stop
        self.timings: dict[str, float] = {}

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("compression cancelled")

    def emit(self, stage: str, fraction: float, message: str = "") -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(stage, fraction, message))

    def stage(self, name: str):
        runner = self

        class _Clock:
            def __enter__(self):
                runner.check()
                runner.emit(name, 0.0, "started")
                self.start = time.perf_counter()

            def __exit__(self, exc_type, exc, tb):
                runner.timings[name] = runner.timings.get(name, 0.0) + time.perf_counter() - self.start
                if exc_type is None:
                    runner.emit(name, 1.0, f"done in {runner.timings[name]:.1f}s")
                elif issubclass(exc_type, Exception) and not issubclass(exc_type, (InterpruneError, MemoryError)):
                    raise EngineError(f"stage {name!r} failed: {exc_type.__name__}: "
                                      f"{str(exc).splitlines()[0][:300] if str(exc) else 'no message'}") from exc
        return _Clock()
