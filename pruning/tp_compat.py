"""Guards around Torch-Pruning's dependency graph (1.6): its failures become ours, named.

Torch-Pruning infers how channel indices travel through ``cat``/``split``/``view``/``slice`` by guessing channel
counts; on some graphs the guess divides by zero (ShuffleNet's channel shuffle: ``view`` to 5-D, ``transpose``,
``view`` back) and ``build_dependency`` dies with a bare ``ZeroDivisionError``. ``install()`` (run on import) wraps
each index-mapping updater so that such a failure leaves that op unmapped (identity) and marks its node with the
reason; ``pruning.coupling`` then checks every group by tracing channels through the real forward pass, so a
group whose channels an unmapped op moves is excluded instead of pruned wrongly.

``build_graph`` also records the shapes around every ``view`` / ``reshape`` / ``flatten`` while the graph is
traced: one that moves channels anywhere but into a flatten (``[N, C, H, W] -> [N, C*H*W]``) or back is
*blocked* (no index crosses it), instead of letting Torch-Pruning guess a stride — its guesses there are wrong
and, on ShuffleNet, build index lists of millions of entries. The coupling check then sees the channels that
still travel through it and leaves such a group whole. A group search that does not converge (more than
``MAX_GROUP_DEPS`` steps: ReXNet's in-place add into a channel slice) raises ``GroupTooLarge``; that group
stays whole. Anything else Torch-Pruning raises becomes
``UnsupportedModel``.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch_pruning as tp
from torch.overrides import TorchFunctionMode
from torch_pruning.dependency import graph as tp_graph
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.group import Group

from pruning.errors import UnsupportedModel

UNMAPPED = "_interprune_unmapped"     # attribute set on a graph op whose index mapping failed: the reason
_UPDATERS = ("update_concat_index_mapping", "update_split_index_mapping", "update_reshape_index_mapping",
             "update_unbind_index_mapping", "update_expand_index_mapping", "update_slice_index_mapping")


BLOCKED = "_interprune_blocked"        # attribute of a DependencyGraph: autograd nodes of channel-moving reshapes
_RESHAPES = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.flatten, torch.Tensor.flatten,
             torch.Tensor.unflatten, torch.Tensor.view_as, torch.Tensor.reshape_as}


def _drop(idxs):
    return []


def _block(node) -> None:
    """No index crosses ``node`` in either direction."""
    for dep in node.dependencies:
        dep.index_mapping[0] = _drop
    for neighbour in list(node.inputs) + list(node.outputs):
        for dep in neighbour.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = _drop


def _soft(update):
    @functools.wraps(update)
    def guarded(graph, node, *args, **kwargs):
        if node.grad_fn is not None and node.grad_fn in getattr(graph, BLOCKED, ()):
            return _block(node)
        try:
            return update(graph, node, *args, **kwargs)
        except (ZeroDivisionError, IndexError, KeyError, TypeError, ValueError, AttributeError) as exc:
            setattr(node.module, UNMAPPED, f"{type(exc).__name__}: {exc}")
            return None
    guarded.interprune_soft = True
    return guarded


MAX_GROUP_DEPS = 2000      # a group with more dependencies than this is a runaway search, not a coupling


class GroupTooLarge(RuntimeError):
    """Torch-Pruning's dependency search for one group did not converge (ReXNet's in-place add into a channel
    slice sends it round a cycle with ever new indices)."""


class _BoundedGroup(Group):
    def add_dep(self, dep, idxs):
        if len(self._group) >= MAX_GROUP_DEPS:
            raise GroupTooLarge(f"the dependency search passed {MAX_GROUP_DEPS} steps without converging")
        super().add_dep(dep, idxs)


def install() -> None:
    """Wrap Torch-Pruning's index-mapping updaters and bound its group search (idempotent)."""
    for name in _UPDATERS:
        update = getattr(index_mapping, name, None)
        if update is not None and not getattr(update, "interprune_soft", False):
            setattr(index_mapping, name, _soft(update))
    tp_graph.Group = _BoundedGroup


install()


def moves_channels(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """Does a reshape from ``before`` to ``after`` move channels other than by flattening / unflattening them?"""
    if len(before) < 2 or len(after) < 2 or before[0] != after[0]:
        return True
    if before[1] == after[1]:
        return False                                  # channel axis kept ([N, C, H, W] <-> [N, C, H*W], ...)
    flat = len(after) == 2 and after[1] == _prod(before[1:])
    unflat = len(before) == 2 and before[1] == _prod(after[1:]) and after[1] == before[1]
    return not (flat or unflat)


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


class _ReshapeRecorder(TorchFunctionMode):
    """Adds the autograd node of every channel-moving reshape to ``blocked``."""

    def __init__(self, blocked: set) -> None:
        super().__init__()
        self.blocked = blocked

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func in _RESHAPES and isinstance(result, torch.Tensor) and result.grad_fn is not None \
                and isinstance(args[0], torch.Tensor) and moves_channels(tuple(args[0].shape), tuple(result.shape)):
            self.blocked.add(result.grad_fn)
        return result


def build_graph(model: nn.Module, input_shape: tuple[int, int, int]) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` traced at batch 1; ``UnsupportedModel`` if it cannot be built."""
    graph = tp.DependencyGraph()
    setattr(graph, BLOCKED, set())
    try:
        with _ReshapeRecorder(getattr(graph, BLOCKED)):
            return graph.build_dependency(model, example_inputs=torch.zeros(1, *input_shape))
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError, ZeroDivisionError,
            AssertionError, NotImplementedError) as exc:
        raise UnsupportedModel(f"cannot trace the channel dependencies of {type(model).__name__} at input "
                               f"{tuple(input_shape)}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc


def op_label(module: nn.Module) -> str:
    """A short label for a graph op: its autograd function for element-wise ops, else its class name."""
    grad_fn = getattr(module, "_grad_fn", None)
    return str(grad_fn) if grad_fn is not None else type(module).__name__
