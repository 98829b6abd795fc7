"""The demo: train the bundled sample model (a small CNN on scikit-learn's 8x8 digits) in a few seconds, then
compress it with the real pipeline (L1 scores, -50% MACs, reconstruction, a short distillation fine-tune,
ONNX export, parity check and CPU benchmark)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from pruning import data as data_mod
from pruning import zoo

DEMO_ARCH = "demo/small_cnn"


def train_demo_model(path: Path, epochs: int = 30, seed: int = 0) -> float:
    """Train ``demo/small_cnn`` on the digits images outside the evaluation split; save a weights-only file.

    Returns the held-out top-1 accuracy.
    """
    torch.manual_seed(seed)
    entry = zoo.get_entry(DEMO_ARCH)
    splits = data_mod.make_splits(data_mod.digits_sample(), calibration=10_000, evaluation=None, seed=seed)
    train = splits.calibration   # with one pool, calibration takes everything not held out for evaluation
    preprocess = data_mod.Preprocess(entry.mean, entry.std)
    model = zoo.create_model(DEMO_ARCH)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for epoch in range(epochs):
        model.train()
        for images, labels in data_mod.batches(train, preprocess, 64, shuffle=True, seed=seed * 100 + epoch):
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    from pruning.measure import evaluate

    accuracy = evaluate(model, data_mod.batches(splits.evaluation, preprocess, 500)).top1
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return accuracy


def demo_spec(weights: Path, data: Path):
    from pruning.compress import CompressSpec, DataSpec, FinetuneSpec, ModelSpec, PruneSpec
    from pipeline.spec import BenchmarkSpec, GateSpec, JobSpec

    return JobSpec(
        CompressSpec(model=ModelSpec(DEMO_ARCH, str(weights)), data=DataSpec(str(data), calibration_images=500),
                     prune=PruneSpec("l1", target_reduction=0.5), finetune=FinetuneSpec(epochs=3, augment=False)),
        benchmark=BenchmarkSpec(batch_sizes=(1, 64), seconds_per_batch=1.0),
        gate=GateSpec(max_accuracy_drop=0.03))


def write_digits_npz(path: Path) -> Path:
    """The bundled digits as an .npz upload (same images, same order as ``digits_sample``)."""
    import numpy as np

    source = data_mod.digits_sample().train
    np.savez_compressed(path, images=source.images, labels=source.labels)
    return path


def run_demo(out: Path, as_json: bool = False, state_dir: Path | None = None) -> int:
    """Start the service on its embedded defaults (SQLite store, local artifact folder, one worker process) on a
    free loopback port, submit the sample job through the client, watch it, download the outputs to ``out``."""
    from service.api.server import create_server
    from service.cli.follow import download_outputs, follow, report_job
    from service.client import Client

    if out.exists():
        shutil.rmtree(out)
    inputs = out.parent / f".{out.name}-input"
    inputs.mkdir(parents=True, exist_ok=True)
    weights = inputs / "small_cnn.pt"
    accuracy = train_demo_model(weights)
    data = write_digits_npz(inputs / "digits.npz")
    say = (lambda text: None) if as_json else (lambda text: print(text, file=sys.stderr))
    say(f"trained {DEMO_ARCH} on the bundled digits: held-out top-1 {accuracy:.2%}")
    state_dir = state_dir or out.parent / f".{out.name}-state"
    server, port = create_server("127.0.0.1:0", state_dir, warm_spare=False)
    server.start()
    say(f"service listening on 127.0.0.1:{port} (state in {state_dir})")
    try:
        with Client(f"127.0.0.1:{port}") as client:
            job = client.submit(demo_spec(weights, data))
            say(f"job {job.id} submitted")
            job = follow(client, job.id, as_json)
            files = download_outputs(client, job, out) if job.result else {}
        code = report_job(job, files, as_json)
    finally:
        server.stop()
    shutil.copy2(weights, out / "input_model.pt") if out.exists() else None
    shutil.rmtree(inputs, ignore_errors=True)
    return code
