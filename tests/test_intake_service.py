"""Bring your own model, through the service: a team's installed model package (registered nowhere) and an ONNX
file the project has never seen are compressed with ``interprune submit``; the result reloads in a fresh process
from plan + weights alone; a server that did not allow the package refuses the job at submit."""
from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from service.cli.main import main
from tests.intake_helpers import ACME, cifar_like_npz, reload_in_fresh_process
from tests.service_helpers import make_server  # noqa: F401

FACTORY = "python:acme_models.nets:tiny_resnet"


@pytest.fixture
def acme_on_path(monkeypatch):
    """acme_models importable here and in the server's worker processes, as if pip-installed (``make test``
    installs it into the venv as well)."""
    monkeypatch.syspath_prepend(str(ACME))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ACME), os.environ.get("PYTHONPATH")])))


def submit(capsys, server, *flags) -> tuple[int, dict]:
    code = main(["submit", "--server", server.address, "--calibration-images", "48", "--eval-images", "16",
                 "--targets", "", "--threads", "1", "--json", *map(str, flags)])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]) if out else {}


def test_an_allowed_model_package_is_compressed_and_reloads_in_a_fresh_process(make_server, acme_on_path, capsys,
                                                                                tmp_path):
    data = cifar_like_npz(tmp_path / "data.npz", n=96)
    server = make_server(allowed_model_packages=frozenset({"acme_models"}))
    out = tmp_path / "out"
    code, job = submit(capsys, server, "--arch", FACTORY, "--arch-kwargs", '{"width": 16}', "--data", data,
                       "--target-macs", "0.3", "--round-to", "1", "--out", out)
    assert code == 0 and job["state"] == "SUCCEEDED", job
    assert job["result"]["macs_reduction"] == pytest.approx(0.3, abs=0.02)
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["source"] == {**report["model"]["source"], "kind": "python", "arch": FACTORY,
                                         "kwargs": {"width": 16}}
    images = torch.rand(4, 3, 32, 32)
    (reloaded,), imported = reload_in_fresh_process([(out / "plan.json", out / "weights.pt")], images, tmp_path)
    exported = ort.InferenceSession(str(out / "model.onnx")).run(None, {"input": images.numpy()})[0]
    assert "acme_models.nets" in imported
    np.testing.assert_allclose(reloaded.numpy(), exported, rtol=1e-4, atol=1e-5)


def test_a_package_the_operator_did_not_allow_is_refused_at_submit(make_server, acme_on_path, capsys, tmp_path):
    data = cifar_like_npz(tmp_path / "data.npz", n=32)
    server = make_server()                       # no --allow-model-package
    code, job = submit(capsys, server, "--arch", FACTORY, "--data", data)
    assert code == 2 and "--allow-model-package acme_models" in job["error"]
    assert "INVALID_ARGUMENT" in job["error"]


class _Unseen(nn.Module):
    """A net this project has no entry for: concatenation, a residual add, a max-pool and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 12, 3, padding=1)
        self.b = nn.Conv2d(3, 12, 3, padding=1)
        self.c = nn.Conv2d(24, 24, 3, padding=1)
        self.bn = nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        x = F.max_pool2d(F.relu(self.bn(self.c(x))) + x, 2)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_an_onnx_file_is_compressed_over_grpc_and_the_report_says_where_it_came_from(make_server, capsys, tmp_path):
    torch.manual_seed(0)
    net = _Unseen().eval()
    onnx_path = tmp_path / "unseen.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 24, 24), onnx_path, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    data = cifar_like_npz(tmp_path / "data.npz", n=96, size=24, classes=5)
    server = make_server()
    out = tmp_path / "out"
    code, job = submit(capsys, server, "--model", onnx_path, "--data", data, "--target-macs", "0.3",
                       "--round-to", "1", "--out", out)
    assert code == 0 and job["state"] == "SUCCEEDED", job
    assert job["result"]["macs_reduction"] == pytest.approx(0.3, abs=0.02)
    source = json.loads((out / "report.json").read_text())["model"]["source"]
    assert source["kind"] == "onnx" and source["file_name"] == "unseen.onnx"
    assert source["conversion_check"]["max_rel_error"] < 1e-3
    assert "ONNX file" in (out / "report.html").read_text()
    images = np.random.default_rng(0).random((4, 3, 24, 24), dtype=np.float32)
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {"input": images})[0]
    assert got.shape == (4, 5) and np.isfinite(got).all()


def _split_export(tmp_path, location: str = "split.onnx.data"):
    """``_Unseen`` exported as ``export/split.onnx`` + ``export/{location}`` (by default torch.onnx.export's
    layout); returns the folder."""
    import onnx

    torch.manual_seed(0)
    whole = tmp_path / "whole.onnx"
    torch.onnx.export(_Unseen().eval(), torch.zeros(1, 3, 24, 24), whole, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx.load(whole), folder / "split.onnx", save_as_external_data=True, location=location,
              size_threshold=0)
    return folder


@pytest.mark.parametrize("location", ["split.onnx.data", "weights/split.bin"])
def test_an_onnx_file_with_external_weights_is_uploaded_with_its_data_file_and_compressed(make_server, capsys,
                                                                                           tmp_path, location):
    # torch.onnx.export's default writes model.onnx + model.onnx.data; `interprune submit` uploads the data file
    # too and names it in spec.model.external_data (it used to refuse and tell the user to re-save the model);
    # onnx.save may also put it in a folder beside the model
    import hashlib

    folder = _split_export(tmp_path, location)
    data = cifar_like_npz(tmp_path / "data.npz", n=96, size=24, classes=5)
    server = make_server()
    out = tmp_path / "out"
    code, job = submit(capsys, server, "--model", folder / "split.onnx", "--data", data, "--target-macs", "0.3",
                       "--round-to", "1", "--out", out)
    assert code == 0 and job["state"] == "SUCCEEDED", job
    assert job["result"]["macs_reduction"] == pytest.approx(0.3, abs=0.02)
    source = json.loads((out / "report.json").read_text())["model"]["source"]
    assert source["file_name"] == "split.onnx" and source["conversion_check"]["max_rel_error"] < 1e-3
    both = hashlib.sha256((folder / "split.onnx").read_bytes() + (folder / location).read_bytes())
    assert source["sha256"] == both.hexdigest()          # the server read the user's two files, not a re-saved copy
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == sorted(["split.onnx", location])      # the user's files untouched


def test_a_generic_grpc_client_brings_an_onnx_models_external_data_as_artifacts(make_server, tmp_path):
    # a client that is not ours (any gRPC stub) could only send one self-contained file; now it uploads the data
    # file too and names it in spec.model.external_data; without it the job fails saying what to send
    import hashlib

    import grpc

    from service._proto.interprune.v1 import compression_pb2 as pb
    from service._proto.interprune.v1 import compression_pb2_grpc as pb_grpc

    folder = _split_export(tmp_path)
    data = cifar_like_npz(tmp_path / "data.npz", n=96, size=24, classes=5)
    server = make_server()

    def upload(stub, path, kind):
        body = path.read_bytes()
        header = pb.ArtifactHeader(display_name=path.name, kind=kind, size_bytes=len(body),
                                   sha256=hashlib.sha256(body).hexdigest())
        return stub.UploadArtifact(iter([pb.UploadArtifactRequest(header=header), pb.UploadArtifactRequest(
            chunk=body)]), timeout=30).name

    def finished(stub, job):
        for event in stub.WatchJob(pb.WatchJobRequest(name=job.name), timeout=300):
            if event.terminal:
                return stub.GetJob(pb.GetJobRequest(name=job.name), timeout=10)

    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.CompressionStub(channel)
        model = upload(stub, folder / "split.onnx", pb.ARTIFACT_KIND_ONNX)
        weights = upload(stub, folder / "split.onnx.data", pb.ARTIFACT_KIND_OTHER)

        def spec(**external):
            return pb.JobSpec(model=pb.ModelSpec(arch="onnx", model=model, external_data=external),
                              data=pb.DataSpec(artifact=upload(stub, data, pb.ARTIFACT_KIND_DATASET),
                                               calibration_images=48, evaluation_images=16),
                              prune=pb.PruneSpec(target_reduction=0.3, round_to=1),
                              finetune=pb.FinetuneSpec(epochs=0), benchmark=pb.BenchmarkSpec(skip=True),
                              execution=pb.ExecutionSpec(threads=1))

        done = finished(stub, stub.SubmitJob(pb.SubmitJobRequest(spec=spec(**{"split.onnx.data": weights}))))
        assert done.state == pb.JOB_STATE_SUCCEEDED, done.failure.message
        assert done.result.macs_reduction == pytest.approx(0.3, abs=0.02)

        failed = finished(stub, stub.SubmitJob(pb.SubmitJobRequest(spec=spec())))
        assert failed.state == pb.JOB_STATE_FAILED and failed.failure.kind == pb.FAILURE_KIND_INVALID_INPUT
        assert ("split.onnx keeps its weights in external data file(s) (split.onnx.data)" in failed.failure.message
                and "spec.model.external_data" in failed.failure.message), failed.failure.message
        renamed = finished(stub, stub.SubmitJob(pb.SubmitJobRequest(spec=spec(**{"other.data": weights}))))
        assert "(split.onnx.data)" in renamed.failure.message, renamed.failure.message   # named as the model names it
        for bad, status, words in (({"../split.onnx.data": weights}, "INVALID_ARGUMENT", "not a path inside"),
                                   ({"split.onnx.data": "artifacts/" + "0" * 64}, "NOT_FOUND", "upload it first")):
            with pytest.raises(grpc.RpcError) as refused:
                stub.SubmitJob(pb.SubmitJobRequest(spec=spec(**bad)), timeout=30)
            assert refused.value.code().name == status and words in refused.value.details(), refused.value.details()
