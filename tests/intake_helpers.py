"""Helpers of the model-intake tests: the acme_models fixture package, data, a reload in a fresh process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ACME = Path(__file__).resolve().parent / "fixtures" / "acme_models"      # holds the package acme_models

RELOAD = """
import json, sys, torch
from pruning.surgery import load_compressed
for plan, weights, inputs, out in json.loads(sys.argv[1]):
    torch.save(load_compressed(plan, weights)(torch.load(inputs)).detach(), out)
print(sorted(m for m in sys.modules if m.split('.')[0] in ('acme_models', 'timm')))
"""


def reload_in_fresh_process(runs: list[tuple[Path, Path]], inputs: torch.Tensor,
                            tmp: Path) -> tuple[list[torch.Tensor], str]:
    """Outputs of ``load_compressed(plan, weights)`` on ``inputs`` for each (plan, weights), computed by one new
    Python process (stdout: the acme_models / timm modules it imported)."""
    torch.save(inputs, tmp / "inputs.pt")
    jobs = [(str(plan), str(weights), str(tmp / "inputs.pt"), str(tmp / f"out{i}.pt"))
            for i, (plan, weights) in enumerate(runs)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ACME)]), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(jobs)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [torch.load(job[3]) for job in jobs], done.stdout


def acme_version() -> str | None:
    """The installed version of acme_models (``make`` installs it), or None when it is only on the path."""
    from importlib import metadata

    try:
        return metadata.version("acme_models")
    except metadata.PackageNotFoundError:
        return None


@pytest.fixture
def acme(monkeypatch):
    """The fixture package importable as ``acme_models`` (as if pip-installed)."""
    monkeypatch.syspath_prepend(str(ACME))
    return "acme_models"


def cifar_like_npz(path: Path, n: int = 64, size: int = 32, classes: int = 10, seed: int = 0) -> Path:
    """Random uint8 RGB images with labels, as a data set file."""
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
             labels=rng.integers(0, classes, n).astype(np.int64))
    return path


def quick_spec(model, data: Path, reduction: float = 0.3):
    """Channel pruning by L1 to ``reduction`` of the MACs, widths not rounded, no fine-tuning."""
    from pruning.compress import CompressSpec, DataSpec, PruneSpec

    return CompressSpec(model, DataSpec(str(data), calibration_images=32, evaluation_images=16, batch_size=32),
                        PruneSpec("l1", target_reduction=reduction, round_to=1))
