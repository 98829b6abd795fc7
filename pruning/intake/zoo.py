"""The zoo: named architectures interprune knows (CIFAR ResNets and VGG, the demo CNN, torchvision), and the
source that serves them.

Read top-down: CIFAR ResNets -> CIFAR VGG -> demo -> torchvision -> loading -> the source. A new family is a
model file under ``pruning/models`` and a few ``register_model`` calls here.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

import torch.nn as nn

from pruning.errors import SpecError
from pruning.intake.catalog import ModelEntry, create_model, get_entry, register_model
from pruning.intake.sources import register_source
from pruning.intake.spec import ModelSpec, ResolvedModel
from pruning.intake.weights import load_file_weights
from pruning.models.cifar_resnet import BasicBlock as CifarBasicBlock
from pruning.models.cifar_resnet import cifar_resnet
from pruning.models.cifar_vgg import cifar_vgg16_bn
from pruning.models.pooling import ExportableAdaptiveAvgPool2d
from pruning.models.small import SmallCNN

# --- CIFAR ResNets (option A) -----------------------------------------------------------------


def _cifar_residual_layers(model: nn.Module) -> list[str]:
    """Option-A shortcuts tie the residual channels of a stage (with zero-padded offsets between stages);
    only the block-internal channels (conv1/bn1 outputs) are pruned on their own."""
    names = ["conv1"]
    names += [f"{name}.conv2" for name, module in model.named_modules() if isinstance(module, CifarBasicBlock)]
    return names


def _cifar_removable_blocks(model: nn.Module) -> list[str]:
    return [
        name for name, module in model.named_modules()
        if isinstance(module, CifarBasicBlock) and module.shortcut.stride == 1 and module.shortcut.pad == 0
    ]


for _depth in (20, 32, 44, 56, 110):
    register_model(ModelEntry(
        name=f"cifar/resnet{_depth}",
        builder=lambda num_classes, depth=_depth: cifar_resnet(depth, num_classes),
        input_shape=(3, 32, 32),
        num_classes=10,
        protected=_cifar_residual_layers,
        removable_blocks=_cifar_removable_blocks,
        description=f"CIFAR ResNet-{_depth}, option-A shortcuts (He et al. 2015)",
    ))

# --- CIFAR VGG ------------------------------------------------------------------------------------

register_model(ModelEntry(
    name="cifar/vgg16_bn",
    builder=cifar_vgg16_bn,
    input_shape=(3, 32, 32),
    num_classes=10,                      # mean/std: the zoo's default (ImageNet's), as for the CIFAR ResNets
    description="CIFAR VGG-16 with BN, 13 conv + 512-512-classes (Li et al. 2017)",
))

# --- the demo network --------------------------------------------------------------------------


def _small_removable(model: nn.Module) -> list[str]:
    return ["features.1", "features.2"]


register_model(ModelEntry(
    name="demo/small_cnn",
    builder=lambda num_classes: SmallCNN(num_classes, in_channels=1),
    input_shape=(1, 8, 8),
    num_classes=10,
    mean=(0.5,),
    std=(0.5,),
    removable_blocks=_small_removable,
    description="small plain CNN for 8x8 greyscale digits (bundled demo)",
))

# --- torchvision --------------------------------------------------------------------------------


def _torchvision_builder(fn_name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision.models as tvm

        model = getattr(tvm, fn_name)(weights=None, num_classes=num_classes)
        if fn_name.startswith("vgg"):
            # VGG pools to 7x7: same numbers, but exportable to ONNX at any input size (pooling.py)
            model.avgpool = ExportableAdaptiveAvgPool2d(model.avgpool.output_size)
        return model
    return build


def _torchvision_resnet_blocks(model: nn.Module) -> list[str]:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return [
        name for name, module in model.named_modules()
        if isinstance(module, (BasicBlock, Bottleneck)) and module.downsample is None
    ]


for _fn in ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "vgg11_bn", "vgg16_bn",
            "efficientnet_b0", "regnet_x_400mf", "shufflenet_v2_x1_0", "densenet121"):
    register_model(ModelEntry(
        name=f"torchvision/{_fn}",
        builder=_torchvision_builder(_fn),
        input_shape=(3, 224, 224),
        num_classes=1000,
        removable_blocks=_torchvision_resnet_blocks if _fn.startswith("resnet") else (lambda model: []),
        description=f"torchvision.models.{_fn} (no pretrained weights are downloaded; pass --weights)",
    ))

# --- loading ------------------------------------------------------------------------------------


def load_model(name: str, weights: str | Path | None = None, num_classes: int | None = None) -> nn.Module:
    """Build ``name`` and load ``weights`` (if given) safely; the model is returned in eval mode."""
    return load_file_weights(create_model(name, num_classes), weights).eval()


@register_source
class ZooSource:
    kind = "zoo"
    prefix = ""

    def check(self, spec: ModelSpec, allowed_packages: Collection[str] | None) -> None:
        entry = get_entry(spec.arch)
        if spec.arch_kwargs:
            raise SpecError(f"{spec.arch} is a zoo name and takes no arch_kwargs")
        if spec.model_file:
            raise SpecError("model_file is only read for arch 'onnx'")
        if spec.input_shape is not None and spec.input_shape[0] != entry.input_shape[0]:
            raise SpecError(f"{spec.arch} takes {entry.input_shape[0]}-channel images, not {spec.input_shape[0]}")

    def resolve(self, spec: ModelSpec, allowed_packages: Collection[str] | None) -> ResolvedModel:
        self.check(spec, allowed_packages)
        entry = get_entry(spec.arch)
        num_classes = spec.num_classes or entry.num_classes
        model = load_model(spec.arch, spec.weights, num_classes)
        record = {"kind": self.kind, "arch": spec.arch, "num_classes": num_classes}
        entry = replace(entry, num_classes=num_classes, input_shape=spec.input_shape or entry.input_shape,
                        source=record)
        return ResolvedModel(model, entry)

    def rebuild(self, record: Mapping[str, Any], num_classes: int, *, allowed_packages: Collection[str] | None,
                model_file: str | None) -> nn.Module:
        return create_model(str(record["arch"]), num_classes)
