"""Jobs on a Ray cluster (``serve --executor ray``), on a local multi-node simulation: a head with no CPUs and two
worker nodes of one CPU each, told apart by a custom resource (``node_a``, ``node_b``). The server reaches Ray as
a driver; its workers reach the server's stores only through the JobWorker protocol.

The tests share one cluster (starting one costs ~10 s on two cores) and run in file order: the last one removes
nodes."""
from __future__ import annotations

import re
import time
from dataclasses import replace

import pytest

from pruning.compress import FinetuneSpec
from service.client import Client, JobState
from tests.service_helpers import (data_file, long_finetune, make_server, model_file, tiny_spec,  # noqa: F401
                                   wait_for)

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[dev]' or '.[ray]')")
pytestmark = pytest.mark.ray

_NODE = re.compile(r"ray node ([0-9a-f]+) \(")
WAIT_S = 300           # a job that has not ended by then fails the test instead of hanging the suite


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = {name: cluster.add_node(num_cpus=1, resources={name: 1}) for name in ("node_a", "node_b")}
    cluster.wait_for_nodes()
    cluster.named = nodes
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def ray_server(cluster, tmp_path_factory):
    from service.api.server import create_server

    server, port = create_server("127.0.0.1:0", tmp_path_factory.mktemp("ray-state"), executor="ray",
                                 ray_address=cluster.address, job_workers=0, watch_poll_s=0.05, warm_spare=False)
    server.start()
    server.address = f"127.0.0.1:{port}"
    yield server
    server.stop(grace_s=0.5)


@pytest.fixture
def client(ray_server):
    with Client(ray_server.address) as client:
        yield client


def _node_names() -> dict[str, str]:
    """Ray node id -> the custom resource that names it (node_a, node_b, ...)."""
    return {n["NodeID"]: name for n in ray.nodes() if n["Alive"]
            for name in n["Resources"] if name.startswith("node_")}


def _node_id(job) -> str:
    found = _NODE.search(job.worker_node or "")
    assert found, f"job {job.id} records no Ray node: {job.worker_node!r}"
    return found.group(1)


def _in_finetune(client, job_id, timeout_s=90):
    def ready():
        job = client.get(job_id)
        return job if job.worker_node and job.progress and job.progress.stage == "finetune" else None
    return wait_for(ready, timeout_s=timeout_s, what=f"job {job_id} to fine-tune on a node")


def test_jobs_spread_over_the_nodes_and_match_the_local_executor(ray_server, client, make_server, model_file,
                                                                 data_file, tmp_path, capsys):
    from service.cli.main import main

    assert ray_server.scheduler.settings.max_workers == 2          # one CPU slot per worker node
    spec = tiny_spec(model_file, data_file)                        # benchmark targets (): no latency runs
    jobs = [client.submit(spec) for _ in range(4)]
    done = [client.wait(job.id, timeout_s=WAIT_S) for job in jobs]
    assert [j.state for j in done] == [JobState.SUCCEEDED] * 4, [j.message for j in done]
    names = _node_names()
    placed = [names.get(_node_id(j)) for j in done]
    assert set(placed) == {"node_a", "node_b"}, placed
    events = list(client.watch(jobs[0].id))                        # progress from a remote node, in order
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert {"load", "prune", "export"} <= {e.stage for e in events if e.type == "progress"}

    local = make_server()                                          # the same job with local worker processes
    with Client(local.address) as local_client:
        reference = local_client.wait(local_client.submit(spec).id, timeout_s=WAIT_S)
    assert reference.state == JobState.SUCCEEDED and reference.worker_node == "local"
    for job in done:                                               # content-addressed: same id = same bytes
        for key in ("plan", "weights"):
            assert job.result.outputs[key] == reference.result.outputs[key], (key, job.worker_node)
    for key in ("plan", "weights", "onnx", "report_json"):         # every output downloads, digest-checked
        client.download(done[-1].result.outputs[key], tmp_path / key)

    assert main(["get", done[0].id, "--server", ray_server.address]) == 0
    assert f"worker: {done[0].worker_node}" in capsys.readouterr().out
    listing = client.devices()
    assert listing.executor == "ray"
    workers = {names[n.node_id]: n for n in listing.nodes if n.node_id in names}
    assert set(workers) == {"node_a", "node_b"}
    assert all(n.alive and n.cpus == 1 and n.gpus == 0 for n in workers.values())
    assert workers["node_a"].resources["node_a"] == 1
    assert main(["devices", "--server", ray_server.address]) == 0
    assert "RAY NODE" in capsys.readouterr().out


def test_cancel_reaches_a_job_on_a_remote_node(ray_server, client, model_file, data_file):
    job = client.submit(tiny_spec(model_file, data_file, finetune=long_finetune()))
    running = _in_finetune(client, job.id)
    assert _node_id(running) in _node_names()
    node = _node_id(running)
    ref = ray_server.scheduler._running[job.id].handle.ref
    assert _free_cpus(ray_server, node) == 0                       # the job holds the node's one CPU
    start = time.monotonic()
    client.cancel(job.id)
    cancelled = client.wait(job.id, timeout_s=WAIT_S)
    assert cancelled.state == JobState.CANCELLED and time.monotonic() - start < 10, cancelled.message
    ready, _ = ray.wait([ref], timeout=5)
    assert ready, "the Ray task has ended"
    wait_for(lambda: _free_cpus(ray_server, node) == 1, timeout_s=10, what="the node's CPU to be free again")
    wait_for(lambda: job.id not in ray_server.scheduler._running, timeout_s=5, what="the scheduler to reap it")


def test_a_job_no_node_can_take_waits_in_rays_queue_until_cancelled(ray_server, client, model_file, data_file):
    """Eight CPUs: no node has them, so the task never starts and the worker cannot stop by itself; the scheduler
    stops the task through Ray (``ray.cancel``) after the cooperative period."""
    spec = tiny_spec(model_file, data_file)
    job = client.submit(replace(spec, compress=replace(spec.compress, threads=8)))
    wait_for(lambda: job.id in ray_server.scheduler._running, timeout_s=10, what="the job to be handed to Ray")
    ref = ray_server.scheduler._running[job.id].handle.ref
    assert not ray.wait([ref], timeout=1)[0] and not client.get(job.id).worker_node     # waiting for a node
    start = time.monotonic()
    cancelled = client.wait(client.cancel(job.id).id, timeout_s=WAIT_S)
    assert cancelled.state == JobState.CANCELLED and time.monotonic() - start < 10
    assert "was stopped" in cancelled.message                       # by the executor, not by the worker
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=5)


def _free_cpus(server, node_id: str) -> float:
    return next(n.free_cpus for n in server.scheduler.executor.nodes() if n.node_id == node_id)


def test_a_lost_node_fails_its_job_or_reruns_it_elsewhere(cluster, ray_server, client, model_file, data_file,
                                                         tmp_path):
    """Both worker nodes die mid-job: the job without retry_on_crash fails naming its node; the one with it is
    re-queued, waits for a node, and runs on the node that joins; nothing it needs or made is lost."""
    retried = client.submit(tiny_spec(model_file, data_file, finetune=FinetuneSpec(
        minutes=0.1, batch_size=32, validation_images=0, augment=False)), retry_on_crash=True)
    plain = client.submit(tiny_spec(model_file, data_file, finetune=long_finetune()))
    nodes = {_node_id(_in_finetune(client, job.id)) for job in (retried, plain)}
    assert len(nodes) == 2
    names = _node_names()
    for node_id in nodes:
        cluster.remove_node(cluster.named.pop(names[node_id]), allow_graceful=False)

    failed = client.wait(plain.id, timeout_s=WAIT_S)
    assert failed.state == JobState.FAILED and failed.failure.kind == "crashed", failed.message
    assert failed.message.startswith("the Ray node running the job died (ray node ")
    assert _node_id(failed) in nodes and _node_id(failed) in failed.failure.message
    assert failed.failure.error_type == "NodeDied"
    requeued = wait_for(lambda: [e for e in client.watch(retried.id, for_s=1) if "re-queued" in e.message],
                        timeout_s=30, what="the retried job to be re-queued")
    assert "node running the job died" in requeued[0].message and "attempt 1 of 3" in requeued[0].message
    assert _NODE.search(requeued[0].message).group(1) in nodes

    cluster.named["node_c"] = cluster.add_node(num_cpus=1, resources={"node_c": 1})
    cluster.wait_for_nodes()
    done = client.wait(retried.id, timeout_s=WAIT_S)
    assert done.state == JobState.SUCCEEDED, done.message
    assert _node_names()[_node_id(done)] == "node_c"
    assert ray_server.store.get(retried.id).attempts == 2
    for key, artifact_id in done.result.outputs.items():          # the outputs and the inputs are all there
        assert client.download(artifact_id, tmp_path / key).stat().st_size > 0
    for ref in (done.spec.model.weights, done.spec.data.artifact):
        assert ray_server.artifacts.has(ref.removeprefix("artifacts/"))
