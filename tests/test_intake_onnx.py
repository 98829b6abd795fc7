"""ONNX models in: conversion checked against ONNX Runtime, unprunable operators named, pruned end to end."""
import hashlib
import sys
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper

from exporters.onnx import check_parity, export_onnx
from pruning import surgery
from pruning.compress import ModelSpec, compress
from pruning.errors import ModelError, SpecError
from pruning.intake import resolve, verify
from pruning.intake.onnx_ops import pruning_problems
from tests.intake_helpers import ACME, cifar_like_npz, quick_spec


def _tiny_resnet() -> nn.Module:
    """The acme residual CNN (identity and 1x1-projection shortcuts) with BatchNorm statistics that matter."""
    sys.path.insert(0, str(ACME))
    try:
        from acme_models.nets import tiny_resnet
    finally:
        sys.path.remove(str(ACME))
    torch.manual_seed(0)
    model = tiny_resnet(width=8)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory):
    """tiny_resnet exported to ONNX, then compressed from that file (L1, -30% MACs, no fine-tuning)."""
    tmp = tmp_path_factory.mktemp("onnx")
    path = export_onnx(_tiny_resnet(), tmp / "model.onnx", torch.zeros(1, 3, 32, 32)).path
    result = compress(quick_spec(ModelSpec("onnx", model_file=str(path)), cifar_like_npz(tmp / "d.npz")),
                      out_dir=tmp / "run")
    return tmp, path, result


def test_onnx_model_is_channel_pruned_end_to_end_and_exported_again(onnx_run):
    tmp, path, result = onnx_run
    assert result.reduction("macs") == pytest.approx(0.3, abs=0.03)
    assert result.cost["compressed"].params < result.cost["original"].params
    source = result.plan.source
    assert source["kind"] == "onnx" and source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source["conversion_check"]["max_rel_error"] < 1e-5 and source["conversion_check"]["num_inputs"] == 8
    x = torch.randn(6, 3, 32, 32)
    again = export_onnx(result.model, tmp / "pruned.onnx", torch.zeros(1, 3, 32, 32))
    parity = check_parity(again.path, result.model, x)
    assert parity.max_rel_error < 1e-5 and parity.top1_agreement == 1.0
    convs = [n for n in onnx.load(str(again.path)).graph.node if n.op_type == "Conv"]
    widths = {len(kept) for kept in result.plan.kept.values()}
    assert len(convs) == 6 and min(widths) < 8                        # same layers, fewer channels


def test_pruned_onnx_model_reloads_from_plan_weights_and_the_original_file(onnx_run, tmp_path):
    _, path, result = onnx_run
    files = result.files
    reloaded = surgery.load_compressed(files["plan"], files["weights"], model_file=path)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(reloaded(x), result.model.eval()(x))
    with pytest.raises(ModelError, match="pass that file again"):
        surgery.load_compressed(files["plan"], files["weights"])
    other = export_onnx(_tiny_resnet(), tmp_path / "other.onnx", torch.zeros(1, 3, 32, 32), opset=16).path
    with pytest.raises(ModelError, match="not the ONNX file this plan was made from"):
        surgery.load_compressed(files["plan"], files["weights"], model_file=other)


def test_conversion_is_checked_against_onnx_runtime(tmp_path):
    path = export_onnx(_tiny_resnet(), tmp_path / "m.onnx", torch.zeros(1, 3, 32, 32), dynamic_batch=False).path
    resolved = resolve(ModelSpec("onnx", model_file=str(path)))
    assert resolved.entry.input_shape == (3, 32, 32) and resolved.entry.num_classes == 10
    images = torch.randn(3, 3, 32, 32)
    check = verify(resolved, images).source["conversion_check"]       # batch fixed to 1 in the file: one by one
    assert check["num_inputs"] == 3 and check["max_rel_error"] < 1e-5
    with torch.no_grad():
        next(m for m in resolved.module.modules() if isinstance(m, nn.Conv2d)).weight.mul_(1.5)
    with pytest.raises(ModelError, match=r"exceeds the tolerance rtol=0.001"):
        verify(resolved, images)


def test_a_conv_whose_weight_is_a_constant_node_converts(tmp_path):
    # torch.onnx.export (TorchScript) writes a fixed buffer as a Constant node: our CIFAR ResNets' option-A shortcut
    # kernel does; onnx2torch failed on it with a bare KeyError
    from pruning.models.cifar_resnet import CifarResNet

    torch.manual_seed(0)
    model = CifarResNet(blocks_per_stage=1, num_classes=10, widths=(4, 8, 8)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), opset_version=17, dynamo=False,
                      do_constant_folding=False)
    assert any(n.op_type == "Constant" and n.attribute[0].t.dims[:2] == [8, 4] for n in onnx.load(path).graph.node)
    resolved = resolve(ModelSpec("onnx", model_file=str(path)))
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(resolved.module(images), model(images), atol=1e-5)


class _MeanPooled(nn.Module):
    """Conv, BN, ReLU, then ``x.mean((2, 3))``: from opset 18 the exporter writes ReduceMean with axes as an input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _opset20_file(tmp_path):
    torch.manual_seed(0)
    model = _MeanPooled().eval()
    path = tmp_path / "mean.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), opset_version=20, dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    proto = onnx.load(path)
    assert [o.version for o in proto.opset_import if o.domain == ""] == [20]
    assert any(n.op_type == "ReduceMean" and len(n.input) == 2 for n in proto.graph.node)   # axes as an input
    return model, path


def test_an_opset_20_model_is_converted_down_to_17_and_checked_against_the_file(tmp_path):
    # onnx2torch 1.5 refused it: "Converter is not implemented (... operation_type='ReduceMean', version=18)"
    model, path = _opset20_file(tmp_path)
    resolved = resolve(ModelSpec("onnx", model_file=str(path)))
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(resolved.module(images), model(images), atol=1e-5)
    source = verify(resolved, images).source
    assert source["opset"] == 20 and source["converted_to_opset"] == 17
    assert source["conversion_check"]["max_rel_error"] < 1e-5


def test_an_opset_onnx_cannot_convert_down_is_named_with_the_export_to_use(tmp_path, monkeypatch):
    from onnx import version_converter

    _, path = _opset20_file(tmp_path)

    def no_adapter(proto, version):
        raise RuntimeError("adapter_lookup: Assertion `false` failed: No Adapter From Version $20 for Foo")

    monkeypatch.setattr(version_converter, "convert_version", no_adapter)
    with pytest.raises(ModelError, match=r"mean.onnx uses ONNX opset 20; .* reads up to opset 17 .*No Adapter From "
                                         r"Version \$20 for Foo\); export it with opset_version=17"):
        resolve(ModelSpec("onnx", model_file=str(path)))


class _FixedBatchReshape(nn.Module):
    """What the torch.export-based exporter (torch.onnx.export's default) writes for ``torch.flatten(x, 1)`` with a
    one-image example: ``Reshape(x, [1, C])`` with a constant shape after the pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        return self.fc(nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).reshape(1, 32))


def test_a_constant_reshape_that_flattens_is_pruned_through_as_a_flatten(tmp_path):
    torch.manual_seed(0)
    model = _FixedBatchReshape().eval()
    path = tmp_path / "reshape.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), opset_version=17, dynamo=False)
    assert [n.op_type for n in onnx.load(path).graph.node].count("Reshape") == 1
    resolved = resolve(ModelSpec("onnx", model_file=str(path)))
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():                 # the Flatten takes any batch; the file's Reshape only one image
        assert torch.allclose(resolved.module(images)[:1], model(images[:1]), atol=1e-5)
    assert verify(resolved, images).source["conversion_check"]["max_rel_error"] < 1e-5
    result = compress(quick_spec(ModelSpec("onnx", model_file=str(path)), cifar_like_npz(tmp_path / "d.npz"), 0.2))
    assert result.reduction("macs") == pytest.approx(0.2, abs=0.06)
    assert len(result.plan.kept["conv/Conv"]) < 8               # the conv before the flatten lost channels


@pytest.mark.parametrize("input_dims,shape,allowzero,flatten", [
    ([1, 32, 1, 1], [1, 32], 0, True), ([1, 32, 1, 1], [-1, 32], 1, True), ([1, 8, 2, 2], [1, -1], 0, True),
    ([1, 8, 2, 2], [0, 32], 0, True), ([1, 8, 2, 2], [0, 32], 1, False),
    ([1, 32, 1, 1], [32, 1], 0, False), ([1, 8, 2, 2], [1, 8, 4], 0, False), ([2, 32, 1, 1], [1, 64], 0, False),
    (["n", 32, 1, 1], [1, 32], 0, False), (["n", 32, 1, 1], [-1, 32], 0, True),
])
def test_reshapes_become_flatten_only_when_they_are_one(input_dims, shape, allowzero, flatten):
    import numpy as np
    import onnxruntime as ort

    from pruning.intake.onnx_rewrites import reshapes_to_flatten

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, input_dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=allowzero, name="r")
    shape_tensor = helper.make_tensor("shape", TensorProto.INT64, [len(shape)], shape)
    proto = helper.make_model(helper.make_graph([node], "g", [x], [y], initializer=[shape_tensor]),
                              opset_imports=[helper.make_opsetid("", 17)])
    out = reshapes_to_flatten(proto)
    assert [n.op_type for n in out.graph.node] == (["Flatten"] if flatten else ["Reshape"])
    if flatten:
        assert not out.graph.initializer                          # the shape constant went with the Reshape
        data = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in input_dims],
                                                        dtype=np.float32)
        run = [ort.InferenceSession(p.SerializeToString()).run(None, {"x": data})[0] for p in (proto, out)]
        assert run[0].shape == run[1].shape and np.array_equal(run[0], run[1])


class _Upsampling(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = nn.functional.interpolate(self.conv(x), scale_factor=2.0, mode="nearest")
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class _ChannelShift(_Upsampling):
    def __init__(self) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.randn(1, 4, 1, 1))

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x) + self.shift, 1), 1))


class _ViewFlatten(_Upsampling):
    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.conv(x), 1)
        return self.fc(x.view(x.size(0), -1))


@pytest.mark.parametrize("model,message", [
    (_Upsampling(), r"Resize \(node .*\): this operator is not supported"),
    (_ChannelShift(), r"Add \(node .*\): it applies a constant tensor"),
    (_ViewFlatten(), r"Shape \(node .*torch.flatten"),
])
def test_operators_that_cannot_be_pruned_are_named(tmp_path, model, message):
    path = export_onnx(model.eval(), tmp_path / "m.onnx", torch.zeros(1, 3, 8, 8)).path
    with pytest.raises(ModelError, match=message):
        resolve(ModelSpec("onnx", model_file=str(path)))


def _graph(node, *initializers) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph([node], "g", [x], [y], initializer=list(initializers)))


@pytest.mark.parametrize("node,initializers,problem", [
    (helper.make_node("Concat", ["x", "x"], ["y"], axis=1, name="cat"), [], None),
    (helper.make_node("Concat", ["x", "x"], ["y"], axis=2, name="cat"), [], "Concat (node cat): axis=2"),
    (helper.make_node("Flatten", ["x"], ["y"], axis=2, name="f"), [], "Flatten (node f): axis=2"),
    (helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], name="m"), [], None),
    (helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], name="m"), [], "ReduceMean (node m): only a mean"),
    (helper.make_node("Mul", ["x", "s"], ["y"], name="mul"), [helper.make_tensor("s", TensorProto.FLOAT, [], [2.0])],
     None),
    (helper.make_node("Conv", ["x", "w"], ["y"], name="c"), [], "Conv (node c): its parameters (w) are computed"),
    (helper.make_node("Relu", ["x"], ["y"], domain="com.acme", name="r"), [], "Relu (node r): custom operator"),
])
def test_pruning_rules_per_operator(node, initializers, problem):
    problems = pruning_problems(_graph(node, *initializers))
    assert problems == ([] if problem is None else [problems[0]])
    if problem is not None:
        assert problems[0].startswith(problem)


def test_onnx_spec_mistakes_are_explained(tmp_path):
    path = export_onnx(_tiny_resnet(), tmp_path / "m.onnx", torch.zeros(1, 3, 32, 32), dynamic_batch=False).path
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    torch.jit.save(torch.jit.script(nn.Conv2d(3, 4, 3)), tmp_path / "ts.pt")
    (tmp_path / "noise.onnx").write_bytes(bytes(range(256)) * 8)
    cases = [
        (ModelSpec("onnx", model_file=str(tmp_path / "ts.pt")), ModelError, "TorchScript archive .* torch.onnx.export"),
        (ModelSpec("onnx", model_file=str(tmp_path / "noise.onnx")), ModelError, "unrecognised content"),
        (ModelSpec("onnx"), SpecError, "needs model_file"),
        (ModelSpec("onnx", weights=str(tmp_path / "w.pt"), model_file=str(path)), SpecError, "carries its own weights"),
        (ModelSpec("onnx", model_file=str(path), input_shape=(3, 64, 64)), SpecError, "takes 3x32x32 inputs"),
        (ModelSpec("onnx", model_file=str(tmp_path / "w.pt")), ModelError, "PyTorch checkpoint, not an ONNX model: pass it as --weights"),
        (ModelSpec("onnx", model_file=str(path), num_classes=7), ModelError, "outputs 10 classes, not the 7"),
    ]
    for spec, error, message in cases:
        with pytest.raises(error, match=message):
            resolve(spec)


def _split_model(tmp_path, folder: str | None = "split") -> tuple[Path, Path]:
    """(one-file ONNX of ``_tiny_resnet``, the same model as ``split.onnx`` + ``split.onnx.data`` in
    ``tmp_path/folder``, as torch.onnx.export's default writer lays it out; ``folder`` None: in ``tmp_path``)."""
    whole = export_onnx(_tiny_resnet(), tmp_path / "m.onnx", torch.zeros(1, 3, 32, 32)).path
    where = tmp_path / folder if folder else tmp_path
    where.mkdir(exist_ok=True)
    onnx.save(onnx.load(whole), where / "split.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="split.onnx.data", size_threshold=0)
    return whole, where / "split.onnx"


def test_external_weights_are_read_locally_from_beside_the_model_and_never_by_a_server(tmp_path):
    # torch.onnx.export's default (torch.export-based) writes model.onnx + model.onnx.data; check_model used to
    # answer "not a valid ONNX model: ... should be stored in ..."
    path, split = _split_model(tmp_path)
    folder = split.parent
    local = resolve(ModelSpec("onnx", model_file=str(folder / "split.onnx")))
    whole = resolve(ModelSpec("onnx", model_file=str(path)))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(local.module(images), whole.module(images))
    source = verify(local, images).source
    both = hashlib.sha256((folder / "split.onnx").read_bytes() + (folder / "split.onnx.data").read_bytes())
    assert source["sha256"] == both.hexdigest()                  # the digest covers the data file too
    with pytest.raises(ModelError, match=r"split.onnx keeps its weights in external data file\(s\) "
                                         r"\(split.onnx.data\), as torch.onnx.export writes by default, and a "
                                         r"server reads only those the job brings: .*spec.model.external_data "
                                         r".*external_data=False"):
        resolve(ModelSpec("onnx", model_file=str(folder / "split.onnx")), allowed_packages=frozenset())
    (folder / "split.onnx.data").rename(tmp_path / "elsewhere.data")
    with pytest.raises(ModelError, match=r"keeps its weights in 'split.onnx.data', which is not beside it"):
        resolve(ModelSpec("onnx", model_file=str(folder / "split.onnx")))


def test_a_server_reads_exactly_the_external_data_files_the_job_names(tmp_path):
    # ModelSpec.external_data: the files a job brought (spec.model.external_data), placed beside the model
    path, split = _split_model(tmp_path)
    data = split.parent / "split.onnx.data"
    served = resolve(ModelSpec("onnx", model_file=str(split), external_data={"split.onnx.data": str(data)}),
                     allowed_packages=frozenset())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(served.module(images), resolve(ModelSpec("onnx", model_file=str(path))).module(images))
    assert verify(served, images).source["conversion_check"]["max_rel_error"] < 1e-5     # ONNX Runtime agrees
    other = split.parent / "other.data"
    other.write_bytes(data.read_bytes())
    with pytest.raises(ModelError, match=r"keeps its weights in external data file\(s\) \(split.onnx.data\)"):
        resolve(ModelSpec("onnx", model_file=str(split), external_data={"other.data": str(other)}),
                allowed_packages=frozenset())
    (tmp_path / "elsewhere.data").write_bytes(data.read_bytes())
    with pytest.raises(SpecError, match=r"'split.onnx.data' must lie beside the model file, as .*split.onnx.data"):
        resolve(ModelSpec("onnx", model_file=str(split),
                          external_data={"split.onnx.data": str(tmp_path / "elsewhere.data")}))
    with pytest.raises(SpecError, match=r"external_data is only read for arch 'onnx'"):
        resolve(ModelSpec("cifar/resnet20", external_data={"split.onnx.data": str(data)}))


def test_external_weights_behind_a_link_inside_the_folder_are_read_and_a_short_file_is_named(tmp_path):
    # onnx refuses a data location that is a link even to a file beside the model: "stage 'load' failed:
    # ValidationError: ... but it is a symbolic link"
    path, split = _split_model(tmp_path)
    folder = split.parent
    (folder / "split.onnx.data").rename(folder / "weights.bin")
    (folder / "split.onnx.data").symlink_to(folder / "weights.bin")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        linked = resolve(ModelSpec("onnx", model_file=str(folder / "split.onnx"))).module(images)
        assert torch.equal(linked, resolve(ModelSpec("onnx", model_file=str(path))).module(images))
    data = (folder / "weights.bin").read_bytes()
    (folder / "weights.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"split.onnx: its external data could not be read: "):
        resolve(ModelSpec("onnx", model_file=str(folder / "split.onnx")))


@pytest.mark.parametrize("location", ["../secret.data", "/etc/passwd", "link.data"])
def test_external_data_outside_the_models_folder_is_never_opened(tmp_path, location):
    _, split = _split_model(tmp_path, "model")
    folder = split.parent
    (folder / "split.onnx.data").rename(tmp_path / "secret.data")
    (folder / "link.data").symlink_to(tmp_path / "secret.data")              # a link out of the folder
    hostile = onnx.load(folder / "split.onnx", load_external_data=False)
    for tensor in hostile.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(hostile, folder / "hostile.onnx")
    with pytest.raises(ModelError, match=rf"hostile.onnx names external data '{location}' outside its folder"):
        resolve(ModelSpec("onnx", model_file=str(folder / "hostile.onnx")))


def test_a_client_finds_the_external_data_files_to_upload_with_the_model(tmp_path):
    from pruning.intake.onnx_source import external_data_beside

    path, split = _split_model(tmp_path)
    assert external_data_beside(path) == {}                               # one file already: sent alone
    (tmp_path / "notes.txt").write_text("not a model")
    assert external_data_beside(tmp_path / "notes.txt") == {}            # the server names what it is
    assert external_data_beside(split) == {"split.onnx.data": (split.parent / "split.onnx.data").resolve()}
    (split.parent / "split.onnx.data").unlink()
    with pytest.raises(ModelError, match=r"keeps its weights in 'split.onnx.data', which is not beside it"):
        external_data_beside(split)


def test_submit_refuses_external_weights_it_cannot_read_before_connecting(tmp_path, capsys):
    from service.cli.main import main
    from tests.intake_helpers import cifar_like_npz

    _split_model(tmp_path, None)
    (tmp_path / "split.onnx.data").rename(tmp_path / "moved.data")
    code = main(["submit", "--server", "127.0.0.1:9", "--model", str(tmp_path / "split.onnx"), "--data",
                 str(cifar_like_npz(tmp_path / "d.npz")), "--target-macs", "0.3", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "split.onnx keeps its weights in 'split.onnx.data', which is not beside it" in err
    assert "unreachable" not in err and "UNAVAILABLE" not in err         # refused before any connection
