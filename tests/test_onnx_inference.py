"""The engine's whole-split evaluations in ONNX Runtime (pipeline.onnx_inference): the same logits as PyTorch, a
fallback to PyTorch with a note when the model does not export, the NaN gate kept, and the export stage reusing the
figure only for the same bytes."""
from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn as nn

import pipeline.onnx_inference as onnx_inference
from exporters import export_onnx
from pipeline.onnx_inference import OnnxRuntimeInference
from pipeline.run import run_pipeline
from pipeline.spec import BenchmarkSpec, ExportSpec, JobSpec
from pruning.compress import CompressSpec, DataSpec, FinetuneSpec, ModelSpec, PruneSpec
from pruning.errors import ModelError
from pruning.intake.zoo import load_model
from pruning.measure import Accuracy, evaluate

SHAPE = (1, 8, 8)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return load_model("demo/small_cnn").eval()


class NotExportable(nn.Module):
    """Logits through an operator torch.onnx has no ONNX form for (an SVD's singular values)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return torch.linalg.svd(self.conv(x).flatten(2)).S.flatten(1)[:, :10]


def test_the_forward_gives_the_modules_logits_and_names_its_bytes(tmp_path):
    model, notes = small_cnn(), []
    inference = OnnxRuntimeInference(tmp_path, notes, min_images=10)
    forward = inference(model, SHAPE, 10)
    x = torch.randn(7, *SHAPE)
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(forward(x), expected, atol=1e-4)
    assert inference.last_images == 7 and notes == [] and inference.exports == 1
    exported = export_onnx(model, tmp_path / "same.onnx", torch.zeros(1, *SHAPE))
    assert inference.last_sha256 == exported.sha256 == hashlib.sha256((tmp_path / "same.onnx").read_bytes()).hexdigest()
    assert not list(tmp_path.glob(".evaluate*")), "the scratch export is removed"


class TracesAnotherBranch(nn.Module):
    """Exported with a zero example input, the trace keeps the branch for zeros; real images take the other."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 8)

    def forward(self, x):
        out = self.conv(x).flatten(1)
        return out * 2 if bool(x.abs().sum() > 0) else out


def test_an_export_that_computes_something_else_is_not_used(tmp_path):
    notes: list[str] = []
    inference = OnnxRuntimeInference(tmp_path, notes, min_images=1)
    assert inference(TracesAnotherBranch().eval(), SHAPE, 10) is None
    assert inference.last_sha256 is None and inference.exports == 0
    assert len(notes) == 1 and "differs from the module" in notes[0]


def test_fewer_images_than_the_threshold_stay_in_pytorch(tmp_path):
    inference = OnnxRuntimeInference(tmp_path, [], min_images=100)
    assert inference(small_cnn(), SHAPE, 99) is None
    assert inference.exports == 0 and inference.last_sha256 is None


def test_a_model_that_does_not_export_falls_back_to_pytorch_with_the_reason(tmp_path):
    notes: list[str] = []
    inference = OnnxRuntimeInference(tmp_path, notes, min_images=1)
    model = NotExportable().eval()
    assert inference(model, SHAPE, 10) is None and inference.last_sha256 is None
    assert len(notes) == 1 and notes[0].startswith("evaluations ran in PyTorch: the model did not export")
    assert "linalg_svd" in notes[0]
    inference(model, SHAPE, 10)
    assert len(notes) == 1, "one note per distinct reason"


def test_a_batch_onnx_runtime_fails_on_finishes_in_pytorch_and_the_bytes_are_not_reused(tmp_path):
    model, notes = small_cnn(), []
    inference = OnnxRuntimeInference(tmp_path, notes, min_images=1)
    forward = inference(model, SHAPE, 8)
    wrong_size = torch.randn(2, 1, 9, 9)               # the module pools it; the exported graph expects 8x8
    with torch.no_grad():
        expected = model(wrong_size)
    assert torch.allclose(forward(wrong_size), expected)
    assert inference.last_sha256 is None and inference.evaluated(Accuracy(1.0, 1.0, 0)) is None
    assert len(notes) == 1 and notes[0].startswith("an evaluation finished in PyTorch: ONNX Runtime failed")


def test_nan_logits_from_onnx_runtime_still_fail_the_evaluation(tmp_path):
    model = small_cnn()
    with torch.no_grad():
        next(p for p in model.parameters() if p.dim() > 1).fill_(float("nan"))
    forward = OnnxRuntimeInference(tmp_path, [], min_images=1)(model, SHAPE, 4)
    assert forward is not None
    with pytest.raises(ModelError, match="non-finite logits"):
        evaluate(model, [(torch.randn(4, *SHAPE), torch.zeros(4, dtype=torch.long))], forward)


def test_evaluated_pairs_the_bytes_with_a_figure_only_of_the_same_image_count(tmp_path):
    inference = OnnxRuntimeInference(tmp_path, [], min_images=1)
    forward = inference(small_cnn(), SHAPE, 5)
    forward(torch.randn(5, *SHAPE))
    assert inference.evaluated(Accuracy(0.5, 0.9, 5)) == (inference.last_sha256, Accuracy(0.5, 0.9, 5))
    assert inference.evaluated(Accuracy(0.5, 0.9, 6)) is None


def digits_job(weights, finetune_steps: int) -> JobSpec:
    return JobSpec(CompressSpec(model=ModelSpec("demo/small_cnn", str(weights)),
                                data=DataSpec(None, calibration_images=300),
                                prune=PruneSpec("l1", target_reduction=0.4),
                                finetune=FinetuneSpec(steps=finetune_steps, augment=False)),
                   export=ExportSpec(), benchmark=BenchmarkSpec(targets=()))


@pytest.mark.parametrize("min_images, reused", [(1, True), (10**9, False)])
def test_the_export_stage_reuses_the_engines_figure_only_for_the_same_bytes(digits_weights, tmp_path, monkeypatch,
                                                                            min_images, reused):
    monkeypatch.setattr(onnx_inference, "MIN_IMAGES", min_images)
    report = run_pipeline(digits_job(digits_weights, finetune_steps=3), tmp_path)
    accuracy = report["accuracy"]
    assert accuracy["exported"]["num_images"] == accuracy["finetuned"]["num_images"] > 0
    assert abs(accuracy["exported"]["top1"] - accuracy["finetuned"]["top1"]) <= 1 / accuracy["exported"]["num_images"]
    source = report["export"]["accuracy_from"]
    assert source.startswith("the same ONNX bytes") if reused else source == "model.onnx run on the evaluation split"
