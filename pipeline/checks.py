"""Upper bounds and finiteness of a whole job spec, checked before any work: the same check at the server's submit
(INVALID_ARGUMENT), in ``interprune compress`` and before ``interprune submit`` uploads anything (exit 2).

Pure: reads no file, imports no model; the engine's limits (``pruning.limits``) with the job's export, benchmark
and gate fields added.

Example::

    check_job_limits(JobSpec(CompressSpec(ModelSpec("demo/small_cnn"), seed=-1)))
    # SpecError: seed -1: must be >= 0
"""
from __future__ import annotations

import math

from pipeline.spec import LOCAL_PROVIDERS, OPSETS, JobSpec
from pruning.errors import SpecError, clip
from pruning.limits import DEFAULT_SPEC_LIMITS, SpecLimits, check_compress_spec, check_spec_limits

DEFAULT_CHANNELS = 3        # when the architecture's input is not known without building it (python:, timm/)


def model_input(spec: JobSpec) -> tuple[int, tuple[int, int] | None]:
    """The model's input channels and (H, W): ``model.input_shape`` when given, else the zoo entry's; for an
    architecture not known without building it, ``DEFAULT_CHANNELS`` and None."""
    from pruning import zoo

    model = spec.compress.model
    shape = getattr(model, "input_shape", None)
    if not shape and isinstance(model.arch, str) and zoo.is_model(model.arch):
        shape = zoo.get_entry(model.arch).input_shape
    if not shape or len(shape) != 3:
        return DEFAULT_CHANNELS, None
    return int(shape[0]), (int(shape[1]), int(shape[2]))


def check_job_limits(spec: JobSpec, channels: int | None = None, limits: SpecLimits = DEFAULT_SPEC_LIMITS) -> None:
    """Raise ``SpecError`` naming the field, its value and the limit when a number of ``spec`` is out of range or
    not finite (``channels``: the model's input channels; default from ``model_input(spec)``)."""
    known_channels, known_size = model_input(spec)
    channels = known_channels if channels is None else channels
    check_compress_spec(spec.compress, channels=channels, limits=limits)
    bench, export = spec.benchmark, spec.export
    check_spec_limits(input_size=spec.compress.data.input_size or known_size, channels=channels, limits=limits,
                      benchmark_batch_sizes=tuple(bench.batch_sizes), parity_images=export.parity_images,
                      agent_eval_images=bench.agent_eval_images, threads=bench.threads,
                      names={f"benchmark.targets[{i}]": t for i, t in enumerate(bench.targets)})
    for i, target in enumerate(bench.targets):
        if target not in LOCAL_PROVIDERS and not (target.startswith("agent:") and len(target) > 6):
            raise SpecError(f"benchmark.targets[{i}] {clip(target, 80)!r} is not a target; use "
                            f"{', '.join(LOCAL_PROVIDERS)} or agent:NAME (or none: --targets '')")
    for name, value in (("gate.max_accuracy_drop", spec.gate.max_accuracy_drop),
                        ("export.parity_atol", export.parity_atol),
                        ("benchmark.seconds_per_batch", bench.seconds_per_batch)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise SpecError(f"{name} {value!r}: must be a finite number")
    check_job_ranges(spec)
    check_criteria(spec)


def check_criteria(spec: JobSpec) -> None:
    """The criterion and the layer criterion built as the engine will build them, so that an unknown name or a
    parameter that is unknown, not finite or out of its range (``pruning.criteria.params``) is a ``SpecError``
    before any work. Building a scorer reads nothing and allocates nothing."""
    from pruning.criteria import create_criterion

    prune = spec.compress.prune
    for name, params in ((prune.criterion, prune.criterion_params),
                         (prune.layer_criterion, prune.layer_criterion_params)):
        if name:
            create_criterion(name, **dict(params))


def check_job_ranges(spec: JobSpec) -> None:
    """Export, benchmark and gate values that are finite but impossible (the server checks the same at submit)."""
    bench, export, drop = spec.benchmark, spec.export, spec.gate.max_accuracy_drop
    checks = (
        (not bench.seconds_per_batch > 0, f"benchmark.seconds_per_batch (--bench-seconds) {bench.seconds_per_batch!r}: "
                                          "must be > 0 seconds of timed runs per batch size"),
        (export.opset not in OPSETS, f"export.opset (--opset) {export.opset!r}: must be in {OPSETS.start}.."
                                     f"{OPSETS.stop - 1} (17 is the default)"),
        (not export.parity_atol > 0, f"export.parity_atol {export.parity_atol!r}: must be > 0"),
        (drop is not None and not -1.0 <= drop <= 1.0,
         f"gate.max_accuracy_drop (--max-accuracy-drop) {drop!r}: the largest accepted top-1 drop must be between -1 "
         "and 1 (a fraction: 0.01 = one point, negative = a gain required; the CLI flag takes points)"),
    )
    for failed, message in checks:
        if failed:
            raise SpecError(message)
