"""Is the re-fit ever worse than no re-fit? CIFAR ResNet-20 (../shared/data), L1 at -50% MACs, no fine-tuning,
reconstruction from few and from many calibration images, evaluated on the first 2,000 test images.

    .venv/bin/python -m benchmarks.refit_samples [--data-root ../shared/data] [--images 64,2000]

Prints, per calibration size: top-1 of the pruned model with no re-fit (reconstruction off, BatchNorm left as is),
after the re-fit, and how many layers were re-fitted / kept / reverted.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from pruning.compress import CompressSpec, DataSpec, FinetuneSpec, ModelSpec, PruneSpec, ReconstructSpec, compress
from benchmarks.shared_data import add_data_root, weights_file



def run(data_root: Path, images: int, refit: bool) -> tuple[float, float, Counter]:
    weights = weights_file(data_root, "resnet20")
    spec = CompressSpec(model=ModelSpec("cifar/resnet20", weights=str(weights)),
                        data=DataSpec(str(data_root / "cifar10"), calibration_images=images, evaluation_images=2000),
                        prune=PruneSpec(criterion="l1", target_reduction=0.5, allocation="uniform"),
                        reconstruct=ReconstructSpec(enabled=refit, batchnorm="auto" if refit else "off"),
                        finetune=FinetuneSpec())
    result = compress(spec)
    stage = "reconstructed" if "reconstructed" in result.accuracy else "pruned"
    return result.accuracy["original"].top1, result.accuracy[stage].top1, Counter(f.status for f in result.fits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_root(parser)
    parser.add_argument("--images", default="64,2000")
    args = parser.parse_args()
    for images in (int(v) for v in args.images.split(",")):
        original, plain, _ = run(args.data_root, images, refit=False)
        _, refit, statuses = run(args.data_root, images, refit=True)
        print(f"{images:>5} calibration images: original {original:.2%}, pruned without re-fit {plain:.2%}, "
              f"with re-fit {refit:.2%} (layers: {dict(statuses)})", flush=True)


if __name__ == "__main__":
    main()
