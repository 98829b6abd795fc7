"""timm/NAME: built without pretrained weights, described by its pretrained_cfg; timm is an optional extra."""
import sys

import pytest
import torch

from pruning.compress import ModelSpec
from pruning.errors import ModelError, SpecError
from pruning.intake import check_spec, resolve

pytest.importorskip("timm", reason="timm is the optional extra interprune[timm]")


def test_timm_model_is_built_from_its_name_and_described_by_its_cfg(tmp_path):
    import timm

    source = timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()
    torch.save(source.state_dict(), tmp_path / "w.pt")
    resolved = resolve(ModelSpec("timm/test_resnet", weights=str(tmp_path / "w.pt"), num_classes=10))
    entry = resolved.entry
    assert (entry.input_shape, entry.num_classes) == ((3, 160, 160), 10)       # test_resnet's pretrained_cfg
    assert entry.mean == (0.5, 0.5, 0.5) and entry.std == (0.5, 0.5, 0.5)
    assert resolved.source["kwargs"] == {"num_classes": 10}
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(resolved.module(x), source(x))


def test_timm_kwargs_reach_the_model_and_the_spec_shape_wins():
    resolved = resolve(ModelSpec("timm/test_resnet", arch_kwargs={"num_classes": 5, "in_chans": 1},
                                 input_shape=(1, 32, 32)))
    assert resolved.entry.num_classes == 5 and resolved.entry.input_shape == (1, 32, 32)
    assert resolved.entry.mean == (0.5,) and resolved.module(torch.zeros(2, 1, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("spec,error,message", [
    (ModelSpec("timm/resnet_does_not_exist"), ModelError, "has no model 'resnet_does_not_exist'"),
    (ModelSpec("timm/test_resnt"), ModelError, "Did you mean timm/test_resnet"),
    (ModelSpec("timm/test_resnet", arch_kwargs={"pretrained": True}), SpecError, "without pretrained weights"),
    (ModelSpec("timm/"), SpecError, "write timm/NAME"),
])
def test_timm_mistakes_are_explained(spec, error, message):
    with pytest.raises(error, match=message):
        resolve(spec)


def test_without_timm_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)                  # import timm -> ImportError
    assert check_spec(ModelSpec("timm/resnet18")) == "timm"         # submit-time check does not need timm
    with pytest.raises(ModelError, match=r"pip install 'interprune\[timm\]'"):
        resolve(ModelSpec("timm/resnet18"))
