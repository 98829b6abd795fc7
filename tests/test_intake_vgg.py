"""VGG: the CIFAR VGG-16-BN of the pruning papers, and torchvision VGG exported at any input size."""
import copy

import onnx
import pytest
import torch
import torch.nn as nn

from exporters.onnx import check_parity, export_onnx
from pruning import surgery, zoo
from pruning.measure import count_cost
from pruning.models.pooling import ExportableAdaptiveAvgPool2d, adaptive_windows
from pruning.plan import PruningPlan


def test_cifar_vgg16_bn_has_the_published_size():
    model = zoo.create_model("cifar/vgg16_bn").eval()
    cost = count_cost(model, (3, 32, 32))
    # 13 conv weights (14,710,464) + their BN (8,448) + 512x512 linear, BN1d, 512x10 linear (268,810)
    assert cost.params == 14_987_722
    assert cost.macs == pytest.approx(3.13e8, rel=0.01)                  # Li et al. 2017, table 1: 3.13e8
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 13
    sd = model.state_dict()
    assert tuple(sd["feature.0.weight"].shape) == (64, 3, 3, 3)
    assert tuple(sd["classifier.0.weight"].shape) == (512, 512) and tuple(sd["classifier.3.weight"].shape) == (10, 512)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert zoo.get_entry("cifar/vgg16_bn").input_shape == (3, 32, 32)


@pytest.mark.parametrize("size_in,size_out,windows", [
    (2, 7, [(0, 1), (0, 1), (0, 1), (0, 2), (1, 2), (1, 2), (1, 2)]),
    (10, 7, [(0, 2), (1, 3), (2, 5), (4, 6), (5, 8), (7, 9), (8, 10)]),
    (14, 7, [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14)]),
])
def test_adaptive_windows_are_pytorchs(size_in, size_out, windows):
    assert adaptive_windows(size_in, size_out) == windows


@pytest.mark.parametrize("height,width", [(1, 1), (2, 2), (3, 5), (7, 7), (9, 13), (14, 14), (20, 6)])
def test_exportable_pool_equals_adaptive_pool(height, width):
    x = torch.randn(2, 5, height, width)
    torch.testing.assert_close(ExportableAdaptiveAvgPool2d(7)(x), nn.AdaptiveAvgPool2d(7)(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(ExportableAdaptiveAvgPool2d((3, None))(x), nn.AdaptiveAvgPool2d((3, None))(x),
                               rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def vgg11():
    """The zoo's torchvision/vgg11_bn with a small classifier on its 512x7x7 features (a fast stand-in for the
    4096-wide head; the pooling path under test is unchanged)."""
    model = zoo.create_model("torchvision/vgg11_bn", num_classes=10)
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10))
    return model.eval()


def test_zoo_vgg_keeps_torchvisions_numbers_at_64x64(vgg11):
    model = copy.deepcopy(vgg11)
    assert isinstance(model.avgpool, ExportableAdaptiveAvgPool2d)
    x = torch.randn(2, 3, 64, 64)
    ours = model(x)
    model.avgpool = nn.AdaptiveAvgPool2d(7)                                # torchvision's own module
    torch.testing.assert_close(ours, model(x), rtol=1e-5, atol=1e-6)


def test_pruned_vgg_exports_to_onnx_at_64x64(vgg11, tmp_path):
    shape = (3, 64, 64)
    model = copy.deepcopy(vgg11)
    groups = surgery.channel_groups(model, shape)
    plan = PruningPlan("torchvision/vgg11_bn", 10, shape, {g.name: list(range(0, g.size, 3)) + [g.size - 1]
                                                           for g in groups}, {g.name: g.size for g in groups})
    before = count_cost(model, shape).macs
    surgery.apply_plan(model, plan)
    assert count_cost(model, shape).macs < 0.2 * before
    exported = export_onnx(model, tmp_path / "vgg.onnx", torch.zeros(1, *shape))
    parity = check_parity(exported.path, model, torch.randn(4, *shape))
    assert parity.max_rel_error < 1e-5 and parity.top1_agreement == 1.0
    # 2x2 features -> 7x7 windows as gathers; torch.onnx.export refuses nn.AdaptiveAvgPool2d(7) here
    assert "Gather" in {n.op_type for n in onnx.load(str(exported.path)).graph.node}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["torchvision/vgg11_bn", "torchvision/vgg16_bn"])
def test_full_torchvision_vgg_exports_at_64x64(tmp_path, arch):
    model = zoo.create_model(arch, num_classes=10).eval()
    exported = export_onnx(model, tmp_path / "vgg.onnx", torch.zeros(1, 3, 64, 64))
    assert check_parity(exported.path, model, torch.randn(2, 3, 64, 64)).max_rel_error < 1e-5
