"""The service end to end through its gRPC API, with an in-process server on a free loopback port and real
worker processes: uploads bigger than gRPC's message limit, progress, ONNX results, cancellation, time budgets,
worker crashes, idempotent submits and bad input."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import time

import grpc
import numpy as np
import pytest
import torch

from service._proto.interprune.v1 import compression_pb2 as pb
from service._proto.interprune.v1 import compression_pb2_grpc as pb_grpc
from service.client import InterpruneRPCError, JobState, StatusCode
from service.core.wire import Execution, spec_to_proto
from pipeline.spec import BenchmarkSpec
from service.client import Client
from tests.service_helpers import (big_data_file, client, data_file, long_finetune, make_npz,  # noqa: F401
                                   make_server, model_file, process_gone, server, tiny_spec, wait_for)


def test_upload_submit_watch_download_and_run_the_onnx(make_server, model_file, big_data_file, tmp_path):
    import onnxruntime as ort

    from pruning.surgery import load_compressed

    server = make_server(warm_spare=True)
    client = Client(server.address)
    spare = wait_for(lambda: server.scheduler.spare_pid, timeout_s=30, what="a spare worker")
    data = client.upload(big_data_file, kind="dataset")
    assert data.size_bytes == big_data_file.stat().st_size > 4 << 20
    assert data.id == hashlib.sha256(big_data_file.read_bytes()).hexdigest()
    assert client.upload(big_data_file, kind="dataset").id == data.id          # deduplicated, not sent again
    spec = tiny_spec(model_file, data.id, reconstruct=True,
                     benchmark=BenchmarkSpec(targets=("local:cpu",), batch_sizes=(1,), seconds_per_batch=0.2))
    job = client.submit(spec)
    assert job.state == JobState.QUEUED

    events = list(client.watch(job.id))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].terminal and events[-1].state == JobState.SUCCEEDED, events[-1]
    stages = {e.stage for e in events if e.type == "progress"}
    assert {"load", "prune", "reconstruct", "export", "benchmark"} <= stages
    resumed = list(client.watch(job.id, after_sequence=events[-3].sequence))
    assert [e.sequence for e in resumed] == [e.sequence for e in events[-2:]]

    job = client.get(job.id)
    result = job.result
    assert job.state == JobState.SUCCEEDED and job.finished >= job.started >= job.created
    assert server.store.get(job.id).worker_pid == spare, "the job ran in the spare worker"
    wait_for(lambda: process_gone(spare), timeout_s=30, what="the worker to exit")
    assert {"original", "pruned", "reconstructed", "exported"} <= set(result.accuracy)
    assert result.compressed_cost.macs < result.original_cost.macs and 0.3 < result.macs_reduction < 0.7
    assert {(row.model, row.batch_size) for row in result.latency} == {("compressed", 1), ("original", 1)}
    assert all(row.p50_ms > 0 for row in result.latency)
    assert not result.gate.evaluated and result.gate.passed
    assert set(result.outputs) >= {"plan", "weights", "onnx", "report_json"}

    files = {key: client.download(result.outputs[key], tmp_path / name) for key, name in
             (("plan", "plan.json"), ("weights", "weights.pt"), ("onnx", "model.onnx"), ("report_json", "r.json"))}
    assert json.loads(files["report_json"].read_text())["accuracy"]["original"]["num_images"] == 100
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert onnx_out.shape == (3, 10)
    model = load_compressed(files["plan"], files["weights"])        # traces with autograd: not under no_grad
    with torch.no_grad():
        torch_out = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4)
    assert not list((server.state_dir / "work").glob("*")), "the job's scratch folder is removed"


def _running_in_finetune(server, client, job_id):
    wait_for(lambda: client.get(job_id).progress and client.get(job_id).progress.stage == "finetune"
             and client.get(job_id).progress.fraction > 0, timeout_s=90, what="fine-tuning to start")
    return server.store.get(job_id).worker_pid


def test_cancel_during_finetuning_stops_the_worker(server, client, model_file, data_file):
    job = client.submit(tiny_spec(model_file, data_file, finetune=long_finetune()))
    pid = _running_in_finetune(server, client, job.id)
    assert pid and not process_gone(pid)
    with pytest.raises(TimeoutError, match=rf"job {job.id} is still RUNNING after 0.5 s"):
        client.wait(job.id, timeout_s=0.5)                            # a bounded wait leaves the job running
    assert client.get(job.id).state == JobState.RUNNING
    start = time.monotonic()
    asked = client.cancel(job.id)                   # CancelJob returns at once; the job stops on its own
    assert asked.cancel_requested and asked.state in (JobState.RUNNING, JobState.CANCELLED)
    assert time.monotonic() - start < 1
    cancelled = client.wait(job.id)
    assert cancelled.state == JobState.CANCELLED and time.monotonic() - start < 10
    # cooperative: the worker's engine saw the store's cancel flag and recorded the outcome itself (the
    # scheduler's kill path says "was stopped")
    assert cancelled.message == "cancelled by request" and cancelled.failure is None
    wait_for(lambda: process_gone(pid), timeout_s=5, what=f"worker {pid} to exit")
    wait_for(lambda: server.scheduler.worker_pid(job.id) is None, timeout_s=5, what="the scheduler to reap it")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert list(client.watch(job.id))[-1].state == JobState.CANCELLED
    assert client.cancel(job.id).state == JobState.CANCELLED                 # idempotent
    with pytest.raises(InterpruneRPCError) as error:
        client.cancel("job-unknown")
    assert error.value.status == StatusCode.NOT_FOUND


def test_time_budget_and_worker_crash_are_recorded(make_server, model_file, data_file):
    server = make_server(job_workers=2)
    client = Client(server.address)
    slow = client.submit(tiny_spec(model_file, data_file, finetune=long_finetune()), timeout_seconds=12)
    crash = client.submit(tiny_spec(model_file, data_file, finetune=long_finetune()))
    pid = _running_in_finetune(server, client, crash.id)
    os.kill(pid, signal.SIGKILL)                                    # as the out-of-memory killer would
    crashed = client.wait(crash.id)
    assert crashed.state == JobState.FAILED and crashed.failure.kind == "crashed"
    assert crashed.failure.signal == signal.SIGKILL and "SIGKILL" in crashed.message
    timed_out = client.wait(slow.id)
    assert timed_out.state == JobState.FAILED and timed_out.failure.kind == "timed_out"
    assert "exceeded its time budget of 12 s" in timed_out.message
    assert process_gone(server.store.get(slow.id).worker_pid)


def test_same_request_id_gives_one_job(make_server, model_file, data_file):
    srv = make_server(run_jobs=False)
    with Client(srv.address) as c:
        spec = tiny_spec(model_file, data_file)
        first = c.submit(spec, request_id="ci-run-42")
        second = c.submit(spec, request_id="ci-run-42")
        assert second.id == first.id and second.request_id == "ci-run-42"
        assert [j.id for j in c.list().jobs] == [first.id]
        with pytest.raises(InterpruneRPCError) as conflict:
            c.submit(tiny_spec(model_file, data_file, target=0.3), request_id="ci-run-42")
        assert conflict.value.status == StatusCode.ALREADY_EXISTS and first.id in conflict.value.message
        assert c.submit(spec).id != first.id                    # no request id given: a fresh one each call
        page = c.list(page_size=1)
        assert len(page.jobs) == 1 and page.next_page_token
        assert len(c.list(page_size=1, page_token=page.next_page_token).jobs) == 1
        assert [j.state for j in c.list(states=["QUEUED"]).jobs] == [JobState.QUEUED] * 2


# --- bad input ----------------------------------------------------------------------------------

def _raw_upload(stub, data: bytes, sha256: str | None = None, size: int | None = None, kind=pb.ARTIFACT_KIND_MODEL):
    header = pb.ArtifactHeader(display_name="x.pt", kind=kind, size_bytes=len(data) if size is None else size,
                               sha256=sha256 or hashlib.sha256(data).hexdigest())
    messages = [pb.UploadArtifactRequest(header=header)] + [
        pb.UploadArtifactRequest(chunk=data[i:i + (1 << 20)]) for i in range(0, len(data), 1 << 20)]
    return stub.UploadArtifact(iter(messages))


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def test_bad_uploads_get_precise_codes(make_server):
    srv = make_server(run_jobs=False, max_upload_bytes=2 << 20, quota_bytes=3 << 20)
    with grpc.insecure_channel(srv.address) as channel:
        stub = pb_grpc.CompressionStub(channel)
        data = os.urandom(1_700_000)
        code, message = _code(lambda: _raw_upload(stub, data, sha256="ab" * 32))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "hash to" in message and "upload it again" in message
        assert _code(lambda: stub.GetArtifact(pb.GetArtifactRequest(
            name="artifacts/" + hashlib.sha256(data).hexdigest())))[0] == grpc.StatusCode.NOT_FOUND
        code, message = _code(lambda: _raw_upload(stub, os.urandom(3 << 20)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-upload-mb" in message
        first = _raw_upload(stub, data)
        assert first.size_bytes == len(data) and _raw_upload(stub, data).id == first.id      # stored once
        code, message = _code(lambda: _raw_upload(stub, os.urandom(1_700_000)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "store is full" in message
        code, message = _code(lambda: _raw_upload(stub, data[:100], kind=pb.ARTIFACT_KIND_UNSPECIFIED))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "kind" in message
        code, _ = _code(lambda: stub.UploadArtifact(iter([pb.UploadArtifactRequest(chunk=b"x")])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        code, _ = _code(lambda: list(stub.DownloadArtifact(pb.DownloadArtifactRequest(name="artifacts/../etc"))))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert not list((srv.state_dir / "artifacts" / "tmp").iterdir())


@pytest.mark.parametrize("change,code,text", [
    (lambda s: setattr(s.model, "arch", "cifar/resnet57"), "INVALID_ARGUMENT", "unknown architecture 'cifar/resnet57'"),
    (lambda s: setattr(s.prune, "criterion", "l3"), "INVALID_ARGUMENT", "unknown criterion 'l3'; choose one of"),
    (lambda s: setattr(s.prune, "target_reduction", 1.5), "INVALID_ARGUMENT", "target_reduction 1.5 is impossible"),
    (lambda s: s.prune.criterion_params["bogus"].CopyFrom(pb.ParamValue(int_value=1)), "INVALID_ARGUMENT",
     "criterion 'l1' has no parameter 'bogus'; its parameters are: p"),
    (lambda s: setattr(s.model, "weights", "artifacts/" + "f" * 64), "NOT_FOUND", "upload it first"),
    (lambda s: setattr(s.data, "artifact", "not-a-digest"), "INVALID_ARGUMENT", "spec.data.artifact"),
    (lambda s: s.benchmark.targets.add(agent="gpu 0"), "INVALID_ARGUMENT", "an agent name is"),
    (lambda s: setattr(s.benchmark, "precision", 9), "INVALID_ARGUMENT", "spec.benchmark.precision 9 is not a Precision"),
    (lambda s: setattr(s.prune, "allocation", 7), "INVALID_ARGUMENT", "spec.prune.allocation 7 is not a Allocation"),
    (lambda s: setattr(s.prune, "latency_margin", 1.5), "INVALID_ARGUMENT", "latency_margin must be in [0, 1)"),
    (lambda s: setattr(s.execution, "timeout_seconds", -1), "INVALID_ARGUMENT", "timeout_seconds must be > 0"),
])
def test_bad_specs_are_rejected_at_submit(make_server, model_file, change, code, text):
    srv = make_server(run_jobs=False)
    with Client(srv.address) as c:
        weights = c.upload(model_file).id
        spec = spec_to_proto(tiny_spec(None, None), weights, "", Execution())
        change(spec)
        with pytest.raises(InterpruneRPCError) as error:
            c.submit(spec)
        assert error.value.status.value == code and text in error.value.message, error.value
        assert c.list().jobs == []


def test_bad_files_fail_the_job_with_a_clear_message_and_the_server_keeps_serving(
        make_server, model_file, data_file, tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(model_file.read_bytes()[:5000])                   # a truncated checkpoint
    rgb = make_npz(tmp_path / "rgb.npz", channels=3)
    labels = make_npz(tmp_path / "labels.npz", classes=20)
    server = make_server(job_workers=2)
    client = Client(server.address)
    jobs = {name: client.submit(tiny_spec(weights, data)).id for name, weights, data in
            (("corrupt", corrupt, data_file), ("channels", model_file, rgb), ("labels", model_file, labels))}
    results = {name: client.wait(job_id) for name, job_id in jobs.items()}
    for name, needle, error_type in (("corrupt", "cannot read weights file", "ModelError"),
                                     ("channels", "3-channel images but the model expects 1 channels", "DataError"),
                                     ("labels", "label 19 but the model has 10 classes", "DataError")):
        job = results[name]
        assert job.state == JobState.FAILED and job.failure.kind == "invalid_input", job
        assert job.failure.error_type == error_type and needle in job.message, job.message
    with grpc.insecure_channel(server.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert client.get(jobs["corrupt"]).state == JobState.FAILED


def test_open_watch_streams_are_bounded(make_server, model_file, data_file):
    server = make_server(run_jobs=False, max_watchers=1)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.CompressionStub(channel)
        job = Client(channel).submit(tiny_spec(model_file, data_file))
        first = stub.WatchJob(pb.WatchJobRequest(name="jobs/" + job.id))
        assert next(first).sequence == 1                                  # open, waiting for more
        code, message = _code(lambda: next(stub.WatchJob(pb.WatchJobRequest(name="jobs/" + job.id))))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "GetJob" in message
        first.cancel()
        wait_for(lambda: _watch_opens(stub, job.id), timeout_s=5, what="the slot to free up")


def _watch_opens(stub, job_id) -> bool:
    stream = stub.WatchJob(pb.WatchJobRequest(name="jobs/" + job_id))
    try:
        return next(stream).sequence == 1
    except grpc.RpcError:
        return False
    finally:
        stream.cancel()
