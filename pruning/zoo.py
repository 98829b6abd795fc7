"""Architecture registry and safe weight loading (kept for existing imports; the code lives in ``pruning.intake``).

``register_model`` / ``list_models`` / ``is_model`` / ``get_entry`` / ``create_model``: ``pruning.intake.catalog``;
the registered families: ``pruning.intake.zoo``; ``read_state_dict`` / ``load_weights``:
``pruning.intake.weights``. Models from timm, a team's own package or an ONNX file: ``pruning.intake.resolve``.
"""
from pruning.intake.catalog import (IMAGENET_MEAN, IMAGENET_STD, ModelEntry, create_model, get_entry, is_model,
                                    list_models, register_model)
from pruning.intake.weights import load_weights, read_state_dict
from pruning.intake.zoo import load_model

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ModelEntry", "create_model", "get_entry", "is_model", "list_models",
           "load_model", "load_weights", "read_state_dict", "register_model"]
