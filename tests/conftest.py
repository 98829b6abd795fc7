"""Shared fixtures: tiny data sets and models made at test time; the shared CIFAR material for slow tests."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(os.environ.get("INTERPRUNE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("INTERPRUNE_VALIDATE_REPORTS", "1")   # pipeline.report checks every report.json against its schema


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "cifar10" / "test.npz").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set INTERPRUNE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def digits_weights(tmp_path_factory) -> Path:
    """demo/small_cnn trained for a few epochs on the bundled digits (weights-only file)."""
    from service.cli.demo import train_demo_model

    path = tmp_path_factory.mktemp("digits") / "small_cnn.pt"
    accuracy = train_demo_model(path, epochs=6)
    assert accuracy > 0.9, f"demo model trains to {accuracy:.2%}"
    return path


def make_npz(path: Path, n: int = 64, size: int = 8, channels: int = 1, classes: int = 10, seed: int = 0,
             **extra) -> Path:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    labels = rng.integers(0, classes, n).astype(np.int64)
    np.savez(path, images=images, labels=labels, **extra)
    return path
