"""Latency of several exported models measured in turns, so that they share the machine's state (goal 4).

On this VM the same model's p90 moves by ±10% or more between measurements minutes apart, which is as large as the
differences goal 4 is about. Measured one after another in rounds (A B C, A B C, ...) with the jobs' protocol
(ONNX Runtime CPU, 0.5 s warm-up, 1-3 s of runs per measurement), the models see the same drift; each model's
figure is the median over the rounds, and the spread of the rounds is printed beside it.

    .venv/bin/python -m benchmarks.paired_latency NAME=PATH.onnx ... [--batch 64] [--rounds 7] [--threads 2]
        [--shape CxHxW]

Each model's input shape is read from its graph (``--shape`` for the sizes the graph leaves symbolic; 3x224x224
without it).

Prints, per model, the median p50 and p90 in ms, their lowest and highest round, and the speedup of each model
over the first (first p50 / its p50), from the same rounds.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from exporters import benchmark_onnxruntime
from pipeline.flags import size


def input_shape(path: Path, asked: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """C, H, W of the ONNX file's image input (``asked`` fills symbolic sizes; a conflict is an error)."""
    import onnx

    from pruning.intake.onnx_source import graph_shapes, input_shape_for

    image, _ = graph_shapes(onnx.load(str(path), load_external_data=False), path.name)
    return input_shape_for(image, asked, path.name)


def measure_in_turns(models: dict[str, Path], batch: int, rounds: int, threads: int, seconds: float,
                     shape: tuple[int, int, int] | None = None) -> dict[str, list[tuple[float, float]]]:
    """``{name: [(p50, p90) per round]}``, the models measured one after another in each round."""
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    shapes = {name: input_shape(path, shape) for name, path in models.items()}
    for _ in range(rounds):
        for name, path in models.items():
            result = benchmark_onnxruntime(path, shapes[name], (batch,), threads=threads, warmup_seconds=0.5,
                                           min_seconds_per_batch=min(1.0, seconds),
                                           max_seconds_per_batch=seconds)[0]
            figures[name].append((result.p50_ms, result.p90_ms))
    return figures


def _chw(text: str) -> tuple[int, int, int]:
    channels, _, hw = text.partition("x")
    if not channels.isdigit():
        raise argparse.ArgumentTypeError(f"expected CxHxW like 3x32x32, got {text!r}")
    return (int(channels), *size(hw))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", metavar="NAME=PATH.onnx")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="most seconds of runs per measurement")
    parser.add_argument("--shape", type=_chw, default=None, help="CxHxW for inputs the graph leaves symbolic")
    args = parser.parse_args()
    models = {name: Path(path) for name, _, path in (m.partition("=") for m in args.models)}
    figures = measure_in_turns(models, args.batch, args.rounds, args.threads, args.seconds, args.shape)
    first = statistics.median(p50 for p50, _ in figures[next(iter(models))])
    print(f"batch {args.batch}, {args.threads} threads, {args.rounds} rounds in turns, ms (median [lowest, highest])")
    for name, rows in figures.items():
        p50s, p90s = [r[0] for r in rows], [r[1] for r in rows]
        p50 = statistics.median(p50s)
        print(f"{name:40s} p50 {p50:7.1f} [{min(p50s):.1f}, {max(p50s):.1f}]  "
              f"p90 {statistics.median(p90s):7.1f} [{min(p90s):.1f}, {max(p90s):.1f}]  speedup {first / p50:.2f}x")


if __name__ == "__main__":
    main()
