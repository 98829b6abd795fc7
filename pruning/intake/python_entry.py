"""Models from a team's own package: ``python:PACKAGE.MODULE:FACTORY`` plus JSON-able keyword arguments.

The factory is imported and called (``FACTORY(**arch_kwargs, num_classes=...)``) and must return an
``nn.Module`` that outputs logits [N, classes]. Input shape and mean/std come from the spec, else the model's
(or factory's) ``pretrained_cfg`` dict (timm's convention), else 3x224x224 and ImageNet's (``describe``).

Importing runs the package's code, so a server names the packages it trusts: ``allowed_packages`` holds
top-level package names (``interprune serve --allow-model-package acme_models``); ``None`` (the CLI, in the
user's own process) allows anything importable. The check happens before anything is imported.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import logging
import re
import sys
import types
from typing import Any, Callable, Collection, Mapping

import torch.nn as nn

from pruning.errors import ModelError, SpecError
from pruning.intake.describe import describe, read_cfg
from pruning.intake.sources import register_source
from pruning.intake.spec import ModelSpec, ResolvedModel
from pruning.intake.weights import load_file_weights

log = logging.getLogger(__name__)

PREFIX = "python:"
_ENTRY_POINT = re.compile(r"^python:([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*)\Z")


def parse_entry_point(arch: str) -> tuple[str, str]:
    """``python:PKG.MOD:FACTORY`` -> ("PKG.MOD", "FACTORY")."""
    match = _ENTRY_POINT.match(arch)
    if not match or match.group(2).startswith("__"):
        raise SpecError(f"malformed model entry point {arch!r}; write python:PACKAGE.MODULE:FACTORY, e.g. "
                        "python:acme_models.nets:tiny_resnet")
    return match.group(1), match.group(2)


# Callables that read or run something other than a model definition (a pickle, a URL): never a factory, even in
# the user's own process, where a spec from elsewhere (a reproduce script, CI) should not be able to run them.
LOADERS = frozenset({"load", "loads", "load_state_dict_from_url", "load_url", "urlopen", "system", "exec", "eval"})


def check_allowed(module: str, allowed_packages: Collection[str] | None, factory: str | None = None) -> None:
    """Refuse a module whose top-level package the operator did not allow (None = all allowed), any module of
    Python's standard library, and a factory named like a loader (``LOADERS``): checked before anything is
    imported."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names:
        raise ModelError(f"python:{module}:... names Python's standard library, not a model factory; give the "
                         "function or class in your own package that builds the nn.Module")
    if factory in LOADERS:
        raise ModelError(f"python:{module}:{factory} reads or runs something other than a model definition; give "
                         "the function or class that builds the nn.Module (weights go in --weights)")
    if allowed_packages is not None and top not in allowed_packages:
        allowed = ", ".join(sorted(allowed_packages)) or "none"
        raise ModelError(f"model package {top!r} is not allowed on this server (allowed: {allowed}); the operator "
                         f"starts the server with --allow-model-package {top} to allow it")


def check_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` as a plain dict, refused unless JSON can carry it (it is recorded in the plan)."""
    try:
        json.dumps(dict(kwargs), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"arch_kwargs must be JSON (strings, numbers, booleans, lists, objects): {exc}") from None
    return dict(kwargs)


def call_kwargs(factory: Callable, arch: str, kwargs: Mapping[str, Any], num_classes: int | None) -> dict:
    """The keyword arguments of the factory call: ``kwargs`` plus ``num_classes`` when asked for."""
    kwargs = dict(kwargs)
    if num_classes is None:
        return kwargs
    if "num_classes" in kwargs and kwargs["num_classes"] != num_classes:
        raise SpecError(f"num_classes is {num_classes} but arch_kwargs says {kwargs['num_classes']}; give it once")
    try:
        params = inspect.signature(factory).parameters.values()
        accepts = any(p.name == "num_classes" or p.kind is p.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):     # no signature to read (a builtin, a C extension): just pass it
        accepts = True
    if not accepts:
        raise SpecError(f"{arch} takes no num_classes argument; leave num_classes unset (the class count is what "
                        "the model outputs) or pass the factory's own argument in arch_kwargs")
    kwargs["num_classes"] = num_classes
    return kwargs


def import_factory(arch: str, allowed_packages: Collection[str] | None) -> Callable:
    module_name, factory_name = parse_entry_point(arch)
    check_allowed(module_name, allowed_packages, factory_name)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name} for {arch} ({exc}); install the package where interprune "
                         "runs (pip install it, or put its folder on PYTHONPATH)") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ModelError(f"{module_name} has no callable {factory_name!r}")
    if isinstance(factory, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        raise ModelError(f"{arch} is a built-in function, not a model factory; give the Python function or "
                         "nn.Module class that builds the model")
    return factory


def call_factory(factory: Callable, arch: str, kwargs: Mapping[str, Any]) -> nn.Module:
    try:
        model = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the factory is the user's code: any failure is reported as theirs
        raise ModelError(f"{arch}(**{dict(kwargs)}) failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{arch} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def package_version(module: str) -> str | None:
    try:
        return importlib.metadata.version(module.split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return None                     # on PYTHONPATH but not installed


@register_source
class PythonSource:
    kind = "python"
    prefix = PREFIX

    def check(self, spec: ModelSpec, allowed_packages: Collection[str] | None) -> None:
        module, factory = parse_entry_point(spec.arch)
        check_allowed(module, allowed_packages, factory)
        check_kwargs(spec.arch_kwargs)
        if spec.model_file:
            raise SpecError("model_file is only read for arch 'onnx'")

    def resolve(self, spec: ModelSpec, allowed_packages: Collection[str] | None) -> ResolvedModel:
        self.check(spec, allowed_packages)
        factory = import_factory(spec.arch, allowed_packages)
        kwargs = call_kwargs(factory, spec.arch, check_kwargs(spec.arch_kwargs), spec.num_classes)
        model = load_file_weights(call_factory(factory, spec.arch, kwargs), spec.weights)
        module_name = parse_entry_point(spec.arch)[0]
        record = {"kind": self.kind, "arch": spec.arch, "kwargs": kwargs,
                  "package_version": package_version(module_name)}
        builder = lambda n: call_factory(factory, spec.arch, call_kwargs(factory, spec.arch, kwargs, n))  # noqa: E731
        entry = describe(spec.arch, model, spec.input_shape, spec.num_classes, record, read_cfg(model, factory),
                         builder, description=f"{spec.arch} with {kwargs}")
        return ResolvedModel(model.eval(), entry)

    def rebuild(self, record: Mapping[str, Any], num_classes: int, *, allowed_packages: Collection[str] | None,
                model_file: str | None) -> nn.Module:
        arch = str(record["arch"])
        factory = import_factory(arch, allowed_packages)
        version, recorded = package_version(parse_entry_point(arch)[0]), record.get("package_version")
        if recorded and version != recorded:
            log.warning("%s: the plan was made with version %s of its package, this is %s", arch, recorded, version)
        return call_factory(factory, arch, dict(record.get("kwargs", {})))
