"""Submit-time checks of a job spec: cheap ones (names, ranges, artifacts present), before anything is queued."""
from __future__ import annotations

import math
import re
from typing import Callable, Collection, Mapping

from pruning.errors import clip
from pruning.spec import BLOCK_REMOVAL, MAX_SENSITIVITY_IMAGES
from service._proto.interprune.v1 import compression_pb2 as pb
from service.core.errors import InvalidArgument
from service.core.names import parse_artifact_name
from service.core.wire import (ALLOCATION_FROM_PROTO, METRIC_FROM_PROTO, params_from_proto, precision_from_proto,
                               target_to_text)

_AGENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
MAX_SPEC_BYTES = 64 << 10      # a job's spec; the largest real ones are a few KiB


def validate_spec(spec: pb.JobSpec, has_artifact: Callable[[str], bool],
                  allowed_packages: Collection[str] = frozenset()) -> None:
    """Raise ``InvalidArgument`` (or ``NotFound`` for a missing artifact) for what can be checked cheaply.
    ``allowed_packages``: where ``python:`` architectures may come from (``serve --allow-model-package``)."""
    from pruning.criteria import is_criterion, list_criteria
    from pruning.criteria.base import criterion_class
    from service.core.errors import NotFound

    _check_model(spec.model, allowed_packages)
    external = [(f"spec.model.external_data[{location!r}]", ref, "external data")
                for location, ref in sorted(spec.model.external_data.items())]
    for field, name, what in (("spec.model.weights", spec.model.weights, "model"),
                              ("spec.model.model", spec.model.model, "ONNX model"),
                              ("spec.data.artifact", spec.data.artifact, "data"), *external):
        if name:
            artifact_id = parse_artifact_name(name, field)
            if not has_artifact(artifact_id):
                raise NotFound(f"{field}: the {what} artifact {name} is not on this server; upload it first "
                               "(UploadArtifact)")
    p = spec.prune
    for name, kind in ((p.criterion or "l1", None), (p.layer_criterion, "block")):
        if not name:
            continue
        if not is_criterion(name):
            raise InvalidArgument(f"unknown criterion {clip(name, 80)!r}; choose one of {', '.join(list_criteria())}")
        # its parameters: pipeline.checks.check_criteria, which every submit runs (servicer._normalize)
        if kind and criterion_class(name).kind != kind:
            raise InvalidArgument(f"layer_criterion {clip(name, 80)!r} scores channels, not blocks; choose one of "
                                  f"{', '.join(list_criteria('block')) or '(none registered)'}")
    _check_enums(spec)
    _check_ranges(spec)
    _check_allocation(spec.prune)


def _check_allocation(p: pb.PruneSpec) -> None:
    """A target and an allocation that do not go together (the engine's own check, ``pruning.spec``)."""
    from pruning.errors import SpecError
    from pruning.spec import PruneSpec, check_allocation

    try:
        check_allocation(PruneSpec(target_metric=METRIC_FROM_PROTO.get(p.target_metric) or "macs",
                                   allocation=ALLOCATION_FROM_PROTO.get(p.allocation) or PruneSpec.allocation,
                                   latency_budget_ms=p.latency_budget_ms if p.HasField("latency_budget_ms") else None,
                                   layer_criterion=p.layer_criterion or None))
    except SpecError as exc:
        raise InvalidArgument(str(exc)) from None


def _check_model(model: pb.ModelSpec, allowed_packages: Collection[str]) -> None:
    """The architecture is one this server can build: a zoo name, timm/NAME (with timm installed), a python:
    factory from an allowed package, or "onnx" with an ONNX artifact. Nothing the user named is imported here."""
    from pruning import intake
    from pruning.errors import InterpruneError

    if not model.arch:
        examples = ", ".join(intake.list_models()[:4])
        raise InvalidArgument("spec.model.arch is empty; name an architecture (e.g. " + examples + ", timm/NAME, "
                              "python:PKG.MODULE:FACTORY) or set arch 'onnx' with spec.model.model")
    if model.arch == intake.ONNX_ARCH:
        if not model.model:
            raise InvalidArgument("spec.model.arch 'onnx' needs spec.model.model: the uploaded .onnx artifact")
        if model.weights or model.arch_kwargs:
            raise InvalidArgument("an ONNX model carries its own weights and takes no arch_kwargs; leave "
                                  "spec.model.weights and spec.model.arch_kwargs empty")
        _check_external_data(model.external_data)
        return
    if model.model or model.external_data:
        field = "spec.model.model" if model.model else "spec.model.external_data"
        raise InvalidArgument(f"{field} is for arch 'onnx'; {clip(model.arch)!r} is built from its name")
    try:
        arch_kwargs = params_from_proto(model.arch_kwargs, "arch_kwargs")
        intake.check_spec(intake.ModelSpec(model.arch, arch_kwargs=arch_kwargs), allowed_packages)
    except InterpruneError as exc:
        raise InvalidArgument(str(exc)) from None


MAX_EXTERNAL_DATA_FILES = 64
_LOCATION_PART = re.compile(r"^[^/\\\x00-\x1f.][^/\\\x00-\x1f]{0,254}\Z")   # one file or folder name, not hidden
MAX_LOCATION_DEPTH = 8


def _check_external_data(external: Mapping[str, str]) -> None:
    """Each location a relative path inside the model's folder, as onnx writes it (the server places the file
    there), each with an artifact; at most ``MAX_EXTERNAL_DATA_FILES``."""
    if len(external) > MAX_EXTERNAL_DATA_FILES:
        raise InvalidArgument(f"spec.model.external_data names {len(external)} files; at most "
                              f"{MAX_EXTERNAL_DATA_FILES} (save the model's weights into one data file)")
    for location, ref in external.items():
        parts = location.split("/")
        if len(parts) > MAX_LOCATION_DEPTH or not all(_LOCATION_PART.match(part) for part in parts):
            raise InvalidArgument(f"spec.model.external_data: location {clip(location, 80)!r} is not a path inside "
                                  "the model's folder (names joined by '/', none starting with '.', no '\\'); the "
                                  "model must name its data files beside it, as torch.onnx.export does "
                                  "('model.onnx.data')")
        if not ref:
            raise InvalidArgument(f"spec.model.external_data[{location!r}] is empty; give the artifact of that "
                                  "file, \"artifacts/{sha256}\" (UploadArtifact)")


def _check_enums(spec: pb.JobSpec) -> None:
    """Enum numbers this server does not know are refused (proto3 would keep them and read them as defaults)."""
    for field, value, enum in (("spec.prune.target_metric", spec.prune.target_metric, pb.TargetMetric),
                               ("spec.prune.allocation", spec.prune.allocation, pb.Allocation),
                               ("spec.reconstruct.batchnorm", spec.reconstruct.batchnorm, pb.BatchNormMode),
                               ("spec.reconstruct.scope", spec.reconstruct.scope, pb.RefitScope)):
        if value not in enum.values():
            raise InvalidArgument(f"{field} {value} is not a {enum.DESCRIPTOR.name}; use one of "
                                  f"{', '.join(enum.keys()[1:])}")
    precision_from_proto(spec.benchmark.precision, "spec.benchmark.precision")
    for target in spec.benchmark.targets:
        target_to_text(target, "spec.benchmark.targets")
    if spec.prune.HasField("latency_target"):
        target_to_text(spec.prune.latency_target, "spec.prune.latency_target")


def _check_ranges(spec: pb.JobSpec) -> None:
    """Ranges of the wire fields; the export, benchmark and gate ranges are ``pipeline.checks.check_job_ranges``,
    run on every submit by ``servicer._normalize`` (the CLI runs the same)."""
    p, d, f, b, x, r = spec.prune, spec.data, spec.finetune, spec.benchmark, spec.execution, spec.reconstruct
    checks = [
        (spec.ByteSize() > MAX_SPEC_BYTES, f"the job spec is {spec.ByteSize():,} bytes; at most {MAX_SPEC_BYTES:,} "
                                           "(protected_layers and criterion parameters name what differs from the "
                                           "defaults, not every layer)"),
        (len(spec.model.input_shape) not in (0, 3) or any(v < 1 for v in spec.model.input_shape),
         f"spec.model.input_shape {list(spec.model.input_shape)[:8]} must be C, H, W (three positive sizes) or "
         "empty for the architecture's"),
        (r.HasField("ridge") and not 0.0 <= r.ridge < math.inf,
         "spec.reconstruct.ridge must be a finite number >= 0 (default 1e-3)"),
        (r.HasField("max_memory_mb") and not 0.0 < r.max_memory_mb < math.inf,
         "spec.reconstruct.max_memory_mb must be a finite number > 0 (default 1024)"),
        (r.HasField("positions_per_image") and r.positions_per_image < 1,
         "spec.reconstruct.positions_per_image must be >= 1 (default 8)"),
        (r.HasField("holdout") and (r.holdout < 0 or r.holdout == 1),
         "spec.reconstruct.holdout must be 0 (none) or >= 2 (every n-th calibration image checks the re-fit)"),
        (f.HasField("temperature") and not 0.0 < f.temperature < math.inf,
         "spec.finetune.temperature must be a finite number > 0 (default 4)"),
        (f.HasField("alpha") and not 0.0 <= f.alpha <= 1.0,
         "spec.finetune.alpha must be in [0, 1] (the distillation term's weight; default 1)"),
        (p.HasField("target_reduction") and not (0.0 <= p.target_reduction < 1.0),
         f"spec.prune.target_reduction {p.target_reduction:g} is impossible: it is the fraction of the cost to "
         "remove, in [0, 1) (0.5 removes half)"),
        (p.HasField("round_to") and p.round_to < 1, "spec.prune.round_to must be >= 1 (1 = no rounding)"),
        (p.HasField("min_channels") and p.min_channels < 1, "spec.prune.min_channels must be >= 1"),
        (p.HasField("sensitivity_images") and not 1 <= p.sensitivity_images <= MAX_SENSITIVITY_IMAGES,
         f"spec.prune.sensitivity_images must be in [1, {MAX_SENSITIVITY_IMAGES}] (unset = automatic)"),
        (p.HasField("layer_share") and not 0.0 <= p.layer_share <= 1.0, "spec.prune.layer_share must be in [0, 1]"),
        (p.HasField("block_removal") and p.block_removal not in BLOCK_REMOVAL,
         f"spec.prune.block_removal {p.block_removal!r} must be {', '.join(BLOCK_REMOVAL[:-1])} or "
         f"{BLOCK_REMOVAL[-1]}"),
        (p.HasField("latency_budget_ms") and not 0.0 < p.latency_budget_ms < math.inf,
         "spec.prune.latency_budget_ms must be a positive number of milliseconds (finite)"),
        (p.HasField("latency_batch") and p.latency_batch < 1, "spec.prune.latency_batch must be >= 1"),
        (p.HasField("latency_target") and p.latency_target.WhichOneof("kind") == "agent",
         f"spec.prune.latency_target agent:{p.latency_target.agent}: latency budgets are measured on local:cpu, local:cuda or "
         "local:tensorrt"),
        (spec.model.HasField("num_classes") and spec.model.num_classes < 1, "spec.model.num_classes must be >= 1"),
        (any(d.HasField(n) and getattr(d, n) < 0 for n in ("calibration_images", "evaluation_images",
                                                           "finetune_images")), "spec.data image counts must be >= 0"),
        (d.HasField("batch_size") and d.batch_size < 1, "spec.data.batch_size must be >= 1"),
        (d.HasField("input_size") and min(d.input_size.height, d.input_size.width) < 1,
         "spec.data.input_size must be positive (height and width in pixels)"),
        (len(d.mean) != len(d.std), f"spec.data.mean has {len(d.mean)} values and std {len(d.std)}; give one per "
                                    "channel for both"),
        (any(v <= 0 for v in d.std), "spec.data.std values must be > 0"),
        (any(f.HasField(n) and not getattr(f, n) >= 0 for n in ("epochs", "steps", "images", "minutes")),
         "spec.finetune budget values must be >= 0"),
        (f.HasField("batch_size") and f.batch_size < 1, "spec.finetune.batch_size must be >= 1"),
        (f.HasField("lr") and not 0.0 < f.lr < math.inf, "spec.finetune.lr must be > 0 and finite"),
        (f.HasField("distillation") and f.distillation not in ("mse", "kl"),
         f"spec.finetune.distillation {f.distillation[:40]!r} is unknown: use 'mse' or 'kl'"),
        (any(v < 1 for v in b.batch_sizes), "spec.benchmark.batch_sizes must be >= 1"),
        (b.HasField("agent_eval_images") and b.agent_eval_images < 0,
         "spec.benchmark.agent_eval_images must be >= 0 (0 = no accuracy measured on agents)"),
        (any(t.WhichOneof("kind") == "agent" and not _AGENT.match(t.agent) for t in b.targets),
         "spec.benchmark.targets: an agent name is 1-64 letters, digits, _ . or -, as ListDevices shows it"),
        (p.HasField("latency_margin") and not 0.0 <= p.latency_margin < 1.0,
         "spec.prune.latency_margin must be in [0, 1) (0.05 aims 5% under the budget)"),
        (x.HasField("timeout_seconds") and not 0.0 < x.timeout_seconds < math.inf,
         "spec.execution.timeout_seconds must be > 0 and finite (leave it unset for the server's default)"),
        (x.HasField("threads") and x.threads < 1, "spec.execution.threads must be >= 1"),
    ]
    for failed, message in checks:
        if failed:
            raise InvalidArgument(message)




# what an artifact may be used as: spec field -> the kinds accepted there
USES = {"spec.model.weights": ("model", "weights"), "spec.data.artifact": ("dataset",)}


def check_artifact_kinds(spec: pb.JobSpec, describe: Callable[[str], tuple[str, str]]) -> None:
    """Refuse an artifact used as something it was not uploaded as (a model as the data set, a data set as the
    weights). ``describe(id)`` gives its (kind, file name)."""
    for field, name in (("spec.model.weights", spec.model.weights), ("spec.data.artifact", spec.data.artifact)):
        if not name:
            continue
        kind, file_name = describe(parse_artifact_name(name, field))
        accepted = USES[field]
        if kind not in accepted:
            raise InvalidArgument(f"{field}: {clip(file_name, 120)} ({name}) was uploaded as a {kind} artifact; this "
                                  f"field takes a {' or '.join(accepted)} artifact: check which file goes where")
