"""How fast `interprune list` tells a CI job that the server is not there (exit 5), and that it loads no engine.

    python -m benchmarks.cli_unreachable [--runs 5]

Runs the installed CLI against a loopback port nothing listens on, prints each wall time and the median, and
checks the exit code. The remote commands import neither torch nor the engine (also pinned by
tests/test_cli_imports.py), so the time is interpreter start + gRPC + two connection attempts.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    port, times = free_port(), []
    for _ in range(args.runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "service.cli", "list", "--server", f"127.0.0.1:{port}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        times.append(time.perf_counter() - start)
        if done.returncode != 5:
            print(f"unexpected exit code {done.returncode}: {done.stderr.strip()}")
            return 1
    print("runs (s):", " ".join(f"{t:.2f}" for t in times))
    print(f"median {statistics.median(times):.2f} s, max {max(times):.2f} s, exit code 5 every time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
