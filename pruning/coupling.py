"""Which channels move together, checked: Torch-Pruning's groups, each verified on the real forward pass.

Torch-Pruning couples channels through residual adds, concatenations, splits and flattens by *inferring* index
mappings; a wrong guess (a channel shuffle, a reshape it does not understand, a reduction over channels) gives a
model that runs, exports and is silently wrong. So every candidate group is checked by tracing:

1. every Conv2d / Linear outputs zeros, except that the group's root writes NaN into a random third of its channels
   (depthwise convs and normalisation layers pass NaN through channel by channel);
2. the NaN then travels only through parameter-free ops (adds, concatenations, reshapes, pooling, gates);
3. the input channels where each Conv2d / Linear sees NaN must be exactly those the group's mapping says it reads.

Several groups are traced in one batch (sample b probes group b). A mismatch excludes the group, with the reason.

Grouped convolutions (and GroupNorm) add a constraint: a group's channels split into ``interleave`` equal blocks
and a removal takes the same offset in every block, so each conv group keeps the same width (Torch-Pruning's
convention for grouped layers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from pruning.tp_compat import UNMAPPED, op_label

WIDTH_MODULES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm)
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
WRONG_MAPPING = "channels moved by an op the dependency graph does not follow (channel shuffle, reshape, reduction)"
GROUPED = "grouped layer cannot shrink uniformly"
_INVALID = "<invalid>"      # key in a trace's record: producers the mapping gave channels beyond their width
_MOVERS = (ops._ReshapeOp, ops._SliceOp, ops._UnbindOp, ops._ExpandOp, ops._SplitOp)


@dataclass
class Candidate:
    """A Torch-Pruning group as plain data: per (module, side) member, the member channels of each root channel."""

    root: str
    size: int
    members: list[tuple[str, str]]
    channel_map: list[tuple[tuple[int, ...], ...]]     # per member, per root channel: the member's channel indices
    consumers: list[str]
    ops: list[str] = field(default_factory=list)      # ops that move channel indices (reshape, slice, split, ...)
    unmapped: list[str] = field(default_factory=list)  # ops whose index mapping Torch-Pruning failed to build

    def expected_inputs(self, module: str, channels: list[int]) -> set[int] | None:
        """Input channels of ``module`` fed by root ``channels``, per the mapping (None: not a reader)."""
        for (name, side), per_root in zip(self.members, self.channel_map):
            if name == module and side == "in":
                return {c for k in channels for c in per_root[k]}
        return None


def is_tp_depthwise(module: nn.Module) -> bool:
    """Torch-Pruning's depthwise conv: one filter per output channel (``groups == out_channels``)."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.out_channels


def describe(group: tp.Group, graph: tp.DependencyGraph, model: nn.Module, names: dict[nn.Module, str]) -> Candidate:
    """The group as a ``Candidate`` (members limited to conv / linear / norm layers)."""
    root = group[0].dep.target.module
    size = len(group[0].idxs)
    maps: dict[tuple[str, str], dict[int, list[int]]] = {}
    movers, unmapped = [], []
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, WIDTH_MODULES) or module not in names:
            if getattr(module, UNMAPPED, None):
                unmapped.append(f"{op_label(module)} ({getattr(module, UNMAPPED)})")
            if isinstance(module, _MOVERS) or any(k in op_label(module) for k in ("Transpose", "Permute")):
                movers.append(op_label(module))
            continue
        side = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
        per_root = maps.setdefault((names[module], side), {})
        for idx, root_idx in zip(item.idxs, item.root_idxs):
            if idx not in per_root.setdefault(root_idx, []):
                per_root[root_idx].append(idx)
    members = list(maps)
    channel_map = [tuple(tuple(sorted(maps[m].get(k, []))) for k in range(size)) for m in members]
    consumers = [n for n, side in members if side == "in"
                 and isinstance(model.get_submodule(n), (nn.Conv2d, nn.Linear))
                 and not is_tp_depthwise(model.get_submodule(n))]
    return Candidate(names[root], size, members, channel_map, consumers, sorted(set(movers)), unmapped)


def interleave(model: nn.Module, cand: Candidate) -> tuple[int, str | None]:
    """(blocks, None) for a group whose grouped members allow uniform removal, else (0, why not)."""
    need = 1
    for (name, side), per_root in zip(cand.members, cand.channel_map):
        module = model.get_submodule(name)
        groups = 1
        if isinstance(module, nn.Conv2d) and module.groups > 1 and not (
                is_tp_depthwise(module) and module.in_channels == module.out_channels):
            groups = module.groups
        elif isinstance(module, nn.GroupNorm) and module.num_groups > 1:
            groups = module.num_groups
        if groups == 1:
            continue
        width = (module.in_channels if side == "in" else module.out_channels) if isinstance(module, nn.Conv2d) \
            else module.num_channels
        identity = width == cand.size and all(v == (k,) for k, v in enumerate(per_root))
        if not identity:
            return 0, (f"{GROUPED}: {name} ({type(module).__name__}, {groups} groups) takes these channels "
                       "through a concatenation or reshape")
        need = need * groups // math.gcd(need, groups)
    if cand.size % need:
        return 0, f"{GROUPED}: {cand.size} channels do not split into the {need} blocks its grouped layers need"
    if need == cand.size:
        return 0, f"{GROUPED}: one channel per group (a channel multiplier); channels go only in whole groups"
    return need, None


def output_layers(model: nn.Module, graph: tp.DependencyGraph) -> list[str]:
    """Conv / linear layers whose output reaches the model output through parameter-free ops (and norms)."""
    names = {module: name for name, module in model.named_modules()}
    found = []
    for module, node in graph.module2node.items():
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or module not in names:
            continue
        if not node.outputs:
            found.append(names[module])
            continue
        stack, seen = list(node.outputs), set()
        while stack:
            nxt = stack.pop()
            if nxt in seen:
                continue
            seen.add(nxt)
            if isinstance(nxt.module, (nn.Conv2d, nn.Linear)):
                continue
            if nxt.type == ops.OPTYPE.OUTPUT or not nxt.outputs:
                found.append(names[module])
                break
            stack.extend(nxt.outputs)
    return found


# --- the trace ------------------------------------------------------------------------------------

def trace_mismatches(model: nn.Module, input_shape: tuple[int, int, int], cands: list[Candidate],
                     batch: int = 8, seed: int = 0) -> dict[str, str]:
    """root -> why its mapping disagrees with the forward pass, for every candidate that fails the NaN trace.

    Every producer of the group (the root and its residual / concatenation partners) writes NaN into the channels
    the mapping gives for the same random third of the group. Returns ``{"*": reason}`` when the model makes NaN
    from zeros by itself (nothing can be checked then).
    """
    input_shape, baseline = _trace_shape(model, input_shape)
    if any(baseline.values()):
        return {"*": "the model produces NaN from a zero input; channel couplings could not be verified"}
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, str] = {}
    for start in range(0, len(cands), batch):
        chunk = cands[start:start + batch]
        probes = [sorted(torch.randperm(c.size, generator=gen)[:max(1, c.size // 3)].tolist()) for c in chunk]
        seen = _trace(model, input_shape, [_injections(model, c, p) for c, p in zip(chunk, probes)])
        for b, cand in enumerate(chunk):
            reason = _compare(model, cand, probes[b], seen[b])
            if reason:
                out[cand.root] = reason
    return out


def _trace_shape(model: nn.Module, input_shape: tuple[int, int, int],
                 small: int = 32) -> tuple[tuple[int, int, int], dict[str, set[int]]]:
    """The input shape to trace at — at most ``small`` pixels a side when the model accepts it (channel routes do
    not depend on the image size; the arithmetic-free pass then costs little) — and the pass without probes."""
    reduced = (input_shape[0], min(input_shape[1], small), min(input_shape[2], small))
    if reduced != tuple(input_shape):
        try:
            return reduced, _trace(model, reduced, [{}])[0]
        except RuntimeError:
            pass
    return tuple(input_shape), _trace(model, input_shape, [{}])[0]


def _injections(model: nn.Module, cand: Candidate, probe: list[int]) -> dict[str, list[int]]:
    """producer layer -> its output channels that carry ``probe`` (root and partners; not depthwise convs)."""
    out = {}
    for (name, side), per_root in zip(cand.members, cand.channel_map):
        module = model.get_submodule(name)
        if side == "out" and isinstance(module, (nn.Conv2d, nn.Linear)) and not is_tp_depthwise(module):
            out[name] = sorted({c for k in probe for c in per_root[k]})
    return out


def _compare(model: nn.Module, cand: Candidate, probe: list[int], seen: dict[str, set[int]]) -> str | None:
    wrong = [f"{name} (mapped to channels it does not have)" for name in sorted(seen.pop(_INVALID, ()))]
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        observed = seen.get(name, set())
        if is_tp_depthwise(module):
            expected = _depthwise_expected(cand, name, probe)
        else:
            expected = cand.expected_inputs(name, probe) or set()
        if observed != expected:
            wrong.append(f"{name} (reads {_few(observed)}, mapped {_few(expected)})")
    if not wrong:
        return None
    via = f" through {', '.join(cand.ops[:2])}" if cand.ops else ""
    failed = f"; Torch-Pruning could not map {cand.unmapped[0]}" if cand.unmapped else ""
    return (f"{WRONG_MAPPING}: {len(wrong)} layer(s) read them elsewhere than the dependency graph says{via}, "
            f"e.g. {wrong[0]}{failed}")


def _depthwise_expected(cand: Candidate, name: str, probe: list[int]) -> set[int]:
    for (member, side), per_root in zip(cand.members, cand.channel_map):
        if member == name and side == "out":
            return {c for k in probe for c in per_root[k]}
    return set()


def _few(values: set[int]) -> str:
    items = sorted(values)
    if not items:
        return "none"
    text = ",".join(str(v) for v in items[:4])
    return f"channels {text}{',...' if len(items) > 4 else ''} ({len(items)})"


def _trace(model: nn.Module, input_shape: tuple[int, int, int],
           injections: list[dict[str, list[int]]]) -> list[dict[str, set[int]]]:
    """One forward of ``len(injections)`` zero images (sample b: NaN written by ``injections[b]``'s layers into
    their listed output channels); per sample, module -> input channels that held NaN.

    Conv2d / Linear layers do no arithmetic here: their ``forward`` is replaced for the pass.
    """
    n = len(injections)
    seen: list[dict[str, set[int]]] = [{} for _ in range(n)]
    roots: dict[str, list[tuple[int, list[int]]]] = {}
    for b, layers in enumerate(injections):
        for name, channels in layers.items():
            roots.setdefault(name, []).append((b, channels))
    patched, handles = [], []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.forward = _fake_forward(module, name, seen, roots.get(name, []))
            patched.append(module)
        elif isinstance(module, _NORMS):
            handles.append(module.register_forward_hook(_pass_nan))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(n, *input_shape))
    finally:
        model.train(was_training)
        for module in patched:
            del module.forward
        for h in handles:
            h.remove()
    return seen


def _nan_channels(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """[N, C] bool: which channels of each sample hold a NaN anywhere."""
    nan = torch.isnan(x).movedim(channel_dim, -1)
    return nan.reshape(x.shape[0], -1, nan.shape[-1]).any(1)


def _output_shape(module: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    if isinstance(module, nn.Linear):
        return (*x.shape[:-1], module.out_features)
    size = []
    for i, extent in enumerate(x.shape[-2:]):
        k, s, d = module.kernel_size[i], module.stride[i], module.dilation[i]
        if module.padding == "same":
            size.append(extent)
            continue
        p = 0 if module.padding == "valid" else module.padding[i]
        size.append((extent + 2 * p - d * (k - 1) - 1) // s + 1)
    return (x.shape[0], module.out_channels, *size)


def _fake_forward(module: nn.Module, name: str, seen: list[dict[str, set[int]]],
                  probes: list[tuple[int, list[int]]]):
    def forward(x: torch.Tensor) -> torch.Tensor:
        dim = 1 if isinstance(module, nn.Conv2d) else -1
        nan_in = _nan_channels(x, dim)                                        # [N, C_in]
        for b in range(x.shape[0]):
            hits = nan_in[b].nonzero().flatten().tolist()
            if hits:
                seen[b][name] = set(hits)
        result = torch.zeros(_output_shape(module, x), dtype=x.dtype)
        if is_tp_depthwise(module):
            per_group = nan_in.view(x.shape[0], module.groups, -1).any(2)     # [N, groups] = [N, C_out]
            result[per_group] = float("nan")
        width = result.shape[dim]
        for b, channels in probes:
            if any(c >= width for c in channels):                        # the mapping names channels it lacks
                seen[b].setdefault(_INVALID, set()).add(name)
                channels = [c for c in channels if c < width]
            if dim == 1:
                result[b, channels] = float("nan")
            else:
                result[b, ..., channels] = float("nan")
        return result
    return forward


def _pass_nan(module, inputs, output):
    """Normalisation layers: NaN where the input had NaN, zero elsewhere (channel mapping only, no mixing)."""
    x = inputs[0]
    if x.shape != output.shape:
        return output
    return torch.where(torch.isnan(x), x, torch.zeros_like(output))
