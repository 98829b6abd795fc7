"""Every criterion and baseline on ResNet-56 / CIFAR-10 (../shared/data) at the same MACs targets.

    .venv/bin/python -m benchmarks.criteria_cifar --targets 0.5,0.3 --finetune-images 0,10000
    .venv/bin/python -m benchmarks.criteria_cifar --targets 0.5 --allocation sensitivity --round-to 1 \
        --criterion-param dissection:refit_window=0.5 --criterion-param functionality:refit_window=0.5 \
        --criterion-param visual_similarity:refit_window=0.5 --append          # issue 14's recipe

For each (criterion, target, fine-tune budget) the real pipeline runs in this process: scores from the calibration
split of the training shards, allocation to the target (--allocation, default uniform; widths rounded to
--round-to, default automatic: 8), surgery, reconstruction
(on for all), optional KD fine-tuning, ONNX export with parity check, ONNX accuracy on held-out test images, and
ONNX Runtime CPU latency at batch 64. Writes ``criteria_cifar.md``, ``criteria_cifar.csv`` and
``criteria_cifar.png`` (accuracy vs MACs per criterion) to --out, and prints the table.

``--append`` keeps the rows already in --out (a new row replaces one with the same criterion, target and budget),
so a table can be built over several runs. Everything below the line ``<!-- notes -->`` in ``criteria_cifar.md``
is kept when the table is rewritten.

``--scoring-only`` instead measures each criterion's scoring time and peak memory (RSS of a fresh subprocess per
criterion) with --calibration-images images.
"""
from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from benchmarks.shared_data import add_data_root, weights_file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CRITERIA = ("random", "l1", "fpgm", "taylor", "dissection", "functionality", "redundancy",
                    "visual_similarity", "layer_probe")
COLUMNS = ("criterion", "allocation", "round_to", "criterion_params", "target", "finetune_images", "macs_reduction", "params", "top1_pruned",
           "top1_reconstructed", "top1_finetuned", "top1_exported", "parity_max_abs", "ort_cpu_b64_p50_ms",
           "scoring_s", "total_s")


def run_one(args, criterion: str, target: float, finetune_images: int, out: Path) -> dict:
    from pruning.compress import CompressSpec, DataSpec, FinetuneSpec, ModelSpec, PruneSpec
    from pipeline.run import run_pipeline
    from pipeline.spec import BenchmarkSpec, JobSpec

    weights = weights_file(args.data_root, "resnet56")
    params = criterion_params(args.criterion_param, criterion)
    spec = JobSpec(
        CompressSpec(model=ModelSpec("cifar/resnet56", str(weights)),
                     data=DataSpec(str(args.data_root / "cifar10"), calibration_images=args.calibration_images,
                                   evaluation_images=args.eval_images),
                     prune=PruneSpec(criterion, target_reduction=target, allocation=args.allocation,
                                     round_to=args.round_to,
                                     criterion_params=params),
                     finetune=FinetuneSpec(images=finetune_images or None)),
        benchmark=BenchmarkSpec(batch_sizes=(64,), seconds_per_batch=2.0, original=False))
    start = time.perf_counter()
    report = run_pipeline(spec, out)
    acc = report["accuracy"]
    latency = [r for r in report["latency"] if r["model"] == "compressed"]
    return {
        "criterion": criterion, "allocation": args.allocation,
        "round_to": report["spec"]["compress"]["prune"]["round_to"],
        "criterion_params": " ".join(f"{k}={v}" for k, v in params.items()),
        "target": target, "finetune_images": finetune_images,
        "macs_reduction": round(report["reduction"]["macs"], 4), "params": report["cost"]["compressed"]["params"],
        "top1_pruned": acc["pruned"]["top1"], "top1_reconstructed": acc.get("reconstructed", {}).get("top1"),
        "top1_finetuned": acc.get("finetuned", {}).get("top1"), "top1_exported": acc["exported"]["top1"],
        "parity_max_abs": report["export"]["parity"]["max_abs_error"],
        "ort_cpu_b64_p50_ms": latency[0]["p50_ms"] if latency else None,
        "scoring_s": round(report["timings"].get("score", 0) + report["timings"].get("score_blocks", 0), 1),
        "total_s": round(time.perf_counter() - start, 1),
    }


def criterion_params(pairs: list[str], criterion: str) -> dict[str, float]:
    """``CRITERION:KEY=VALUE`` options that name ``criterion``, as its parameters (numbers)."""
    params = {}
    for pair in pairs:
        name, _, setting = pair.partition(":")
        key, _, value = setting.partition("=")
        if name == criterion:
            params[key] = float(value)
    return params


NOTES_MARKER = "<!-- notes -->"
KEY = ("criterion", "allocation", "round_to", "criterion_params", "target", "finetune_images")
EARLIER_RECIPE = {"allocation": "uniform", "round_to": 8, "criterion_params": ""}   # rows before these columns


def read_rows(out: Path) -> list[dict]:
    """Rows of an earlier run's CSV, typed back (numbers as numbers, empty as None)."""
    path = out / "criteria_cifar.csv"
    if not path.exists():
        return []
    def typed(value: str):
        if value == "":
            return None
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    with open(path, newline="") as f:
        rows = [{**EARLIER_RECIPE, **{k: typed(v) for k, v in row.items()}} for row in csv.DictReader(f)]
    for row in rows:
        row["criterion_params"] = row["criterion_params"] or ""        # no parameters: "" (as a new row has it)
    return rows


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with every row that ``new`` re-measured replaced, then the new ones, order kept."""
    fresh = {tuple(r[k] for k in KEY): r for r in new}
    merged = [fresh.pop(tuple(r[k] for k in KEY), r) for r in old]
    return merged + list(fresh.values())


def write_outputs(rows: list[dict], out: Path, original_top1: float | None) -> str:
    out.mkdir(parents=True, exist_ok=True)
    md = out / "criteria_cifar.md"
    notes = md.read_text().split(NOTES_MARKER, 1)[1] if md.exists() and NOTES_MARKER in md.read_text() else "\n"
    with open(out / "criteria_cifar.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: "" if v is None else (f"{v:.2%}" if isinstance(v, float) and v <= 1 else str(v))  # noqa: E731
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row[c]) if c.startswith("top1") or c == "macs_reduction" else
                                       str(row[c]) for c in COLUMNS) + " |")
    table = "\n".join(lines)
    header = "# Criteria on ResNet-56 / CIFAR-10\n\n"
    if original_top1 is not None:
        header += f"Unpruned model: top-1 {original_top1:.2%} on the same evaluation images.\n\n"
    md.write_text(header + table + "\n\n" + NOTES_MARKER + notes)
    _plot(rows, out / "criteria_cifar.png")
    return table


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index, criterion in enumerate(dict.fromkeys(r["criterion"] for r in rows)):
        colour = f"C{index % 10}"
        mine = [r for r in rows if r["criterion"] == criterion]
        plain = sorted({(r["macs_reduction"], r["top1_reconstructed"] or r["top1_exported"]) for r in mine})
        tuned = sorted((r["macs_reduction"], r["top1_finetuned"]) for r in mine if r["top1_finetuned"])
        ax.plot([p[0] * 100 for p in plain], [p[1] * 100 for p in plain], marker="o", color=colour, label=criterion)
        if tuned:
            ax.plot([p[0] * 100 for p in tuned], [p[1] * 100 for p in tuned], marker="^", linestyle="--",
                    color=colour)
    ax.set_xlabel("MACs removed (%)")
    ax.set_ylabel("top-1 (%): o reconstructed, no fine-tuning; ^ after KD")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def scoring_only(args) -> None:
    for criterion in args.criteria.split(","):
        code = (
            "import time, resource, torch, sys; sys.path.insert(0, %r)\n"
            "from pruning import zoo, data, surgery\n"
            "from pruning.criteria import Batch, ScoringContext, create_criterion\n"
            "torch.set_num_threads(2)\n"
            "m = zoo.load_model('cifar/resnet56', %r); e = zoo.get_entry('cifar/resnet56')\n"
            "src = data.load_images(%r); pre = data.Preprocess(e.mean, e.std)\n"
            "sp = data.make_splits(src, %d, 100)\n"
            "cal = [Batch(x, y) for x, y in data.batches(sp.calibration, pre, 200)]\n"
            "sc = create_criterion(%r)\n"
            "groups = surgery.channel_groups(m, e.input_shape, e.protected(m))\n"
            "ctx = ScoringContext(m, [] if sc.kind == 'block' else groups, e.removable_blocks(m), lambda: iter(cal),"
            " e.input_shape, 10, keep_fraction=0.5)\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "t = time.perf_counter(); sc.score(ctx); t = time.perf_counter() - t\n"
            "print(t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, base / 1024 ** 2)\n"
        ) % (str(ROOT), str(weights_file(args.data_root, "resnet56")),
             str(args.data_root / "cifar10"), args.calibration_images, criterion)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if proc.returncode:
            print(f"{criterion:<18} failed: {proc.stderr.strip().splitlines()[-1]}")
            continue
        seconds, peak, before = (float(v) for v in proc.stdout.split())
        print(f"{criterion:<18} scoring {seconds:7.1f} s   peak RSS {peak:5.2f} GB (model+data loaded: "
              f"{before:4.2f} GB), {args.calibration_images} calibration images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_root(parser)
    parser.add_argument("--criteria", default=",".join(DEFAULT_CRITERIA))
    parser.add_argument("--targets", default="0.5,0.3")
    parser.add_argument("--finetune-images", default="0", help="comma-separated KD budgets (images seen)")
    parser.add_argument("--calibration-images", type=int, default=2000)
    parser.add_argument("--eval-images", type=int, default=10000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--allocation", default="uniform", choices=("uniform", "global", "sensitivity"))
    parser.add_argument("--round-to", type=int, default=None, help="width multiple (default: automatic, 8)")
    parser.add_argument("--criterion-param", action="append", default=[], metavar="CRITERION:KEY=VALUE")
    parser.add_argument("--scoring-only", action="store_true")
    parser.add_argument("--append", action="store_true", help="keep the rows already in --out")
    args = parser.parse_args()
    if args.scoring_only:
        scoring_only(args)
        return
    earlier = read_rows(args.out) if args.append else []
    rows, original = [], None
    work = Path("/tmp/interprune-criteria")
    for target in (float(t) for t in args.targets.split(",")):
        for criterion in args.criteria.split(","):
            for ft in (int(v) for v in args.finetune_images.split(",")):
                try:
                    row = run_one(args, criterion, target, ft, work / f"{criterion}-{target}-{ft}")
                except Exception as exc:  # noqa: BLE001 - a failing criterion is reported, the table goes on
                    print(f"{criterion} @ {target}: FAILED: {type(exc).__name__}: {exc}", flush=True)
                    continue
                rows.append(row)
                print(json.dumps(row), flush=True)
                write_outputs(merge_rows(earlier, rows), args.out, original)
        if original is None:
            report = json.loads((work / f"{rows[0]['criterion']}-{target}-{rows[0]['finetune_images']}" /
                                 "report.json").read_text()) if rows else None
            original = report["accuracy"]["original"]["top1"] if report else None
    print(write_outputs(merge_rows(earlier, rows), args.out, original))


if __name__ == "__main__":
    main()
