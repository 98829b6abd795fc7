"""The device agent on loopback (ONNX Runtime CPU): Describe, Benchmark with latency rows and the accuracy of the
built artifact, precise status codes for bad input, and bearer tokens like the server."""
from __future__ import annotations

import hashlib

import grpc
import numpy as np
import pytest
import torch

from service._proto.interprune.v1 import common_pb2 as cpb
from service._proto.interprune.v1 import device_agent_pb2 as apb
from service._proto.interprune.v1 import device_agent_pb2_grpc as apb_grpc
from service.agent.client import AgentClient, AgentError
from tests.service_helpers import make_agent  # noqa: F401  (fixture)

TOKEN = "agent-s3cret"


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    from exporters import export_onnx
    from pruning import zoo

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("agent") / "small_cnn.onnx"
    export_onnx(zoo.create_model("demo/small_cnn"), path, torch.zeros(1, 1, 8, 8))
    return path


@pytest.fixture(scope="module")
def eval_npz(tmp_path_factory):
    """120 preprocessed digits (float32 NCHW) with their labels."""
    from pruning.data import digits_sample

    digits = digits_sample().train
    images = digits.images[:120].astype(np.float32).transpose(0, 3, 1, 2) / 16.0
    path = tmp_path_factory.mktemp("agent-data") / "eval.npz"
    np.savez(path, images=np.ascontiguousarray(images), labels=digits.labels[:120].astype(np.int64))
    return path


def test_describe_returns_this_machine(make_agent):
    import onnxruntime

    agent = make_agent("edge0")
    with AgentClient(agent.address) as client:
        info = client.describe()
    assert info.name == "edge0" and info.hostname and info.kind in ("cpu", "gpu", "jetson")
    assert info.cpu_cores >= 1 and info.memory_bytes > 0 and info.onnxruntime_version == onnxruntime.__version__
    assert "onnxruntime:cpu" in info.backends and info.platform


def test_benchmark_returns_latency_and_the_accuracy_of_the_built_model(make_agent, onnx_model, eval_npz):
    from exporters import evaluate_onnx

    agent = make_agent()
    with AgentClient(agent.address) as client:
        result = client.benchmark(onnx_model, input_shape=(1, 8, 8), batch_sizes=(1, 4), seconds_per_batch=0.2,
                                  warmup_seconds=0.1, evaluation=eval_npz, backend="onnxruntime", threads=1)
    assert result.backend == "onnxruntime:cpu" and result.precision == "fp32" and result.device.name == "edge0"
    assert [row.batch_size for row in result.latency] == [1, 4]
    for row in result.latency:
        assert row.runs >= 20 and not row.error
        assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms and row.throughput_ips > 0 and row.threads == 1
    data = np.load(eval_npz)
    local = evaluate_onnx(onnx_model, data["images"], data["labels"])
    assert result.accuracy.num_images == 120
    assert result.accuracy.top1 == local.top1 and result.accuracy.top5 == local.top5
    assert result.build_seconds >= 0


def _raw(stub, data: bytes, metadata=(), **settings):
    """A Benchmark call sending ``data`` as the model; ``settings`` override the (correct) defaults."""
    info = apb.BlobInfo(size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    values = dict(input_shape=[1, 8, 8], batch_sizes=[1], seconds_per_batch=0.1, warmup_seconds=0.05, model=info)
    values.update(settings)
    messages = [apb.BenchmarkRequest(settings=apb.BenchmarkSettings(**values)), apb.BenchmarkRequest(model_chunk=data)]
    return stub.Benchmark(iter(messages), metadata=metadata)


def _status(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def test_bad_requests_get_precise_codes(make_agent, onnx_model, tmp_path):
    from exporters import tensorrt_available

    agent = make_agent(max_model_bytes=1 << 20, max_data_bytes=4000)
    model = onnx_model.read_bytes()
    with grpc.insecure_channel(agent.address) as channel:
        stub = apb_grpc.DeviceAgentStub(channel)
        code, message = _status(lambda: _raw(stub, model, model=apb.BlobInfo(size_bytes=len(model), sha256="ab" * 32)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "hash to" in message and "send it again" in message
        code, message = _status(lambda: _raw(stub, model, model=apb.BlobInfo(size_bytes=2 << 20, sha256="ab" * 32)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-model-mb" in message
        code, message = _status(lambda: _raw(stub, model, evaluation=apb.BlobInfo(size_bytes=5000, sha256="0" * 64)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "evaluation data" in message
        code, message = _status(lambda: _raw(stub, b"not an onnx file"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "cannot load the model" in message
        code, message = _status(lambda: _raw(stub, model, input_shape=[3, 8, 8]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "does not take images of shape [3, 8, 8]" in message
        code, message = _status(lambda: _raw(stub, model, precision=cpb.PRECISION_FP16, backend="onnxruntime"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "fp32" in message
        code, message = _status(lambda: _raw(stub, model, precision=12))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "settings.precision 12 is not a Precision" in message
        code, _ = _status(lambda: stub.Benchmark(iter([apb.BenchmarkRequest(model_chunk=model)])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        if not tensorrt_available()[0]:
            code, message = _status(lambda: _raw(stub, model, backend="tensorrt"))
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "backend tensorrt was asked for" in message
            code, message = _status(lambda: _raw(stub, model, precision=cpb.PRECISION_FP16))
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "needs TensorRT" in message
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((4, 1, 8, 8), np.float64), labels=np.zeros(4, np.int64))
    with AgentClient(agent.address) as client, pytest.raises(AgentError) as error:
        client.benchmark(onnx_model, input_shape=(1, 8, 8), seconds_per_batch=0.1, evaluation=wrong)
    assert error.value.status == "INVALID_ARGUMENT" and "expected float32 [N, 1, 8, 8]" in error.value.message


def _stalled_benchmark(release, model: bytes):
    """A Benchmark stream that sends its settings and half the model, then nothing until ``release``."""
    info = apb.BlobInfo(size_bytes=len(model), sha256=hashlib.sha256(model).hexdigest())
    yield apb.BenchmarkRequest(settings=apb.BenchmarkSettings(input_shape=[1, 8, 8], batch_sizes=[1], model=info,
                                                              seconds_per_batch=0.1, warmup_seconds=0.05))
    yield apb.BenchmarkRequest(model_chunk=model[: len(model) // 2])
    release.wait(60)


def test_a_silent_benchmark_stream_is_ended_and_frees_its_place(make_agent, onnx_model, tmp_path):
    import threading

    from tests.service_helpers import wait_for

    work = tmp_path / "work"
    work.mkdir()
    agent = make_agent(upload_idle_timeout_s=2, max_benchmarks=1, work_dir=str(work))
    model = onnx_model.read_bytes()
    release = threading.Event()
    with grpc.insecure_channel(agent.address) as channel:
        stub = apb_grpc.DeviceAgentStub(channel)
        silent = stub.Benchmark.future(_stalled_benchmark(release, model), timeout=30)
        wait_for(lambda: agent.servicer.open_benchmarks == 1, timeout_s=10, what="the silent stream to hold the place")
        code, message = _status(lambda: _raw(stub, model))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-benchmarks" in message
        assert stub.Describe(apb.DescribeRequest(), timeout=5).name == "edge0"
        with pytest.raises(grpc.RpcError) as ended:
            silent.result(timeout=30)
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "sent nothing for 2 s" in ended.value.details() and "--upload-idle-timeout" in ended.value.details()
        release.set()
        wait_for(lambda: agent.servicer.open_benchmarks == 0, timeout_s=10, what="the place to free")
        result = _raw(stub, model)
        assert result.latency[0].p50_ms > 0
    assert not list(work.iterdir())                       # the half-received model was not kept


def test_agent_limits_are_checked():
    from service.agent.server import AgentSettings
    from service.cli.main import main

    with pytest.raises(ValueError, match="rpc_threads - 2"):
        AgentSettings(max_benchmarks=7)
    with pytest.raises(ValueError, match="upload_idle_timeout_s"):
        AgentSettings(upload_idle_timeout_s=0)
    assert main(["agent", "--name", "edge0", "--max-benchmarks", "9"]) == 2


def test_the_agents_minimum_upload_rate_comes_from_its_flag(monkeypatch, capsys):
    import service.agent.server as agent_server
    from service.cli.main import main

    seen = {}
    monkeypatch.setattr(agent_server, "serve_agent", lambda listen, name, tokens, settings, **kw: seen.update(
        settings=settings))
    assert main(["agent", "--name", "edge0", "--upload-min-rate", "-1"]) == 2
    assert "--upload-min-rate" in capsys.readouterr().err and not seen
    main(["agent", "--name", "edge0", "--upload-min-rate", "4"])
    assert seen["settings"].upload_min_rate_kib_s == 4.0


def test_the_agent_takes_the_servers_bearer_tokens(make_agent, onnx_model, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# agent tokens\n{TOKEN}\n")
    tokens.chmod(0o600)
    agent = make_agent(token_file=tokens)
    model = onnx_model.read_bytes()
    with grpc.insecure_channel(agent.address) as channel:
        stub = apb_grpc.DeviceAgentStub(channel)
        code, message = _status(lambda: stub.Describe(apb.DescribeRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "missing credentials" in message
        code, _ = _status(lambda: _raw(stub, model))                              # client stream: same refusal
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, message = _status(lambda: stub.Describe(apb.DescribeRequest(), metadata=(("authorization",
                                                                                        "Bearer wrong"),)))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "invalid bearer token" in message
        assert _raw(stub, model, metadata=(("authorization", f"Bearer {TOKEN}"),)).latency[0].runs > 0
    with AgentClient(agent.address, token=TOKEN) as client:
        assert client.describe().name == "edge0"
    with AgentClient(agent.address, name="edge0") as client, pytest.raises(AgentError) as error:
        client.describe()
    assert error.value.status == "UNAUTHENTICATED" and "--agent-token-file" in error.value.message


def test_interprune_agent_serves_until_sigterm(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    tokens.chmod(0o600)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), INTERPRUNE_TOKENS="")
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "agent", "--listen", "127.0.0.1:0", "--name",
                                "box1", "--token-file", str(tokens)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert line.startswith("interprune agent box1: serving on 127.0.0.1:") and "token auth" in line, line
        port = int(line.split("127.0.0.1:")[1].split()[0])
        with AgentClient(f"127.0.0.1:{port}", token=TOKEN) as client:
            assert client.describe().name == "box1"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_refuses_a_malformed_agent_flag(tmp_path, capsys):
    from service.cli.main import main

    assert main(["serve", "--state-dir", str(tmp_path / "state"), "--agent", "edge0"]) == 2
    assert "expected NAME=HOST:PORT" in capsys.readouterr().err
    assert main(["agent", "--name", "no spaces please"]) == 2


@pytest.mark.gpu
def test_the_tensorrt_backend_builds_times_and_evaluates_an_engine(make_agent, onnx_model, eval_npz):
    from exporters import evaluate_onnx, tensorrt_available

    available, reason = tensorrt_available()
    if not available:
        pytest.skip(reason)
    agent = make_agent()
    with AgentClient(agent.address) as client:
        assert "tensorrt" in client.describe().backends
        result = client.benchmark(onnx_model, input_shape=(1, 8, 8), batch_sizes=(1, 8), seconds_per_batch=0.3,
                                  warmup_seconds=0.1, evaluation=eval_npz, backend="tensorrt", precision="fp32")
    assert result.backend == "tensorrt:cuda" and result.precision == "fp32" and result.build_seconds > 0
    for row in result.latency:
        assert not row.error and 0 < row.p50_ms <= row.p90_ms <= row.p99_ms
    data = np.load(eval_npz)
    local = evaluate_onnx(onnx_model, data["images"], data["labels"])
    assert result.accuracy.num_images == 120 and abs(result.accuracy.top1 - local.top1) <= 2 / 120
    assert not result.notes, "accuracy came from the engine itself"
