"""The pruning plan: what to remove, as data. JSON in, JSON out; never pickled modules.

A plan names the base architecture and, per channel group (keyed by its root layer), the indices of the
output channels that stay, counted in the *original* layer; plus the residual blocks replaced by the identity.
``surgery.apply_plan`` replays it on a freshly built base model, so a compressed model is stored as
``plan.json`` + a weights-only ``weights.pt`` and reloads without any code from the file.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pruning.errors import ModelError

PLAN_FORMAT = "interprune.plan/v1"


@dataclass
class PruningPlan:
    arch: str
    num_classes: int
    input_shape: tuple[int, int, int]
    kept: dict[str, list[int]] = field(default_factory=dict)        # group root -> kept channel indices
    original: dict[str, int] = field(default_factory=dict)          # group root -> channels before pruning
    removed_blocks: list[str] = field(default_factory=list)         # blocks replaced by nn.Identity
    criterion: str = ""
    notes: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)    # how the base architecture was obtained (``pruning.intake``):
                                                  # {"kind": "zoo" | "timm" | "python" | "onnx", "arch", ...};
                                                  # empty in plans written before: a zoo name in ``arch``

    def removed(self, name: str) -> list[int]:
        keep = set(self.kept[name])
        return [i for i in range(self.original[name]) if i not in keep]

    def widths(self) -> dict[str, tuple[int, int]]:
        """group root -> (kept, original)."""
        return {name: (len(self.kept[name]), self.original[name]) for name in self.kept}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["format"] = PLAN_FORMAT
        data["input_shape"] = list(self.input_shape)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "PruningPlan":
        if data.get("format") != PLAN_FORMAT:
            raise ModelError(f"not an interprune plan (format {data.get('format')!r}, expected {PLAN_FORMAT!r})")
        try:
            plan = cls(arch=str(data["arch"]), num_classes=int(data["num_classes"]),
                       input_shape=tuple(int(v) for v in data["input_shape"]),
                       kept={str(k): [int(i) for i in v] for k, v in data.get("kept", {}).items()},
                       original={str(k): int(v) for k, v in data.get("original", {}).items()},
                       removed_blocks=[str(b) for b in data.get("removed_blocks", [])],
                       criterion=str(data.get("criterion", "")), notes=dict(data.get("notes", {})),
                       source=dict(data.get("source") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"malformed plan: {exc}") from None
        for name, kept in plan.kept.items():
            if name not in plan.original or not kept or len(set(kept)) != len(kept) \
                    or min(kept) < 0 or max(kept) >= plan.original[name]:
                raise ModelError(f"malformed plan: kept channels of {name} are not distinct indices in "
                                 f"0..{plan.original.get(name, 0) - 1}")
        return plan

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "PruningPlan":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as exc:
            raise ModelError(f"{Path(path).name} is not valid JSON: {exc}") from None
