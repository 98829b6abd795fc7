"""The job spec's command-line form, defined once: each ``Flag`` names the spec field(s) it sets, how to parse its
text and how to write a value back. From the table come

- ``add_spec_arguments(parser)``: the flags of ``interprune compress`` and ``interprune submit``;
- ``spec_from_args(args)``: the ``JobSpec`` they describe (unset flags leave the dataclasses' defaults);
- ``argv_from_spec(spec)``: the flags that rebuild a spec (the report's "reproduce" line).

Defaults live in the dataclasses (``pipeline.spec``, ``pruning.compress``) and nowhere else; ``--help`` shows them.
The gRPC form is ``service.core.wire``; ``tests/test_spec_flags.py`` checks flags -> spec -> proto -> spec -> flags.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, Callable

from pipeline.spec import JobSpec
from pruning.spec import ONNX_ARCH, CompressSpec, ModelSpec


# --- argument types (also used by the service commands) -------------------------------------------------

def size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected HxW like 224x224, got {text!r}")
    return int(parts[0]), int(parts[1])


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"width\": 32}}', got {text[:200]!r} "
                                         f"({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"width\": 32}}', got {text[:200]!r}")
    return value


def shape(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected C,H,W like 3,224,224, got {text[:200]!r}")
    return tuple(int(p) for p in parts)


def targets(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


# --- the table ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Flag:
    name: str                                   # --flag
    path: str                                   # dotted spec field it sets, e.g. "compress.data.mean"
    group: str
    help: str = ""
    type: Callable[[str], Any] | None = str
    kind: str = "value"                         # value | switch_off (flag sets False) | switch_on | append | params
    to_spec: Callable[[Any], Any] = lambda v: v     # parsed value -> spec value
    to_text: Callable[[Any], str] | None = None     # spec value -> flag text (default: numbers and comma lists)
    also: tuple[str, ...] = ()                  # further fields set to the same value
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    required: bool = False


def _drop_points(value: float) -> float:
    return value / 100.0


def _epochs(value: float) -> float | None:
    return value or None


FLAGS: tuple[Flag, ...] = (
    Flag("--arch", "compress.model.arch", "model", "architecture: a zoo name (see `interprune models`), timm/NAME, "
         "or python:PACKAGE.MODULE:FACTORY (a factory in an installed package)"),
    Flag("--model", "compress.model.model_file", "model", "an ONNX model to compress, instead of --arch and "
         "--weights", metavar="FILE.onnx"),
    Flag("--arch-kwargs", "compress.model.arch_kwargs", "model", "keyword arguments of a timm/ or python: "
         "factory, as a JSON object", type=json_object, metavar="JSON",
         to_text=lambda v: json.dumps(v, sort_keys=True)),
    Flag("--input-shape", "compress.model.input_shape", "model", "C,H,W the model was trained with (default: "
         "the architecture's, else 3,224,224)", type=shape, to_text=lambda v: ",".join(str(x) for x in v),
         metavar="C,H,W"),
    Flag("--weights", "compress.model.weights", "model", "weights-only checkpoint (.pt/.th state_dict or "
                                                        ".safetensors); omitted = random initialisation"),
    Flag("--num-classes", "compress.model.num_classes", "model", type=int),
    Flag("--data", "compress.data.path", "data", "folder with train*.npz/test.npz, one .npz, an ImageFolder "
         "dir/.tar/.zip, or CIFAR python batches; omitted = the bundled sample (scikit-learn digits)"),
    Flag("--calibration-images", "compress.data.calibration_images", "data", type=int),
    Flag("--eval-images", "compress.data.evaluation_images", "data", "evaluation images (default: the whole test "
                                                                     "set)", type=int),
    Flag("--finetune-pool", "compress.data.finetune_images", "data", "at most this many images in the fine-tune "
                                                                     "split", type=int),
    Flag("--input-size", "compress.data.input_size", "data", "resize images to HxW, e.g. 224x224", type=size,
         to_text=lambda v: "x".join(str(x) for x in v)),
    Flag("--mean", "compress.data.mean", "data", "per-channel mean, e.g. 0.485,0.456,0.406", type=floats),
    Flag("--std", "compress.data.std", "data", type=floats),
    Flag("--criterion", "compress.prune.criterion", "pruning", "l1, l2, random, fpgm, taylor, dissection, "
         "functionality, redundancy, layer_probe, visual_similarity"),
    Flag("--criterion-param", "compress.prune.criterion_params", "pruning", type=key_value, kind="params",
         metavar="KEY=VALUE"),
    Flag("--target-macs", "compress.prune.target_reduction", "pruning", "fraction of MACs to remove, e.g. 0.5",
         type=float),
    Flag("--target-params", "compress.prune.target_reduction", "pruning", "fraction of parameters to remove",
         type=float),
    Flag("--target-latency", "compress.prune.target_reduction", "pruning", "with --allocation latency: fraction of "
         "the latency at --latency-batch on --latency-target to remove, measured: the per-layer latency table "
         "aims, the candidate is measured in turns with the unpruned model (ratio of medians) and the aim corrected "
         "(at most four candidates; the report shows predicted and measured p90; for a hard ceiling in ms use "
         "--latency-budget)",
         type=float, metavar="FRACTION"),
    Flag("--latency-budget", "compress.prune.latency_budget_ms", "pruning", "instead of a fraction: p90 latency "
         "to reach at --latency-batch on --latency-target (searched over MACs reductions; with --allocation "
         "latency, aimed at with the layer table and checked by measuring)", type=float, metavar="MS"),
    Flag("--latency-batch", "compress.prune.latency_batch", "pruning", type=int),
    Flag("--latency-target", "compress.prune.latency_target", "pruning"),
    Flag("--latency-margin", "compress.prune.latency_margin", "pruning", "the search aims at budget x (1 - margin): "
         "latency moves by a few %% between measurements", type=float, metavar="FRACTION"),
    Flag("--allocation", "compress.prune.allocation", "pruning", "how widths are shared out: uniform (same ratio "
         "everywhere), global (by normalised score), sensitivity (least measured loss after the re-fit per MAC "
         "saved), latency (least loss per millisecond saved, from a per-layer latency table measured on "
         "--latency-target at --latency-batch and cached; a residual block may go whole; needs --target-latency or "
         "--latency-budget)",
         choices=("uniform", "global", "sensitivity", "latency")),
    Flag("--block-removal", "compress.prune.block_removal", "pruning", "may the sensitivity or latency knapsack "
         "remove a residual block whole instead of narrowing it (priced by skipping it with the next two layers "
         "re-fitted, one measurement per removable block): auto (latency only), on, off",
         choices=("auto", "on", "off")),
    Flag("--sensitivity-images", "compress.prune.sensitivity_images", "pruning", "calibration images the "
         "sensitivity (or latency) knapsack measures each layer's loss on; default: automatic, 256, fewer (not below "
         "64) for a model whose forward pass of 256 images costs more than 96 G MACs (large inputs)", type=int,
         metavar="N"),
    Flag("--round-to", "compress.prune.round_to", "pruning", "keep widths at multiples of this (1 = off); "
         "default: automatic by target and precision, 32 for --precision int8 with a GPU or agent target, else 8 "
         "(the reason is in the report)", type=int),
    Flag("--min-channels", "compress.prune.min_channels", "pruning", type=int),
    Flag("--allow-shortfall", "compress.prune.allow_shortfall", "pruning", "when the target cannot be reached, "
         "prune as far as possible and succeed with a warning (default: fail, naming the reachable reduction)",
         kind="switch_on"),
    Flag("--protect", "compress.prune.protected", "pruning", "never prune this layer's output channels",
         kind="append", metavar="LAYER"),
    Flag("--layer-criterion", "compress.prune.layer_criterion", "pruning", "block criterion run first "
                                                                          "(layer_probe), then --criterion"),
    Flag("--layer-param", "compress.prune.layer_criterion_params", "pruning", type=key_value, kind="params",
         metavar="KEY=VALUE"),
    Flag("--no-reconstruct", "compress.reconstruct.enabled", "reconstruction and fine-tuning",
         "skip the least-squares kernel re-fit", kind="switch_off"),
    Flag("--refit-memory-mb", "compress.reconstruct.max_memory_mb", "reconstruction and fine-tuning",
         "memory bound of one layer's least-squares re-fit", type=float, metavar="MB"),
    Flag("--refit-positions", "compress.reconstruct.positions_per_image", "reconstruction and fine-tuning",
         "spatial positions sampled per calibration image for the least-squares re-fit", type=int, metavar="N"),
    Flag("--refit-scope", "compress.reconstruct.scope", "reconstruction and fine-tuning",
         "re-fit only the layers that lost inputs (consumers) or every layer after the first of them (downstream)",
         choices=("consumers", "downstream")),
    Flag("--batchnorm", "compress.reconstruct.batchnorm", "reconstruction and fine-tuning",
         "re-estimate BatchNorm statistics (auto: only without reconstruction)", choices=("auto", "on", "off")),
    Flag("--finetune", "compress.finetune.epochs", "reconstruction and fine-tuning", "fine-tune epochs (0 = none)",
         type=float, to_spec=_epochs, metavar="EPOCHS"),
    Flag("--finetune-steps", "compress.finetune.steps", "reconstruction and fine-tuning", type=int),
    Flag("--finetune-images", "compress.finetune.images", "reconstruction and fine-tuning",
         "fine-tune until this many images were seen", type=int),
    Flag("--finetune-minutes", "compress.finetune.minutes", "reconstruction and fine-tuning", type=float),
    Flag("--finetune-batch", "compress.finetune.batch_size", "reconstruction and fine-tuning",
         "images per fine-tune step", type=int, metavar="N"),
    Flag("--lr", "compress.finetune.lr", "reconstruction and fine-tuning", type=float),
    Flag("--distillation", "compress.finetune.distillation", "reconstruction and fine-tuning",
         "what the student matches: the teacher's logits (mse) or its softened probabilities (kl)",
         choices=("mse", "kl")),
    Flag("--kd-alpha", "compress.finetune.alpha", "reconstruction and fine-tuning",
         "weight of the distillation term; 1 - alpha goes to cross-entropy on the labels", type=float),
    Flag("--kd-temperature", "compress.finetune.temperature", "reconstruction and fine-tuning",
         "softening temperature of --distillation kl", type=float),
    Flag("--no-augment", "compress.finetune.augment", "reconstruction and fine-tuning",
         "no flip/crop augmentation while fine-tuning", kind="switch_off"),
    Flag("--opset", "export.opset", "export and benchmark", type=int),
    Flag("--slim", "export.slim", "export and benchmark", "simplify the ONNX graph with onnxslim", kind="switch_on"),
    Flag("--no-export", "export.onnx", "export and benchmark", kind="switch_off"),
    Flag("--targets", "benchmark.targets", "export and benchmark", "comma-separated: local:cpu, local:cuda, "
         "agent:NAME; '' = no benchmark", type=targets),
    Flag("--batch-sizes", "benchmark.batch_sizes", "export and benchmark", type=ints),
    Flag("--bench-seconds", "benchmark.seconds_per_batch", "export and benchmark", "at most this long per batch size",
         type=float),
    Flag("--precision", "benchmark.precision", "export and benchmark", "precision of the engines agents build "
         "(fp16/int8 need TensorRT on the agent); also picks the automatic --round-to",
         choices=("fp32", "fp16", "int8")),
    Flag("--agent-eval-images", "benchmark.agent_eval_images", "export and benchmark", "agent targets measure top-1 "
         "on the first N evaluation images (0 = none)", type=non_negative_int, metavar="N"),
    Flag("--max-accuracy-drop", "gate.max_accuracy_drop", "quality gate", "largest accepted top-1 drop, in points "
         "(0.5 = half a point)", type=float, to_spec=_drop_points, to_text=lambda v: f"{v * 100:.10g}"),
    Flag("--seed", "compress.seed", "run", type=int),
    Flag("--threads", "compress.threads", "run", "torch / ONNX Runtime threads", type=int,
         also=("benchmark.threads",)),
)
_BY_DEST = {f.name[2:].replace("-", "_"): f for f in FLAGS}
_EXCLUSIVE = ("--target-macs", "--target-params", "--target-latency", "--latency-budget")
_TARGET_METRIC = {"--target-macs": "macs", "--target-params": "params", "--target-latency": "latency"}


def _defaults() -> dict:
    return JobSpec(CompressSpec(ModelSpec(arch=""))).to_dict()


def _get(tree: dict, path: str) -> Any:
    for key in path.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _set(tree: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[last] = value


# --- table -> argparse, args -> spec, spec -> argv ----------------------------------------------------------

def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every spec flag to ``parser`` (argparse defaults are None: unset flags keep the spec's defaults)."""
    defaults, groups = _defaults(), {}
    exclusive = None
    for flag in FLAGS:
        group = groups.get(flag.group) or groups.setdefault(flag.group, parser.add_argument_group(flag.group))
        if flag.name in _EXCLUSIVE:
            exclusive = exclusive or group.add_mutually_exclusive_group()
            group = exclusive
        default = _get(defaults, flag.path)
        shown = "" if flag.kind != "value" or default in (None, "", (), []) or flag.name in _EXCLUSIVE else \
            f" (default {flag.to_text(default) if flag.to_text else _text(default)})"
        kwargs: dict[str, Any] = {"help": (flag.help + shown).strip() or None}
        if flag.kind in ("switch_off", "switch_on"):
            kwargs["action"] = "store_true"
        else:
            kwargs.update(type=flag.type, metavar=flag.metavar, choices=flag.choices, required=flag.required)
            if flag.kind in ("append", "params"):
                kwargs["action"] = "append"
        group.add_argument(flag.name, **kwargs)


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    """The ``JobSpec`` described by the flags of ``add_spec_arguments``."""
    tree: dict = {"compress": {"model": {}}}
    if getattr(args, "model", None) and getattr(args, "arch", None):
        raise argparse.ArgumentTypeError("give --arch NAME or --model FILE.onnx, not both")
    if not getattr(args, "model", None) and not getattr(args, "arch", None):
        raise argparse.ArgumentTypeError("name the model: --arch NAME (a zoo name, timm/NAME, python:PKG.MOD:FACTORY) "
                                         "or --model FILE.onnx")
    if getattr(args, "model", None):
        _set(tree, "compress.model.arch", ONNX_ARCH)
    for dest, flag in _BY_DEST.items():
        value = getattr(args, dest, None)
        if value is None or (flag.kind.startswith("switch") and not value):
            continue
        if flag.kind == "switch_off":
            value = False
        elif flag.kind == "switch_on":
            value = True
        elif flag.kind == "params":
            value = dict(value)
        elif flag.kind == "append":
            value = tuple(value)
        value = flag.to_spec(value)
        for path in (flag.path, *flag.also):
            _set(tree, path, value)
        if flag.name in _TARGET_METRIC:
            _set(tree, "compress.prune.target_metric", _TARGET_METRIC[flag.name])
    return JobSpec.from_dict(tree)


def argv_from_spec(spec: dict) -> list[str]:
    """The flags that rebuild ``spec`` (the dict form) with ``spec_from_args``; fields equal to their default are
    left out. Fields that have no flag are not represented (``unrepresented`` lists them)."""
    defaults, argv = _defaults(), []
    prune = spec["compress"]["prune"]
    for flag in FLAGS:
        value, default = _get(spec, flag.path), _get(defaults, flag.path)
        if flag.name in _EXCLUSIVE:
            argv += _target_flag(flag, prune)
            continue
        if flag.name == "--arch" and value == ONNX_ARCH:
            continue                                    # --model FILE.onnx says it
        if flag.name != "--arch" and _same(value, default):
            continue
        if flag.kind in ("switch_off", "switch_on"):
            argv.append(flag.name)
        elif flag.kind == "append":
            argv += [a for item in value for a in (flag.name, str(item))]
        elif flag.kind == "params":
            argv += [a for key, item in sorted(value.items()) for a in (flag.name, f"{key}={json.dumps(item)}")]
        elif value is not None:
            argv += [flag.name, flag.to_text(value) if flag.to_text else _text(value)]
    return argv


def _target_flag(flag: Flag, prune: dict) -> list[str]:
    if prune.get("latency_budget_ms") is not None:
        chosen = "--latency-budget"
    else:
        chosen = {v: k for k, v in _TARGET_METRIC.items()}.get(prune.get("target_metric"), "--target-macs")
    if flag.name != chosen:
        return []
    value = prune["latency_budget_ms"] if chosen == "--latency-budget" else prune["target_reduction"]
    return [flag.name, _text(value)]


def unrepresented(spec: dict) -> list[str]:
    """Spec fields that differ from their defaults but have no flag (submit the spec instead)."""
    covered = {p for f in FLAGS for p in (f.path, *f.also)} | {"compress.prune.target_metric"}
    out: list[str] = []

    def walk(value, default, path):
        if isinstance(value, dict) and isinstance(default, dict) and not path.endswith(("_params", "_kwargs")):
            for key in value:
                walk(value[key], default.get(key), f"{path}.{key}".lstrip("."))
        elif path not in covered and not _same(value, default):
            out.append(path)
    walk(spec, _defaults(), "")
    return sorted(out)


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-12 * max(1, abs(b))
    return a == b


def _text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return f"{value:.10g}" if isinstance(value, float) else str(value)
