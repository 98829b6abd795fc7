"""The remote commands load no engine: `interprune list` against a dead server must answer at once, without
importing torch (benchmarks/cli_unreachable.py measures the time)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
from service.cli.main import main
code = main(["list", "--server", "127.0.0.1:1"])
print(code, sorted(m for m in ("torch", "torchvision", "torch_pruning", "onnxruntime", "pruning.compress")
                   if m in sys.modules))
"""


def test_list_against_a_dead_server_exits_5_without_importing_the_engine():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.split("\n")[0] == "5 []", done.stdout + done.stderr
    assert "cannot reach the interprune server at 127.0.0.1:1" in done.stderr
