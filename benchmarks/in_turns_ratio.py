"""How steady is a latency ratio measured in turns, against the same two models measured one after the other?

    .venv/bin/python -m benchmarks.in_turns_ratio A.onnx B.onnx [--repeats 5] [--batch 64] [--threads 2]

Prints, per repeat, B's p50 and p90 over A's from ``exporters.latency_in_turns`` (what a ``--target-latency`` job
measures each candidate with), then the same from two back-to-back ``benchmark_onnxruntime`` runs (the jobs' single
probe protocol). The spread of each column is the noise a fraction target sees.
"""
from __future__ import annotations

import argparse

from pathlib import Path

from benchmarks.paired_latency import input_shape
from exporters import benchmark_onnxruntime, latency_in_turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    settings = dict(warmup_seconds=0.5, min_seconds_per_batch=1.0, max_seconds_per_batch=3.0)
    shape = input_shape(Path(args.first), None)          # from the graph, as paired_latency reads it
    for repeat in range(args.repeats):
        (a50, a90), (b50, b90) = latency_in_turns([args.first, args.second], shape, args.batch, threads=args.threads,
                                                  seconds=3.0)
        a = benchmark_onnxruntime(args.first, shape, (args.batch,), threads=args.threads, **settings)[0]
        b = benchmark_onnxruntime(args.second, shape, (args.batch,), threads=args.threads, **settings)[0]
        print(f"{repeat + 1}: in turns p50 ratio {b50 / a50:.3f} p90 ratio {b90 / a90:.3f} | one after the other "
              f"p50 ratio {b.p50_ms / a.p50_ms:.3f} p90 ratio {b.p90_ms / a.p90_ms:.3f}", flush=True)


if __name__ == "__main__":
    main()
