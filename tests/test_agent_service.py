"""Device agents through the service: a job benchmarks on local:cpu and on agent:edge0 side by side (latency and the
accuracy the agent measured); an agent that dies mid-benchmark costs only its own target; ListDevices, unknown
agents and the server's agent list."""
from __future__ import annotations

import json
import socket

import pytest

from service.agent.server import DeviceAgentServicer
from service.agent.client import AgentEndpoint, parse_agents
from service.client import Client, InterpruneRPCError, JobState, StatusCode
from pipeline.spec import BenchmarkSpec
from tests.service_helpers import data_file, make_agent, make_server, model_file, tiny_spec  # noqa: F401

TARGETS = ("local:cpu", "agent:edge0")


class DiesAfterReceiving(DeviceAgentServicer):
    """An agent that goes away (its server stops, cutting the call) once the model has arrived."""

    def on_received(self, settings, context) -> None:
        from service.core.errors import Unavailable

        self.server.stop(0)
        self.server.stopped.set()
        raise Unavailable("gone")            # nothing more runs here, as after a crash


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def bench(targets=TARGETS) -> BenchmarkSpec:
    return BenchmarkSpec(targets=targets, batch_sizes=(1,), seconds_per_batch=0.2)


def test_a_job_reports_local_and_agent_latency_and_the_agents_accuracy(make_server, make_agent, model_file,
                                                                       data_file, tmp_path):
    from pipeline.report import summary_table

    agent = make_agent("edge0")
    server = make_server(agents={"edge0": AgentEndpoint("edge0", agent.address)})
    with Client(server.address) as client:
        job = client.wait(client.submit(tiny_spec(model_file, data_file, benchmark=bench())).id)
        assert job.state == JobState.SUCCEEDED, job.message
        result = job.result
        assert result.target_errors == {}
        rows = {(r.target, r.model, r.batch_size): r for r in result.latency}
        assert set(rows) == {(t, m, 1) for t in TARGETS for m in ("original", "compressed")}
        for row in rows.values():
            assert row.runs > 0 and not row.error and 0 < row.p50_ms <= row.p90_ms <= row.p99_ms
            assert row.stable in (True, False)                  # judged on both sides, carried over gRPC
        assert rows["agent:edge0", "compressed", 1].backend == "onnxruntime:cpu"
        measured = result.target_accuracy["agent:edge0"]
        exported = result.accuracy["exported"]
        assert measured.backend == "onnxruntime:cpu" and measured.precision == "fp32"
        assert measured.compressed.num_images == exported.num_images == 100
        assert measured.compressed.top1 == exported.top1         # the same ONNX file on the same images
        assert abs(measured.original.top1 - result.accuracy["original"].top1) <= 1 / 100 + 1e-9
        report = json.loads(client.download(result.outputs["report_json"], tmp_path / "report.json").read_text())
    entry = report["target_accuracy"]["agent:edge0"]
    assert entry["device_info"]["name"] == "edge0" and entry["compressed"]["top1"] == exported.top1
    assert {row["target"] for row in report["speedup"]} == set(TARGETS)
    table = summary_table(report)
    assert "local:cpu" in table and f"agent:edge0 top-1 on {entry['device']} (onnxruntime:cpu fp32, 100 images): " \
        f"original {measured.original.top1:.2%}, compressed {exported.top1:.2%}" in table


def test_an_agent_that_dies_mid_benchmark_costs_only_its_target(make_server, make_agent, model_file, data_file):
    import threading

    agent = make_agent("edge0", servicer_class=DiesAfterReceiving)
    agent.stopped = threading.Event()
    server = make_server(agents={"edge0": AgentEndpoint("edge0", agent.address)})
    with Client(server.address) as client:
        job = client.wait(client.submit(tiny_spec(model_file, data_file, benchmark=bench())).id)
    assert agent.stopped.is_set(), "the agent received the model, then stopped"
    assert job.state == JobState.SUCCEEDED, job.message
    result = job.result
    assert {(r.target, r.model) for r in result.latency} == {("local:cpu", "original"), ("local:cpu", "compressed")}
    assert all(r.runs > 0 and not r.error for r in result.latency)
    error = result.target_errors["agent:edge0"]
    assert error.startswith("benchmarking the compressed model failed: ")
    assert f"agent edge0 at {agent.address} is unreachable or stopped answering" in error
    assert "is `interprune agent` running there" in error
    assert "agent:edge0" not in result.target_accuracy and set(result.target_errors) == {"agent:edge0"}


def test_list_devices_shows_healthy_and_unreachable_agents(make_server, make_agent, capsys):
    from service.cli.main import main

    agent = make_agent("edge0")
    gone = free_address()
    server = make_server(run_jobs=False, agents=parse_agents([f"edge0={agent.address}", f"gone={gone}"]))
    with Client(server.address) as client:
        devices = {d.name: d for d in client.list_devices()}
    assert list(devices) == ["edge0", "gone"]
    edge0, unreachable = devices["edge0"], devices["gone"]
    assert edge0.healthy and not edge0.error and edge0.address == agent.address
    assert edge0.info["name"] == "edge0" and edge0.info["cpu_cores"] >= 1
    assert "onnxruntime:cpu" in edge0.info["backends"]
    assert not unreachable.healthy and unreachable.info is None
    assert f"agent gone at {gone} is unreachable" in unreachable.error
    assert main(["devices", "--server", server.address]) == 0
    out = capsys.readouterr().out
    assert "agent:edge0" in out and "healthy" in out and "agent:gone" in out and "UNHEALTHY" in out
    assert main(["devices", "--server", server.address, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["devices"]
    assert [(d["name"], d["healthy"]) for d in listed] == [("edge0", True), ("gone", False)]


def test_unknown_agents_are_refused_at_submit(make_server, model_file, data_file):
    server = make_server(run_jobs=False, agents=parse_agents(["edge0=127.0.0.1:1"]))
    bare = make_server(run_jobs=False)
    spec = tiny_spec(model_file, data_file, benchmark=bench(("local:cpu", "agent:jetson9")))
    for srv, known in ((server, "this server knows agent:edge0"), (bare, "none (start the server with --agent")):
        with Client(srv.address) as client:
            with pytest.raises(InterpruneRPCError) as error:
                client.submit(spec)
            assert error.value.status == StatusCode.INVALID_ARGUMENT
            assert "unknown agent jetson9" in error.value.message and known in error.value.message
            assert client.list().jobs == []


def test_the_agent_list_comes_from_flags_and_a_json_file(tmp_path):
    path = tmp_path / "agents.json"
    path.write_text(json.dumps({"edge0": "10.0.0.7:50052", "orin": {"address": "orin.lan:50052",
                                                                   "token_file": "orin.token"}}))
    agents = parse_agents(["edge0=10.0.0.8:50052"], path, token_file="/etc/agent.token")
    assert agents == {"edge0": AgentEndpoint("edge0", "10.0.0.8:50052", "/etc/agent.token"),
                      "orin": AgentEndpoint("orin", "orin.lan:50052", str(tmp_path / "orin.token"))}
    for bad, needle in ((["edge0"], "expected NAME=HOST:PORT"), (["edge0=nohost"], "is not HOST:PORT"),
                        (["bad name=h:1"], "agent names are")):
        with pytest.raises(ValueError, match=needle):
            parse_agents(bad)
    path.write_text('["edge0"]')
    with pytest.raises(ValueError, match="must be a JSON object"):
        parse_agents([], path)
