"""timm models: ``timm/NAME`` (a timm model name, optionally with a pretrained tag: ``timm/resnet18.a1_in1k``).

Built with ``timm.create_model(NAME, pretrained=False, **arch_kwargs)``: nothing is downloaded, the weights come
only from the weights file. The model's ``pretrained_cfg`` gives input size and mean/std. timm is an optional
extra: ``pip install 'interprune[timm]'``.
"""
from __future__ import annotations

import difflib
from typing import Any, Collection, Mapping

import torch.nn as nn

from pruning.errors import ModelError, SpecError
from pruning.intake.describe import describe, read_cfg
from pruning.intake.python_entry import check_kwargs
from pruning.intake.sources import register_source
from pruning.intake.spec import ModelSpec, ResolvedModel
from pruning.intake.weights import load_file_weights

PREFIX = "timm/"
INSTALL = "pip install 'interprune[timm]'"


def import_timm():
    try:
        import timm
    except ImportError:
        raise ModelError(f"timm models need the timm extra, which is not installed here: {INSTALL}") from None
    return timm


def model_name(arch: str) -> str:
    name = arch[len(PREFIX):]
    if not name or "/" in name or ":" in name:
        raise SpecError(f"malformed timm architecture {arch!r}; write timm/NAME, e.g. timm/resnet18")
    return name


def create(arch: str, kwargs: Mapping[str, Any]) -> nn.Module:
    timm = import_timm()
    name = model_name(arch)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3, cutoff=0.8)
        hint = f" Did you mean {', '.join('timm/' + c for c in close)}?" if close else ""
        raise ModelError(f"timm {timm.__version__} has no model {name!r}.{hint}")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - bad kwargs surface as TypeError/ValueError/AssertionError
        raise ModelError(f"timm.create_model({name!r}, **{dict(kwargs)}) failed: {type(exc).__name__}: "
                         f"{exc}") from None


@register_source
class TimmSource:
    kind = "timm"
    prefix = PREFIX

    def check(self, spec: ModelSpec, allowed_packages: Collection[str] | None) -> None:
        model_name(spec.arch)
        check_kwargs(spec.arch_kwargs)
        if spec.model_file:
            raise SpecError("model_file is only read for arch 'onnx'")
        kwargs = spec.arch_kwargs
        if "pretrained" in kwargs or "pretrained_cfg_overlay" in kwargs:
            raise SpecError("timm models are built without pretrained weights; pass the weights file instead")
        if spec.num_classes is not None and kwargs.get("num_classes", spec.num_classes) != spec.num_classes:
            raise SpecError(f"num_classes is {spec.num_classes} but arch_kwargs says {kwargs['num_classes']}")

    def resolve(self, spec: ModelSpec, allowed_packages: Collection[str] | None) -> ResolvedModel:
        self.check(spec, allowed_packages)
        kwargs = check_kwargs(spec.arch_kwargs)
        if spec.num_classes is not None:
            kwargs["num_classes"] = spec.num_classes
        model = load_file_weights(create(spec.arch, kwargs), spec.weights)
        record = {"kind": self.kind, "arch": spec.arch, "kwargs": kwargs, "timm_version": import_timm().__version__}
        builder = lambda n: create(spec.arch, {**kwargs, "num_classes": n})  # noqa: E731
        entry = describe(spec.arch, model, spec.input_shape, spec.num_classes, record, read_cfg(model), builder,
                         description=f"timm {model_name(spec.arch)}")
        return ResolvedModel(model.eval(), entry)

    def rebuild(self, record: Mapping[str, Any], num_classes: int, *, allowed_packages: Collection[str] | None,
                model_file: str | None) -> nn.Module:
        kwargs = {"num_classes": num_classes, **dict(record.get("kwargs", {}))}
        return create(str(record["arch"]), kwargs)
