import pickle

import pytest
import torch

from pruning import zoo
from pruning.errors import ModelError
from pruning.measure import count_cost


def test_resnet56_cost_matches_the_paper_count():
    cost = count_cost(zoo.create_model("cifar/resnet56"), (3, 32, 32))
    assert cost.params == 853_018
    assert abs(cost.macs - 1.25e8) / 1.25e8 < 0.02


@pytest.mark.parametrize("depth,keys", [(20, 97), (32, 157), (56, 277)])
def test_cifar_state_dict_layout_matches_the_checkpoints(depth, keys):
    sd = zoo.create_model(f"cifar/resnet{depth}").state_dict()
    names = [k for k in sd if not k.endswith("num_batches_tracked")]
    assert len(names) == keys
    assert tuple(sd["layer2.0.conv1.weight"].shape) == (32, 16, 3, 3)
    assert tuple(sd["linear.weight"].shape) == (10, 64)
    assert not any("shortcut" in k or "downsample" in k for k in names)


def test_option_a_shortcut_pads_channels_on_both_sides():
    from pruning.models.cifar_resnet import OptionAShortcut

    x = torch.arange(16, dtype=torch.float32).view(1, 16, 1, 1).expand(1, 16, 4, 4).contiguous()
    y = OptionAShortcut(16, 32, 2)(x)
    assert y.shape == (1, 32, 2, 2)
    assert torch.all(y[:, :8] == 0) and torch.all(y[:, 24:] == 0)
    assert torch.equal(y[0, 8:24, 0, 0], torch.arange(16, dtype=torch.float32))


def test_option_a_shortcut_exports_as_one_convolution_with_the_same_values(tmp_path):
    import numpy as np
    import onnx
    import onnxruntime as ort

    from exporters.onnx import export_onnx
    from pruning.models.cifar_resnet import OptionAShortcut, channel_embedding_kernel

    x = torch.randn(2, 16, 8, 8)
    shortcut = OptionAShortcut(16, 32, 2)
    as_conv = torch.nn.functional.conv2d(x, channel_embedding_kernel(16, 8), stride=2)
    assert torch.equal(as_conv, shortcut(x))
    assert "export_kernel" not in shortcut.state_dict()

    model = zoo.create_model("cifar/resnet20").eval()
    path = tmp_path / "r20.onnx"
    export_onnx(model, path, torch.randn(1, 3, 32, 32))
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Slice" not in ops and "Pad" not in ops
    images = torch.randn(4, 3, 32, 32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    with torch.no_grad():
        expected = model(images).numpy()
    assert np.abs(got - expected).max() < 1e-4


def test_dataparallel_checkpoint_without_bn_counters_loads(tmp_path):
    source = zoo.create_model("cifar/resnet20")
    sd = {f"module.{k}": v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "r20.th"
    torch.save({"state_dict": sd, "best_prec1": 91.7}, path)
    model = zoo.load_model("cifar/resnet20", path)
    assert torch.equal(model.conv1.weight, source.conv1.weight)


class Evil:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_checkpoint_needing_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": zoo.create_model("demo/small_cnn").state_dict(), "extra": Evil()}, path)
    with pytest.raises(ModelError, match="pickled code"):
        zoo.read_state_dict(path)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(zoo.create_model("demo/small_cnn").state_dict(), path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ModelError, match="truncated"):
        zoo.read_state_dict(path)


def test_weights_of_another_architecture_are_named(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(zoo.create_model("cifar/resnet20").state_dict(), path)
    with pytest.raises(ModelError, match="do not fit"):
        zoo.load_model("cifar/resnet32", path)


def test_unknown_architecture_suggests_names():
    with pytest.raises(ModelError, match="cifar/resnet56"):
        zoo.create_model("resnet56")


def test_registry_lists_torchvision_and_cifar():
    names = zoo.list_models()
    assert {"cifar/resnet20", "cifar/resnet110", "torchvision/resnet18", "torchvision/mobilenet_v2"} <= set(names)
    assert zoo.create_model("torchvision/resnet18", num_classes=7).fc.out_features == 7


@pytest.mark.slow
@pytest.mark.parametrize("depth,expected", [(20, 0.9173), (32, 0.9263), (56, 0.9339)])
def test_pretrained_cifar_resnets_reach_published_accuracy(shared_data, depth, expected):
    from pruning import data
    from pruning.measure import evaluate

    weights = next((shared_data / "weights").glob(f"resnet{depth}-*.th"))
    model = zoo.load_model(f"cifar/resnet{depth}", weights)
    test = data.load_images(shared_data / "cifar10" / "test.npz").train
    pre = data.Preprocess(zoo.IMAGENET_MEAN, zoo.IMAGENET_STD)
    assert evaluate(model, data.batches(test, pre, 500)).top1 == pytest.approx(expected, abs=1e-4)
