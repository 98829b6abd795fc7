"""ONNX export and parity (exporters/onnx.py) on a tiny conv net with BatchNorm, 3x16x16 inputs."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from exporters import ExportError, OnnxExport, Parity, ParityError, check_parity, export_onnx
from exporters.onnx import _compare

INPUT_SHAPE = (3, 16, 16)


class TinyNet(nn.Module):
    """Three conv-BN-ReLU layers, global pooling, a linear head (10 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def make_net(seed: int = 0) -> TinyNet:
    """A TinyNet with non-trivial BatchNorm statistics (so eval vs train mode matters)."""
    torch.manual_seed(seed)
    net = TinyNet()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[TinyNet, OnnxExport]:
    net = make_net()
    out = export_onnx(net, tmp_path_factory.mktemp("onnx") / "tiny.onnx", images(2))
    return net, out


def torch_logits(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    net.eval()
    with torch.no_grad():
        return net(x).numpy()


def test_export_writes_a_checked_file_described_by_its_result(exported):
    net, out = exported
    data = out.path.read_bytes()
    assert out.size_bytes == len(data) > 0
    assert out.sha256 == hashlib.sha256(data).hexdigest()
    assert (out.opset, out.input_name, out.output_name, out.slimmed, out.slim_error) == (17, "input", "logits", False, None)
    assert out.export_seconds > 0
    model = onnx.load(str(out.path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"
    assert [o.name for o in model.graph.output] == ["logits"]


def test_parity_on_real_inputs_is_within_1e_4(exported):
    net, out = exported
    parity = check_parity(out.path, net, images(50), batch_size=16)  # 16 + 16 + 16 + 2: uneven last batch
    assert parity.num_inputs == 50
    assert parity.max_abs_error < 1e-4
    assert parity.mean_abs_error <= parity.max_abs_error
    assert parity.max_rel_error < 1e-4
    assert parity.top1_agreement == 1.0
    parity.assert_within(atol=1e-4)


def test_parity_accepts_numpy_inputs_and_matches_tensor_inputs(exported):
    net, out = exported
    x = images(10)
    assert check_parity(out.path, net, x.numpy()) == check_parity(out.path, net, x)


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch_runs_other_batch_sizes(exported, batch):
    net, out = exported  # exported with batch 2
    session = ort.InferenceSession(str(out.path), providers=["CPUExecutionProvider"])
    x = images(batch, seed=batch)
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == (batch, 10)
    np.testing.assert_allclose(got, torch_logits(net, x), atol=1e-4, rtol=0)


def test_fixed_batch_export_rejects_other_batch_sizes(tmp_path):
    net = make_net()
    out = export_onnx(net, tmp_path / "fixed.onnx", images(2), dynamic_batch=False)
    session = ort.InferenceSession(str(out.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == 2
    with pytest.raises(Exception):
        session.run(None, {"input": images(3).numpy()})


def test_slim_output_still_matches(tmp_path):
    net = make_net()
    out = export_onnx(net, tmp_path / "slim.onnx", images(2), slim=True)
    assert out.slimmed is True and out.slim_error is None
    onnx.checker.check_model(onnx.load(str(out.path)))
    parity = check_parity(out.path, net, images(20))
    assert parity.max_abs_error < 1e-4
    assert parity.top1_agreement == 1.0


def test_slim_failure_keeps_the_unslimmed_model(tmp_path, monkeypatch):
    import onnxslim

    def broken(*args, **kwargs):
        raise RuntimeError("slim exploded")

    monkeypatch.setattr(onnxslim, "slim", broken)
    net = make_net()
    out = export_onnx(net, tmp_path / "m.onnx", images(2), slim=True)
    assert out.slimmed is False
    assert "slim exploded" in out.slim_error
    assert check_parity(out.path, net, images(8)).max_abs_error < 1e-4


def test_changed_weights_after_export_are_detected(tmp_path):
    net = make_net()
    out = export_onnx(net, tmp_path / "m.onnx", images(2))
    with torch.no_grad():
        net.features[0].weight.add_(0.5)
    parity = check_parity(out.path, net, images(32))
    assert parity.max_abs_error > 1e-2
    with pytest.raises(ParityError) as info:
        parity.assert_within(atol=1e-4)
    message = str(info.value)
    assert f"max_abs_error={parity.max_abs_error:.3g}" in message and "atol=0.0001" in message
    assert isinstance(info.value, ExportError) and isinstance(info.value, RuntimeError)


def test_assert_within_checks_relative_error_when_asked():
    parity = Parity(max_abs_error=1e-5, max_rel_error=0.2, mean_abs_error=1e-6, num_inputs=3, top1_agreement=1.0)
    parity.assert_within(atol=1e-4)
    with pytest.raises(ParityError, match="max_rel_error=0.2 exceeds rtol=0.01"):
        parity.assert_within(atol=1e-4, rtol=0.01)
    nan = Parity(float("nan"), float("nan"), float("nan"), 3, 0.0)
    with pytest.raises(ParityError):
        nan.assert_within(atol=1.0)


def test_error_numbers_follow_their_definitions():
    reference = np.array([[1.0, -4.0, 2.0], [0.5, 0.0, 3.0]])
    other = reference + np.array([[0.0, 0.2, 0.0], [0.0, 0.0, -3.0]])  # row 1's argmax moves from 2 to 0
    parity = _compare(other, reference)
    assert parity.max_abs_error == pytest.approx(3.0)
    assert parity.max_rel_error == pytest.approx(3.0 / 4.0)  # over the largest |reference|
    assert parity.mean_abs_error == pytest.approx(3.2 / 6)
    assert parity.num_inputs == 2
    assert parity.top1_agreement == 0.5
    with pytest.raises(ExportError, match="shape"):
        _compare(other[:, :2], reference)


def test_export_leaves_the_model_in_its_mode_and_dtype(tmp_path):
    net = make_net().train()
    export_onnx(net, tmp_path / "a.onnx", images(2))
    assert net.training is True
    half = make_net().half()
    out = export_onnx(half, tmp_path / "b.onnx", images(2))
    assert next(half.parameters()).dtype == torch.float16  # a float32 copy was exported
    assert check_parity(out.path, make_net(), images(4)).max_abs_error < 1e-2


def test_missing_parent_folders_are_created(tmp_path):
    target = tmp_path / "does" / "not" / "exist" / "m.onnx"
    out = export_onnx(make_net(), target, images(1))
    assert out.path == target and target.is_file()


def test_atomic_write_leaves_no_temp_file(tmp_path):
    export_onnx(make_net(), tmp_path / "m.onnx", images(1), slim=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


class _Unsupported(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(x.flatten(2)).S


def test_unsupported_operator_is_named_with_its_module(tmp_path):
    net = nn.Sequential()
    net.add_module("stem", nn.Conv2d(3, 4, 3))
    net.add_module("odd", _Unsupported())
    target = tmp_path / "bad.onnx"
    with pytest.raises(ExportError) as info:
        export_onnx(net, target, images(1))
    message = str(info.value)
    assert "aten::linalg_svd" in message
    assert "module odd" in message
    assert list(tmp_path.iterdir()) == []  # no partial file, no temp file


def test_failure_inside_forward_names_the_module(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(5, 2))  # wrong in_features
    with pytest.raises(ExportError, match=r"inside module 2"):
        export_onnx(net, tmp_path / "bad.onnx", images(1))
    assert list(tmp_path.iterdir()) == []


def test_check_parity_rejects_empty_inputs(exported):
    net, out = exported
    with pytest.raises(ValueError, match="at least one"):
        check_parity(out.path, net, np.zeros((0, *INPUT_SHAPE), dtype=np.float32))


def test_the_job_parity_rule_catches_a_wrong_export_of_a_model_with_tiny_outputs(tmp_path):
    """Logits ~1e-9 (an untrained head): any export is within 1e-4 absolute, so the relative error decides."""
    from pipeline.export import parity_ok

    def tiny(seed: int) -> TinyNet:
        net = make_net(seed)
        with torch.no_grad():
            net.head.weight.mul_(1e-9)
            net.head.bias.mul_(1e-9)
        return net.eval()

    out = export_onnx(tiny(0), tmp_path / "tiny.onnx", images(2))
    same = check_parity(out.path, tiny(0), images(20))
    other = check_parity(out.path, tiny(1), images(20))        # the file is not this model
    assert same.max_abs_error < 1e-12 and other.max_abs_error < 1e-4
    assert parity_ok(same.max_abs_error, 1e-4, same.max_rel_error)
    assert other.max_rel_error > 0.1 and not parity_ok(other.max_abs_error, 1e-4, other.max_rel_error)
    assert not parity_ok(same.max_abs_error, 1e-4, float("nan"))
