"""The registry of model sources: a dict of kind -> source, and the rule that picks one for an ``arch`` string.

A source turns a ``ModelSpec`` into a ``ResolvedModel`` and, from the JSON record it leaves in a plan, rebuilds
the same (unpruned) architecture. Each lives in its own module and registers itself with ``@register_source``:

- ``zoo``: the names of ``pruning.intake.catalog`` (prefix ""; the fallback),
- ``timm``: ``timm/NAME`` (the optional ``interprune[timm]`` extra),
- ``python``: ``python:PACKAGE.MODULE:FACTORY`` (a factory in an installed package),
- ``onnx``: ``onnx`` with ``ModelSpec.model_file`` (converted with onnx2torch).

The longest matching prefix wins, so registration order does not matter.
"""
from __future__ import annotations

from typing import Any, Collection, Mapping, Protocol

import torch.nn as nn

from pruning.intake.spec import ModelSpec, ResolvedModel


class Source(Protocol):
    kind: str
    prefix: str                             # arch strings starting with this belong to the source

    def check(self, spec: ModelSpec, allowed_packages: Collection[str] | None) -> None:
        """Cheap validation (syntax, policy, files exist); imports nothing the user named."""

    def resolve(self, spec: ModelSpec, allowed_packages: Collection[str] | None) -> ResolvedModel:
        """Build the model, load its weights, describe it."""

    def rebuild(self, record: Mapping[str, Any], num_classes: int, *, allowed_packages: Collection[str] | None,
                model_file: str | None) -> nn.Module:
        """The unpruned architecture described by ``record`` (a plan's ``source``), before any weights file."""


_SOURCES: dict[str, Source] = {}


def register_source(cls: type) -> type:
    source = cls()
    if source.kind in _SOURCES:
        raise ValueError(f"model source {source.kind!r} is registered twice")
    _SOURCES[source.kind] = source
    return cls


def list_sources() -> list[str]:
    return sorted(_SOURCES)


def get_source(kind: str) -> Source:
    from pruning.errors import ModelError

    try:
        return _SOURCES[kind]
    except KeyError:
        raise ModelError(f"unknown model source {kind!r} (known: {', '.join(list_sources())}); the plan was "
                         "written by a newer interprune") from None


def source_for(arch: str) -> Source:
    """The source whose prefix is the longest one ``arch`` starts with."""
    matching = [s for s in _SOURCES.values() if arch.startswith(s.prefix)]
    return max(matching, key=lambda s: len(s.prefix))
