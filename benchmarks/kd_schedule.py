"""KD fine-tuning schedules on ResNet-56 / CIFAR-10 pruned to -50% MACs, every variant from the same start.

    nice -n 5 .venv/bin/python -m benchmarks.kd_schedule --variants cosine-0.01,onecycle-0.05 --images 5000
    nice -n 5 .venv/bin/python -m benchmarks.kd_schedule --start layer_probe --variants onecycle-0.01-crop-image

The start is made once: ``pruning.compress.compress`` with ``--start``'s criterion (L1, uniform widths, or
layer_probe: whole residual blocks), -50% MACs, reconstruction on, no fine-tuning; its ``plan.json`` +
``weights.pt`` are cached in --cache and rebuilt with ``surgery.load_compressed`` for each variant.
The fine-tune pool, the 500-image validation slice and the batches are those ``compress`` uses (seed 0). Each
variant runs ``pruning.finetune.finetune`` with the settings spelled out in ``VARIANTS`` (all of them, so a
variant does not move when the library's defaults do) and is evaluated on all 10,000 test images.

Rows are appended to ``--out``/kd_schedule.json (kd_schedule_layer_probe.json for that start; a re-run of a
variant at a budget replaces its row) and the table ``kd_schedule.md`` (``kd_schedule_layer_probe.md``) is rewritten
from it, with the command that produced each row.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from benchmarks.shared_data import add_data_root, weights_file

ROOT = Path(__file__).resolve().parents[1]

#: Today's fine-tuning (before this benchmark): cosine from 0.01, T 4, alpha 0.9, wd 5e-4, batch 128,
#: one random crop offset per batch (``per_batch_crop``).
BASE = dict(lr=0.01, warmup=0.0, temperature=4.0, alpha=0.9, loss="kl", weight_decay=5e-4, batch_size=128,
            crop="batch")
VARIANTS: dict[str, dict] = {
    "cosine-0.01": {},
    "cosine-0.05": dict(lr=0.05),
    "onecycle-0.05": dict(lr=0.05, warmup=0.15),
    "onecycle-0.1": dict(lr=0.1, warmup=0.15),
    "onecycle-0.02": dict(lr=0.02, warmup=0.15),
}
for _lr in (0.005, 0.01, 0.02, 0.05, 0.1):    # knobs around each one-cycle peak
    _p = dict(lr=_lr, warmup=0.15)
    VARIANTS.update({
        f"onecycle-{_lr}-T1": dict(_p, temperature=1.0),
        f"onecycle-{_lr}-T2": dict(_p, temperature=2.0),
        f"onecycle-{_lr}-a0.5": dict(_p, alpha=0.5),
        f"onecycle-{_lr}-a1": dict(_p, alpha=1.0),
        f"onecycle-{_lr}-T2-a1": dict(_p, temperature=2.0, alpha=1.0),
        f"onecycle-{_lr}-T1-a1": dict(_p, temperature=1.0, alpha=1.0),
        f"onecycle-{_lr}-mse-a1": dict(_p, loss="mse", alpha=1.0),
        f"onecycle-{_lr}-wd0": dict(_p, weight_decay=0.0),
        f"onecycle-{_lr}-b64": dict(_p, batch_size=64),
        f"onecycle-{_lr}-crop-image": dict(_p, crop="image"),
    })
    _m = dict(_p, loss="mse", alpha=1.0)      # ... and around logit matching
    VARIANTS.update({
        f"onecycle-{_lr}-mse-a0.5": dict(_m, alpha=0.5),
        f"onecycle-{_lr}-mse-a1-b64": dict(_m, batch_size=64),
        f"onecycle-{_lr}-mse-a1-wd0": dict(_m, weight_decay=0.0),
        f"onecycle-{_lr}-mse-a1-crop-image": dict(_m, crop="image"),
        f"cosine-{_lr}-mse-a1": dict(_m, warmup=0.0),
    })
    for _w in (0.5, 1, 2, 4):                 # ... and with feature hints at the stages' outputs (today's crop)
        VARIANTS[f"onecycle-{_lr}-mse-a1-crop-image-hint{_w}"] = dict(_m, crop="image", hint=_w)


STARTS = ("l1", "layer_probe")    # the criterion of the start (its defaults otherwise, as the CLI's)


def prepare(args) -> Path:
    """Compress once (cached): plan.json + weights.pt of ``args.start`` -50% MACs with reconstruction, no
    fine-tuning."""
    from pruning.compress import CompressSpec, DataSpec, FinetuneSpec, ModelSpec, PruneSpec, compress

    out = args.cache / ("start" if args.start == "l1" else f"start-{args.start}")
    if (out / "plan.json").exists() and (out / "start.json").exists():
        return out
    weights = weights_file(args.data_root, "resnet56")
    spec = CompressSpec(model=ModelSpec("cifar/resnet56", str(weights)),
                        data=DataSpec(str(args.data_root / "cifar10")),
                        prune=PruneSpec(args.start, target_reduction=0.5, allocation="uniform"),
                        finetune=FinetuneSpec(), threads=args.threads)
    start = time.perf_counter()
    result = compress(spec, out)
    facts = {"accuracy": {k: v.top1 for k, v in result.accuracy.items()}, "macs_reduction": result.reduction("macs"),
             "seconds": time.perf_counter() - start}
    (out / "start.json").write_text(json.dumps(facts, indent=1))
    print(f"[start] {args.start} -{facts['macs_reduction']:.1%} MACs + reconstruction: "
          + ", ".join(f"{k} {v:.2%}" for k, v in facts["accuracy"].items()) + f" ({facts['seconds']:.0f} s)")
    return out


def per_batch_crop(x, gen):
    """The augmentation ``pruning.data.batches`` used before 2026-12-01 (the "batch" rows of the table): random
    horizontal flip per image, one 4-px padded crop offset for the whole batch."""
    import torch
    import torch.nn.functional as F

    pad = max(1, x.shape[-2] // 8)
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return padded[:, :, dy:dy + h, dx:dx + w]


def run_variant(args, start_dir: Path, name: str, images: int, start_top1: float) -> dict:
    import numpy as np
    import torch

    from pruning import data as data_mod
    from pruning import zoo
    from pruning.feature_hints import hint_pairs, stage_names
    from pruning.finetune import FinetuneBudget, FinetuneSettings, evaluation_callback, finetune
    from pruning.measure import evaluate
    from pruning.surgery import load_compressed

    cfg = dict(BASE, **VARIANTS[name])
    torch.manual_seed(0)
    entry = zoo.get_entry("cifar/resnet56")
    weights = weights_file(args.data_root, "resnet56")
    teacher = zoo.load_model("cifar/resnet56", weights)
    student = load_compressed(start_dir / "plan.json", start_dir / "weights.pt")
    source = data_mod.load_images(args.data_root / "cifar10")
    splits = data_mod.make_splits(source, 2000, None, None, seed=0)          # as compress: DataSpec defaults
    pre = data_mod.Preprocess(entry.mean, entry.std)
    pool = splits.finetune                                                   # as compress._finetune_stage
    n_val = min(500, len(pool) // 5)
    val_set, train_set = pool.subset(np.arange(n_val)), pool.subset(np.arange(n_val, len(pool)))
    batch = cfg["batch_size"]

    def train_epoch(epoch: int):
        if cfg["crop"] == "image":          # today's pruning.data augmentation: an offset per image
            return data_mod.batches(train_set, pre, batch, shuffle=True, seed=epoch, augment=True)
        plain = data_mod.batches(train_set, pre, batch, shuffle=True, seed=epoch)
        gen = torch.Generator().manual_seed(epoch)
        return ((per_batch_crop(x, gen), y) for x, y in plain)

    val_top1 = evaluation_callback(lambda: data_mod.batches(val_set, pre, 500))
    checks: list[tuple[float, float]] = []    # (validation, test) at each of finetune's checks, in order

    def validate(model) -> float:   # finetune selects by validation only; test is recorded beside it, never used
        val = val_top1(model)          # the first check is the start: its test top-1 is the compress run's
        test = evaluate(model, data_mod.batches(splits.evaluation, pre, 500)).top1 if checks else start_top1
        checks.append((val, test))
        return val
    settings = FinetuneSettings(lr=cfg["lr"], weight_decay=cfg["weight_decay"], temperature=cfg["temperature"],
                                alpha=cfg["alpha"], warmup=cfg["warmup"], loss=cfg["loss"],
                                hint_weight=cfg.get("hint", 0.0))
    hints = hint_pairs(student, teacher, stage_names(entry.removable_blocks(teacher)))
    begin = time.perf_counter()
    report = finetune(student, teacher, train_epoch, -(-len(train_set) // batch), batch,
                      FinetuneBudget(images=images), settings, validate, hints=hints)
    wall = time.perf_counter() - begin
    top1 = evaluate(student, data_mod.batches(splits.evaluation, pre, 500)).top1
    steps = [h["step"] for h in report.history if "val_top1" in h]
    curve = [(s, v, t) for s, (v, t) in zip(steps, checks)]                # (step, validation, test)
    row = {"variant": name, "images": images, "images_seen": report.images_seen, "top1": top1,
           "top1_start": curve[0][2], "top1_last": curve[-1][2],
           "wall_s": round(wall, 1), "steps": report.steps, "stopped_by": report.stopped_by,
           "best_val": report.best_val_top1, "curve": curve, "settings": cfg,
           "command": f"nice -n 5 {sys.executable} -m benchmarks.kd_schedule " + " ".join(map(shlex.quote, sys.argv[1:]))}
    print(f"[{name} @ {images}] top-1 returned {top1:.2%}, last step {row['top1_last']:.2%} (start "
          f"{row['top1_start']:.2%}); {report.images_seen} images seen, {report.steps} steps, {wall:.0f} s "
          f"(with test checks), stopped by {report.stopped_by}; step:validation/test " +
          " ".join(f"{s}:{v:.1%}/{t:.2%}" for s, v, t in curve), flush=True)
    return row


def _suffix(start_criterion: str) -> str:
    return "" if start_criterion == "l1" else f"_{start_criterion}"


def write_table(out: Path, rows: list[dict], start: dict, start_criterion: str = "l1") -> str:
    lines = ["| variant | settings (vs. the reference) | images seen | top-1 returned | top-1 last step | wall s | "
             "stopped by | validation/test at each check | command |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["images"], -r["top1"])):
        diff = {k: v for k, v in r["settings"].items() if BASE.get(k) != v}
        shown = ", ".join(f"{k}={v}" for k, v in diff.items()) or "the reference"
        curve = " ".join(f"{s}:{v:.1%}/{t:.2%}" for s, v, t in r["curve"])
        lines.append(f"| {r['variant']} | {shown} | {r['images_seen']} | {r['top1']:.2%} | {r['top1_last']:.2%} | "
                     f"{r['wall_s']:.0f} | {r['stopped_by']} | {curve} | `{r['command']}` |")
    acc = start["accuracy"]
    how = "L1" if start_criterion == "l1" else f"{start_criterion} (whole residual blocks removed)"
    head = (f"# KD fine-tuning schedules: ResNet-56 / CIFAR-10, {how} -50% MACs + reconstruction\n\n"
            f"Start (same for every row, {start['macs_reduction']:.1%} MACs removed): unpruned {acc['original']:.2%}, "
            f"pruned {acc['pruned']:.2%}, reconstructed {acc['reconstructed']:.2%} on the 10,000 test images. "
            f"The reference settings (the library's defaults when this benchmark was written): {BASE}; a job's "
            "defaults today are the onecycle-0.01-mse-a1-crop-image row's. Top-1 on all 10,000 test images: "
            "*returned* = the weights `finetune` gives back here (the best of its validation checks, the start "
            "included), *last step* = the weights after the last step (what a job returns unless a check beats it "
            "beyond the validation slice's noise). "
            "The curve is step:validation/test at each check (validation = the 500-image slice of the fine-tune "
            "pool that selects the weights; test is only recorded). Wall = fine-tuning including those test "
            "checks, final evaluation excluded (2 CPU threads, shared machine). Rows sorted by budget, then "
            "top-1 returned.\n\n")
    table = "\n".join(lines)
    (out / f"kd_schedule{_suffix(start_criterion)}.md").write_text(head + table + "\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_root(parser)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/interprune-kd"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--variants", default="cosine-0.01", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--images", default="5000", help="comma-separated budgets (images seen)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--start", choices=STARTS, default="l1", help="the criterion that prunes the start")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    start_dir = prepare(args)
    start = json.loads((start_dir / "start.json").read_text())
    store = args.out / f"kd_schedule{_suffix(args.start)}.json"
    rows = json.loads(store.read_text()) if store.exists() else []
    for images in map(int, args.images.split(",")):
        for name in args.variants.split(","):
            row = run_variant(args, start_dir, name, images, start['accuracy']['reconstructed'])
            rows = [r for r in rows if (r["variant"], r["images"]) != (name, images)] + [row]
            args.out.mkdir(parents=True, exist_ok=True)
            store.write_text(json.dumps(rows, indent=1))
            write_table(args.out, rows, start, args.start)
    print(write_table(args.out, rows, start, args.start))


if __name__ == "__main__":
    main()
