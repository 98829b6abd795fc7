"""How well a per-layer latency table predicts whole-model latency: ResNet-56 (CIFAR, random init), batch 64, ONNX
Runtime CPU.

    nice -n 5 .venv/bin/python -m benchmarks.latency_table [--threads 2] [--rounds 3] [--methods alone,marginal]
        [--write]

1. builds the table (``pipeline.latency_table.measure_layer_table``) in a fresh cache folder (cold), then again on
   the same folder (warm: nothing measured), at grid step 8 and (from the same cache) at grid step 16, which
   interpolates between every other width; once per layer timing ``--methods``: "alone" (each layer as a one-layer
   model) and "marginal" (the difference between four summed copies and one: ``LayerLatencyTable(method=...)``);
2. prunes the model several ways (uniform -25/-50/-70% MACs, global L1 -50%, stage 1 or stage 3 only, random
   widths, five stage-1 blocks removed alone and with stage 2 at 16; a removed block's layers count 0 ms),
   predicts each variant's latency from the table, and measures each exported variant with the jobs' protocol
   (``exporters.benchmark_onnxruntime`` with ``pipeline.benchmark.protocol_settings``), in interleaved rounds
   (the median over rounds of each p50 / p90), so that load from other processes affects them alike;
3. prints predicted vs measured p50 and p90 and the mean absolute relative error, beside the naive prediction
   "original latency x MACs ratio", for tables of per-layer p50 and of per-layer minimum (both are in the cache;
   on a shared CPU the minimum is the less disturbed figure). ``--write`` writes ``benchmarks/results/latency_table.md``.

The prediction is anchored the way a job anchors it: to the whole-model latency the table measured itself (p50;
p90 from ``anchored``), so the errors include that single measurement's noise.
"""
from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from exporters import benchmark_onnxruntime, environment, export_onnx
from pipeline.benchmark import protocol_settings
from pipeline.latency_table import LayerLatencyTable, measure_layer_table
from pruning import allocate, measure, surgery, zoo
from pruning.criteria import ScoringContext, create_criterion
from pruning.plan import PruningPlan
from pruning.stages import block_groups, split_removed_blocks

ROOT = Path(__file__).resolve().parents[1]
ARCH, BATCH, ROUND_TO = "cifar/resnet56", 64, 8


def variants(model, entry, groups, base) -> dict[str, dict[str, list[int]]]:
    """name -> kept channel indices per group."""
    cost_model = allocate.CostModel(model, entry.input_shape, base.macs, base.params)
    l1 = create_criterion("l1").score(ScoringContext(model, groups, [], lambda: iter(()), entry.input_shape,
                                                     10)).channels
    out = {}
    for mode, reduction in (("uniform", 0.25), ("uniform", 0.5), ("uniform", 0.7), ("global", 0.5)):
        result = allocate.allocate(groups, l1, cost_model, allocate.Target("macs", reduction), base.macs,
                                   mode=mode, round_to=ROUND_TO)
        out[f"{mode} -{reduction:.0%} MACs"] = result.kept
    full = {g.name: list(range(g.size)) for g in groups}
    out["stage 1 only: 8 of 16"] = {**full, **{g.name: list(range(8)) for g in groups if g.name.startswith("layer1")}}
    out["stage 3 only: 16 of 64"] = {**full, **{g.name: list(range(16)) for g in groups
                                                if g.name.startswith("layer3")}}
    rng = random.Random(0)
    out["random widths"] = {g.name: list(range(rng.randrange(ROUND_TO, g.size + 1, ROUND_TO))) for g in groups}
    stage1_blocks = {f"layer1.{i}.conv1" for i in (0, 2, 4, 5, 8)}       # as the latency plan chose on ResNet-56
    out["5 stage-1 blocks removed"] = {**full, **{n: [] for n in stage1_blocks}}
    out["5 stage-1 blocks removed, stage 2 at 16"] = {
        **full, **{g.name: list(range(16)) for g in groups if g.name.startswith("layer2")},
        **{n: [] for n in stage1_blocks}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds-per-batch", type=float, default=3.0)
    parser.add_argument("--methods", default="alone,marginal", help="layer timing methods to compare")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/latency_table.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    entry = zoo.get_entry(ARCH)
    model = zoo.create_model(ARCH).eval()
    shape = entry.input_shape
    groups = surgery.channel_groups(model, shape, entry.protected(model))
    prunable = {member for g in groups for member in g.members}
    base = measure.count_cost(model, shape)
    cache = Path(tempfile.mkdtemp(prefix="interprune-latency-cache-"))
    lines = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    builds, methods = {}, args.methods.split(",")
    for method in methods:
        for label, step in (("cold, grid 8", 8), ("warm, grid 8", 8), ("warm, grid 16 (subset)", 16)):
            table = LayerLatencyTable("local:cpu", args.threads, cache, method=method)
            started = time.perf_counter()
            latency = measure_layer_table(model, shape, BATCH, ROUND_TO, grid_step=step, prunable=prunable,
                                          seconds_per_batch=args.seconds_per_batch, table=table)
            builds[f"{method}, {label}"] = (latency, time.perf_counter() - started, table.measurements,
                                            len(latency.grid_shapes()))
    anchor = table.whole_model(model, shape, BATCH, args.seconds_per_batch)
    predictors = {}
    for method in methods:
        for statistic in ("p50_ms", "min_ms"):           # the cache holds both: no new measurement
            for step in (8, 16):
                again = LayerLatencyTable("local:cpu", args.threads, cache, statistic=statistic, method=method)
                predictors[f"{method}, layer {statistic[:-3]}, grid {step}"] = measure_layer_table(
                    model, shape, BATCH, ROUND_TO, grid_step=step, prunable=prunable,
                    seconds_per_batch=args.seconds_per_batch, table=again)
                assert again.measurements == 0

    plans = variants(model, entry, groups, base)
    bypass = block_groups(groups, entry.removable_blocks(model))
    tmp = Path(tempfile.mkdtemp(prefix="interprune-latency-bench-"))
    models = {"original": model}
    for name, kept in plans.items():
        channels, blocks = split_removed_blocks(kept, bypass)     # an emptied inner group: its block removed
        plan = PruningPlan(ARCH, 10, shape, channels, {g.name: g.size for g in groups if g.name in channels}, blocks)
        models[name] = surgery.apply_plan(copy.deepcopy(model), plan).eval()
    paths = {name: export_onnx(m, tmp / f"v{i}.onnx", torch.zeros(1, *shape)).path
             for i, (name, m) in enumerate(models.items())}
    runs = {name: {"p50": [], "p90": []} for name in paths}
    for _ in range(args.rounds):
        for name, path in paths.items():
            row = benchmark_onnxruntime(path, shape, (BATCH,), threads=args.threads,
                                        **protocol_settings(args.seconds_per_batch))[0]
            runs[name]["p50"].append(row.p50_ms)
            runs[name]["p90"].append(row.p90_ms)
    measured = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in runs.items()}

    env = environment()
    say(f"ResNet-56 (CIFAR, random init), batch {BATCH}, ONNX Runtime {env['onnxruntime']} CPU, {args.threads} "
        f"threads, {env['cpu']}; widths rounded to {ROUND_TO}; {len(groups)} prunable groups")
    say()
    say("| table build | seconds | shapes measured | shapes on the grid |")
    say("| --- | ---: | ---: | ---: |")
    for label, (_, seconds, count, grid) in builds.items():
        say(f"| {label} | {seconds:.1f} | {count} | {grid} |")
    say(f"\n(a cold build also measures the whole model once, {args.seconds_per_batch:g} s protocol: the anchor "
        f"p50 {anchor['p50_ms']:.2f} ms, p90 {anchor['p90_ms']:.2f} ms)")
    summary = []
    for label, p50_model in predictors.items():
        models_by_stat = {"p50": p50_model, "p90": p50_model.anchored(anchor["p90_ms"])}
        say(f"\n### table of {label}: predicted vs measured (median of {args.rounds} rounds)\n")
        say("| variant | MACs | measured p50 | predicted p50 | err | measured p90 | predicted p90 | err | "
            "MACs-scaled p50 | err |")
        say("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        errors = {"p50": [], "p90": [], "macs": []}
        deltas = []
        for name, m in models.items():
            counts = {g.name: g.size - len(plans[name][g.name]) for g in groups} if name in plans else {}
            removed = allocate.widths_removed(groups, counts)
            macs = measure.count_cost(m, shape).macs
            row = [name, f"{macs / base.macs:.0%}"]
            for stat in ("p50", "p90"):
                pred, meas = models_by_stat[stat].cost("latency", removed), measured[name][stat]
                row += [f"{meas:.2f}", f"{pred:.2f}", f"{pred / meas - 1:+.1%}"]
                if name != "original":
                    errors[stat].append(abs(pred / meas - 1))
            naive = measured["original"]["p50"] * macs / base.macs
            row += [f"{naive:.2f}", f"{naive / measured[name]['p50'] - 1:+.1%}"]
            if name != "original":
                errors["macs"].append(abs(naive / measured[name]["p50"] - 1))
                saved_pred = models_by_stat["p50"].cost("latency", {}) - models_by_stat["p50"].cost("latency", removed)
                deltas.append((name, saved_pred, measured["original"]["p50"] - measured[name]["p50"]))
            say("| " + " | ".join(row) + " |")
        rho = _spearman([d[1] for d in deltas], [d[2] for d in deltas])
        summary.append(f"| {label} | {statistics.mean(errors['p50']):.1%} | {statistics.mean(errors['p90']):.1%} | "
                       f"{rho:.2f} | {statistics.mean(errors['macs']):.1%} |")
        say(f"\nmean absolute relative error over the {len(plans)} pruned variants: p50 "
            f"{statistics.mean(errors['p50']):.1%}, p90 {statistics.mean(errors['p90']):.1%} "
            f"(MACs-scaled p50: {statistics.mean(errors['macs']):.1%})")
        order_pred = [n for n, _, _ in sorted(deltas, key=lambda d: d[1])]
        order_meas = [n for n, _, _ in sorted(deltas, key=lambda d: d[2])]
        say("saved ms, predicted / measured: " + ", ".join(f"{n}: {p:.1f}/{m:.1f}" for n, p, m in deltas))
        say(f"variants ranked by saved time: {'same order' if order_pred == order_meas else 'orders differ'}"
            f" (Spearman rho {rho:.2f})")
    say("\n### summary: mean absolute relative error of the predicted whole-model latency (pruned variants)\n")
    say("| layer table | p50 | p90 | Spearman rho of saved ms | MACs-scaled p50 |")
    say("| --- | ---: | ---: | ---: | ---: |")
    for line in summary:
        say(line)
    if args.write:
        out = ROOT / "benchmarks" / "results" / "latency_table.md"
        command = "nice -n 5 .venv/bin/python -m benchmarks.latency_table " + " ".join(sys.argv[1:])
        out.write_text("# Latency table accuracy (goal 4: latency-aware allocation)\n\n"
                       f"    {command}\n\n" + "\n".join(lines) + "\n")
        print(f"wrote {out}")


def _spearman(a: list[float], b: list[float]) -> float:
    def ranks(xs):
        order = sorted(range(len(xs)), key=xs.__getitem__)
        r = [0.0] * len(xs)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


if __name__ == "__main__":
    main()
