"""Models as users export them today, through ``interprune compress --model``: does each one convert and prune?

    .venv/bin/pip install onnxscript        # torch.onnx.export's default exporter needs it; the project does not
    .venv/bin/python -m benchmarks.onnx_exports [--models resnet18,mobilenet_v2] [--size 64] [--target 0.3]

Per torchvision architecture (random weights, 10 classes): ``torch.onnx.export`` with its default (torch.export-based)
exporter, a dynamic batch axis, weights in the file (``external_data=False``), at ``--size`` x ``--size``; then
``python -m service.cli compress --model FILE`` on random 64-image data resized to that size, L1 to ``--target``
MACs removed, no fine-tuning, no latency benchmark. Records the file's opset and operators, and the CLI's exit
code with its MACs line or its error line. Accuracy is meaningless here (random weights and labels): the question
is whether the file gets through conversion (checked against ONNX Runtime), pruning and export (parity-checked).
Writes ``benchmarks/results/onnx_exports.md`` and prints it.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121",
          "regnet_x_400mf", "shufflenet_v2_x1_0", "vgg11_bn")


def export(name: str, path: Path, size: int) -> tuple[int, list[str]]:
    """Export torchvision ``name`` with torch.onnx.export's default exporter; (opset, sorted operator types)."""
    import onnx
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    torch.onnx.export(model, (torch.randn(1, 3, size, size),), str(path), external_data=False,
                      dynamic_shapes=({0: torch.export.Dim("n")},))
    proto = onnx.load(path)
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return opset, sorted({n.op_type for n in proto.graph.node})


def compress(model: Path, data: Path, size: int, target: float, out: Path) -> tuple[int, str]:
    """Run the CLI; (exit code, its MACs line or its error line)."""
    proc = subprocess.run([sys.executable, "-m", "service.cli", "compress", "--model", str(model), "--data",
                           str(data), "--input-size", f"{size}x{size}", "--target-macs", str(target), "--allocation", "uniform", "--finetune",
                           "0", "--targets", "", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).splitlines()
    said = next((line for line in lines if line.startswith("MACs ")), None) or \
        next((line for line in lines if "error:" in line), lines[-1] if lines else "")
    return proc.returncode, " ".join(said.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--target", type=float, default=0.3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "onnx_exports.md")
    args = parser.parse_args()
    try:
        import onnxscript  # noqa: F401 - torch.onnx.export's default exporter imports it
    except ImportError:
        sys.exit("onnxscript is not installed: pip install onnxscript (torch.onnx.export's default exporter needs it)")
    import numpy as np
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        data = folder / "data.npz"
        np.savez(data, images=rng.integers(0, 256, (64, args.size, args.size, 3), dtype=np.uint8),
                 labels=rng.integers(0, 10, 64))
        for name in args.models.split(","):
            path = folder / f"{name}.onnx"
            opset, ops = export(name, path, args.size)
            code, said = compress(path, data, args.size, args.target, folder / f"out-{name}")
            rows.append(f"| {name} | {opset} | {', '.join(ops)} | {code} | {said.replace('|', '/')} |")
            print(rows[-1], flush=True)
    text = (f"# torchvision models exported by torch.onnx.export's default exporter, then compressed\n\n"
            f"Made by `python -m benchmarks.onnx_exports --size {args.size} --target {args.target}` (torch "
            f"{torch.__version__}, random weights; exit code 0 = compressed, exported and parity-checked, 2 = "
            f"refused with the message shown).\n\n| model | opset | operators in the file | exit | MACs / message |\n"
            f"|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
