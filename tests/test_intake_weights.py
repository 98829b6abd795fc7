"""Weights files: safetensors accepted; other model files recognised by content and named, with what to do."""
import os
import warnings

import numpy as np
import pytest
import torch

from pruning import zoo
from pruning.errors import ModelError
from pruning.intake.sniff import classify, identify


def _small():
    return zoo.create_model("demo/small_cnn")


def test_safetensors_weights_load_into_the_model(tmp_path):
    from safetensors.torch import save_file

    source = _small()
    sd = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    assert identify(path) == "safetensors"
    model = zoo.load_model("demo/small_cnn", path)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model(x), source.eval()(x))


def test_a_folder_given_as_the_weights_or_model_file_is_named_a_folder(tmp_path):
    from pruning.intake import resolve
    from pruning.intake.spec import ModelSpec
    from pruning.intake.weights import read_state_dict

    with pytest.raises(ModelError, match="weights file .* is a folder, not a file"):
        read_state_dict(tmp_path)
    with pytest.raises(ModelError, match="model file .* is a folder, not a file"):
        resolve(ModelSpec("onnx", model_file=str(tmp_path)))
    with pytest.raises(ModelError, match="weights file .*nothing.pt does not exist"):
        read_state_dict(tmp_path / "nothing.pt")


def test_truncated_safetensors_is_named(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in _small().state_dict().items()}, str(path))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        zoo.read_state_dict(path)


def _onnx_file(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_small().eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False)
    return path


def _torchscript_file(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)                  # torch.jit is deprecated, files remain
        torch.jit.save(torch.jit.script(_small().eval()), str(path))
    return path


def _write(path, data):
    path.write_bytes(data)
    return path


def _npz(path):
    np.savez(path, a=np.zeros(3))
    return path


def _pt2_file(path):
    program = torch.export.export(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), (torch.zeros(1, 1, 5, 5),))
    torch.export.save(program, str(path))
    return path


@pytest.mark.parametrize("make,kind,advice", [
    (_onnx_file, "onnx", "pass it as --model w.onnx, not --weights"),
    (_torchscript_file, "torchscript", "TorchScript archive"),
    (_pt2_file, "torch.export", "torch.export program"),
    (lambda p: _write(p, b""), "empty", r"is empty \(0 bytes\)"),
    (lambda p: _write(p, b"\x07" + os.urandom(4095)), "unknown", "not a PyTorch checkpoint, a safetensors file or an"),
    (lambda p: _write(p, b'{"format": "interprune.plan/v1"}'), "json", "plan.json"),
    (lambda p: _npz(p.with_suffix(".npz")), "numpy", "NumPy arrays"),
])
def test_other_files_are_named_with_what_to_do(tmp_path, make, kind, advice):
    path = make(tmp_path / ("w.onnx" if kind == "onnx" else "w.pt"))
    assert identify(path) == kind
    with pytest.raises(ModelError, match=advice) as info:
        zoo.read_state_dict(path)
    assert "pickled code" not in str(info.value)          # the old message for anything torch.load could not read


@pytest.mark.parametrize("head,size,names,kind", [
    (b"", 0, None, "empty"),
    (b"PK\x03\x04" + b"\0" * 20, 500, None, "torch"),                               # unreadable zip: truncated save
    (b"PK\x03\x04", 900, ["w/data.pkl", "w/data/0", "w/version"], "torch"),
    (b"PK\x03\x04", 900, ["m/data.pkl", "m/code/__torch__/x.py", "m/constants.pkl"], "torchscript"),
    (b"PK\x03\x04", 900, ["ep/models/model.json", "ep/archive_format"], "torch.export"),
    (b"\x80\x02\x8a\x0alegacy", 900, None, "torch"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":{}}      ", 64, None, "safetensors"),
    (b"\x08\x09\x12\x07pytorch", 900, None, "onnx"),
    (b"\x89HDF\r\n\x1a\n", 900, None, "hdf5"),
    (b"\x1c\x00\x00\x00TFL3", 900, None, "tflite"),
])
def test_classify_by_content(head, size, names, kind):
    assert classify(head, size, names) == kind


def test_an_implausible_safetensors_header_length_is_not_safetensors():
    assert classify(b"\xff\xff\xff\xff\x00\x00\x00\x00{" + b" " * 20, 64, None) == "unknown"
