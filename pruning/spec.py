"""The engine's job spec as frozen dataclasses, free of torch: the CLI, the client and the service read and write
specs without importing the engine. ``pruning.compress.compress(spec)`` runs one.

    CompressSpec(model=ModelSpec("cifar/resnet56", weights="resnet56.th"), data=DataSpec("cifar10"),
                 prune=PruneSpec(criterion="l1", target_reduction=0.5))
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from pruning.errors import SpecError


ONNX_ARCH = "onnx"


@dataclass(frozen=True)
class ModelSpec:
    arch: str                               # a zoo name ("cifar/resnet56"), "timm/NAME", "python:PKG.MODULE:FACTORY",
                                            # or "onnx" (then model_file is the model)
    weights: str | None = None              # weights-only checkpoint (.pt/.pth/.th or .safetensors); None = the
                                            # architecture's random init (an ONNX model carries its own)
    num_classes: int | None = None          # default: the architecture's (python:/timm/: passed as num_classes=)
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)   # JSON-able keyword arguments of the factory
                                                                   # (python:, timm/); recorded in the plan
    input_shape: tuple[int, int, int] | None = None   # C, H, W the weights were trained with; None = the
                                            # architecture's (zoo entry, the factory's pretrained_cfg, the ONNX
                                            # input), else 3x224x224. Mean/std: DataSpec, else the same sources.
    model_file: str | None = None           # arch "onnx": the .onnx file (architecture and weights)
    external_data: Mapping[str, str] = field(default_factory=dict)  # arch "onnx" on a server: location -> the file
                                            # the job brought for it, at that location in model_file's folder;
                                            # only these are read (a local run reads any file inside that folder)

    def __post_init__(self) -> None:        # JSON round trips turn tuples into lists
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        object.__setattr__(self, "arch_kwargs", dict(self.arch_kwargs or {}))
        object.__setattr__(self, "external_data", {str(k): str(v) for k, v in dict(self.external_data or {}).items()})


@dataclass(frozen=True)
class DataSpec:
    path: str | None = None                 # None = the bundled sample (scikit-learn digits)
    calibration_images: int = 2000
    evaluation_images: int | None = None    # None = the whole test set (or 20% of a single pool)
    finetune_images: int | None = None      # size of the fine-tune pool; None = all that is left
    input_size: tuple[int, int] | None = None   # resize to (H, W); None = the model's
    mean: tuple[float, ...] | None = None   # None = the architecture's
    std: tuple[float, ...] | None = None
    batch_size: int = 200


@dataclass(frozen=True)
class PruneSpec:
    criterion: str = "l1"
    criterion_params: Mapping[str, Any] = field(default_factory=dict)
    target_metric: str = "macs"             # "macs" | "params" | "latency" (the p90 at latency_batch on
                                            # latency_target, measured; allocation "latency")
    target_reduction: float = 0.5           # fraction of the original model's cost to remove
    allocation: str = "sensitivity"         # "uniform" | "global" | "sensitivity" | "latency" (pruning.allocate)
    round_to: int | None = None             # kept widths are multiples of this (1 = no rounding); None = automatic:
                                            # the service picks by target and precision (32 for int8 on a GPU,
                                            # else 8), ``compress`` alone uses 8
    min_channels: int = 1
    protected: tuple[str, ...] = ()         # layers whose output channels stay (beyond the architecture's)
    layer_criterion: str | None = None      # a block criterion run first (e.g. "layer_probe"), then `criterion`
    layer_criterion_params: Mapping[str, Any] = field(default_factory=dict)
    layer_share: float = 0.5                # share of the target that block removal may take when combined
    latency_budget_ms: float | None = None  # instead of a fixed reduction: p90 latency to reach (measured by
                                            # the caller's latency probe), searched over MACs reductions (allocation
                                            # "latency": aimed at with the layer table, then measured)
    latency_batch: int = 1
    latency_target: str = "local:cpu"
    latency_margin: float = 0.05            # the search aims at budget x (1 - margin): measurements move by a few %
    allow_shortfall: bool = False           # a target the model cannot reach: prune to the largest reachable
                                            # reduction and record a warning, instead of failing (TargetUnreachable)
    block_removal: str = "auto"             # may the knapsack remove a residual block whole instead of narrowing
                                            # it: "auto" (allocation latency: yes; others: no), "on" (sensitivity
                                            # or latency), "off"; each removable block's skip is then measured
    sensitivity_images: int | None = None   # calibration images the sensitivity/latency knapsack's loss curves
                                            # are measured on (a forward pass each per group and depth); None =
                                            # automatic: 256, fewer (not below 64) for a model whose forward pass
                                            # of 256 images would cost more than 96 G MACs (pruning.stages)


BLOCK_REMOVAL = ("auto", "on", "off")
MAX_SENSITIVITY_IMAGES = 10_000
KNAPSACK_ALLOCATIONS = ("sensitivity", "latency")    # the allocations that weigh measured loss against cost


def offers_block_moves(prune: PruneSpec) -> bool:
    """Whether the allocation may remove a residual block whole (``PruneSpec.block_removal``)."""
    return prune.allocation in KNAPSACK_ALLOCATIONS and (
        prune.block_removal == "on" or (prune.block_removal == "auto" and prune.allocation == "latency"))


def check_allocation(prune: PruneSpec) -> None:
    """Raise ``SpecError`` for a target and an allocation that do not go together (checked without torch, by the
    engine and at submit time): allocation "latency" removes predicted latency, so it needs a latency target or a
    budget; a latency target needs the "latency" allocation (the only one with a latency model)."""
    latency_target = prune.target_metric == "latency"
    if prune.block_removal not in BLOCK_REMOVAL:
        raise SpecError(f"block_removal must be one of {', '.join(BLOCK_REMOVAL)}, got {prune.block_removal!r}")
    if prune.block_removal == "on" and prune.allocation not in KNAPSACK_ALLOCATIONS:
        raise SpecError(f"--block-removal on needs a knapsack that weighs a block's skip against narrowing it: "
                        f"--allocation sensitivity or latency, not {prune.allocation!r}")
    if prune.allocation == "latency":
        if prune.latency_budget_ms is None and not latency_target:
            raise SpecError(f"allocation 'latency' removes latency, but the target is a {prune.target_metric} "
                            "reduction (--target-macs 0.5 unless another target is given): give --target-latency "
                            "FRACTION (of the measured p90 latency to remove) or "
                            "--latency-budget MS; for a MACs or parameter target use --allocation sensitivity")
        if prune.layer_criterion:
            raise SpecError("allocation 'latency' plans channel widths only; block removal (--layer-criterion) is "
                            "planned in MACs: drop --layer-criterion or use --allocation sensitivity")
    elif latency_target and prune.latency_budget_ms is None:
        raise SpecError(f"a latency target needs --allocation latency (the per-layer latency table predicts what each "
                        f"width costs); allocation {prune.allocation!r} plans by MACs or parameters: use --target-macs")


@dataclass(frozen=True)
class ReconstructSpec:
    enabled: bool = True
    positions_per_image: int = 8
    ridge: float = 1e-3                     # relative to trace(X^T X) / d
    batchnorm: str = "auto"                 # re-estimate BN statistics: "auto" (only without reconstruction),
                                            # "on", "off"  — measured: re-estimating after the re-fit costs ~1 pt
    max_memory_mb: float = 1024             # one layer's least-squares working set; half of it bounds the
                                            # re-fit's forward passes (images per pass) and cached block inputs.
                                            # Larger systems are solved in kernel form, subsampled or skipped with
                                            # a note. 1024: VGG-16 at 224x224 compresses in ~3.4 GB peak RSS
    scope: str = "downstream"               # which layers are re-fitted: "consumers" (those that lost input
                                            # channels) or "downstream" (every conv / linear from the first of
                                            # them on: the error that reaches unpruned layers is corrected too)
    holdout: int = 5                        # every n-th calibration image is held out to pick the ridge and to
                                            # check the re-fit (a layer / the model keeps its weights if worse)


@dataclass(frozen=True)
class FinetuneSpec:
    epochs: float | None = None
    steps: int | None = None
    images: int | None = None               # images seen
    minutes: float | None = None
    batch_size: int = 128
    lr: float = 0.01                        # peak, reached after a linear warm-up, then cosine decay to 0
    distillation: str = "mse"               # "mse": match the teacher's logits; "kl": softened by `temperature`
    temperature: float = 4.0                # "kl" only
    alpha: float = 1.0                      # weight of the distillation term (1 - alpha: cross-entropy on labels)
    augment: bool = True
    validation_images: int = 500            # carved from the fine-tune split for early stopping

    def budget(self):
        """The ``pruning.finetune.FinetuneBudget`` of these limits."""
        from pruning.finetune import FinetuneBudget

        return FinetuneBudget(self.epochs, self.steps, self.images, self.minutes)


@dataclass(frozen=True)
class CompressSpec:
    model: ModelSpec
    data: DataSpec = field(default_factory=DataSpec)
    prune: PruneSpec = field(default_factory=PruneSpec)
    reconstruct: ReconstructSpec = field(default_factory=ReconstructSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    seed: int = 0
    threads: int | None = None              # torch intra-op threads; None = leave as is

    def to_dict(self) -> dict:
        return asdict(self)
