"""The intake registry: which source serves an arch string, the public surface, the direction of imports."""
import ast
from dataclasses import asdict
from pathlib import Path

import pytest

import pruning.intake as intake
import pruning.zoo as zoo
from pruning.compress import ModelSpec
from pruning.errors import ModelError, SpecError
from pruning.intake.sources import source_for

INTAKE = Path(intake.__file__).parent


@pytest.mark.parametrize("arch,kind", [
    ("cifar/resnet56", "zoo"), ("torchvision/vgg16_bn", "zoo"), ("made/up", "zoo"), ("timm/resnet18", "timm"),
    ("python:acme_models.nets:tiny_resnet", "python"), ("onnx", "onnx"),
])
def test_the_longest_prefix_picks_the_source(arch, kind):
    assert source_for(arch).kind == kind


def test_public_surfaces_are_pinned():
    assert set(zoo.__all__) == {"IMAGENET_MEAN", "IMAGENET_STD", "ModelEntry", "create_model", "get_entry", "is_model",
                                "list_models", "load_model", "load_weights", "read_state_dict", "register_model"}
    assert set(intake.__all__) == set(zoo.__all__) | {"ONNX_ARCH", "VERIFY_IMAGES", "ModelSpec", "ResolvedModel",
                                                      "check_spec", "list_sources", "rebuild", "resolve", "verify"}
    assert intake.list_sources() == ["onnx", "python", "timm", "zoo"]
    assert "cifar/vgg16_bn" in zoo.list_models() and len(zoo.list_models()) == len(set(zoo.list_models())) >= 18


def test_zoo_models_resolve_with_their_source_record():
    resolved = intake.resolve(ModelSpec("cifar/resnet20", num_classes=4, input_shape=(3, 40, 40)))
    assert resolved.source == {"kind": "zoo", "arch": "cifar/resnet20", "num_classes": 4}
    assert resolved.entry.input_shape == (3, 40, 40) and resolved.entry.num_classes == 4
    assert resolved.module.linear.out_features == 4 and resolved.reference is None


@pytest.mark.parametrize("spec,error,message", [
    (ModelSpec("cifar/resnet20", arch_kwargs={"width": 2}), SpecError, "takes no arch_kwargs"),
    (ModelSpec("cifar/resnet20", input_shape=(1, 32, 32)), SpecError, "takes 3-channel images"),
    (ModelSpec("cifar/resnet20", model_file="m.onnx"), SpecError, "only read for arch 'onnx'"),
    (ModelSpec("resnet56"), ModelError, "Did you mean cifar/resnet56.*timm/NAME, python:PACKAGE.MODULE:FACTORY"),
])
def test_zoo_spec_mistakes_are_explained(spec, error, message):
    with pytest.raises(error, match=message):
        intake.check_spec(spec)


def test_model_spec_survives_a_json_round_trip():
    spec = ModelSpec("python:acme_models.nets:tiny_resnet", None, 10, {"width": 8}, (3, 32, 32))
    data = asdict(spec)
    data["input_shape"] = list(data["input_shape"])                    # what json.loads gives back
    assert ModelSpec(**data) == spec and ModelSpec(**data).input_shape == (3, 32, 32)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_intake_imports_point_down_only():
    """intake builds models; surgery, the pipeline, criteria, exporters and the service sit above it."""
    above = ("pruning.surgery", "pruning.compress", "pruning.criteria", "pruning.allocate", "pruning.reconstruct",
             "exporters", "service")
    for path in INTAKE.glob("*.py"):
        upward = {name for name in _imports(path) if name.startswith(above)}
        assert not upward, f"{path.name} imports {upward}"
