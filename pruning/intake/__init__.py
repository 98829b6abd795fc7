"""Model intake: every way a model enters interprune, behind one function.

``resolve(ModelSpec, allowed_packages=None) -> ResolvedModel`` picks the source by the ``arch`` string:

=====================================  ===========================================================
``cifar/resnet56``, ``torchvision/..``  the zoo (``pruning.intake.zoo``; names in ``list_models()``)
``timm/NAME``                           timm, ``pretrained=False`` (extra: ``interprune[timm]``)
``python:PKG.MODULE:FACTORY``           a team's own factory, with ``arch_kwargs``
``onnx`` + ``model_file``               an ONNX model converted with onnx2torch, checked by ``verify``
=====================================  ===========================================================

The resolved entry's ``source`` is the JSON record a ``PruningPlan`` keeps, from which ``rebuild(plan)``
rebuilds the architecture in a fresh process. Weights files (``read_state_dict``) may be ``torch.save``
state_dicts or safetensors; other files are named for what they are.

Example::

    from pruning.intake import ModelSpec, resolve
    resolved = resolve(ModelSpec("python:acme_models.nets:tiny_resnet", arch_kwargs={"width": 8},
                                 input_shape=(3, 32, 32)), allowed_packages={"acme_models"})
    resolved.entry.num_classes, resolved.source["kind"]      # (10, 'python')
"""
from pruning.intake import onnx_source, python_entry, timm_source, zoo  # noqa: F401  (register the sources)
from pruning.intake.catalog import (IMAGENET_MEAN, IMAGENET_STD, ModelEntry, create_model, get_entry, is_model,
                                    list_models, register_model)
from pruning.intake.resolve import VERIFY_IMAGES, check_spec, rebuild, resolve, verify
from pruning.intake.sources import list_sources
from pruning.intake.spec import ONNX_ARCH, ModelSpec, ResolvedModel
from pruning.intake.weights import load_weights, read_state_dict
from pruning.intake.zoo import load_model

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "ONNX_ARCH", "VERIFY_IMAGES", "ModelEntry", "ModelSpec", "ResolvedModel",
    "check_spec", "create_model", "get_entry", "is_model", "list_models", "list_sources", "load_model", "load_weights",
    "read_state_dict", "rebuild", "register_model", "resolve", "verify",
]
