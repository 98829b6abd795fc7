"""CIFAR VGG-16 (BN) trained briefly from scratch, then compressed at -50% MACs by the project's pipeline.

    .venv/bin/python -m benchmarks.vgg16_cifar [--data ../shared/data/cifar10] [--epochs 1.5] [--finetune-images 10000]

1. Train: ``cifar/vgg16_bn`` from random init on the CIFAR-10 training shards (``--limit-train`` of them), SGD
   momentum 0.9 (Nesterov), one-cycle lr (peak ``--lr``), weight decay 5e-4, random flip + 4-px padded crop per
   image, batch 128, ``torch.set_num_threads(--threads)``; the zoo's normalisation (ImageNet mean/std, as the
   pipeline uses). The state_dict goes to ``--runs`` (gitignored) with a JSON record beside it; top-1 on the
   first ``--eval-images`` test images (all 10,000 by default). ``--weights`` skips training and uses a
   state_dict saved earlier (its record, if beside it, fills the training columns). Cost: a training step of 128
   took 6.7 s of CPU time (2 threads, AVX2 EPYC), so the default 1.5 epochs (411 steps) should take ~23 min on
   2 quiet cores (estimated from CPU time, not measured on a quiet machine); on the shared machine it ran at
   ~15 s per step.
2. Compress: ``pipeline.run.run_pipeline`` per criterion (``--criteria``, default l1) at ``--target`` MACs
   removed: scores from ``--calibration-images`` training images, uniform allocation (widths rounded to 8),
   surgery, reconstruction, then KD fine-tuning on ``--finetune-images`` images seen, ONNX export with parity
   check and ONNX accuracy. One run gives both figures: ``reconstructed`` is measured before fine-tuning starts
   from that same model. Each run is a fresh spawned process (its own peak RSS). ``--targets ''`` (default)
   skips the latency benchmark; ``--targets local:cpu --batch-sizes 1,64`` measures it.
3. Writes ``vgg16_cifar.md`` and ``vgg16_cifar.json`` to ``--out`` and prints the table. Everything below the line
   ``<!-- notes -->`` in the .md is kept when it is rewritten. ``--weights W --append`` adds runs (another
   criterion, budget) of the same trained model to the table already there.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import resource
import shlex
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCH = "cifar/vgg16_bn"
NOTES_MARKER = "<!-- notes -->"
#: Alqahtani et al. 2021 (CVIU), the `dissection` criterion's paper (shared/CRITERIA.md, section 1): abstract.
SEED_REFERENCE = ("P1 (Alqahtani, Xie, Jones, Essa, CVIU 2021, the `dissection` criterion): VGG-16 on CIFAR-10, "
                  "-50% FLOPs for -0.86 pt top-1 after full fine-tuning, from a fully trained (~93-94%) model")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2   # ru_maxrss is in KiB on Linux


# --- 1. training --------------------------------------------------------------------------------

def flip_and_crop(x, gen):
    """Per image: a random horizontal flip and a random 32x32 crop of the image zero-padded by 4 px."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (4, 4, 4, 4))                                   # [N, C, H+8, W+8]
    dy, dx = torch.randint(0, 9, (2, n), generator=gen).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train(args) -> tuple[Path, dict]:
    """Train from scratch; save the state_dict and its record under --runs; return (path, record)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from pruning import data as data_mod
    from pruning import zoo
    from pruning.measure import evaluate

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    source = data_mod.load_images(args.data)
    pool = source.train if args.limit_train is None else source.train.subset(np.arange(args.limit_train))
    entry = zoo.get_entry(ARCH)
    preprocess = data_mod.Preprocess(entry.mean, entry.std)
    steps = max(1, math.ceil(args.epochs * len(pool) / args.batch_size))
    model = zoo.create_model(ARCH, 10).to(memory_format=torch.channels_last)   # channels_last: ~1.4x on CPU
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                                weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.25,
                                                   div_factor=10.0, final_div_factor=100.0)
    gen = torch.Generator().manual_seed(args.seed)
    print(f"[train] {ARCH} from scratch: {steps} steps of {args.batch_size} = {args.epochs:g} epoch(s) of "
          f"{len(pool)} training images, one-cycle peak lr {args.lr}, {torch.get_num_threads()} threads", flush=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    step, epoch, seen, correct, loss_sum = 0, 0, 0, 0, 0.0
    while step < steps:
        order = np.random.default_rng(args.seed * 1000 + epoch).permutation(len(pool))
        for begin in range(0, len(order), args.batch_size):
            if step >= steps:
                break
            index = np.sort(order[begin:begin + args.batch_size])
            x = flip_and_crop(preprocess(pool.images[index]), gen).contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(pool.labels[index])
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += loss.item() * len(y)
            if step % args.log_every == 0 or step == steps:
                elapsed = time.perf_counter() - start
                print(f"[train] step {step}/{steps} loss {loss_sum / seen:.3f} train top-1 {correct / seen:.2%} "
                      f"(since last log) lr {schedule.get_last_lr()[0]:.4f} {elapsed:.0f} s, ETA "
                      f"{elapsed / step * (steps - step):.0f} s; CPU {time.process_time() - cpu_start:.0f} s",
                      flush=True)
                seen, correct, loss_sum = 0, 0, 0.0
        epoch += 1
    train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    model.eval()
    test = source.test.subset(np.arange(min(args.eval_images, len(source.test))))
    start = time.perf_counter()
    accuracy = evaluate(model, data_mod.batches(test, preprocess, 500))
    eval_s = time.perf_counter() - start
    record = {
        "arch": ARCH, "epochs": args.epochs, "steps": steps, "batch_size": args.batch_size,
        "train_images": len(pool), "images_seen": steps * args.batch_size, "lr_peak": args.lr,
        "weight_decay": args.weight_decay, "seed": args.seed, "threads": args.threads,
        "train_s": round(train_s, 1), "train_cpu_s": round(train_cpu_s, 1), "eval_s": round(eval_s, 1),
        "test_images": accuracy.num_images,
        "top1": accuracy.top1, "top5": accuracy.top5, "peak_rss_gb": round(peak_rss_gb(), 2),
    }
    args.runs.mkdir(parents=True, exist_ok=True)
    tag = f"e{args.epochs:g}" + (f"-n{args.limit_train}" if args.limit_train is not None else "") + f"-s{args.seed}"
    path = args.runs / f"vgg16_bn-{tag}.pt"
    torch.save({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, path)
    record["weights"] = str(path)
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"[train] {train_s:.0f} s; test top-1 {accuracy.top1:.2%} (top-5 {accuracy.top5:.2%}) on "
          f"{accuracy.num_images} images ({eval_s:.0f} s); weights {path}", flush=True)
    return path, record


# --- 2. compression -----------------------------------------------------------------------------

def compress_one(options: dict) -> dict:
    """One pipeline run, in a spawned process: returns the row (or the error with its traceback)."""
    try:
        return _compress_one(options)
    except Exception as exc:  # noqa: BLE001 - an engine failure is reported in the table, with where it happened
        return {"criterion": options["criterion"], "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(), "peak_rss_gb": round(peak_rss_gb(), 2)}


def _compress_one(o: dict) -> dict:
    import torch

    from pipeline.run import run_pipeline
    from pipeline.spec import BenchmarkSpec, JobSpec
    from pruning.spec import CompressSpec, DataSpec, FinetuneSpec, ModelSpec, PruneSpec

    torch.set_num_threads(o["threads"])
    spec = JobSpec(
        CompressSpec(model=ModelSpec(ARCH, o["weights"]),
                     data=DataSpec(o["data"], calibration_images=o["calibration_images"],
                                   evaluation_images=o["eval_images"]),
                     prune=PruneSpec(o["criterion"], target_reduction=o["target"], allocation="uniform"),
                     finetune=FinetuneSpec(images=o["finetune_images"] or None),
                     threads=o["threads"]),
        benchmark=BenchmarkSpec(targets=tuple(o["targets"]), batch_sizes=tuple(o["batch_sizes"])))
    events: list[str] = []

    def progress(event) -> None:
        if event.fraction in (0.0, 1.0):
            line = f"[{o['criterion']}] {event.stage}: {event.message}"
            events.append(line)
            print(line, flush=True)

    start = time.perf_counter()
    report = run_pipeline(spec, o["work"], progress=progress)
    wall = time.perf_counter() - start
    acc, cost = report["accuracy"], report["cost"]
    ft = report.get("finetune") or {}
    return {
        "criterion": o["criterion"], "target": o["target"], "finetune_images": o["finetune_images"],
        "macs_original": cost["original"]["macs"], "macs_compressed": cost["compressed"]["macs"],
        "params_original": cost["original"]["params"], "params_compressed": cost["compressed"]["params"],
        "macs_reduction": report["reduction"]["macs"],
        "top1_original": acc["original"]["top1"], "top1_pruned": acc["pruned"]["top1"],
        "top1_reconstructed": acc.get("reconstructed", {}).get("top1"),
        "top1_finetuned": acc.get("finetuned", {}).get("top1"), "top1_exported": acc["exported"]["top1"],
        "eval_images": acc["original"]["num_images"],
        "parity_max_abs": report["export"]["parity"]["max_abs_error"],
        "finetune": {k: ft.get(k) for k in ("steps", "images_seen", "seconds", "best_val_top1", "stopped_by")},
        "widths": {layer["layer"]: layer["kept"] for layer in report.get("layers", [])},
        "latency": report.get("latency", []),
        "timings": {k: round(v, 1) for k, v in report["timings"].items()},
        "wall_s": round(wall, 1), "peak_rss_gb": round(peak_rss_gb(), 2), "out": o["work"],
    }


# --- 3. the results file ------------------------------------------------------------------------

def pct(value) -> str:
    return "—" if value is None else f"{value:.2%}"


def points(after, before) -> str:
    return "—" if after is None or before is None else f"{(after - before) * 100:+.2f} pt"


KEY = ("criterion", "target", "finetune_images")


def earlier_results(out: Path, weights: Path) -> tuple[list[str], list[dict]]:
    """``--append``: the commands and runs already in ``vgg16_cifar.json``, which must be of the same weights."""
    path = out / "vgg16_cifar.json"
    if not path.exists():
        return [], []
    earlier = json.loads(path.read_text())
    if Path(earlier["training"].get("weights", "")).resolve() != weights.resolve():
        raise SystemExit(f"--append: {path} holds runs of {earlier['training'].get('weights')}, not {weights}; "
                         "pass those weights or drop --append")
    return list(earlier.get("commands", [])), list(earlier.get("runs", []))


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with every row that ``new`` re-measured replaced, then the new ones, order kept."""
    fresh = {tuple(r.get(k) for k in KEY): r for r in new}
    merged = [fresh.pop(tuple(r.get(k) for k in KEY), r) for r in old]
    return merged + list(fresh.values())


def write_results(record: dict, rows: list[dict], commands: list[str], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    md = out / "vgg16_cifar.md"
    notes = md.read_text().split(NOTES_MARKER, 1)[1] if md.exists() and NOTES_MARKER in md.read_text() else "\n"
    (out / "vgg16_cifar.json").write_text(json.dumps({"commands": commands, "training": record, "runs": rows},
                                                     indent=2) + "\n")
    ok = [r for r in rows if "error" not in r]
    lines = [
        "# CIFAR VGG-16 (BN): trained briefly, then -50% MACs through the pipeline",
        "",
        f"Model `{ARCH}` trained from scratch for {record.get('epochs', '?')} epoch(s) = {record.get('steps', '?')} "
        f"steps of {record.get('batch_size', '?')} ({record.get('images_seen', '?')} images seen) on "
        f"{record.get('train_images', '?')} CIFAR-10 training images (the 35,000 of ../shared/data/cifar10), "
        f"SGD momentum 0.9, one-cycle lr peak {record.get('lr_peak', '?')}, weight decay "
        f"{record.get('weight_decay', '?')}, flip + crop, {record.get('threads', '?')} CPU threads. "
        f"Accuracy is top-1 on the first {record.get('test_images', '?')} images of the official test set.",
        "",
        "| criterion | trained (unpruned) | pruned, no reconstruction | reconstructed, no fine-tuning | "
        "after KD fine-tune | exported (ONNX) | drop without FT | drop after KD |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ok:
        kd = f" ({r['finetune_images']} images)" if r["finetune_images"] else ""
        lines.append(f"| {r['criterion']} -{r['macs_reduction']:.1%} MACs | {pct(r['top1_original'])} | "
                     f"{pct(r['top1_pruned'])} | {pct(r['top1_reconstructed'])} | {pct(r['top1_finetuned'])}{kd} | "
                     f"{pct(r['top1_exported'])} | {points(r['top1_reconstructed'], r['top1_original'])} | "
                     f"{points(r['top1_finetuned'], r['top1_original'])} |")
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['criterion']} | FAILED: `{r['error'][:300]}` | | | | | | |")
    lines += ["", "Widths rounded to multiples of 8, uniform allocation; the reconstructed figure is measured before "
              "fine-tuning starts from that same model, so one run gives both."]
    lines += ["", f"Seeds' reference: {SEED_REFERENCE}.", ""]
    if ok:
        r = ok[0]
        lines += [
            "| | original | compressed |", "|---|---:|---:|",
            f"| MACs | {r['macs_original'] / 1e6:.1f} M | {r['macs_compressed'] / 1e6:.1f} M "
            f"(-{r['macs_reduction']:.1%}) |",
            f"| params | {r['params_original'] / 1e6:.2f} M | {r['params_compressed'] / 1e6:.2f} M "
            f"(-{1 - r['params_compressed'] / r['params_original']:.1%}) |",
            "",
            "Kept widths (" + r["criterion"] + "): " + ", ".join(f"{k} {v}" for k, v in r["widths"].items()),
            "",
        ]
    lines += ["## Wall times and memory", "",
              f"- training: {record.get('train_s', '?')} s wall ({record.get('train_cpu_s', '?')} s CPU time) for "
              f"{record.get('steps', '?')} steps, test evaluation "
              f"{record.get('eval_s', '?')} s; peak RSS of that process {record.get('peak_rss_gb', '?')} GB"]
    for r in rows:
        if "error" in r:
            lines.append(f"- {r['criterion']}: failed (peak RSS {r['peak_rss_gb']} GB)")
            continue
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in r["timings"].items())
        ft = r["finetune"]
        lines.append(f"- {r['criterion']} pipeline: {r['wall_s']:.0f} s wall ({stages}); peak RSS "
                     f"{r['peak_rss_gb']} GB; KD: {ft.get('steps')} steps, {ft.get('images_seen')} images, stopped "
                     f"by {ft.get('stopped_by')}, best validation top-1 {pct(ft.get('best_val_top1'))}; "
                     f"ONNX parity max abs {r['parity_max_abs']:.1e}")
        for lat in r["latency"]:
            lines.append(f"  - latency {lat}")
    lines += ["", "Commands:", ""] + ["    " + c for c in commands] + [""]
    md.write_text("\n".join(lines) + "\n" + NOTES_MARKER + notes)
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10",
                        help="CIFAR-10 folder (train_0*.npz, test.npz), read in place")
    parser.add_argument("--epochs", type=float, default=1.5, help="training epochs (fractions allowed)")
    parser.add_argument("--limit-train", type=int, default=None, help="train on the first N training images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05, help="one-cycle peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=10, help="training steps between progress lines")
    parser.add_argument("--eval-images", type=int, default=10000, help="test images for every accuracy")
    parser.add_argument("--weights", type=Path, default=None, help="skip training: a state_dict saved earlier")
    parser.add_argument("--criteria", default="l1", help="comma-separated, e.g. l1,redundancy")
    parser.add_argument("--target", type=float, default=0.5, help="fraction of MACs to remove")
    parser.add_argument("--finetune-images", type=int, default=10000, help="KD budget (images seen); 0 = none")
    parser.add_argument("--calibration-images", type=int, default=2000)
    parser.add_argument("--targets", default="", help="latency targets, e.g. local:cpu ('' = skip)")
    parser.add_argument("--batch-sizes", default="1,64", help="latency batch sizes")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "vgg16_cifar", help="weights and work folders")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--append", action="store_true",
                        help="with --weights: keep the runs already in --out (a re-measured run replaces its row)")
    args = parser.parse_args()
    command = "nice -n 5 .venv/bin/python -m benchmarks.vgg16_cifar " + shlex.join(sys.argv[1:])
    if args.append and args.weights is None:
        raise SystemExit("--append adds runs of the same model: pass --weights (the state_dict trained before)")
    commands, earlier = earlier_results(args.out, args.weights) if args.append else ([], [])
    commands.append(command)

    if args.weights is None:
        weights, record = train(args)
    else:
        weights = args.weights
        beside = weights.with_suffix(".json")
        record = json.loads(beside.read_text()) if beside.exists() else {}
        print(f"[train] skipped: weights {weights}" + (f" (test top-1 {record['top1']:.2%})" if record else ""))

    rows = []
    spawn = multiprocessing.get_context("spawn")
    for criterion in args.criteria.split(","):
        options = {"criterion": criterion, "weights": str(weights), "data": str(args.data),
                   "calibration_images": args.calibration_images, "eval_images": args.eval_images,
                   "target": args.target, "finetune_images": args.finetune_images, "threads": args.threads,
                   "targets": [t for t in args.targets.split(",") if t],
                   "batch_sizes": [int(b) for b in args.batch_sizes.split(",")],
                   "work": str(args.runs / f"{weights.stem}-{criterion}-{args.target:g}-ft{args.finetune_images}")}
        with spawn.Pool(1) as pool:
            row = pool.apply(compress_one, (options,))
        if "error" in row:
            print(f"[{criterion}] FAILED: {row['error']}\n{row['traceback']}", flush=True)
        else:
            print(json.dumps({k: v for k, v in row.items() if k not in ("widths", "latency")}), flush=True)
        rows.append(row)
        write_results(record, merge_rows(earlier, rows), commands, args.out)
    print(write_results(record, merge_rows(earlier, rows), commands, args.out))


if __name__ == "__main__":
    main()
