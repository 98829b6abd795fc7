"""``serve --executor ray --ray-address ray://HOST:PORT``: the server as a Ray Client of a cluster it does not run
on, as a user starts both (``ray start --head --ray-client-server-port``, then ``interprune serve``), each its own
process. A job submitted with the CLI runs as a Ray task and records its node; a cancel reaches a running one.
Slow (two Ray processes trees start, ~40 s on two cores): ``pytest -m slow tests/test_ray_client.py``."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.client import Client, JobState
from tests.service_helpers import data_file, long_finetune, model_file, tiny_spec, wait_for  # noqa: F401
from tests.test_service_cli import free_port

pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[dev]' or '.[ray]')")
pytestmark = [pytest.mark.slow, pytest.mark.ray]

BIN = Path(sys.executable).parent


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_client_server(tmp_path_factory):
    """(the server's address, its log): a one-node Ray head with a Ray Client server, and ``interprune serve``
    reaching it at ray://."""
    tmp = tmp_path_factory.mktemp("ray-client")
    head_port, client_port, listen = free_port(), free_port(), f"127.0.0.1:{free_port()}"
    head = _start([str(BIN / "ray"), "start", "--head", "--block", "--port", str(head_port),
                   "--ray-client-server-port", str(client_port), "--num-cpus", "1", "--include-dashboard", "false",
                   "--disable-usage-stats", "--temp-dir", str(tmp / "ray")], tmp / "head.log")
    serve = None
    try:
        serve = _start([str(BIN / "interprune"), "serve", "--listen", listen, "--state-dir", str(tmp / "state"),
                        "--executor", "ray", "--ray-address", f"ray://127.0.0.1:{client_port}"], tmp / "serve.log")
        deadline = time.monotonic() + 120
        while "serving on" not in (tmp / "serve.log").read_text():
            assert serve.poll() is None and head.poll() is None and time.monotonic() < deadline, \
                (tmp / "head.log").read_text()[-2000:] + (tmp / "serve.log").read_text()[-2000:]
            time.sleep(0.5)
        yield listen, tmp / "serve.log"
    finally:
        if serve is not None:
            _stop(serve)
        _stop(head)


def test_a_job_runs_on_the_cluster_through_ray_client_and_a_cancel_reaches_it(ray_client_server, model_file,
                                                                             data_file):
    address, log = ray_client_server
    assert "jobs on Ray at ray://" in log.read_text()
    with Client(address) as client:
        done = client.wait(client.submit(tiny_spec(model_file, data_file)).id, timeout_s=300)
        assert done.state == JobState.SUCCEEDED, done.message
        assert done.worker_node.startswith("ray node ") and done.result.macs_reduction == pytest.approx(0.5, abs=0.1)
        job = client.submit(tiny_spec(model_file, data_file, finetune=long_finetune()))
        wait_for(lambda: (j := client.get(job.id)).progress and j.progress.stage == "finetune", timeout_s=120,
                 what="the job to fine-tune")
        start = time.monotonic()
        client.cancel(job.id)
        cancelled = client.wait(job.id, timeout_s=120)
        assert cancelled.state == JobState.CANCELLED and time.monotonic() - start < 30, cancelled.message
