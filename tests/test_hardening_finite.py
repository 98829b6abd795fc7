"""NaN and infinity never pass as numbers: weights, pixels, normalisation, logits."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

from pruning import data
from pruning.errors import DataError, ModelError, SpecError, clip
from pruning.finite import (NonFinite, check_finite_array, check_finite_numbers, check_finite_state_dict,
                            count_nonfinite, find_nonfinite)
from pruning.measure import evaluate

NAN, INF = float("nan"), float("inf")


def test_clip_keeps_short_text_and_marks_the_cut():
    assert clip("cifar/resnet56") == "cifar/resnet56"
    assert clip("x" * 500, 10) == "xxx…[+497]"
    long = clip("y" * 10_000)
    assert len(long) <= 200 and long.endswith("…[+9809]") and long.startswith("y" * 191)
    assert clip("a\nb\x1b[31m") == "a?b?[31m"          # control characters cannot forge log lines


def test_count_and_find_nonfinite_name_each_tensor():
    sd = {"conv.weight": torch.tensor([1.0, NAN, INF, -INF]), "conv.bias": torch.zeros(3),
          "bn.num_batches_tracked": torch.tensor(7), "fc.weight": np.array([[0.0, NAN]])}
    assert count_nonfinite(sd["conv.weight"]) == 3 and count_nonfinite(sd["bn.num_batches_tracked"]) == 0
    assert find_nonfinite(sd) == [NonFinite("conv.weight", 3, 4), NonFinite("fc.weight", 1, 2)]


def test_state_dict_check_names_tensors_and_counts():
    check_finite_state_dict({"w": torch.ones(2), "n": torch.tensor(3)}, "good.pt")
    sd = {f"layer{i}.weight": torch.full((2, 2), NAN) for i in range(5)}
    sd["ok"] = torch.ones(1)
    with pytest.raises(ModelError) as info:
        check_finite_state_dict(sd, "resnet.pt")
    message = str(info.value)
    assert message.startswith("resnet.pt: tensor 'layer0.weight' (4 of 4 values), tensor 'layer1.weight' (4 of 4 "
                              "values), tensor 'layer2.weight' (4 of 4 values) and 2 more tensors non-finite")
    assert "'ok'" not in message


def test_a_negative_batchnorm_variance_is_named():
    # finite, so it passed; at the first forward its square root made every logit NaN, and the error blamed NaN
    # weights or the normalisation std
    sd = {"bn1.running_var": torch.tensor([1.0, -0.5, 2.0, -1.0]), "bn1.running_mean": torch.tensor([-3.0])}
    with pytest.raises(ModelError, match=r"r20\.pt: tensor 'bn1\.running_var' \(2 of 4 values\) negative; a "
                                         r"BatchNorm running variance cannot be"):
        check_finite_state_dict(sd, "r20.pt")
    check_finite_state_dict({"bn1.running_var": torch.ones(4), "bn1.running_mean": torch.tensor([-3.0])}, "ok.pt")


def test_array_and_number_checks():
    check_finite_array(np.arange(4), "labels", "d.npz")
    with pytest.raises(DataError, match=r"^d.npz: images hold 2 non-finite value\(s\) \(NaN or infinite\) of 6$"):
        check_finite_array(np.array([1.0, NAN, 2, 3, INF, 0]), "images", "d.npz")
    assert check_finite_numbers([0.5, 1], "std", positive=True) == (0.5, 1.0)
    with pytest.raises(SpecError, match=r"^std\[1\] is 0.0; it must be > 0"):
        check_finite_numbers([0.5, 0.0], "std", positive=True)
    with pytest.raises(SpecError, match=r"^mean\[0\] is nan; it must be a finite number$"):
        check_finite_numbers([NAN], "mean")
    with pytest.raises(SpecError, match="std must be numbers"):
        check_finite_numbers(["a"], "std")


@pytest.mark.parametrize("std, message", [((NAN, 0.2, 0.2), r"std\[0\] is nan"), ((0.2, -1.0, 0.2), r"std\[1\] is -1.0"),
                                          ((0.2, 0.2, 0.0), r"std\[2\] is 0.0"), ((INF, 1, 1), r"std\[0\] is inf")])
def test_preprocess_refuses_bad_std(std, message):
    with pytest.raises(SpecError, match=message):
        data.Preprocess((0.5, 0.5, 0.5), std)


def test_preprocess_refuses_non_finite_mean_and_gives_finite_output():
    with pytest.raises(SpecError, match=r"mean\[1\] is inf"):
        data.Preprocess((0.5, INF, 0.5), (1, 1, 1))
    x = data.Preprocess([0.5], [0.25])(np.full((1, 2, 2, 1), 255, np.uint8))
    assert torch.isfinite(x).all() and torch.allclose(x, torch.full_like(x, 2.0))


def test_float_pixels_with_nan_are_named(tmp_path):
    path = tmp_path / "f.npz"
    images = np.zeros((4, 8, 8, 3), np.float32)
    images[1, 2, 3, 0] = NAN
    np.savez(path, images=images, labels=np.arange(4))
    with pytest.raises(DataError, match=r"^f.npz: images hold 1 non-finite value\(s\) \(NaN or infinite\) of 768$"):
        data.load_images(path)


def test_cifar_batch_with_float_pixels_is_not_wrapped_to_uint8(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    pixels = np.zeros((2, 3072), np.float64)
    pixels[0, 0] = NAN
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": pixels, b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"cifar-10-batches-py/test_batch: pixels hold 1 non-finite"):
        data.load_images(folder)
    pixels[0, 0] = 300.0
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": pixels, b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"pixels must be numbers in 0..255, got float64"):
        data.load_images(folder)


def test_float_tiff_with_nan_is_refused(tmp_path):
    from PIL import Image

    pixels = np.ones((4, 4), np.float32)
    pixels[0, 0] = NAN
    (tmp_path / "set" / "a").mkdir(parents=True)
    Image.fromarray(pixels, mode="F").save(tmp_path / "set" / "a" / "x.tif")
    with pytest.raises(DataError, match=r"^image set/a/x.tif holds 1 non-finite pixel value\(s\) \(NaN or infinite\) "
                                        r"of 16$"):
        data.load_images(tmp_path / "set")


class _Table(nn.Module):
    """Logits looked up by row: input [N, 1] holds row numbers of ``logits``."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.lin = nn.Linear(1, 1)

    def forward(self, x):
        return self.logits[x.long().view(-1)]


def test_evaluate_refuses_nan_logits_instead_of_counting_them():
    labels = torch.zeros(4, dtype=torch.long)              # argmax of a NaN row is 0: it used to count as right
    logits = torch.tensor([[1.0, 0.0]] * 8)
    rows = [torch.arange(0, 4).view(-1, 1), torch.arange(4, 8).view(-1, 1)]
    assert evaluate(_Table(logits), [(rows[0], labels), (rows[1], labels)]).top1 == 1.0
    logits[6, 1] = NAN
    model = _Table(logits).train()
    with pytest.raises(ModelError, match=r"non-finite logits \(NaN or infinite\) for 1 of 4 images in evaluation "
                                         r"batch 1 \(images 4..7\)"):
        evaluate(model, [(rows[0], labels), (rows[1], labels)])
    assert model.training                                  # mode restored after the error


def test_nan_weights_fail_evaluation_end_to_end():
    from pruning.models.small import SmallCNN

    model = SmallCNN(num_classes=10, in_channels=1)
    with torch.no_grad():
        model.classifier.weight[3, 0] = NAN
    with pytest.raises(ModelError):
        check_finite_state_dict(model.state_dict(), "small.pt")
    with pytest.raises(ModelError, match="non-finite logits"):
        evaluate(model, [(torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))])
