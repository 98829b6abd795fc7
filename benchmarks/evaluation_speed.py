"""What running the engine's whole-split evaluations in ONNX Runtime saves: ResNet-56 (CIFAR-10 weights) on the test
images, evaluated by ``pruning.measure.evaluate`` with the module itself and with ``pipeline.onnx_inference``'s
forward (export to a scratch file, then ONNX Runtime), 2 threads each.

    .venv/bin/python -m benchmarks.evaluation_speed [--data-root ../shared/data] [--images 10000]

Prints both wall times (the ONNX Runtime one with and without its export) and both top-1 figures.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from pipeline.onnx_inference import OnnxRuntimeInference
from pruning import data as data_mod
from pruning.zoo import get_entry, load_model
from pruning.measure import evaluate
from benchmarks.shared_data import add_data_root, weights_file



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_root(parser)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    weights = weights_file(args.data_root, "resnet56")
    model = load_model("cifar/resnet56", weights).eval()
    entry = get_entry("cifar/resnet56")
    test = data_mod.load_images(args.data_root / "cifar10").test
    images = test.subset(slice(0, args.images))
    preprocess = data_mod.Preprocess(entry.mean, entry.std)

    def batches():
        return data_mod.batches(images, preprocess, args.batch_size)

    start = time.perf_counter()
    in_torch = evaluate(model, batches())
    torch_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        forward = OnnxRuntimeInference(scratch, [], min_images=1)(model, tuple(entry.input_shape), len(images))
        export_s = time.perf_counter() - start
        in_ort = evaluate(model, batches(), forward)
        ort_s = time.perf_counter() - start
    print(f"ResNet-56, {len(images)} test images, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"PyTorch:      {torch_s:5.1f} s, top-1 {in_torch.top1:.2%}")
    print(f"ONNX Runtime: {ort_s:5.1f} s (export and session {export_s:.1f} s), top-1 {in_ort.top1:.2%}")
    print(f"speedup {torch_s / ort_s:.2f}x")


if __name__ == "__main__":
    main()
