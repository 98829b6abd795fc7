"""A corpus of hostile and broken input, one or more per class of issue 11, built in a second:

- non-finite: NaN weights, NaN pixels, an infinite std, a NaN quality gate, a NaN criterion parameter;
- bombs: a zip and an .npz that expand to gigabytes (``tests/hostile_files.py``);
- unbounded: input size, benchmark batch, calibration images, classes, activation-maximization steps;
- weak messages: a 10,000-character criterion name, a criterion parameter that does not exist;
- silent nonsense: a model file as the data set, a data set as the weights, a negative seed;
- service only (``GRPC_ONLY``): a re-upload that names a stored digest but sends other bytes, an upload
  declaring 10 GiB, a 10,000-character job name, an upload without a kind.

Each ``Case`` is the flags of ``interprune compress`` / ``submit`` (files named by key, written by ``build``),
where it must be refused (``when``: at submit, before any work, or by the job) and what the one-line message must
name (``needles``; ``local`` / ``remote`` add the words of the in-process and the service path). Every case must
end with exit code 2 on the command line (bad input), INVALID_ARGUMENT at SubmitJob or a job FAILED with
INVALID_INPUT over gRPC.
"""
from __future__ import annotations

import base64
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tests.hostile_files import npz_bomb, zip_bomb

ARCH = "demo/small_cnn"            # 1x8x8 input, 10 classes
KINDS = {"model": "model", "data": "dataset", "nan_weights": "model", "nan_pixels": "dataset", "bomb_zip": "dataset",
         "bomb_npz": "dataset"}


def build(folder: Path) -> dict[str, Path]:
    """The corpus's files: a good model and data set, and the hostile ones."""
    from pruning import zoo
    from pruning.data import digits_sample

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = zoo.create_model(ARCH)
    files = {"model": folder / "model.pt", "nan_weights": folder / "nan_weights.pt", "data": folder / "data.npz",
             "nan_pixels": folder / "nan_pixels.npz"}
    torch.save(model.state_dict(), files["model"])
    broken = {k: v.clone() for k, v in model.state_dict().items()}
    first = next(k for k, v in broken.items() if v.is_floating_point())
    broken[first].view(-1)[:3] = float("nan")
    torch.save(broken, files["nan_weights"])
    digits = digits_sample().train
    np.savez(files["data"], images=digits.images[:400], labels=digits.labels[:400])
    pixels = digits.images[:400].astype(np.float32)
    pixels[0, 0, 0, 0] = np.nan
    np.savez(files["nan_pixels"], images=pixels, labels=digits.labels[:400])
    files["bomb_zip"] = zip_bomb(folder / "bomb.zip")
    files["bomb_npz"] = npz_bomb(folder / "bomb.npz", shape=(2560, 1024, 1024, 1))   # 2.5 GiB of pixels
    return files


BASE = ("--arch", ARCH, "--calibration-images", "100", "--eval-images", "100", "--targets", "", "--no-reconstruct",
        "--threads", "1")


@dataclass(frozen=True)
class Case:
    name: str
    group: str                          # non-finite | bomb | unbounded | weak-message | silent-nonsense
    when: str                           # "submit": refused before any work | "job": the job fails on it
    needles: tuple[str, ...]            # words every path's message must hold
    flags: tuple[str, ...] = ()
    model: str | None = "model"         # file keys for --weights / --data
    data: str | None = "data"
    local: tuple[str, ...] = ()         # further words of `interprune compress`'s message
    remote: tuple[str, ...] = ()        # further words of the service's message (submit, gRPC)

    def argv(self, files: dict[str, Path]) -> list[str]:
        weights = ["--weights", str(files[self.model])] if self.model else []
        data = ["--data", str(files[self.data])] if self.data else []
        return [*BASE, *weights, *data, *self.flags]


CASES = (
    Case("nan-weights", "non-finite", "job", ("nan_weights.pt", "non-finite"), model="nan_weights"),
    Case("nan-pixels", "non-finite", "job", ("nan_pixels.npz", "non-finite"), data="nan_pixels"),
    Case("infinite-std", "non-finite", "submit", ("data.std[0] is inf",), ("--mean", "0.5", "--std", "inf")),
    Case("nan-gate", "non-finite", "submit", ("max_accuracy_drop", "finite"), ("--max-accuracy-drop", "nan")),
    Case("nan-criterion-param", "non-finite", "submit", ("criterion 'l1'", "p must be a number in (0, 16]", "nan"),
         ("--criterion-param", "p=NaN")),
    Case("zip-bomb", "bomb", "job", ("bomb.zip", "max_expanded_bytes"), data="bomb_zip"),
    Case("npz-bomb", "bomb", "job", ("bomb.npz", "max_array_bytes"), data="bomb_npz"),
    Case("huge-input", "unbounded", "submit", ("data.input_size", "max_input_side"), ("--input-size", "100000x100000")),
    Case("huge-benchmark-batch", "unbounded", "submit", ("benchmark.batch_sizes", "max_batch_size=4096"),
         ("--batch-sizes", "100000")),
    Case("huge-calibration", "unbounded", "submit", ("data.calibration_images", "max_calibration_images"),
         ("--calibration-images", "1000000000")),
    Case("huge-classes", "unbounded", "submit", ("model.num_classes", "max_classes"), ("--num-classes", "10000000")),
    Case("huge-criterion-steps", "unbounded", "submit", ("steps must be a whole number in [1, 2048]",),
         ("--criterion", "functionality", "--criterion-param", "steps=1000000000000")),
    Case("long-criterion", "weak-message", "submit", ("criterion", "…[+"), ("--criterion", "x" * 10_000),
         local=("max_name_length",), remote=("unknown criterion",)),
    Case("bad-criterion-param", "weak-message", "submit", ("has no parameter 'bogus'", "its parameters are: p"),
         ("--criterion-param", "bogus=1")),
    Case("model-as-data", "silent-nonsense", "submit", ("model.pt",), data="model",
         local=("unsupported data file",), remote=("uploaded as a model artifact",)),
    Case("data-as-weights", "silent-nonsense", "submit", ("data.npz",), model="data",
         local=("cannot use data.npz as weights",), remote=("uploaded as a dataset artifact",)),
    Case("negative-seed", "silent-nonsense", "submit", ("seed -1", "must be >= 0"), ("--seed", "-1")),
)


# --- cases only the service has -------------------------------------------------------------------------


@dataclass(frozen=True)
class GrpcCase:
    name: str
    group: str
    status: str                          # the grpc.StatusCode name the call must end with
    needles: tuple[str, ...]
    call: Callable                       # (stub, files, ids) -> None; raises grpc.RpcError


def _upload(stub, header, chunks=()):
    from service._proto.interprune.v1 import compression_pb2 as pb

    def messages():
        yield pb.UploadArtifactRequest(header=header)
        for chunk in chunks:
            yield pb.UploadArtifactRequest(chunk=chunk)
    return stub.UploadArtifact(messages(), timeout=30)


def _lying_reupload(stub, files, ids):
    from service._proto.interprune.v1 import compression_pb2 as pb

    size = files["data"].stat().st_size
    header = pb.ArtifactHeader(display_name="data.npz", kind=pb.ARTIFACT_KIND_DATASET, size_bytes=size,
                               sha256=ids["data"])
    _upload(stub, header, [os.urandom(size)])


def _oversized(stub, files, ids):
    from service._proto.interprune.v1 import compression_pb2 as pb

    _upload(stub, pb.ArtifactHeader(display_name="huge.npz", kind=pb.ARTIFACT_KIND_DATASET, size_bytes=10 << 30,
                                    sha256="ab" * 32))


def _no_kind(stub, files, ids):
    from service._proto.interprune.v1 import compression_pb2 as pb

    _upload(stub, pb.ArtifactHeader(display_name="x.npz", size_bytes=3, sha256=hashlib.sha256(b"abc").hexdigest()),
            [b"abc"])


def _long_job_name(stub, files, ids):
    from service._proto.interprune.v1 import compression_pb2 as pb

    stub.GetJob(pb.GetJobRequest(name="jobs/" + "j" * 10_000), timeout=10)


def _external_data_outside(stub, files, ids):
    from service._proto.interprune.v1 import compression_pb2 as pb

    model = pb.ModelSpec(arch="onnx", model=f"artifacts/{ids['model']}",
                         external_data={"../../etc/passwd": f"artifacts/{ids['data']}"})
    stub.SubmitJob(pb.SubmitJobRequest(spec=pb.JobSpec(model=model, data=pb.DataSpec(
        artifact=f"artifacts/{ids['data']}"))), timeout=30)


def _submit(stub, ids, **fields):
    from service._proto.interprune.v1 import compression_pb2 as pb

    spec = pb.JobSpec(model=pb.ModelSpec(arch="cifar/resnet20", weights=f"artifacts/{ids['model']}"),
                      data=pb.DataSpec(artifact=f"artifacts/{ids['data']}"))
    for path, value in fields.items():          # "reconstruct__ridge" -> spec.reconstruct.ridge
        *parents, leaf = path.split("__")
        message = spec
        for parent in parents:
            message = getattr(message, parent)
        field = getattr(message, leaf)
        field.extend(value) if isinstance(value, list) else setattr(message, leaf, value)
    stub.SubmitJob(pb.SubmitJobRequest(spec=spec), timeout=30)


def _huge_page_token(stub, files, ids):
    from service._proto.interprune.v1 import compression_pb2 as pb

    token = base64.urlsafe_b64encode(b"v1:" + b"9" * 23).decode()
    stub.ListJobs(pb.ListJobsRequest(page_token=token), timeout=10)


def _job_name_with_newline(stub, files, ids):
    from service._proto.interprune.v1 import compression_pb2 as pb

    stub.GetJob(pb.GetJobRequest(name="jobs/abc\n"), timeout=10)


GRPC_ONLY = (
    GrpcCase("lying-reupload", "silent-nonsense", "INVALID_ARGUMENT", ("data.npz", "hash to"), _lying_reupload),
    GrpcCase("oversized-upload", "unbounded", "RESOURCE_EXHAUSTED", ("huge.npz", "--max-upload-mb"), _oversized),
    GrpcCase("upload-without-kind", "silent-nonsense", "INVALID_ARGUMENT", ("must set kind",), _no_kind),
    GrpcCase("long-job-name", "weak-message", "INVALID_ARGUMENT", ("is not a job name", "..."), _long_job_name),
    GrpcCase("external-data-outside", "silent-nonsense", "INVALID_ARGUMENT", ("'../../etc/passwd'", "not a path inside"),
             _external_data_outside),
    GrpcCase("huge-page-token", "silent-nonsense", "INVALID_ARGUMENT", ("page_token is not one this server issued",),
             _huge_page_token),
    GrpcCase("job-name-newline", "weak-message", "INVALID_ARGUMENT", ("is not a job name",), _job_name_with_newline),
    GrpcCase("nan-ridge", "non-finite", "INVALID_ARGUMENT", ("spec.reconstruct.ridge", "finite"),
             lambda stub, files, ids: _submit(stub, ids, reconstruct__ridge=math.nan)),
    GrpcCase("short-input-shape", "silent-nonsense", "INVALID_ARGUMENT", ("spec.model.input_shape [1, 8]", "C, H, W"),
             lambda stub, files, ids: _submit(stub, ids, model__input_shape=[1, 8])),
    GrpcCase("huge-spec", "unbounded", "INVALID_ARGUMENT", ("the job spec is", "bytes; at most"),
             lambda stub, files, ids: _submit(stub, ids, prune__protected_layers=[f"layer{i}" for i in range(30_000)])),
)
