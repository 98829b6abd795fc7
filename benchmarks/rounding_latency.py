"""Measured ONNX Runtime CPU speedup of L1-pruned ResNet-56 (-50% MACs) with widths rounded to 1, 8 and 16.

    .venv/bin/python -m benchmarks.rounding_latency [--rounds 3]

Latency only (no reconstruction or accuracy): the variants are benchmarked in interleaved rounds so that load from
other processes affects them alike; the median over rounds of each p50 is printed. (16 cannot reach -50% with the
option-A stage widths 16/32/64, so it is pruned to -40%.)
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import torch

from exporters import benchmark_onnxruntime, export_onnx
from pruning import allocate, measure, surgery, zoo
from pruning.criteria import ScoringContext, create_criterion
from pruning.plan import PruningPlan
from benchmarks.shared_data import add_data_root, weights_file



def pruned_variant(model, entry, groups, scores, base, multiple: int, reduction: float):
    cost_model = allocate.CostModel(model, entry.input_shape, base.macs, base.params)
    result = allocate.allocate(groups, scores, cost_model, allocate.Target("macs", reduction), base.macs,
                               round_to=multiple)
    plan = PruningPlan("cifar/resnet56", 10, entry.input_shape, result.kept, result.original)
    return surgery.apply_plan(copy.deepcopy(model), plan).eval(), result.achieved_reduction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_root(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    entry = zoo.get_entry("cifar/resnet56")
    model = zoo.load_model("cifar/resnet56", weights_file(args.data_root, "resnet56"))
    groups = surgery.channel_groups(model, entry.input_shape, entry.protected(model))
    base = measure.count_cost(model, entry.input_shape)
    scores = create_criterion("l1").score(ScoringContext(model, groups, [], lambda: iter(()), entry.input_shape,
                                                          10)).channels
    tmp = Path(tempfile.mkdtemp(prefix="interprune-rounding-"))
    variants = {"original": (model, 0.0)}
    for multiple, reduction in ((1, 0.5), (8, 0.5), (16, 0.4)):
        variants[f"round {multiple}"] = pruned_variant(model, entry, groups, scores, base, multiple, reduction)
    paths = {name: export_onnx(m, tmp / f"{name.replace(' ', '')}.onnx", torch.zeros(1, *entry.input_shape)).path
             for name, (m, _) in variants.items()}
    p50 = {(name, b): [] for name in variants for b in (1, 64)}
    for _ in range(args.rounds):
        for name, path in paths.items():
            for row in benchmark_onnxruntime(path, entry.input_shape, (1, 64), threads=args.threads,
                                             warmup_seconds=0.5, min_seconds_per_batch=2.0,
                                             max_seconds_per_batch=4.0):
                p50[(name, row.batch_size)].append(row.p50_ms)
    for name, (_, reduction) in variants.items():
        cells = []
        for batch in (1, 64):
            ms = statistics.median(p50[(name, batch)])
            speedup = statistics.median(p50[("original", batch)]) / ms
            cells.append(f"batch {batch}: {ms:7.2f} ms ({speedup:.2f}x)")
        print(f"{name:<9} -{reduction:5.1%} MACs (ratio {1 / (1 - reduction):.2f}x)   " + "   ".join(cells))


if __name__ == "__main__":
    main()
