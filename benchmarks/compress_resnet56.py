"""Issue-2 figures on ResNet-56 / CIFAR-10 from ../shared/data: prints every number it measures.

    .venv/bin/python -m benchmarks.compress_resnet56 [--data-root ../shared/data] [--parts speed,recon,rounding,finetune]

- speed:    `compress` L1 -50% MACs, no fine-tuning, reconstruction from 2,000 calibration images, export, parity,
            ONNX accuracy on the 10,000 test images and the CPU benchmark: wall time and peak RSS of that process.
- recon:    the same with reconstruction off (plain pruning) and with BatchNorm re-estimation only.
- rounding: measured ONNX Runtime CPU speedup at batch 1 and 64 with widths rounded to 1, 8 and 16.
- finetune: + KD fine-tuning with a budget of 10,000 training images seen; accuracy and the time of each stage.
Each part runs in a fresh subprocess (peak memory is per process).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from benchmarks.shared_data import add_data_root, weights_file

ROOT = Path(__file__).resolve().parents[1]


def run_compress(data_root: Path, out: Path, *extra: str) -> tuple[dict, float, float]:
    weights = weights_file(data_root, "resnet56")
    cmd = [sys.executable, "-m", "service.cli", "compress", "--arch", "cifar/resnet56", "--weights", str(weights),
           "--data", str(data_root / "cifar10"), "--criterion", "l1", "--target-macs", "0.5",
           "--allocation", "uniform", "--out", str(out), "--force", "--json", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 4):
        raise SystemExit(f"compress failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
    return json.loads((out / "report.json").read_text()), wall, peak_gb


def accuracies(report: dict) -> str:
    return ", ".join(f"{k} {v['top1']:.2%}" for k, v in report["accuracy"].items())


def latency_rows(report: dict) -> list[str]:
    return [f"    batch {r['batch_size']:>3}: original p50 {r['original_p50_ms']:.2f} ms, compressed "
            f"{r['pruned_p50_ms']:.2f} ms, speedup {r['measured_speedup']:.2f}x (MACs ratio {r['macs_ratio']:.2f}x)"
            for r in report["speedup"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_root(parser)
    parser.add_argument("--parts", default="speed,recon,rounding,finetune")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="interprune-bench-"))
    if "speed" in parts:
        report, wall, peak = run_compress(args.data_root, tmp / "speed", "--finetune", "0")
        print(f"[speed] L1 -{report['reduction']['macs']:.1%} MACs, no fine-tune: {wall:.0f} s wall, peak RSS "
              f"{peak:.2f} GB; {accuracies(report)}; parity max abs "
              f"{report['export']['parity']['max_abs_error']:.1e}")
        print("  stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings"].items()))
        print("\n".join(latency_rows(report)))
    if "recon" in parts:
        for label, flags in (("no reconstruction, no BN re-estimation", ("--no-reconstruct", "--batchnorm", "off")),
                             ("BN re-estimation only", ("--no-reconstruct", "--batchnorm", "on")),
                             ("reconstruction + BN re-estimation", ("--batchnorm", "on"))):
            report, wall, _ = run_compress(args.data_root, tmp / "recon", "--targets", "", *flags)
            print(f"[recon] {label}: {accuracies(report)} ({wall:.0f} s)")
    if "rounding" in parts:
        for multiple in (1, 8, 16):
            target = "0.5" if multiple < 16 else "0.4"
            try:
                report, _, _ = run_compress(args.data_root, tmp / f"round{multiple}", "--round-to", str(multiple),
                                            "--target-macs", target, "--bench-seconds", "5")
            except SystemExit as exc:
                print(f"[rounding] multiple {multiple}: {str(exc).splitlines()[-1]}")
                continue
            print(f"[rounding] multiple {multiple}, -{report['reduction']['macs']:.1%} MACs, "
                  f"final top-1 {report['accuracy']['exported']['top1']:.2%}")
            print("\n".join(latency_rows(report)))
    if "finetune" in parts:
        report, wall, _ = run_compress(args.data_root, tmp / "ft", "--finetune-images", "10000", "--targets", "")
        print(f"[finetune] KD, 10,000 images seen: {accuracies(report)}; total {wall:.0f} s")
        print("  stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings"].items()))
        ft = report["finetune"]
        print(f"  fine-tune: {ft['steps']} steps, {ft['images_seen']} images, stopped by {ft['stopped_by']}, "
              f"best validation top-1 {ft['best_val_top1']}")


if __name__ == "__main__":
    main()
