"""Where the benchmarks find the shared CIFAR-10 data and ResNet weights: ``--data-root``, else
``$INTERPRUNE_SHARED_DATA`` (as the tests), else ``../shared/data`` beside the repository. A missing folder or
weights file is a one-line error that names both, not a traceback.

Example::

    add_data_root(parser)                      # --data-root, checked when parsed
    weights = weights_file(args.data_root, "resnet56")
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = os.environ.get("INTERPRUNE_SHARED_DATA", str(ROOT.parent / "shared" / "data"))
HOW = "pass --data-root DIR or set INTERPRUNE_SHARED_DATA (the folder holding cifar10/ and weights/)"


def data_root(value: str) -> Path:
    """``value`` as a folder that holds ``cifar10/`` or ``weights/``; argparse's type error otherwise."""
    path = Path(value).expanduser().resolve()
    if not ((path / "cifar10").is_dir() or (path / "weights").is_dir()):
        raise argparse.ArgumentTypeError(f"{value}: no cifar10/ or weights/ folder there; {HOW}")
    return path


def add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", type=data_root, default=DEFAULT_DATA_ROOT, metavar="DIR",
                        help="the shared data: cifar10/ and weights/ (default $INTERPRUNE_SHARED_DATA or "
                             "../shared/data beside the repository)")


def weights_file(root: Path, arch: str) -> Path:
    """The one ``weights/{arch}-*.th`` under ``root``; SystemExit naming the folder when there is none."""
    found = sorted((root / "weights").glob(f"{arch}-*.th"))
    if not found:
        raise SystemExit(f"no {arch}-*.th in {root / 'weights'}; {HOW}")
    return found[0]
