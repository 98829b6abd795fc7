"""The measuring side of latency-aware allocation: per-layer latencies on a target, cached on disk, and the
``pruning.latency_model.LatencyModel`` built from them.

One layer is measured as a tiny model: the conv followed by BatchNorm and ReLU (the export folds the BatchNorm into
the conv and ONNX Runtime fuses the ReLU, as in the whole model), or the linear alone, exported to ONNX and timed by
the project's protocol (``exporters.benchmark_onnxruntime``) with short settings (``LAYER_PROTOCOL``: the median
of at least 20 runs after a short warm-up). Figures are ms per batch; p50, p90 and the minimum are kept, the p50 is
used unless ``statistic`` says otherwise.

``method`` "marginal" times the layer as a difference instead: a model of ``copies`` copies reading the same input,
their outputs summed (ReLU after the sum, so the runtime folds each add into the next conv), minus the model of one,
divided by ``copies - 1`` (``marginal``). What a one-layer model pays once per call — the session's overhead, the
input and output copies, the layout conversions at the model's edges — cancels; what is left is what one more such
layer costs inside a model. Each shape is timed twice (two models), so a cold table takes about ``copies + 1``
times as long; the two methods are cached apart.

The cache is one JSON file per (target, ONNX Runtime version, device name, threads) under ``cache_dir`` (default
``~/.cache/interprune/latency``), keyed inside by ``LayerShape.key()``; a second job on the same target measures
only shapes it has not seen. Whole-model figures (the anchor) are cached too, keyed by the exported graph's
structure (operators, attributes and weight shapes, not weight values).

Example::

    table = measure_layer_table(model, (3, 32, 32), batch=64, round_to=8, target="local:cpu", threads=2)
    table.cost("latency", widths_removed(groups, counts))     # ms
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Collection

import torch
import torch.nn as nn

from pipeline.benchmark import protocol_settings
from pipeline.spec import LOCAL_PROVIDERS
from pruning.cost_model import CostModel
from pruning.errors import SpecError
from pruning.latency_model import LatencyModel, LayerShape

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("~/.cache/interprune/latency")
#: ``measure_latency`` settings for one layer: short, since a table holds tens to hundreds of shapes.
LAYER_PROTOCOL = dict(warmup_seconds=0.05, min_runs=20, min_seconds_per_batch=0.1, max_seconds_per_batch=0.5)
#: Bump when the way a layer is measured changes: older cache files are then ignored.
PROTOCOL_VERSION = 1
TABLE_TARGETS = ("local:cpu", "local:cuda")


METHODS = ("alone", "marginal")


def layer_module(shape: LayerShape, copies: int = 1) -> tuple[nn.Module, tuple[int, int, int]]:
    """The tiny model that stands for ``shape`` and its (C, H, W) input (a linear reads (1, positions, features)
    and flattens it when there is one position). ``copies`` > 1: that many copies of the layer on the same input,
    outputs summed (then the ReLU), for ``method`` "marginal"."""
    if shape.kind == "conv":
        def conv() -> nn.Module:
            return nn.Sequential(nn.Conv2d(shape.in_channels, shape.out_channels, shape.kernel, shape.stride,
                                           shape.padding, shape.dilation, shape.groups, bias=shape.bias),
                                 nn.BatchNorm2d(shape.out_channels))
        return nn.Sequential(_Summed([conv() for _ in range(copies)]), nn.ReLU()), \
            (shape.in_channels, shape.height, shape.width)
    if shape.kind == "linear":
        positions = shape.height * shape.width
        head = nn.Flatten(1) if positions == 1 else nn.Flatten(1, 2)     # (N, 1, P, C) -> (N, C) or (N, P, C)
        linears = [nn.Linear(shape.in_channels, shape.out_channels, bias=shape.bias) for _ in range(copies)]
        return nn.Sequential(head, _Summed(linears)), (1, positions, shape.in_channels)
    raise SpecError(f"latency tables measure conv and linear layers, not {shape.kind!r}")


class _Summed(nn.Module):
    """Several branches on one input, outputs added (one branch: the branch itself)."""

    def __init__(self, branches: list[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


def marginal(one: dict, many: dict, copies: int, floor: float = 0.05) -> dict:
    """What one more layer costs: (T(copies) - T(1)) / (copies - 1) for p50, p90 and the minimum, at least
    ``floor`` x the one-layer figure (a difference of two noisy timings can come out at or below zero)."""
    out = {}
    for stat in ("p50_ms", "p90_ms", "min_ms"):
        out[stat] = max((many[stat] - one[stat]) / (copies - 1), floor * one[stat])
    out["stable"] = bool(one["stable"] and many["stable"])
    out["alone_p50_ms"] = one["p50_ms"]
    return out


class LayerLatencyTable:
    """``LayerShape -> p50 ms`` on one target, measured on first use and kept in the on-disk cache.

    ``measurements`` counts the shapes this object measured (0 when everything came from the cache)."""

    def __init__(self, target: str = "local:cpu", threads: int | None = None,
                 cache_dir: str | Path | None = DEFAULT_CACHE_DIR, scratch: str | Path | None = None,
                 statistic: str = "p50_ms", method: str = "alone", copies: int = 4):
        if statistic not in ("p50_ms", "p90_ms", "min_ms"):
            raise SpecError(f"layer latency statistic must be p50_ms, p90_ms or min_ms, got {statistic!r}")
        if method not in METHODS or copies < 2:
            raise SpecError(f"layer latency method must be one of {', '.join(METHODS)} (copies >= 2), got "
                            f"{method!r} with {copies} copies")
        self.statistic, self.method, self.copies = statistic, method, copies
        self.provider = _provider(target)
        self.target = target
        self.threads = threads or os.cpu_count() or 1
        self.key = _cache_key(target, self.provider, self.threads, method if method == "alone" else
                              f"{method}{copies}")
        self.path = None
        if cache_dir is not None:
            digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
            slug = re.sub(r"[^A-Za-z0-9]+", "-", target).strip("-")
            self.path = Path(cache_dir).expanduser() / f"{slug}-{digest}.json"
        # without a scratch folder: a temporary one, removed when the table is garbage-collected (or at exit)
        self._own_scratch = None if scratch else tempfile.TemporaryDirectory(prefix="interprune-latency-")
        self._scratch = Path(scratch) if scratch else Path(self._own_scratch.name)
        self.entries: dict[str, Any] = self._load()
        self.measurements = 0
        self.measure_seconds = 0.0

    def __call__(self, shape: LayerShape) -> float:
        key = shape.key()
        if key not in self.entries:
            self.entries[key] = self._measure(*layer_module(shape), shape.batch, LAYER_PROTOCOL)
            if self.method == "marginal":
                many = self._measure(*layer_module(shape, self.copies), shape.batch, LAYER_PROTOCOL)
                self.entries[key] = marginal(self.entries[key], many, self.copies)
            self._save({key: self.entries[key]})
        return float(self.entries[key][self.statistic])

    def whole_model(self, model: nn.Module, input_shape: tuple[int, int, int], batch: int,
                    seconds_per_batch: float = 3.0) -> dict[str, float]:
        """p50 / p90 ms of the whole model at ``batch`` (the jobs' protocol), from the cache when its graph was
        measured before."""
        from exporters import export_onnx

        path = export_onnx(model, self._scratch / "model.onnx", torch.zeros(1, *input_shape)).path
        key = f"model:{_graph_digest(path)}:b{batch}:t{seconds_per_batch:g}"
        if key not in self.entries:
            self.entries[key] = self._run(path, input_shape, batch, protocol_settings(seconds_per_batch))
            self._save({key: self.entries[key]})
        path.unlink(missing_ok=True)
        return dict(self.entries[key])

    # -- internals

    def _measure(self, module: nn.Module, input_shape: tuple[int, int, int], batch: int, settings: dict) -> dict:
        from exporters import export_onnx

        path = export_onnx(module, self._scratch / "layer.onnx", torch.zeros(1, *input_shape)).path
        quiet = logging.getLogger("exporters.benchmark")
        level = quiet.level
        quiet.setLevel(logging.ERROR)      # a layer's short run is often "not stable"; its median is still kept
        try:
            return self._run(path, input_shape, batch, settings)
        finally:
            quiet.setLevel(level)
            path.unlink(missing_ok=True)

    def _run(self, path: Path, input_shape, batch: int, settings: dict) -> dict[str, float]:
        from exporters import BackendUnavailable, benchmark_onnxruntime

        started = time.perf_counter()
        try:
            row = benchmark_onnxruntime(path, input_shape, (batch,), provider=self.provider, threads=self.threads,
                                        **settings)[0]
        except BackendUnavailable as exc:
            raise SpecError(f"latency table on {self.target}: {exc}") from exc
        self.measurements += 1
        self.measure_seconds += time.perf_counter() - started
        return {"p50_ms": row.p50_ms, "p90_ms": row.p90_ms, "min_ms": row.min_ms, "stable": bool(row.stable)}

    def _load(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("latency cache %s unreadable (%s); measuring again", self.path, exc)
            return {}
        return dict(data.get("entries", {})) if data.get("key") == self.key else {}

    def _save(self, new: dict[str, Any]) -> None:
        """Merge ``new`` into the file as it is now (another job may have added entries) and replace it."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entries = {**self._load(), **new}
        self.entries = {**entries, **self.entries}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"key": self.key, "entries": self.entries}, f, indent=0, sort_keys=True)
        os.replace(tmp, self.path)


def measure_layer_table(model: nn.Module, input_shape: tuple[int, int, int], batch: int, round_to: int = 8,
                        target: str = "local:cpu", threads: int | None = None,
                        cache_dir: str | Path | None = DEFAULT_CACHE_DIR, *, grid_step: int | None = None,
                        prunable: Collection[tuple[str, str]] | None = None, anchor: str = "p50",
                        seconds_per_batch: float = 3.0, cost_model: CostModel | None = None,
                        statistic: str = "p50_ms", table: LayerLatencyTable | None = None) -> LatencyModel:
    """A ``LatencyModel`` of ``model`` at ``batch`` on ``target`` with every grid shape measured (or cached).

    The grid holds widths in multiples of ``grid_step`` (default ``round_to``; a coarser multiple measures fewer
    shapes and interpolates between them) plus the full width, on the ``prunable`` (module, side) pairs (default:
    all). The constant is anchored to the whole model's ``anchor`` ("p50" or "p90") latency, measured with the
    jobs' protocol (``seconds_per_batch``). ``statistic`` picks the per-layer figure ("p50_ms", "p90_ms",
    "min_ms"); ``table`` (a ``LayerLatencyTable``) replaces target / threads / cache_dir / statistic.
    ``cost_model`` is passed through for "macs" / "params"."""
    if anchor not in ("p50", "p90"):
        raise SpecError(f"latency table anchor must be 'p50' or 'p90', got {anchor!r}")
    step = grid_step or round_to
    if step < 1 or step % max(round_to, 1):
        raise SpecError(f"latency table grid_step must be a positive multiple of round_to={round_to}, got {step}")
    table = table or LayerLatencyTable(target, threads, cache_dir, statistic=statistic)
    total = table.whole_model(model, input_shape, batch, seconds_per_batch)
    latency = LatencyModel(model, input_shape, batch, table, total[f"{anchor}_ms"], grid_step=step,
                           cost_model=cost_model, prunable=prunable)
    for shape in latency.grid_shapes():
        latency.lookup(shape)
    return latency


def _provider(target: str) -> str:
    if target not in TABLE_TARGETS:
        raise SpecError(f"latency tables are measured on {' or '.join(TABLE_TARGETS)}, not {target!r}")
    import onnxruntime as ort

    from exporters.benchmark import ORT_PROVIDERS

    provider = LOCAL_PROVIDERS[target]
    if ORT_PROVIDERS[provider][0] not in ort.get_available_providers():
        raise SpecError(f"latency table on {target}: ONNX Runtime has no {ORT_PROVIDERS[provider][0]} here "
                        f"(available: {ort.get_available_providers()}); {target} needs onnxruntime-gpu and a CUDA "
                        "GPU (pip install 'interprune[gpu]'), or measure on local:cpu")
    return provider


def _cache_key(target: str, provider: str, threads: int, method: str = "alone") -> dict[str, Any]:
    import onnxruntime as ort

    from exporters import environment

    env = environment()
    device = env.get("cpu", "") if provider == "cpu" else env.get("cuda_device", env.get("gpu_name", ""))
    key = {"target": target, "onnxruntime": ort.__version__, "device": device, "threads": threads,
           "protocol": PROTOCOL_VERSION}
    return key if method == "alone" else {**key, "method": method}      # "alone" tables keep their old files


def _graph_digest(path: Path) -> str:
    """SHA-256 of an ONNX graph without its weight values (operators, attributes, names, weight shapes)."""
    import onnx

    proto = onnx.load(str(path))
    for init in proto.graph.initializer:
        for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
            init.ClearField(name)
    proto.producer_version = ""
    return hashlib.sha256(proto.graph.SerializeToString(deterministic=True)).hexdigest()
