"""The job spec: what one job does, as frozen dataclasses (the engine's ``CompressSpec`` plus export, benchmark and
gate). ``JobSpec.from_dict`` reads the dict form the service stores and sends; unknown fields are refused."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from pruning.spec import CompressSpec, DataSpec, FinetuneSpec, ModelSpec, PruneSpec, ReconstructSpec
from pruning.errors import SpecError


LOCAL_PROVIDERS = {"local:cpu": "cpu", "local:cuda": "cuda", "local:tensorrt": "tensorrt"}   # target -> ORT provider
OPSETS = range(7, 31)       # ONNX opsets a job may ask for (torch.onnx exports these)


@dataclass(frozen=True)
class ExportSpec:
    onnx: bool = True
    opset: int = 17             # one of OPSETS
    slim: bool = False
    parity_atol: float = 1e-4
    parity_images: int = 256


@dataclass(frozen=True)
class BenchmarkSpec:
    targets: tuple[str, ...] = ("local:cpu",)      # local:cpu | local:cuda | agent:NAME
    batch_sizes: tuple[int, ...] = (1, 64)
    threads: int | None = None
    seconds_per_batch: float = 3.0
    original: bool = True                          # also benchmark the unpruned model, for the speedup
    agent_eval_images: int = 2000                  # agent targets measure accuracy on this many evaluation images
    precision: str = "fp32"                        # on agents with TensorRT: fp32 | fp16 | int8
    agents: dict[str, str] = field(default_factory=dict)             # agent name -> HOST:PORT (set by the server)
    agent_token_files: dict[str, str] = field(default_factory=dict)  # agent name -> token file (set by the server)


@dataclass(frozen=True)
class GateSpec:
    max_accuracy_drop: float | None = None         # top-1, as a fraction (0.01 = one point)


@dataclass(frozen=True)
class JobSpec:
    compress: CompressSpec
    export: ExportSpec = field(default_factory=ExportSpec)
    benchmark: BenchmarkSpec = field(default_factory=BenchmarkSpec)
    gate: GateSpec = field(default_factory=GateSpec)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "JobSpec":
        try:
            c = data["compress"]
            compress_spec = CompressSpec(
                model=_build(ModelSpec, c["model"]), data=_build(DataSpec, c.get("data", {})),
                prune=_build(PruneSpec, c.get("prune", {})),
                reconstruct=_build(ReconstructSpec, c.get("reconstruct", {})),
                finetune=_build(FinetuneSpec, c.get("finetune", {})), seed=int(c.get("seed", 0)),
                threads=c.get("threads"))
            return cls(compress_spec, _build(ExportSpec, data.get("export", {})),
                       _build(BenchmarkSpec, data.get("benchmark", {})), _build(GateSpec, data.get("gate", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"malformed job spec: {exc}") from None


_TUPLE_FIELDS = {"input_size", "mean", "std", "protected", "targets", "batch_sizes"}


def _build(cls, values: dict):
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise SpecError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    clean = {k: (tuple(v) if k in _TUPLE_FIELDS and v is not None else v) for k, v in values.items()}
    return cls(**clean)


