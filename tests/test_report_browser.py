"""The HTML report of a ResNet-56 run, opened in headless Chromium: the screenshot shows the verdict and the plots.

Slow (a real ResNet-56 compression, a few minutes on 2 cores): ``pytest -m slow tests/test_report_browser.py``.
Installs nothing: without Chromium on the PATH it skips.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

BAR_BLUE, BAR_GREY = (0x2F, 0x6F, 0xB0), (0xB6, 0xC2, 0xCF)     # pipeline.html_parts.COMPRESSED_COLOUR / ORIGINAL_COLOUR
PASS_GREEN, FAIL_RED = (0x1A, 0x7F, 0x37), (0xCF, 0x22, 0x2E)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium not installed")
    return path


@pytest.fixture(scope="module")
def resnet56_report(chromium, shared_data, tmp_path_factory) -> Path:
    from pruning.compress import CompressSpec, DataSpec, ModelSpec, PruneSpec
    from pipeline.run import run_pipeline
    from pipeline.spec import BenchmarkSpec, GateSpec, JobSpec

    weights = shared_data / "weights" / "resnet56-4bfd9763.th"
    if not weights.exists():
        pytest.skip(f"ResNet-56 weights not found at {weights}")
    out = tmp_path_factory.mktemp("r56-report")
    spec = JobSpec(CompressSpec(model=ModelSpec("cifar/resnet56", str(weights)),
                                data=DataSpec(str(shared_data / "cifar10"), calibration_images=256,
                                              evaluation_images=500),
                                prune=PruneSpec("l1", target_reduction=0.5)),
                   benchmark=BenchmarkSpec(batch_sizes=(1,), seconds_per_batch=0.5),
                   gate=GateSpec(max_accuracy_drop=0.05))
    run_pipeline(spec, out)
    return out / "report.html"


def screenshot(chromium: str, page: Path, tmp: Path) -> Image.Image:
    png = tmp / "screenshot.png"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={tmp / 'profile'}", f"--screenshot={png}", "--window-size=1280,4000",
               page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert png.exists(), f"no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    return Image.open(png).convert("RGB")


def near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 14) -> np.ndarray:
    return (np.abs(pixels.astype(int) - np.array(colour)) <= tolerance).all(axis=-1)


def bands(rows: np.ndarray, gap: int = 40) -> int:
    """Number of vertical bands (runs of rows separated by more than ``gap`` px) in sorted row indices."""
    return 0 if rows.size == 0 else 1 + int((np.diff(rows) > gap).sum())


def test_resnet56_report_renders_with_verdict_and_plots_in_chromium(chromium, resnet56_report, tmp_path):
    image = screenshot(chromium, resnet56_report, tmp_path)
    assert image.size == (1280, 4000)
    pixels = np.asarray(image)
    background = near(pixels, (255, 255, 255), 3)
    assert background.mean() < 0.97, "the screenshot is (nearly) blank"
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 200, "too few colours for plots"

    top = pixels[:400]
    assert (near(top, PASS_GREEN) | near(top, FAIL_RED)).sum() > 1000, "no verdict badge at the top"

    blue, grey = near(pixels, BAR_BLUE), near(pixels, BAR_GREY)
    assert blue.sum() > 5000 and grey.sum() > 5000, "no plot bars on the page"
    # The full-width widths plot, then accuracy beside latency: bars in at least two separate bands of rows.
    assert bands(np.flatnonzero(blue.any(axis=1))) >= 2
    # ResNet-56 has 27 prunable layers: many kept-width bars side by side in the widths plot.
    widest_row = blue[np.argmax(blue.sum(axis=1))]
    runs = np.flatnonzero(np.diff(widest_row.astype(int)) == 1)
    assert len(runs) >= 20, f"expected a bar per layer, found {len(runs)} bars in the densest row"
