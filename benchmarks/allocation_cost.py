"""What the sensitivity allocation (the default since 2026-12-02) costs against uniform on a large input.

    .venv/bin/python -m benchmarks.allocation_cost [--arch torchvision/resnet18] [--size 224] [--images 1000]
        [--out benchmarks/results/allocation_cost.md]

One CLI process per run (``interprune compress``, -50% MACs, no fine-tuning, no export, no latency targets):
sensitivity with its automatic loss images (fewer for a costly forward pass), sensitivity on 256 loss images
(what it measured on before that, ``--sensitivity-images 256``), and uniform; on ``--images`` random RGB images
of ``--size`` (random: this measures time and memory only; accuracy
on random images means nothing). Prints and writes, per allocation: wall time, the child's peak RSS
(``os.wait4``), the stage times from report.json and the MACs reduction reached.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


RUNS = (("sensitivity", ()), ("sensitivity", ("--sensitivity-images", "256")), ("uniform", ()))


def run(arch: str, data: Path, size: int, allocation: str, extra: tuple[str, ...], out: Path) -> dict:
    argv = [sys.executable, "-m", "service.cli", "compress", "--arch", arch, "--num-classes", "10", "--data",
            str(data), "--input-size", f"{size}x{size}", "--target-macs", "0.5", "--allocation", allocation,
            *extra, "--finetune", "0", "--targets", "", "--no-export", "--eval-images", "64", "--out", str(out),
            "--force"]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise SystemExit(f"{allocation}: compress failed:\n{log.read().decode()[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    return {"allocation": " ".join((allocation, *extra)), "wall_s": round(wall, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "loss_images": report["criterion"].get("sensitivity_images"),
            "macs_reduction": report["reduction"]["macs"],
            "stage_s": {k: round(v, 1) for k, v in report["timings"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="torchvision/resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "allocation_cost.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="interprune-alloc-cost-") as tmp:
        data = Path(tmp) / "random.npz"
        rng = np.random.default_rng(0)
        np.savez(data, images=rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8),
                 labels=rng.integers(0, 10, args.images))
        rows = []
        for i, (allocation, extra) in enumerate(RUNS):
            rows.append(run(args.arch, data, args.size, allocation, extra, Path(tmp) / f"run{i}"))
            print(json.dumps(rows[-1]), flush=True)
    command = (f"python -m benchmarks.allocation_cost --arch {args.arch} --size {args.size} "
               f"--images {args.images}")
    lines = [f"# Allocation cost: {args.arch}, {args.size}x{args.size}, {args.images} random images", "",
             f"`{command}` on {os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d %H:%M')}; -50% MACs, no "
             "fine-tuning, no export. Random images: time and memory only.", "",
             "| allocation | loss images | MACs removed | wall s | peak RSS MB | sensitivity s | reconstruct s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['allocation']} | {r['loss_images'] or ''} | {100 * r['macs_reduction']:.2f}% | "
                     f"{r['wall_s']:.0f} | "
                     f"{r['peak_rss_mb']} | {r['stage_s'].get('sensitivity', 0):.0f} | "
                     f"{r['stage_s'].get('reconstruct', 0):.0f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
