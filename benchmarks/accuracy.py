"""Issue-14 accuracy table: CIFAR ResNets pruned by the CLI, every row a command a user can re-run.

    .venv/bin/python -m benchmarks.accuracy --rows r56-l1-uniform-consumers,r56-l1-uniform [--data-root ../shared/data]

Each row runs ``python -m service.cli compress`` in a fresh process (ONNX export and parity included, no latency
benchmark unless the row asks for one) and records: top-1 on all 10,000 CIFAR-10 test images of the exported ONNX
model, MACs removed, wall time and peak RSS of that process. ``--list`` shows the rows. Results are merged into
``benchmarks/results/accuracy.json`` (a re-run replaces its row) and the table ``accuracy.md`` is rewritten.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from benchmarks.shared_data import add_data_root

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = {"resnet20": "resnet20-12fca82f.th", "resnet32": "resnet32-d509ac18.th", "resnet56": "resnet56-4bfd9763.th"}

# name -> (goal, arch, criterion, extra CLI flags)
ROWS: dict[str, tuple[str, str, str, list[str]]] = {}


def _row(name: str, goal: str, arch: str, criterion: str, *flags: str) -> None:
    ROWS[name] = (goal, arch, criterion, list(flags))


NO_FT = ("--finetune", "0")
# Each criterion's best ResNet-56 recipe (goal 3), as criterion parameters, and the allocation it runs with
RECIPES = {"l1": (), "dissection": ("--criterion-param", "refit_window=0.75"),
           "functionality": ("--criterion-param", "refit_window=0.5"), "redundancy": (),
           "visual_similarity": ("--criterion-param", "refit_window=0.5"),
           "layer_probe": ("--criterion-param", "depth_share=0.3", "--criterion-param", "refit_window=0.5")}
ROUND1 = ("--allocation", "sensitivity", "--round-to", "1")


def _recipe_tag(params: tuple[str, ...]) -> str:
    """Row-name part of ``--criterion-param`` pairs: refit_window=0.5 -> "-window0.5", depth_share=0.3 ->
    "-depth0.3"."""
    return "".join(f"-{key.replace('refit_', '').replace('_share', '')}{value}"
                   for key, value in (p.split("=") for p in params[1::2]))


OLD = ("--allocation", "uniform", "--refit-scope", "consumers")          # the engine before issue 14
for arch in ("resnet56", "resnet32", "resnet20"):
    short = "r" + arch[6:]
    _row(f"{short}-l1-before", "1,6", arch, "l1", "--target-macs", "0.5", *OLD, *NO_FT)
    _row(f"{short}-l1-uniform", "1,6", arch, "l1", "--target-macs", "0.5", "--allocation", "uniform", *NO_FT)
    _row(f"{short}-l1-sensitivity", "1,6", arch, "l1", "--target-macs", "0.5", "--allocation", "sensitivity",
         *NO_FT)
for criterion in ("dissection", "functionality", "redundancy", "visual_similarity", "layer_probe", "random"):
    for alloc in ("uniform", "sensitivity"):
        if criterion != "layer_probe":
            _row(f"r56-{criterion}-{alloc}", "3", "resnet56", criterion, "--target-macs", "0.5", "--allocation",
                 alloc, *NO_FT)
for seed in (1, 2):
    _row(f"r56-random-sensitivity-seed{seed}", "3", "resnet56", "random", "--target-macs", "0.5", "--allocation",
         "sensitivity", "--seed", str(seed), *NO_FT)
for criterion in ("dissection", "functionality", "visual_similarity", "random"):
    _row(f"r56-{criterion}-window0.5-sensitivity", "3", "resnet56", criterion, "--target-macs", "0.5",
         "--allocation", "sensitivity", "--criterion-param", "refit_window=0.5", *NO_FT)
_row("r56-functionality-window0.5-sensitivity-kd35k", "2,3", "resnet56", "functionality", "--target-macs", "0.5",
     "--allocation", "sensitivity", "--criterion-param", "refit_window=0.5", "--finetune-images", "35000")
_row("r56-l1-sensitivity-kd35k-a0.5", "2", "resnet56", "l1", "--target-macs", "0.5", "--allocation", "sensitivity",
     "--finetune-images", "35000", "--kd-alpha", "0.5")
for seed in (1, 2):
    _row(f"r56-random-uniform-seed{seed}", "3", "resnet56", "random", "--target-macs", "0.5", "--allocation",
         "uniform", "--seed", str(seed), *NO_FT)
for window in ("0.25", "0.5"):
    for alloc in ("uniform", "sensitivity"):
        _row(f"r56-l1-window{window}-{alloc}", "1,3", "resnet56", "l1", "--target-macs", "0.5", "--allocation", alloc,
             "--criterion-param", f"refit_window={window}", *NO_FT)
_row("r20-l1-64cal-norefit", "5", "resnet20", "l1", "--target-macs", "0.5", "--calibration-images", "64",
     "--no-reconstruct", *NO_FT)
_row("r20-l1-64cal-refit", "5", "resnet20", "l1", "--target-macs", "0.5", "--calibration-images", "64", *NO_FT)
_row("r56-l1-sensitivity-kd35k", "2", "resnet56", "l1", "--target-macs", "0.5", "--allocation", "sensitivity",
     "--finetune-images", "35000")
# Goal 1: a larger re-fit sample (calibration images, positions per image) with the same allocation.
for cal, pos in ((4000, 8), (4000, 16)):
    _row(f"r56-l1-sensitivity-cal{cal}-pos{pos}", "1", "resnet56", "l1", "--target-macs", "0.5", "--allocation",
         "sensitivity", "--calibration-images", str(cal), "--refit-positions", str(pos), *NO_FT)
# Goal 1: finer widths for the knapsack (automatic rounding is 8: a 16-wide layer can only be 8 or 16 wide).
_row("r56-l1-sensitivity-round4", "1", "resnet56", "l1", "--target-macs", "0.5", "--allocation", "sensitivity",
     "--round-to", "4", *NO_FT)
_row("r56-l1-sensitivity-round1-cal4000", "1", "resnet56", "l1", "--target-macs", "0.5", "--allocation",
     "sensitivity", "--round-to", "1", "--calibration-images", "4000", *NO_FT)
for criterion in ("functionality", "dissection", "visual_similarity", "random"):
    _row(f"r56-{criterion}-window0.5-sensitivity-round1", "1,3", "resnet56", criterion, "--target-macs", "0.5",
         "--allocation", "sensitivity", "--criterion-param", "refit_window=0.5", "--round-to", "1", *NO_FT)
for seed in (1, 2):
    _row(f"r56-random-window0.5-sensitivity-round1-seed{seed}", "1,3", "resnet56", "random", "--target-macs", "0.5",
         "--allocation", "sensitivity", "--criterion-param", "refit_window=0.5", "--round-to", "1", "--seed",
         str(seed), *NO_FT)
for criterion in ("l1", "redundancy"):
    _row(f"r56-{criterion}-sensitivity-round1", "1,3", "resnet56", criterion, "--target-macs", "0.5",
         "--allocation", "sensitivity", "--round-to", "1", *NO_FT)
_row("r56-l1-sensitivity-round1-kd35k", "2", "resnet56", "l1", "--target-macs", "0.5", "--allocation", "sensitivity",
     "--round-to", "1", "--finetune-images", "35000")
# Goal 6 at round 1: the smaller ResNets, and uniform allocation (for the automatic width multiple on CPU targets).
for arch in ("resnet32", "resnet20"):
    _row(f"r{arch[6:]}-l1-sensitivity-round1", "1,6", arch, "l1", "--target-macs", "0.5", "--allocation",
         "sensitivity", "--round-to", "1", *NO_FT)
_row("r56-l1-uniform-round1", "1,6", "resnet56", "l1", "--target-macs", "0.5", "--allocation", "uniform",
     "--round-to", "1", *NO_FT)
# Goal 1's recipe with the knapsack offered whole-block removal
for arch in ("resnet56", "resnet20"):
    _row(f"r{arch[6:]}-l1-sensitivity-round1-blocks", "1,6", arch, "l1", "--target-macs", "0.5", "--allocation",
         "sensitivity", "--round-to", "1", "--block-removal", "on", *NO_FT)
# Goals 2 and 3 at round 1: one KD pass from each criterion's round-1 start (and from the larger re-fit sample).
for criterion, window in (("functionality", True), ("dissection", True), ("visual_similarity", True),
                          ("redundancy", False)):
    extra = ("--criterion-param", "refit_window=0.5") if window else ()
    _row(f"r56-{criterion}{'-window0.5' if window else ''}-sensitivity-round1-kd35k", "2,3", "resnet56", criterion,
         "--target-macs", "0.5", "--allocation", "sensitivity", *extra, "--round-to", "1", "--finetune-images",
         "35000")
# ... and a second seed (calibration split, scoring samples, fine-tune order) of the two best.
_row("r56-functionality-window0.5-sensitivity-round1-kd35k-seed1", "2,3", "resnet56", "functionality",
     "--target-macs", "0.5", "--allocation", "sensitivity", "--criterion-param", "refit_window=0.5", "--round-to", "1",
     "--finetune-images", "35000", "--seed", "1")
# ... and, without fine-tuning, a second seed of the two round-1 starts measured with one (goal 3's "above random").
for criterion, window in (("visual_similarity", True), ("redundancy", False)):
    extra = ("--criterion-param", "refit_window=0.5") if window else ()
    _row(f"r56-{criterion}{'-window0.5' if window else ''}-sensitivity-round1-seed1", "3", "resnet56", criterion,
         "--target-macs", "0.5", "--allocation", "sensitivity", *extra, "--round-to", "1", *NO_FT, "--seed", "1")
# ... and a third seed of L1 and of the three best, without fine-tuning (seeds 0 and 1 are in the rows above).
for criterion, extra in (("l1", ()), ("redundancy", ()), ("dissection", ("--criterion-param", "refit_window=0.75")),
                         ("functionality", ("--criterion-param", "refit_window=0.5"))):
    window = f"-window{extra[1].split('=')[1]}" if extra else ""
    _row(f"r56-{criterion}{window}-sensitivity-round1-seed2", "1,3" if criterion == "l1" else "3", "resnet56",
         criterion, "--target-macs", "0.5",
         "--allocation", "sensitivity", *extra, "--round-to", "1", *NO_FT, "--seed", "2")
_row("r56-l1-sensitivity-round1-kd35k-seed1", "2", "resnet56", "l1", "--target-macs", "0.5", "--allocation",
     "sensitivity", "--round-to", "1", "--finetune-images", "35000", "--seed", "1")
_row("r56-l1-sensitivity-round1-cal4000-kd35k", "2", "resnet56", "l1", "--target-macs", "0.5", "--allocation",
     "sensitivity", "--round-to", "1", "--calibration-images", "4000", "--finetune-images", "35000")
# Goal 3 after one KD pass: each interpretability criterion with its best no-FT setting, then 35,000 images.
for criterion, window in (("dissection", True), ("visual_similarity", True), ("redundancy", False)):
    extra = ("--criterion-param", "refit_window=0.5") if window else ()
    _row(f"r56-{criterion}{'-window0.5' if window else ''}-sensitivity-kd35k", "2,3", "resnet56", criterion,
         "--target-macs", "0.5", "--allocation", "sensitivity", *extra, "--finetune-images", "35000")
# Goal 3, dissection after one KD pass (0.84 below L1 with window 0.5): a wider window lets the re-fit choose among
# more of the units dissection nominates (each removed unit is still one dissection ranks low).
for suffix, flags in (("", NO_FT), ("-kd35k", ("--finetune-images", "35000")),
                      ("-kd35k-seed1", ("--finetune-images", "35000", "--seed", "1"))):
    _row(f"r56-dissection-window0.75-sensitivity-round1{suffix}", "2,3", "resnet56", "dissection", "--target-macs",
         "0.5", "--allocation", "sensitivity", "--criterion-param", "refit_window=0.75", "--round-to", "1", *flags)
# ... and 0.9: dissection then only guards the tenth of the alive units it ranks highest at each removal.
_row("r56-dissection-window0.9-sensitivity-round1", "3", "resnet56", "dissection", "--target-macs", "0.5",
     "--allocation", "sensitivity", "--criterion-param", "refit_window=0.9", "--round-to", "1", *NO_FT)
# Goal 3, block removal: layer_probe against random blocks (three seeds) with today's re-fit (downstream).
_row("r56-layer_probe", "3", "resnet56", "layer_probe", "--target-macs", "0.5", *NO_FT)
_row("r56-layer_probe-kd35k", "2,3", "resnet56", "layer_probe", "--target-macs", "0.5", "--finetune-images", "35000")
_row("r56-layer_probe-kd35k-seed1", "2,3", "resnet56", "layer_probe", "--target-macs", "0.5", "--finetune-images",
     "35000", "--seed", "1")
# ... with the probes' accuracies cross-validated over five folds (every calibration image held out once)
for seed in (0, 1):
    _row("r56-layer_probe-folds5" + (f"-seed{seed}" if seed else ""), "3", "resnet56", "layer_probe", "--target-macs",
         "0.5", "--criterion-param", "folds=5", *NO_FT, *(("--seed", str(seed)) if seed else ()))
# ... with the probe gains nominating and the measured skip loss (next two layers re-fitted) picking
for window in ("0.5", "1"):
    for suffix, flags in (("", NO_FT), ("-kd35k", ("--finetune-images", "35000"))):
        _row(f"r56-layer_probe-window{window}{suffix}", "2,3" if suffix else "3", "resnet56", "layer_probe",
             "--target-macs", "0.5", "--criterion-param", f"refit_window={window}", *flags)
# functionality with the wider window dissection took (0.75), widths to the channel
_row("r56-functionality-window0.75-sensitivity-round1", "3", "resnet56", "functionality", "--target-macs", "0.5",
     "--allocation", "sensitivity", "--criterion-param", "refit_window=0.75", "--round-to", "1", *NO_FT)
# ... layer_probe's third seed without fine-tuning (seeds 0 and 1: the no-FT column of its -kd35k rows)
_row("r56-layer_probe-seed2", "3", "resnet56", "layer_probe", "--target-macs", "0.5", *NO_FT, "--seed", "2")
# ... and visual_similarity's third seed at round 1 (seeds 0 and 1 above)
_row("r56-visual_similarity-window0.5-sensitivity-round1-seed2", "3", "resnet56", "visual_similarity",
     "--target-macs", "0.5", "--allocation", "sensitivity", "--criterion-param", "refit_window=0.5", "--round-to", "1",
     *NO_FT, "--seed", "2")
# ... with depth_share 0.3: the lowest-gain blocks take 30% of the target, the rest is removed as the channels the
# same probes rely on least (unit reliance), sized by the sensitivity knapsack; and its control, random blocks and
# random channels with the same share.
for params in (RECIPES["layer_probe"][:2], RECIPES["layer_probe"]):      # without and with the window
    suffix = f"{_recipe_tag(params)}-sensitivity-round1"
    _row(f"r56-layer_probe{suffix}-kd35k", "2,3", "resnet56", "layer_probe", "--target-macs", "0.5", *params,
         *ROUND1, "--finetune-images", "35000")
    _row(f"r56-random_blocks{suffix}", "3", "resnet56", "random_blocks", "--target-macs", "0.5", *params, *ROUND1,
         *NO_FT)
# ... the window-0.5 recipe's other seeds: one KD pass with seed 1, and both (and the control) without with seed 2
W05 = (*RECIPES["layer_probe"], *ROUND1)
_row("r56-layer_probe-depth0.3-window0.5-sensitivity-round1-kd35k-seed1", "2,3", "resnet56", "layer_probe",
     "--target-macs", "0.5", *W05, "--finetune-images", "35000", "--seed", "1")
_row("r56-layer_probe-depth0.3-window0.5-sensitivity-round1-seed2", "3", "resnet56", "layer_probe",
     "--target-macs", "0.5", *W05, *NO_FT, "--seed", "2")
# ... and a third seed after one KD pass, with L1's (goal 2's recipe) beside it
_row("r56-layer_probe-depth0.3-window0.5-sensitivity-round1-kd35k-seed2", "2,3", "resnet56", "layer_probe",
     "--target-macs", "0.5", *W05, "--finetune-images", "35000", "--seed", "2")
_row("r56-l1-sensitivity-round1-kd35k-seed2", "2", "resnet56", "l1", "--target-macs", "0.5", "--allocation",
     "sensitivity", "--round-to", "1", "--finetune-images", "35000", "--seed", "2")
for seed in (1, 2):
    _row(f"r56-random_blocks-depth0.3-window0.5-sensitivity-round1-seed{seed}", "3", "resnet56", "random_blocks",
         "--target-macs", "0.5", *W05, *NO_FT, "--seed", str(seed))
for seed in (0, 1, 2):
    _row(f"r56-random_blocks-seed{seed}", "3", "resnet56", "random_blocks", "--target-macs", "0.5", "--seed",
         str(seed), *NO_FT)
# Goals 2, 3 and 6 on ResNet-20 / -32 (one seed): each criterion with its ResNet-56 recipe, one KD pass (the no-FT
# column is its start), and the two random controls without fine-tuning.
for arch in ("resnet20", "resnet32"):
    short = "r" + arch[6:]
    for criterion, extra in RECIPES.items():
        _row(f"{short}-{criterion}{_recipe_tag(extra)}-sensitivity-round1-kd35k", "2,3,6", arch, criterion,
             "--target-macs", "0.5", *extra, *ROUND1, "--finetune-images", "35000")
    _row(f"{short}-random-window0.5-sensitivity-round1", "3,6", arch, "random", "--target-macs", "0.5",
         "--criterion-param", "refit_window=0.5", *ROUND1, *NO_FT)
    _row(f"{short}-random_blocks-depth0.3-window0.5-sensitivity-round1", "3,6", arch, "random_blocks",
         "--target-macs", "0.5", *RECIPES["layer_probe"], *ROUND1, *NO_FT)
# Goal 3 after one KD pass on three seeds: ResNet-56's other criteria (seed 0 / 1 where run above) and, on
# ResNet-20, L1 and layer_probe
for criterion, seeds in (("dissection", (2,)), ("functionality", (2,)), ("redundancy", (1, 2)),
                         ("visual_similarity", (1, 2))):
    for seed in seeds:
        _row(f"r56-{criterion}{_recipe_tag(RECIPES[criterion])}-sensitivity-round1-kd35k-seed{seed}", "2,3",
             "resnet56", criterion, "--target-macs", "0.5", *RECIPES[criterion], *ROUND1, "--finetune-images",
             "35000", "--seed", str(seed))
for criterion in ("l1", "layer_probe"):
    for seed in (1, 2):
        _row(f"r20-{criterion}{_recipe_tag(RECIPES[criterion])}-sensitivity-round1-kd35k-seed{seed}", "2,3,6",
             "resnet20", criterion, "--target-macs", "0.5", *RECIPES[criterion], *ROUND1, "--finetune-images",
             "35000", "--seed", str(seed))
# ... and without fine-tuning: on ResNet-20 seeds 1 and 2 (seed 0: the no-FT column of the rows above), on
# ResNet-32 seeds 0, 1 and 2 measured together (2026-12-02)
for arch, seeds in (("resnet20", (1, 2)), ("resnet32", (0, 1, 2))):
    for criterion, extra in {**RECIPES, "random": ("--criterion-param", "refit_window=0.5"),
                             "random_blocks": RECIPES["layer_probe"]}.items():
        for seed in seeds:
            _row(f"r{arch[6:]}-{criterion}{_recipe_tag(extra)}-sensitivity-round1-seed{seed}", "3,6", arch,
                 criterion, "--target-macs", "0.5", *extra, *ROUND1, *NO_FT, "--seed", str(seed))
# Goal 3, tried and not adopted: redundancy's elimination on all 2,000 calibration images x 32 positions (its
# default: 1,024 x 16), three seeds without fine-tuning
for seed in (0, 1, 2):
    _row(f"r56-redundancy-images2000-pos32-sensitivity-round1-seed{seed}", "3", "resnet56", "redundancy",
         "--target-macs", "0.5", "--criterion-param", "images=2000", "--criterion-param", "positions_per_image=32",
         *ROUND1, *NO_FT, "--seed", str(seed))
# ... and x 64 positions
for seed in (0, 1, 2):
    _row(f"r56-redundancy-images2000-pos64-sensitivity-round1-seed{seed}", "3", "resnet56", "redundancy",
         "--target-macs", "0.5", "--criterion-param", "images=2000", "--criterion-param", "positions_per_image=64",
         *ROUND1, *NO_FT, "--seed", str(seed))
# Goal 3 on ResNet-20, layer_probe after the one-pass KD (0.56 point below L1's three-seed mean with depth_share 0.3):
# a smaller share of the cut taken as whole blocks
for seed in (0, 1, 2):
    _row(f"r20-layer_probe-depth0.15-window0.5-sensitivity-round1-kd35k-seed{seed}", "3,6", "resnet20", "layer_probe",
         "--target-macs", "0.5", "--criterion-param", "depth_share=0.15", "--criterion-param", "refit_window=0.5",
         *ROUND1, "--finetune-images", "35000", "--seed", str(seed))
# Goal 6's cost: the loss curves on 64 calibration images (the automatic floor for a costly forward pass, e.g.
# ResNet-18 at 224x224) instead of 256, three seeds without fine-tuning
for seed in (0, 1, 2):
    _row(f"r56-l1-sensitivity-round1-loss64-seed{seed}", "1,6", "resnet56", "l1", "--target-macs", "0.5",
         "--sensitivity-images", "64", *ROUND1, *NO_FT, "--seed", str(seed))
# Goal 2's curve: the same start (L1, sensitivity allocation, re-fit), KD budgets of 2.5k ... 35k images seen, and
# three passes over the 35,000 training images (105k).
for images in (2500, 5000, 10000, 20000, 105000):
    _row(f"r56-l1-sensitivity-kd{images / 1000:g}k", "2", "resnet56", "l1", "--target-macs", "0.5", "--allocation",
         "sensitivity", "--finetune-images", str(images))
for images in (10000, 35000):
    _row(f"r56-l1-uniform-kd{images // 1000}k", "2", "resnet56", "l1", "--target-macs", "0.5", "--allocation",
         "uniform", "--finetune-images", str(images))
# Goal 2 on ResNet-20 / -32: the one-pass KD schedule's peak learning rate on ResNet-20 (default 0.01, chosen on
# ResNet-56), and three passes
for lr in ("0.02", "0.05"):
    _row(f"r20-l1-sensitivity-round1-kd35k-lr{lr}", "2,6", "resnet20", "l1", "--target-macs", "0.5", *ROUND1,
         "--finetune-images", "35000", "--lr", lr)
for arch in ("resnet20", "resnet32"):
    _row(f"r{arch[6:]}-l1-sensitivity-round1-kd105k", "2,6", arch, "l1", "--target-macs", "0.5", *ROUND1,
         "--finetune-images", "105000")
# ... a lower peak, a smaller fine-tune batch (4x the steps for the same images), and other starts: uniform widths,
# and the knapsack offered whole blocks (the better no-FT start, 86.36%)
_row("r20-l1-sensitivity-round1-kd35k-lr0.005", "2,6", "resnet20", "l1", "--target-macs", "0.5", *ROUND1,
     "--finetune-images", "35000", "--lr", "0.005")
_row("r20-l1-sensitivity-round1-kd35k-batch32", "2,6", "resnet20", "l1", "--target-macs", "0.5", *ROUND1,
     "--finetune-images", "35000", "--finetune-batch", "32")
_row("r20-l1-uniform-round1-kd35k", "2,6", "resnet20", "l1", "--target-macs", "0.5", "--allocation", "uniform",
     "--round-to", "1", "--finetune-images", "35000")
_row("r20-l1-sensitivity-round1-blocks-kd35k", "2,6", "resnet20", "l1", "--target-macs", "0.5", *ROUND1,
     "--block-removal", "on", "--finetune-images", "35000")
# Goal 4: latency-aware allocation against MACs-targeted pruning at the same measured p90, batch 64 on local:cpu.
# "-b64" measures latency at batch 64 (original and compressed); "{p90:ROW}" is that row's measured p90 of the
# compressed model at batch 64 (run ROW first, in the same quiet period): the two budget rows aim at it, one
# allocating by predicted ms (latency table), one searching MACs reductions (sensitivity allocation), both with no
# margin under the budget.
LAT64 = ("--targets", "local:cpu", "--batch-sizes", "64")
for arch in ("resnet56", "resnet20"):
    short = "r" + arch[6:]
    ref = f"{{p90:{short}-l1-sensitivity-b64}}"
    _row(f"{short}-l1-sensitivity-b64", "4", arch, "l1", "--target-macs", "0.5", "--allocation", "sensitivity",
         *LAT64, *NO_FT)
    # the same MACs knapsack, offered to remove a residual block whole instead of narrowing it
    _row(f"{short}-l1-sensitivity-blocks-b64", "4", arch, "l1", "--target-macs", "0.5", "--allocation",
         "sensitivity", "--block-removal", "on", *LAT64, *NO_FT)
    for alloc in ("latency", "sensitivity"):
        _row(f"{short}-l1-{alloc}-budget-b64", "4", arch, "l1", "--allocation", alloc, "--latency-budget", ref,
             "--latency-batch", "64", "--latency-margin", "0", *LAT64, *NO_FT)
    # fixed cuts of the measured latency (the job aims with the table and corrects by measuring): 0.38 ~ the cut the
    # MACs plan measured in turns (benchmarks.paired_latency: ResNet-56 135.5 -> 84.6 ms, ResNet-20 44.1 -> 27.6 ms)
    for cut in ("0.35", "0.38", "0.45"):
        _row(f"{short}-l1-latency-cut{cut}-b64", "4", arch, "l1", "--allocation", "latency", "--target-latency", cut,
             "--latency-batch", "64", *LAT64, *NO_FT)
    # half of the measured latency
    _row(f"{short}-l1-latency-half-b64", "4", arch, "l1", "--allocation", "latency", "--target-latency", "0.5",
         "--latency-batch", "64", *LAT64, *NO_FT)

# Rows that named no allocation ran with the default of their day, uniform (sensitivity since 2026-12-02): they
# name it now, so that their commands still give their figures (their stored commands were amended alike).
for _name, (_goal, _arch, _criterion, _flags) in ROWS.items():
    if "--allocation" not in _flags:
        _at = _flags.index("--target-macs") + 2
        ROWS[_name] = (_goal, _arch, _criterion, [*_flags[:_at], "--allocation", "uniform", *_flags[_at:]])


def command(name: str, data_root: Path, out: Path, measured: list[dict] | None = None) -> list[str]:
    """The CLI arguments of row ``name``; ``{p90:ROW}`` is replaced by ROW's measured p90 at batch 64 (from
    ``measured``, the rows of accuracy.json)."""
    goal, arch, criterion, flags = ROWS[name]
    flags = [_resolve(f, measured or []) for f in flags]
    targets = [] if "--targets" in flags else ["--targets", ""]
    return ["--arch", f"cifar/{arch}", "--weights", str(data_root / "weights" / WEIGHTS[arch]),
            "--data", str(data_root / "cifar10"), "--criterion", criterion, *flags, *targets,
            "--out", str(out), "--force", "--json"]


def _resolve(flag: str, measured: list[dict]) -> str:
    """``{p90:ROW}``: ROW's compressed p90 at batch 64 (ms)."""
    if not (flag.startswith("{p90:") and flag.endswith("}")):
        return flag
    ref = flag[5:-1]
    row = next((r for r in measured if r["row"] == ref and (r.get("latency_b64") or {}).get("p90_ms")), None)
    if row is None:
        raise SystemExit(f"this row's latency target comes from row {ref}'s measured p90 at batch 64: run --rows {ref} "
                         "first (in the same quiet period: latency on this machine moves with its load)")
    return f"{row['latency_b64']['p90_ms']:.2f}"


def latency_b64(report: dict) -> dict | None:
    """The compressed model's p90 at batch 64 on local:cpu, the original's, and the measured speedup (p50) beside
    the MACs ratio, from the report's final benchmark (None when the row measured no latency)."""
    rows = {r["model"]: r for r in report.get("latency", []) if r["target"] == "local:cpu" and r["batch_size"] == 64
            and not r.get("error")}
    if "compressed" not in rows:
        return None
    speed = next((r for r in report.get("speedup", []) if r["target"] == "local:cpu" and r["batch_size"] == 64), {})
    return {"p90_ms": rows["compressed"]["p90_ms"], "original_p90_ms": rows.get("original", {}).get("p90_ms"),
            "stable": rows["compressed"].get("stable"), "measured_speedup": speed.get("measured_speedup"),
            "macs_ratio": speed.get("macs_ratio"), "speedup_vs_macs": speed.get("speedup_vs_macs")}


def finetune_summary(report: dict) -> dict | None:
    """Images seen, what stopped the fine-tune, and its validation checks [(step, top-1)] (the start is step 0)."""
    ft = report.get("finetune")
    if not ft:
        return None
    checks = [(h["step"], h["val_top1"]) for h in ft.get("history", []) if h.get("val_top1") is not None]
    return {"images_seen": ft.get("images_seen"), "steps": ft.get("steps"), "stopped_by": ft.get("stopped_by"),
            "returned": ft.get("returned"), "validation": checks}


def _best_check(checks: list) -> str:
    """What rows measured before ``returned`` was recorded gave back: the first best check."""
    if not checks:
        return ""
    best = max(range(len(checks)), key=lambda i: (checks[i][1], -i))
    return "the start" if best == 0 else f"step {checks[best][0]}"


def run_row(name: str, data_root: Path, measured: list[dict] | None = None, keep: Path | None = None) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"interprune-acc-{name}-"))
    argv = command(name, data_root, out, measured)
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "compress", *argv], cwd=ROOT,
                                stdout=out_file, stderr=err_file, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        _, status, usage = os.wait4(proc.pid, 0)              # this child's own peak RSS
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        err_file.seek(0)
        if code not in (0, 4):
            raise SystemExit(f"{name}: compress failed ({code}):\n{err_file.read()[-3000:]}")
    peak_mb = usage.ru_maxrss / 1024
    report = json.loads((out / "report.json").read_text())
    if keep is not None:                           # the exported models, for benchmarks.paired_latency
        (keep / name).mkdir(parents=True, exist_ok=True)
        for model in ("model.onnx", "original.onnx"):
            if (out / model).exists():
                shutil.copy2(out / model, keep / name / model)
    shutil.rmtree(out, ignore_errors=True)         # ONNX, weights, plots: the row keeps what the tables show
    acc = report["accuracy"]
    shown = " ".join(("''" if a == "" else a.replace(str(data_root), "../shared/data")) for a in argv[:-4])
    return {
        "row": name, "goal": ROWS[name][0], "arch": ROWS[name][1], "criterion": ROWS[name][2],
        "macs_reduction": report["reduction"]["macs"],
        "top1_original": acc["original"]["top1"],
        "top1_no_finetune": (acc.get("reconstructed") or acc.get("pruned"))["top1"],
        "top1_finetuned": acc["finetuned"]["top1"] if "finetuned" in acc else None,
        "top1_onnx": acc["exported"]["top1"] if "exported" in acc else None,
        "wall_s": round(wall, 1), "peak_rss_mb": round(peak_mb),
        "stage_s": {k: round(v, 1) for k, v in report.get("timings", {}).items()},
        "load": os.getloadavg()[0],
        "finetune": finetune_summary(report),
        "latency_b64": latency_b64(report),
        "latency_allocation": report.get("latency_allocation"),
        "latency_budget": report.get("latency_budget"),
        "command": f"interprune compress {shown}",
        "measured": time.strftime("%Y-%m-%d %H:%M"),
    }


def write(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps(rows, indent=1))
    pct = lambda v: "" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    lines = ["# Accuracy on CIFAR-10 (all 10,000 test images), issue 14", "",
             "Made by `python -m benchmarks.accuracy --rows NAME` (one row per process; `--list` names them). "
             "`no FT` = after pruning and the re-fit, before any fine-tuning; `ONNX` = the exported model run by "
             "ONNX Runtime on the test set (the figure an outsider measures). Wall time and peak RSS are the whole "
             "CLI process (load, score, allocate, prune, re-fit, fine-tune, export, parity, ONNX evaluation) on "
             "the 2-core CPU machine; `load` is the 1-minute load average when the row finished (other work shared "
             "the machine: times are upper bounds). `≤` peak RSS: the first run of the script took the largest of the rows "
             "run before it in the same process (fixed since: each child's own figure). Fine-tuned rows measured "
             "before 2026-12-01 16:40 (`measured` in accuracy.json) cropped every image of a batch at one offset and "
             "returned the best validation check; later ones crop each image at its own offset and return the "
             "annealed last step unless a check beats it beyond the validation slice's noise.", "",
             "| row | goal | model | criterion | MACs removed | top-1 no FT | top-1 after FT | top-1 ONNX | wall s | "
             "peak RSS MB | load | command |", "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['row']} | {r['goal']} | {r['arch']} | {r['criterion']} | {pct(r['macs_reduction'])} | "
                     f"{pct(r['top1_no_finetune'])} | {pct(r['top1_finetuned'])} | {pct(r['top1_onnx'])} | "
                     f"{r['wall_s']:.0f} | {'≤ ' if r.get('rss_upper_bound') else ''}{r['peak_rss_mb']} | {r['load']:.1f} | `{r['command']}` |")
    lines += kd_curve(rows)
    lines += latency_table(rows)
    (out / "accuracy.md").write_text("\n".join(lines) + "\n")


def kd_curve(rows: list[dict]) -> list[str]:
    """Goal 2: top-1 against images seen for the rows that fine-tuned from the same start (L1, sensitivity)."""
    def seen(r: dict) -> int:     # rows run before the summary was recorded: the budget their command asked for
        if r.get("finetune"):
            return r["finetune"]["images_seen"]
        words = r["command"].split()
        return int(words[words.index("--finetune-images") + 1])

    curve = sorted((r for r in rows if r["row"].startswith("r56-l1-sensitivity-kd") and not r["row"].endswith("-a0.5")),
                   key=seen)
    if not curve:
        return []
    lines = ["", "## Distillation curve (goal 2): ResNet-56, L1, sensitivity allocation, −50% MACs", "",
             "The same start (the re-fitted model, top-1 no FT) fine-tuned with the defaults (MSE on the teacher's "
             "logits, one-cycle, peak lr 0.01, batch 128, flip/crop) until the images seen; 35,000 = one pass over "
             "the training shards. Validation = the 500-image slice carved from the fine-tune split (training "
             "images: the start scores high there). The annealed last step comes back unless the best check (the "
             "start included) beats it by more than one standard error on the slice; rows marked *best-check rule* "
             "were measured earlier, when the best check always came back (a budget whose checks never beat the "
             "start returned the start unchanged).", "",
             "| row | images seen | steps | top-1 no FT | top-1 returned (ONNX) | validation checks (step: top-1) | "
             "returned | wall s | load |", "|" + "---|" * 9]
    for r in curve:
        ft = r.get("finetune") or {"images_seen": seen(r), "steps": "", "validation": []}
        checks = ft["validation"]
        returned = ft.get("returned") or (f"{_best_check(checks)} (*best-check rule*)" if checks else "")
        lines.append(f"| {r['row']} | {ft['images_seen']:,} | {ft['steps']} | {100 * r['top1_no_finetune']:.2f}% | "
                     f"{100 * r['top1_onnx']:.2f}% | {' '.join(f'{s}: {100 * v:.1f}%' for s, v in checks)} | "
                     f"{returned} | {r['wall_s']:.0f} | {r['load']:.1f} |")
    return lines


def latency_table(rows: list[dict]) -> list[str]:
    """Goal 4: the rows that measured latency at batch 64 on local:cpu."""
    timed = [r for r in rows if r.get("latency_b64")]
    if not timed:
        return []
    lines = ["", "## Latency at batch 64 on local:cpu (goal 4)", "",
             "p90 / speedup from the final benchmark of the exported models (original and compressed, the jobs' "
             "protocol); speedup = original p50 / compressed p50; `predicted` = the latency table's p90 for the plan "
             "(`--allocation latency` only). Figures move by about ±10% between measurements on this machine, more "
             "between jobs minutes apart; the plans compared at equal latency were also measured in turns "
             "(`python -m benchmarks.paired_latency`, paired_latency_b64.txt), which is the comparison to read. Rows "
             "measured from 2026-12-02 on export the CIFAR ResNets' option-A shortcut as one strided 1x1 convolution; "
             "earlier rows exported it as Slice + Pad, slower in both models (README, \"Exported shortcuts\").", "",
             "`job's cut` (`--target-latency` rows): the fraction of the unpruned model's latency the job measured its "
             "plan to remove (ratio of medians, the two measured in turns), and how many candidates it measured; rows measured before 2026-12-02 04:30 ran when "
             "`--target-latency` was a fraction of the *predicted* p90, measured once, not corrected.", "",
             "| row | MACs removed | top-1 no FT | p90 ms (original → compressed) | budget met | speedup | MACs ratio | "
             "speedup / MACs ratio | predicted p90 ms | job's cut | load | measured |", "|" + "---|" * 12]
    for r in timed:
        lat, alloc, budget = r["latency_b64"], r.get("latency_allocation") or {}, r.get("latency_budget") or {}
        num = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {r['row']} | {100 * r['macs_reduction']:.2f}% | {100 * r['top1_no_finetune']:.2f}% | "
                     f"{num(lat['original_p90_ms'], '.1f')} → {num(lat['p90_ms'], '.1f')}"
                     f"{'' if lat.get('stable') is not False else ' (not stable)'} | "
                     f"{'' if not budget else ('yes' if budget.get('met') else 'no')} | "
                     f"{num(lat['measured_speedup'], '.2f')} | {num(lat['macs_ratio'], '.2f')} | "
                     f"{num(lat['speedup_vs_macs'], '.2f')} | {num(alloc.get('predicted_ms'), '.1f')} | "
                     f"{_job_cut(alloc)} | {r['load']:.1f} | {r.get('measured', '')} |")
    return lines


def _job_cut(alloc: dict) -> str:
    if alloc.get("targeted") != "reduction" or "measured_reduction" not in alloc:
        return ""
    return f"{alloc['reduction']:.2f} asked, {alloc['measured_reduction']:.3f} ({alloc['candidates']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--rewrite", action="store_true", help="rewrite accuracy.md from accuracy.json")
    add_data_root(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--keep", type=Path, help="copy each row's model.onnx / original.onnx to KEEP/ROW/")
    args = parser.parse_args()
    if args.list or not (args.rows or args.rewrite):
        for name, (goal, arch, criterion, flags) in ROWS.items():
            print(f"{name:34s} goal {goal:4s} {arch} {criterion} {' '.join(flags)}")
        return
    path = args.out / "accuracy.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    for row in rows:              # rows written before the empty --targets value was shown
        if row["command"].endswith("--targets"):
            row["command"] += " ''"
    if args.rewrite:
        write(rows, args.out)
        return
    for name in args.rows.split(","):
        if name not in ROWS:
            raise SystemExit(f"unknown row {name!r}; --list shows them")
        row = run_row(name, args.data_root.resolve(), rows, args.keep)
        print(json.dumps(row), flush=True)
        if path.exists():         # re-read: another runner may have written rows meanwhile
            rows = json.loads(path.read_text())
        rows = [r for r in rows if r["row"] != name] + [row]
        order = list(ROWS)
        rows.sort(key=lambda r: order.index(r["row"]) if r["row"] in order else len(order))
        write(rows, args.out)


if __name__ == "__main__":
    main()
