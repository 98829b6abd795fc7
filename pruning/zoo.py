"""Architecture registry and safe weight loading.

A registry is a dict and a decorator: ``@register_model("cifar/resnet56")`` adds a builder, ``list_models()``
and ``is_model()`` let the CLI and the service validate names, ``create_model(name, num_classes)`` builds one.
Each entry also says what input it expects, which layers' output channels must not be pruned and which
blocks layer pruning may remove.

Weights load with ``torch.load(weights_only=True)`` and nothing else: a checkpoint that needs pickled code is
refused, with the offending global named.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from pruning.errors import ModelError
from pruning.models.cifar_resnet import BasicBlock as CifarBasicBlock
from pruning.models.cifar_resnet import cifar_resnet
from pruning.models.small import SmallCNN

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelEntry:
    """What the engine needs to know about an architecture besides its modules."""

    name: str
    builder: Callable[[int], nn.Module]
    input_shape: tuple[int, int, int]             # C, H, W the weights were trained with
    num_classes: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    # Module names whose *output* channels stay whole (besides the classifier, which always does).
    protected: Callable[[nn.Module], list[str]] = field(default=lambda model: [])
    # Blocks that map a tensor to one of the same shape and may be replaced by the identity.
    removable_blocks: Callable[[nn.Module], list[str]] = field(default=lambda model: [])
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def is_model(name: str) -> bool:
    return name in _REGISTRY


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = [n for n in _REGISTRY if name.split("/")[-1] in n]
        hint = f" Did you mean {', '.join(close[:3])}?" if close else ""
        raise ModelError(f"unknown architecture {name!r}.{hint} Known: {', '.join(list_models())}") from None


def create_model(name: str, num_classes: int | None = None) -> nn.Module:
    entry = get_entry(name)
    return entry.builder(num_classes or entry.num_classes)


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

        return getattr(tvm, fn_name)(weights=None, num_classes=num_classes)
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


# --- weights ------------------------------------------------------------------------------------

_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors with ``weights_only=True``.

    Accepts a plain state_dict or a dict holding one under ``state_dict`` / ``model`` / ``model_state_dict``;
    strips a ``module.`` (DataParallel) prefix. Raises ``ModelError`` with a reason a person can act on.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSAFE_GLOBAL.search(str(exc))
        what = f" (it references {found.group(1)})" if found else ""
        raise ModelError(
            f"refusing {path.name}: the checkpoint needs pickled code to load{what}. Save only tensors: "
            "torch.save(model.state_dict(), path)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelError(f"cannot read weights file {path.name}: it is truncated or not a PyTorch checkpoint "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    return _unwrap_state_dict(obj, path.name)


def _unwrap_state_dict(obj: object, label: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{label} holds no state_dict of tensors (expected a dict of name -> tensor)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], label: str = "weights") -> None:
    """Copy ``state_dict`` into ``model``; only BatchNorm's ``num_batches_tracked`` may be missing."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} with other shapes (e.g. {'; '.join(wrong[:2])})")
        raise ModelError(f"{label} do not fit this architecture: " + ", ".join(parts)
                         + ". Check --arch and --num-classes.")
    model.load_state_dict(state_dict, strict=False)


def load_model(name: str, weights: str | Path | None = None, num_classes: int | None = None) -> nn.Module:
    """Build ``name`` and load ``weights`` (if given) safely; the model is returned in eval mode."""
    model = create_model(name, num_classes)
    if weights is not None:
        load_weights(model, read_state_dict(weights), label=f"weights {Path(weights).name}")
    return model.eval()
