"""Models from a team's own package: python:PACKAGE.MODULE:FACTORY, the allow-list, reload in a fresh process."""
import pytest
import torch

from pruning.compress import ModelSpec
from pruning.errors import ModelError, SpecError
from pruning.intake import check_spec, resolve
from tests.intake_helpers import acme, acme_version  # noqa: F401  (fixture)

TINY = "python:acme_models.nets:tiny_resnet"
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)


def test_factory_gets_kwargs_and_num_classes_and_its_pretrained_cfg_is_read(acme):
    resolved = resolve(ModelSpec(TINY, num_classes=7, arch_kwargs={"width": 8}), allowed_packages={"acme_models"})
    assert resolved.module.stem[0].out_channels == 8 and resolved.module.fc.out_features == 7
    entry = resolved.entry
    assert (entry.input_shape, entry.num_classes, entry.mean) == ((3, 32, 32), 7, CIFAR_MEAN)
    assert resolved.source == {"kind": "python", "arch": TINY, "kwargs": {"width": 8, "num_classes": 7},
                               "package_version": acme_version()}
    assert not resolved.module.training


def test_the_spec_input_shape_wins_and_defaults_apply_without_a_cfg(acme):
    entry = resolve(ModelSpec(TINY, input_shape=(3, 16, 24))).entry
    assert entry.input_shape == (3, 16, 24)
    plain = resolve(ModelSpec("python:acme_models.nets:ten_class_net")).entry
    assert plain.num_classes == 10                              # counted from the output, not declared
    assert (plain.input_shape, plain.mean) == ((3, 224, 224), (0.485, 0.456, 0.406))


def test_weights_file_is_loaded_into_the_factory_model(acme, tmp_path):
    from acme_models.nets import tiny_resnet

    source = tiny_resnet(width=8).eval()
    torch.save(source.state_dict(), tmp_path / "w.pt")
    model = resolve(ModelSpec(TINY, weights=str(tmp_path / "w.pt"), arch_kwargs={"width": 8})).module
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), source(x))


def test_a_package_the_server_did_not_allow_is_refused_before_import():
    spec = ModelSpec("python:not_installed_anywhere.nets:build")
    with pytest.raises(ModelError, match="--allow-model-package not_installed_anywhere"):
        resolve(spec, allowed_packages={"acme_models"})         # the allow-list speaks first, not the ImportError
    with pytest.raises(ModelError, match=r"allowed: none"):
        check_spec(spec, allowed_packages=set())
    assert check_spec(spec, allowed_packages=None) == "python"    # syntax only: nothing is imported


@pytest.mark.parametrize("arch", ["python:acme_models", "python:acme_models.nets:", "python:acme-models.nets:f",
                                  "python:acme_models.nets:__init__", "python:.nets:f"])
def test_malformed_entry_points_show_the_form(arch):
    with pytest.raises(SpecError, match="python:PACKAGE.MODULE:FACTORY"):
        check_spec(ModelSpec(arch))


@pytest.mark.parametrize("arch,kwargs,num_classes,error,message", [
    ("python:acme_models.missing:f", {}, None, ModelError, "cannot import acme_models.missing"),
    ("python:acme_models.nets:nothing_here", {}, None, ModelError, "has no callable 'nothing_here'"),
    ("python:acme_models.nets:not_a_model", {}, None, ModelError, "returned a dict, not a torch.nn.Module"),
    ("python:acme_models.nets:ten_class_net", {}, 5, SpecError, "takes no num_classes"),
    (TINY, {"depth": 3}, None, ModelError, "unexpected keyword argument 'depth'"),
    (TINY, {"width": 8, "num_classes": 3}, 5, SpecError, "give it once"),
    (TINY, {"width": object()}, None, SpecError, "must be JSON"),
])
def test_factory_failures_are_explained(acme, arch, kwargs, num_classes, error, message):
    with pytest.raises(error, match=message):
        resolve(ModelSpec(arch, num_classes=num_classes, arch_kwargs=kwargs))
