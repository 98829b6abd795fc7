"""Every torchvision CNN family and a set of timm CNNs through ``compress`` -> ONNX, with random weights.

    .venv/bin/python -m benchmarks.model_sweep [--input-size 64] [--criteria l1,redundancy,dissection]
        [--models torchvision/resnet18,timm/dla34] [--calibration 32] [--timeout 900]
        [--out benchmarks/results/model_sweep.md]

Per (model, criterion), in its own subprocess: -30% MACs, no fine-tuning, reconstruction on, random synthetic
calibration images (random weights: real images would teach nothing), then ONNX export and parity against PyTorch
on the calibration images. Recorded: the measured MACs reduction (or the reachable limit the engine names), the
parity (max abs / max relative error), the child's peak RSS (``os.wait4``), wall time, the groups left unpruned and
the re-fit's layer statuses, and the status (``ok`` or the exact reason). Prints each row as it finishes; writes the
Markdown table at the end. timm rows need ``pip install timm`` (skipped with that reason otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TORCHVISION = ["alexnet", "vgg11_bn", "vgg16_bn", "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2",
               "squeezenet1_1", "densenet121", "googlenet", "inception_v3", "shufflenet_v2_x1_0", "mobilenet_v2",
               "mobilenet_v3_small", "mobilenet_v3_large", "mnasnet1_0", "efficientnet_b0", "efficientnet_v2_s",
               "regnet_x_400mf", "regnet_y_400mf", "convnext_tiny"]
TIMM = ["resnet50d", "efficientnet_b0", "mobilenetv3_large_100", "regnety_008", "ghostnet_100", "rexnet_100",
        "cspresnet50", "dla34", "dpn68", "ese_vovnet19b_dw", "res2net50_26w_4s", "mixnet_s", "repvgg_a2", "lcnet_050"]
# Smaller inputs end at an empty map (inception), or at a map the adaptive pooling before the classifier cannot
# export to ONNX (AlexNet 6x6, VGG 7x7: torch.onnx needs the pooled size to divide the map): their honest size.
MIN_SIZE = {"torchvision/inception_v3": 96, "torchvision/alexnet": 224, "torchvision/vgg11_bn": 224,
            "torchvision/vgg16_bn": 224}
TOLERANCE = 0.02                                                           # the reduction counts if within 2 pt
PARITY_REL = 1e-4                                                          # ONNX vs PyTorch, relative to max |out|


def all_models() -> list[str]:
    return [f"torchvision/{m}" for m in TORCHVISION] + [f"timm/{m}" for m in TIMM]


def register(name: str) -> None:
    """Add ``name`` (torchvision/x or timm/x) to the zoo for this process, unless it is there already."""
    from pruning import zoo

    if zoo.is_model(name):
        return
    source, arch = name.split("/", 1)
    if source == "timm":
        import timm

        def build(num_classes: int):
            return timm.create_model(arch, pretrained=False, num_classes=num_classes)
    else:
        import torchvision.models as tvm

        def build(num_classes: int):
            extra = {"aux_logits": False, "init_weights": True} if arch in ("googlenet", "inception_v3") else {}
            return getattr(tvm, arch)(weights=None, num_classes=num_classes, **extra)
    zoo.register_model(zoo.ModelEntry(name=name, builder=build, input_shape=(3, 224, 224), num_classes=1000,
                                      description=f"{name} (model sweep, random weights)"))


def run_one(name: str, criterion: str, size: int, calibration: int) -> dict:
    """Compress, export and check one model in this process; the row as a dict."""
    import numpy as np
    import torch

    from exporters.onnx import check_parity, export_onnx
    from pruning.compress import CompressSpec, DataSpec, ModelSpec, PruneSpec, compress

    register(name)
    size = max(size, MIN_SIZE.get(name, 0))
    work = Path(tempfile.mkdtemp(prefix="sweep-"))
    rng = np.random.default_rng(0)
    n = calibration + 8
    np.savez(work / "data.npz", images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, n))
    spec = CompressSpec(model=ModelSpec(name), data=DataSpec(str(work / "data.npz"), calibration_images=calibration,
                                                              evaluation_images=8, batch_size=calibration,
                                                              input_size=(size, size)),
                        prune=PruneSpec(criterion=criterion, target_reduction=0.3, allocation="uniform"))
    row = {"size": size}
    result = compress(spec)
    row.update(reduction=result.reduction("macs"), warnings=result.warnings,
               unpruned=[n for n in result.notes if "left unpruned" in n],
               fits=dict(Counter(f.status for f in result.fits)), timings=result.timings)
    images = torch.cat([x for x, _ in _batches(result)])[:8]
    exported = export_onnx(result.model, work / "model.onnx", images[:1])
    parity = check_parity(exported.path, result.model, images)
    row.update(parity_abs=parity.max_abs_error, parity_rel=parity.max_rel_error)
    row["status"] = _verdict(row)
    return row


def _batches(result):
    from pruning import data as data_mod

    return data_mod.batches(result.splits.calibration, result.preprocess, 8)


def _verdict(row: dict) -> str:
    if abs(row["reduction"] - 0.3) > TOLERANCE:
        return f"target missed: {row['reduction']:.1%}"
    if row["parity_rel"] > PARITY_REL:
        return f"parity: max rel {row['parity_rel']:.1e}"
    return "ok"


def child(args: argparse.Namespace) -> None:
    """``--one``: run one row and print it as JSON on the last line (errors become the status)."""
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        row = run_one(args.one, args.criteria, args.input_size, args.calibration)
    except Exception as exc:  # noqa: BLE001 - every failure is a row, with its exact reason
        from pruning.errors import TargetUnreachable

        reason = (f"unreachable: at most {exc.reachable:.1%}" if isinstance(exc, TargetUnreachable)
                  else f"{type(exc).__name__}: {str(exc).splitlines()[0][:240] if str(exc) else ''}")
        row = {"status": reason, "size": max(args.input_size, MIN_SIZE.get(args.one, 0))}
    row["wall_s"] = time.perf_counter() - start
    print(json.dumps(row, default=str))


def run_child(model: str, criterion: str, args: argparse.Namespace) -> dict:
    """One subprocess; its own peak RSS from ``os.wait4``."""
    cmd = [sys.executable, "-m", "benchmarks.model_sweep", "--one", model, "--criteria", criterion,
           "--input-size", str(args.input_size), "--calibration", str(args.calibration),
           "--threads", str(args.threads)]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, text=True)
        deadline = start + args.timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                return {"status": f"timeout after {args.timeout} s", "wall_s": args.timeout,
                        "peak_rss_mb": usage.ru_maxrss / 1024}
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        lines = out.read().strip().splitlines()
        tail = err.read().strip().splitlines()[-1:] or [""]
    try:
        row = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        row = {"status": f"crashed (exit {proc.returncode}): {tail[0][:200]}"}
    row["peak_rss_mb"] = usage.ru_maxrss / 1024
    row.setdefault("wall_s", time.perf_counter() - start)
    return row


def _order(model: str) -> int:
    models = all_models()
    return models.index(model) if model in models else len(models)


def table(rows: list[dict], args: argparse.Namespace) -> str:
    ok = sum(r["status"] == "ok" for r in rows)
    lines = [f"# Model sweep: -30% MACs, random weights, {args.input_size}x{args.input_size} input",
             "",
             f"`python -m benchmarks.model_sweep --input-size {args.input_size} --calibration {args.calibration}` "
             f"on {os.cpu_count()} CPU cores ({args.threads} torch threads per run), each row in its own process. "
             f"Criteria {', '.join(args.criteria.split(','))}; no fine-tuning; reconstruction on (max_memory_mb "
             f"1024); {args.calibration} random calibration images; ONNX parity on 8 of them. Status `ok`: MACs "
             f"reduction within ±{TOLERANCE:.0%} of 30% and ONNX max relative error < {PARITY_REL:g}.",
             "", f"**{ok} of {len(rows)} rows ok.**", "",
             "| model | criterion | input | MACs reduction | parity max abs | parity max rel | peak RSS MB | wall s "
             "| re-fit layers | left unpruned | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reduction = f"{r['reduction']:.1%}" if "reduction" in r else ""
        parity = (f"{r['parity_abs']:.1e}", f"{r['parity_rel']:.1e}") if "parity_abs" in r else ("", "")
        fits = ", ".join(f"{k} {v}" for k, v in sorted(r.get("fits", {}).items()))
        unpruned = _short_unpruned(r.get("unpruned", []))
        lines.append(f"| {r['model']} | {r['criterion']} | {r.get('size', '')} | {reduction} | {parity[0]} | "
                     f"{parity[1]} | {r['peak_rss_mb']:.0f} | {r['wall_s']:.0f} | {fits} | {unpruned} | "
                     f"{r['status'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _short_unpruned(notes: list[str]) -> str:
    """'N groups: reason' from the engine's 'channels of a, b and K more left unpruned: reason (e.g. ...)'."""
    parts = []
    for note in notes:
        head, _, reason = note.partition(" left unpruned: ")
        roots = head.removeprefix("channels of ")
        count = len(roots.split(", ")) + (int(roots.rsplit(" and ", 1)[1].split()[0]) - 1 if " and " in roots
                                          and roots.endswith("more") else 0)
        parts.append(f"{count}: {reason.split(' (e.g.')[0]}")
    return "; ".join(parts).replace("|", "/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--criteria", default="l1,redundancy,dissection")
    parser.add_argument("--models", default=None, help="comma-separated zoo-style names (default: all)")
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "model_sweep.md")
    parser.add_argument("--update", action="store_true",
                        help="replace these rows in the existing results (the .json next to --out) and rewrite the table")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return child(args)
    models = args.models.split(",") if args.models else all_models()
    rows = []
    for model in models:
        for criterion in args.criteria.split(","):
            row = {"model": model, "criterion": criterion, **run_child(model, criterion, args)}
            rows.append(row)
            print(f"{model:38s} {criterion:11s} {row.get('reduction', float('nan')):7.2%} "
                  f"rel {row.get('parity_rel', float('nan')):.1e} {row['peak_rss_mb']:7.0f} MB "
                  f"{row['wall_s']:6.0f} s  {row['status']}", flush=True)
    saved = args.out.with_suffix(".json")
    if args.update and saved.exists():
        fresh = {(r["model"], r["criterion"]) for r in rows}
        old = [r for r in json.loads(saved.read_text()) if (r["model"], r["criterion"]) not in fresh]
        criteria = ["l1", "redundancy", "dissection"]
        rows = sorted(old + rows, key=lambda r: (_order(r["model"]), criteria.index(r["criterion"])
                                                  if r["criterion"] in criteria else 9))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table(rows, args))
    saved.write_text(json.dumps(rows, indent=1, default=str))
    print(f"{sum(r['status'] == 'ok' for r in rows)} of {len(rows)} ok; table in {args.out}")


if __name__ == "__main__":
    main()
