"""The worker protocol without Ray: a job run in this process against the server's stores through the
``JobWorker`` service (what a worker on a Ray node does), job-scoped credentials, fencing of stale attempts, and
digests checked on both ends."""
from __future__ import annotations

import hashlib
from concurrent import futures

import grpc
import pytest

from service._proto.interprune.v1 import worker_pb2_grpc as wpb_grpc
from service.api.worker_servicer import JobWorkerServicer
from service.core.errors import FailedPrecondition, Internal, NotFound, Unauthenticated
from service.jobs.artifacts import ArtifactStore
from service.jobs.job_tokens import JobCredentials, JobTokens
from service.jobs.remote_store import WorkerEndpoint, connect
from service.jobs.sqlite_store import SqliteJobStore
from service.jobs.store import JobState
from service.jobs.worker import run_job
from tests.service_helpers import data_file, make_agent, model_file, tiny_spec  # noqa: F401


@pytest.fixture
def home(tmp_path):
    """The server's side: its stores and a gRPC server with only the JobWorker service."""
    store = SqliteJobStore(tmp_path / "jobs.db")
    artifacts = ArtifactStore(tmp_path / "artifacts")
    tokens = JobTokens()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    wpb_grpc.add_JobWorkerServicer_to_server(JobWorkerServicer(store, artifacts, tokens), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    home = type("Home", (), {})()
    home.store, home.artifacts, home.tokens = store, artifacts, tokens
    home.endpoint = WorkerEndpoint(f"127.0.0.1:{port}")
    yield home
    server.stop(0)
    store.close()


def _running_job(home, model_file, data_file, **spec_args):
    weights = home.artifacts.put_file(model_file, "model.pt", "model").id
    data = home.artifacts.put_file(data_file, "digits.npz", "dataset").id
    spec = tiny_spec(f"artifact:{weights}", f"artifact:{data}", **spec_args).to_dict()
    home.store.create(spec)
    job = home.store.claim_next()
    return job, home.tokens.credentials(job.id, job.attempts)


def test_a_job_runs_through_the_worker_protocol(home, model_file, data_file, tmp_path):
    job, credentials = _running_job(home, model_file, data_file)
    store, artifacts = connect(home.endpoint, credentials)
    store.set_worker(job.id, 4242, "ray node abc (10.0.0.7)")
    run_job(store.get(job.id), store, artifacts, tmp_path / "work", threads=1)
    store.close()

    done = home.store.get(job.id)
    assert done.state == JobState.SUCCEEDED, done.message
    assert (done.worker_pid, done.worker_node) == (4242, "ray node abc (10.0.0.7)")
    outputs = done.result["outputs"]
    assert set(outputs) >= {"plan", "weights", "onnx", "report_json", "report_html"}
    for artifact_id in outputs.values():            # kept by the server, under the digest of their bytes
        blob = home.artifacts.path(artifact_id)
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == artifact_id
    events = home.store.events(job.id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    stages = [e.stage for e in events if e.type == "progress"]
    assert stages and stages.index("export") > stages.index("prune")
    assert events[-1].state == JobState.SUCCEEDED and events[-1].terminal


def test_credentials_open_one_job_and_one_attempt(home, model_file, data_file):
    job, credentials = _running_job(home, model_file, data_file, finetune=None)
    forged = JobCredentials(job.id, credentials.attempt, "0" * 64)
    with pytest.raises(Unauthenticated):
        connect(home.endpoint, forged)[0].get(job.id)
    store, artifacts = connect(home.endpoint, credentials)
    assert store.get(job.id).spec["compress"]["model"]["arch"] == "demo/small_cnn"
    other = home.artifacts.put_file(__file__, "test.py", "other").id
    with pytest.raises(NotFound, match="not an input of this job"):
        artifacts.get(other)                                    # only the inputs its spec names
    with pytest.raises(ValueError, match="credentials are for job"):
        store.get("job-someone-else")

    home.store.transition(job.id, JobState.RUNNING, JobState.QUEUED, message="re-queued: node lost")
    assert home.store.claim_next().attempts == 2                # the job runs again elsewhere
    with pytest.raises(FailedPrecondition, match="attempt 1 is over"):
        store.add_progress(job.id, "finetune", 0.5, "stale")
    with pytest.raises(FailedPrecondition):
        store.transition(job.id, JobState.RUNNING, JobState.SUCCEEDED, result={})
    fresh, _ = connect(home.endpoint, home.tokens.credentials(job.id, 2))
    fresh.add_progress(job.id, "load", 0.0, "attempt 2")
    fresh.transition(job.id, JobState.RUNNING, JobState.FAILED, message="x")
    fresh.transition(job.id, JobState.RUNNING, JobState.FAILED, message="x")      # a retried call: same answer
    assert home.store.get(job.id).state == JobState.FAILED


def test_a_corrupted_download_is_never_used(home, model_file, data_file, tmp_path, monkeypatch):
    job, credentials = _running_job(home, model_file, data_file)
    weights = job.spec["compress"]["model"]["weights"].removeprefix("artifact:")
    original = home.artifacts.read_chunks

    def flipped(artifact_id, chunk_bytes=1 << 20):
        for chunk in original(artifact_id, chunk_bytes):
            yield bytes([chunk[0] ^ 1]) + chunk[1:]
    monkeypatch.setattr(home.artifacts, "read_chunks", flipped)
    _, artifacts = connect(home.endpoint, credentials)
    with pytest.raises(Internal, match="arrived corrupted"):
        artifacts.materialize(weights, tmp_path / "node" / "weights.pt")
    assert not list((tmp_path / "node").iterdir()), "neither the file nor a partial one is left"


def test_worker_urls_open_the_remote_stores(home, model_file, data_file, monkeypatch):
    from service.jobs.backends import CREDENTIALS_ENV, open_artifact_store, open_job_store

    job, credentials = _running_job(home, model_file, data_file)
    url = home.endpoint.url
    with pytest.raises(ValueError, match=CREDENTIALS_ENV):
        open_job_store(url)
    monkeypatch.setenv(CREDENTIALS_ENV, credentials.to_text())
    assert open_job_store(url).get(job.id).state == JobState.RUNNING
    weights = job.spec["compress"]["model"]["weights"].removeprefix("artifact:")
    assert open_artifact_store(url).get(weights).name == "model.pt"


def test_jobs_ask_ray_for_a_gpu_only_when_a_local_target_needs_one():
    from service.jobs.ray_executor import job_resources

    def spec(targets=(), threads=None, **prune):
        return {"compress": {"threads": threads, "prune": prune}, "benchmark": {"targets": list(targets)}}
    assert job_resources(spec(), 1.0) == (1.0, 0)
    assert job_resources(spec(["local:cpu", "agent:jetson"], threads=4), 1.0) == (4.0, 0)   # agents are remote
    assert job_resources(spec(["local:cuda"]), 2.0) == (2.0, 1)
    assert job_resources(spec(["local:tensorrt"]) | {"benchmark": {"skip": True, "targets": ["local:tensorrt"]}}) \
        == (1.0, 0)
    assert job_resources(spec(latency_budget_ms=2.0, latency_target="local:tensorrt")) == (1.0, 1)
    assert job_resources(spec(latency_target="local:cuda")) == (1.0, 0)     # no budget: the target is unused


def test_serve_flags_choose_the_executor(monkeypatch):
    import service.api.server as server_module
    from service.cli.main import main

    seen = []
    monkeypatch.setattr(server_module, "serve", lambda listen, state, settings, ready=None: seen.append(settings))
    assert main(["serve", "--state-dir", "s", "--executor", "ray", "--ray-address", "10.0.0.2:6379",
                 "--advertise-address", "10.0.0.1:50051", "--ray-cpus-per-job", "2"]) == 0
    assert main(["serve", "--state-dir", "s"]) == 0
    ray, local = seen
    assert (ray.executor, ray.ray_address, ray.advertise_address, ray.ray_cpus_per_job) == \
        ("ray", "10.0.0.2:6379", "10.0.0.1:50051", 2.0)
    assert ray.job_workers == 0, "with Ray, as many jobs at once as the cluster has CPU slots"
    assert (local.executor, local.job_workers) == ("local", 1)


def test_a_refused_executor_leaves_the_state_folder_usable(tmp_path):
    from service.api.server import create_server
    from service.core.errors import FailedPrecondition

    with pytest.raises(FailedPrecondition, match="tls-client-ca"):
        create_server("127.0.0.1:0", tmp_path, executor="ray", tls_client_ca="ca.pem")
    with pytest.raises(FailedPrecondition, match="unknown executor 'slurm'"):
        create_server("127.0.0.1:0", tmp_path, executor="slurm")
    server, _ = create_server("127.0.0.1:0", tmp_path, warm_spare=False)     # the lock was released
    server.stop(grace_s=0)


def _small_cnn_onnx(folder, external: bool = False):
    """The demo CNN (1x8x8 in, 10 classes) as ``small_cnn.onnx``; ``external``: its weights in
    ``small_cnn.onnx.data`` beside it, as torch.onnx.export's default writer lays them out."""
    import onnx
    import torch

    from exporters.onnx import export_onnx
    from pruning import zoo

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    path = export_onnx(zoo.create_model("demo/small_cnn").eval(), folder / "small_cnn.onnx",
                       torch.zeros(1, 1, 8, 8)).path
    if external:
        onnx.save(onnx.load(path), path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location="small_cnn.onnx.data", size_threshold=0)
    return path


@pytest.mark.parametrize("external", [False, True], ids=["one-file", "external-data"])
def test_an_onnx_model_job_runs_through_the_worker_protocol(home, data_file, tmp_path, external):
    # the worker service served a job's weights and data but not its ONNX model: "artifact ... is not an input of
    # this job", so every arch 'onnx' job failed on a Ray node
    path = _small_cnn_onnx(tmp_path / "in", external)
    model = home.artifacts.put_file(path, "small_cnn.onnx", "onnx").id
    data = home.artifacts.put_file(data_file, "digits.npz", "dataset").id
    spec = tiny_spec(None, f"artifact:{data}", arch="onnx").to_dict()
    spec["compress"]["model"]["model_file"] = f"artifact:{model}"
    if external:
        weights = home.artifacts.put_file(path.with_name("small_cnn.onnx.data"), "small_cnn.onnx.data", "other").id
        spec["compress"]["model"]["external_data"] = {"small_cnn.onnx.data": f"artifact:{weights}"}
    home.store.create(spec)
    job = home.store.claim_next()
    store, artifacts = connect(home.endpoint, home.tokens.credentials(job.id, job.attempts))
    run_job(store.get(job.id), store, artifacts, tmp_path / "work", threads=1)
    store.close()
    done = home.store.get(job.id)
    assert done.state == JobState.SUCCEEDED, done.message
    assert done.result["reduction"]["macs"] == pytest.approx(0.5, abs=0.1)


def test_a_worker_on_a_node_gets_its_agents_token_from_the_server(home, model_file, data_file, tmp_path, make_agent,
                                                                   monkeypatch):
    # the job's spec names the server's agent token file; a Ray node does not hold it ("cannot read token file"),
    # so every agent target of a job on a node failed when the agent wanted a token
    from pipeline.spec import BenchmarkSpec
    from service.agent import client as agent_client

    secret = "node-needs-this-0123456789"
    tokens = tmp_path / "agent.token"
    tokens.write_text(secret + "\n")
    tokens.chmod(0o600)
    agent = make_agent(token_file=tokens)
    weights = home.artifacts.put_file(model_file, "model.pt", "model").id
    data = home.artifacts.put_file(data_file, "digits.npz", "dataset").id
    spec = tiny_spec(f"artifact:{weights}", f"artifact:{data}", benchmark=BenchmarkSpec(
        targets=("agent:edge0",), batch_sizes=(1,), seconds_per_batch=0.2)).to_dict()
    spec["benchmark"] |= {"agents": {"edge0": agent.address}, "agent_token_files": {"edge0": str(tokens)}}
    home.store.create(spec)
    job = home.store.claim_next()
    store, artifacts = connect(home.endpoint, home.tokens.credentials(job.id, job.attempts))
    assert store.agent_token(job.id, "edge0") == secret
    with pytest.raises(NotFound, match="'edge1' is not a benchmark target of this job"):
        store.agent_token(job.id, "edge1")

    def no_file_here(self):
        raise OSError(f"cannot read token file {self.token_file}: No such file or directory (this node)")
    monkeypatch.setattr(agent_client.AgentEndpoint, "token", no_file_here)
    run_job(store.get(job.id), store, artifacts, tmp_path / "work", threads=1)
    store.close()
    done = home.store.get(job.id)
    assert done.state == JobState.SUCCEEDED, done.message
    assert not done.result.get("target_errors"), done.result.get("target_errors")
    rows = [r for r in done.result["latency"] if r["target"] == "agent:edge0"]
    assert rows and all(r["p50_ms"] > 0 for r in rows)
