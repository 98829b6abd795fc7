"""ONNX models: ``arch="onnx"`` with ``model_file``, converted to PyTorch with onnx2torch.

Steps: read the file (its sha256 goes into the plan), ``onnx.checker``, inline constant ``Identity`` nodes (the
TorchScript exporter shares equal initializers through them) and tensor ``Constant`` nodes (onnx2torch wants
initializers), refuse operators
that cannot be pruned (``onnx_ops``), convert. ``pruning.intake.verify`` then compares the converted module with
ONNX Runtime on calibration images (``onnx_check``). Weights come from the file; the class count from the
output, the input shape from the graph input (the spec fills symbolic sizes; default 3x224x224).

Reload: a plan records the file's name and sha256, not the converted structure (a GraphModule is code, and plans
never carry code). ``rebuild`` converts the same file again, refused unless its sha256 matches, and the plan's
channel cuts and the weights file are applied to that. So reloading needs the original ONNX beside plan and
weights; the exported ``model.onnx`` of a run is the deployable artefact and needs nothing.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Collection, Mapping

import torch.nn as nn

from pruning.errors import ModelError, SpecError, clip
from pruning.intake.catalog import DEFAULT_INPUT_SHAPE
from pruning.intake.describe import describe
from pruning.intake.onnx_ops import describe_problems, pruning_problems
from pruning.intake.onnx_rewrites import reshapes_to_flatten
from pruning.intake.sniff import identify, model_file_advice, not_a_file
from pruning.intake.sources import register_source
from pruning.intake.spec import ONNX_ARCH, ModelSpec, ResolvedModel


def read_onnx(path: Path, external_data: bool | Mapping[str, str] = False):
    """(ModelProto, sha256 hex) of the file; ``ModelError`` when it is not a valid ONNX model.

    Weights kept in external data files (torch.onnx.export's default writes ``model.onnx.data``) are read only with
    ``external_data``: True (a local run: the user's own files, each location read only inside the model's folder)
    or location -> file (``ModelSpec.external_data``: on a server, the files the job brought; a location is a path
    chosen by whoever wrote the model, and a server reads no file it did not place for the job). The digest then
    covers the model file and those files."""
    import onnx

    if problem := not_a_file(path, "model file"):
        raise ModelError(problem)
    kind = identify(path)
    if kind != "onnx":
        raise ModelError(model_file_advice(kind, path.name))
    data = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001 - DecodeError
        raise ModelError(f"{path.name} is not a valid ONNX model: {str(exc).splitlines()[0][:300]}") from None
    digest = hashlib.sha256(data)
    if external := external_data_files(proto):
        files = _external_files(path, external, external_data)
        for location in external:
            with files[location].open("rb") as data_file:
                for block in iter(lambda: data_file.read(1 << 24), b""):
                    digest.update(block)
        _load_external_data(proto, path, files)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - ValidationError
        raise ModelError(f"{path.name} is not a valid ONNX model: {str(exc).splitlines()[0][:300]}") from None
    return proto, digest.hexdigest()


def _external_files(path: Path, locations: list[str], readable: bool | Mapping[str, str]) -> dict[str, Path]:
    """location -> the regular file its bytes are read from (links followed): with ``readable`` True, inside the
    model's folder (``_external_file``); with a mapping, the file it gives. ``ModelError`` for a location that may
    not be read, naming what to send."""
    if readable is True:
        return {location: _external_file(path, location) for location in locations}
    given = dict(readable or {})
    if missing := [location for location in locations if location not in given]:
        raise ModelError(_external_refusal(path.name, missing))
    files = {location: Path(given[location]).resolve() for location in locations}
    for location, file in files.items():
        if not file.is_file():
            raise ModelError(f"{path.name}: its external data file {clip(location, 80)!r} is missing")
    return files


def _load_external_data(proto, path: Path, files: Mapping[str, Path]) -> None:
    """Read the external data of the model at ``path`` into ``proto`` from ``files`` (location -> real file; onnx
    itself refuses a location that is a link, even to a file beside the model); ``ModelError`` naming the problem
    when a file is short."""
    from onnx.external_data_helper import load_external_data_for_tensor

    try:
        for tensor in list(_external_tensors(proto)):
            entry = next(e for e in tensor.external_data if e.key == "location")
            file = files[entry.value]
            entry.value = file.name
            load_external_data_for_tensor(tensor, str(file.parent))        # and marks the tensor internal
    except Exception as exc:  # noqa: BLE001 - ValidationError, a short file, a bad offset
        raise ModelError(f"{path.name}: its external data could not be read: "
                         f"{str(exc).splitlines()[0][:300]}") from None


def _external_refusal(file_name: str, external: list[str]) -> str:
    named = ", ".join(clip(e, 80) for e in external[:3])
    return (f"{file_name} keeps its weights in external data file(s) ({named}), as torch.onnx.export writes by default,"
            " and a server reads only those the job brings: upload each file as an artifact and name it in "
            "spec.model.external_data (location -> artifact), or give one self-contained file: "
            "export with torch.onnx.export(..., external_data=False), or re-save it with onnx.save(onnx.load("
            f"'{file_name}'), 'model_one_file.onnx', save_as_external_data=False) (interprune submit sends the data "
            "files itself)")


def external_data_beside(path: Path) -> dict[str, Path]:
    """location -> file, for the external data of the ONNX model at ``path`` as a local run reads them (inside the
    model's folder, links followed): what a client uploads with the model (``spec.model.external_data``). Empty for
    a self-contained model, or a file that is not ONNX (the server's checks name what it is). ``ModelError`` when a
    file is missing or outside the folder."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX
        return {}
    return _external_files(path, external_data_files(graph), True)


def _external_file(model: Path, location: str) -> Path:
    """The external data file ``location`` of ``model``: a regular file inside the model's folder, else
    ``ModelError``."""
    folder = model.resolve().parent
    candidate = (folder / location).resolve()
    if Path(location).is_absolute() or folder not in candidate.parents:
        raise ModelError(f"{model.name} names external data {clip(location, 80)!r} outside its folder; refused "
                         "(save the model as one file, or with its data file beside it)")
    if not candidate.is_file():
        raise ModelError(f"{model.name} keeps its weights in {clip(location, 80)!r}, which is not beside it in "
                         f"{folder}; copy that file there, or save the model as one file (save_as_external_data=False)")
    return candidate


def external_data_files(proto) -> list[str]:
    """The distinct ``location`` entries of the graph's tensors stored outside the file, in order of appearance."""
    seen: dict[str, None] = {}
    for tensor in _external_tensors(proto):
        seen.setdefault(next((e.value for e in tensor.external_data if e.key == "location"), "?"), None)
    return list(seen)


def _external_tensors(proto):
    """The graph's initializers stored outside the file."""
    import onnx

    return (t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)


# From opset 18 ReduceMean takes its axes as an input (what torch.onnx.export writes for ``x.mean((2, 3))`` at its
# default opset 20), and onnx2torch 1.5 refuses it; at 17 it converts the models tried (tests, benchmarks.onnx_exports).
CONVERTIBLE_OPSET = 17


def default_opset(proto) -> int:
    """The model's opset of the default ONNX domain (0 when none is declared)."""
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def to_convertible_opset(proto, file_name: str):
    """``proto`` itself when its opset is at most ``CONVERTIBLE_OPSET``, else a copy converted down to it by
    ``onnx.version_converter`` (the converted module is then checked against ONNX Runtime on the original file, as
    every ONNX model is). ``ModelError`` naming the opset when onnx cannot convert it down."""
    from onnx import version_converter

    opset = default_opset(proto)
    if opset <= CONVERTIBLE_OPSET:
        return proto
    try:
        return version_converter.convert_version(proto, CONVERTIBLE_OPSET)
    except Exception as exc:  # noqa: BLE001 - RuntimeError from the C++ adapters ("No Adapter From Version ...")
        reason = (str(exc).splitlines() or [""])[0]
        raise ModelError(f"{file_name} uses ONNX opset {opset}; the converter to PyTorch (onnx2torch) reads up to "
                         f"opset {CONVERTIBLE_OPSET} and onnx could not convert this model down "
                         f"({reason[-200:]}); export it with opset_version={CONVERTIBLE_OPSET}") from None


def inline_constant_identities(proto):
    """A copy of ``proto`` where ``Identity(initializer)`` nodes and tensor ``Constant`` nodes became initializers
    of their own (onnx2torch reads a Conv's weight from an initializer only; the TorchScript exporter writes a
    fixed buffer, e.g. our CIFAR ResNets' shortcut kernel, as a Constant)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    initializers = {t.name: t for t in out.graph.initializer}
    kept = []
    for node in out.graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            out.graph.initializer.append(tensor)
            initializers[tensor.name] = tensor
        elif node.op_type == "Identity" and node.input[0] in initializers:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(initializers[node.input[0]])
            tensor.name = node.output[0]
            out.graph.initializer.append(tensor)
            initializers[tensor.name] = tensor
        else:
            kept.append(node)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out


def graph_shapes(proto, label: str) -> tuple[list[int | None], list[int | None]]:
    """Dims of the single image input [N, C, H, W] and single logits output [N, K] (None = symbolic)."""
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise ModelError(f"{label} has {len(inputs)} inputs and {len(proto.graph.output)} outputs; interprune "
                         "prunes classifiers with one image input and one logits output")

    def dims(value) -> list[int | None]:
        return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]

    image, logits = dims(inputs[0]), dims(proto.graph.output[0])
    if len(image) != 4 or len(logits) != 2:
        raise ModelError(f"{label} maps a rank-{len(image)} input to a rank-{len(logits)} output; interprune "
                         "prunes classifiers of images [N, C, H, W] -> logits [N, classes]")
    return image, logits


def input_shape_for(graph_dims: list[int | None], asked: tuple[int, ...] | None,
                    label: str) -> tuple[int, int, int]:
    """C, H, W: the graph's fixed sizes, the spec for symbolic ones (else 3x224x224); a conflict is an error."""
    fixed = graph_dims[1:]
    if asked is not None:
        clash = [(f, a) for f, a in zip(fixed, asked) if f is not None and f != a]
        if clash:
            raise SpecError(f"{label} takes {'x'.join(str(d or '?') for d in fixed)} inputs, not "
                            f"{'x'.join(map(str, asked))}")
        return tuple(asked)  # type: ignore[return-value]
    return tuple(f if f is not None else d for f, d in zip(fixed, DEFAULT_INPUT_SHAPE))  # type: ignore[return-value]


def convert(path: Path, expected_sha256: str | None = None, external_data: bool | Mapping[str, str] = False
            ) -> tuple[nn.Module, Any, str, int]:
    """(converted module in eval mode, prepared proto, sha256, the file's opset); refuses unprunable graphs. The
    prepared proto is the file's model at an opset onnx2torch reads (``to_convertible_opset``) with its constants
    inlined and its flattening Reshapes made Flatten (``onnx_rewrites``). ``external_data``: as ``read_onnx``."""
    proto, digest = read_onnx(path, external_data)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ModelError(f"{path.name} is not the ONNX file this plan was made from (sha256 {digest[:12]}..., the "
                         f"plan recorded {expected_sha256[:12]}...)")
    prepared = reshapes_to_flatten(inline_constant_identities(to_convertible_opset(proto, path.name)))
    problems = pruning_problems(prepared)
    if problems:
        raise ModelError(describe_problems(path.name, problems))
    from onnx2torch import convert as onnx2torch_convert

    try:
        module = onnx2torch_convert(prepared)
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises NotImplementedError/KeyError/... per operator
        raise ModelError(f"onnx2torch cannot convert {path.name}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:300] if str(exc) else ''}") from None
    return module.eval(), prepared, digest, default_opset(proto)


@register_source
class OnnxSource:
    kind = "onnx"
    prefix = ONNX_ARCH

    def check(self, spec: ModelSpec, allowed_packages: Collection[str] | None) -> None:
        if spec.arch != ONNX_ARCH:
            raise SpecError(f"unknown architecture {spec.arch!r}; an ONNX model is given as arch 'onnx' with "
                            "model_file")
        if not spec.model_file:
            raise SpecError("arch 'onnx' needs model_file: the .onnx file (--model model.onnx)")
        if spec.weights:
            raise SpecError("an ONNX model carries its own weights; drop the weights file (or export the ONNX "
                            "with the weights you want)")
        if spec.arch_kwargs:
            raise SpecError("arch_kwargs are for python: and timm/ factories, not ONNX models")
        if problem := not_a_file(Path(spec.model_file), "model file"):
            raise ModelError(problem)
        folder = Path(os.path.abspath(spec.model_file)).parent
        for location, file in spec.external_data.items():
            if Path(os.path.abspath(file)) != folder / location:    # where ONNX Runtime reads it, checking the model
                raise SpecError(f"the external data file {clip(location, 80)!r} must lie beside the model file, as "
                                f"{clip(str(folder / location), 200)}, not {clip(file, 200)}")
            if problem := not_a_file(Path(file), f"external data file {clip(location, 80)!r}:"):
                raise ModelError(problem)

    def resolve(self, spec: ModelSpec, allowed_packages: Collection[str] | None) -> ResolvedModel:
        self.check(spec, allowed_packages)
        path = Path(spec.model_file)
        # the external data files the spec names; else a local run may read the user's files beside the model
        readable = spec.external_data or allowed_packages is None
        module, proto, digest, opset = convert(path, external_data=readable)
        image, logits = graph_shapes(proto, path.name)
        input_shape = input_shape_for(image, spec.input_shape, path.name)
        record = {"kind": self.kind, "arch": ONNX_ARCH, "file_name": path.name, "sha256": digest, "opset": opset,
                  "producer": f"{proto.producer_name} {proto.producer_version}".strip()}
        if default_opset(proto) != opset:
            record["converted_to_opset"] = default_opset(proto)
        entry = describe(path.name, module, input_shape, spec.num_classes, record, {},
                         builder=lambda n: convert(path, digest, readable)[0], description=f"ONNX model {path.name}")
        if logits[1] is not None and logits[1] != entry.num_classes:
            raise ModelError(f"{path.name} declares {logits[1]} outputs but computes {entry.num_classes}")
        return ResolvedModel(module, entry, reference=path)

    def rebuild(self, record: Mapping[str, Any], num_classes: int, *, allowed_packages: Collection[str] | None,
                model_file: str | None) -> nn.Module:
        name, digest = record.get("file_name", "model.onnx"), str(record.get("sha256", ""))
        if not model_file:
            raise ModelError(f"this plan was made from the ONNX model {name} (sha256 {digest[:12]}...); pass that "
                             "file again to reload it (load_compressed(plan, weights, model_file=...))")
        return convert(Path(model_file), digest or None, external_data=allowed_packages is None)[0]
