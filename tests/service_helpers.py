"""Shared pieces of the service tests: tiny model and data files, job specs, an in-process server."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pruning.compress import CompressSpec, DataSpec, FinetuneSpec, ModelSpec, PruneSpec, ReconstructSpec
from pipeline.spec import BenchmarkSpec, GateSpec, JobSpec

ARCH = "demo/small_cnn"          # 1x8x8 input, 10 classes


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    from pruning import zoo

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "small_cnn.pt"
    torch.save(zoo.create_model(ARCH).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def data_file(tmp_path_factory) -> Path:
    """400 of scikit-learn's 8x8 digits as an .npz."""
    from pruning.data import digits_sample

    images = digits_sample().train
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, images=images.images[:400], labels=images.labels[:400])
    return path


@pytest.fixture(scope="session")
def big_data_file(tmp_path_factory) -> Path:
    """An .npz bigger than gRPC's 4 MB message limit (80,000 random 8x8 images)."""
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("big") / "big.npz"
    np.savez(path, images=rng.integers(0, 256, (80_000, 8, 8, 1), dtype=np.uint8),
             labels=rng.integers(0, 10, 80_000))
    assert path.stat().st_size > 5 << 20
    return path


def make_npz(path: Path, n: int = 200, size: int = 8, channels: int = 1, classes: int = 10) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8),
             labels=rng.integers(0, classes, n))
    return path


def tiny_spec(weights, data, *, finetune: FinetuneSpec | None = None, reconstruct: bool = False,
              benchmark: BenchmarkSpec | None = None, max_drop: float | None = None, arch: str = ARCH,
              criterion: str = "l1", target: float = 0.5) -> JobSpec:
    """A job that runs in a few seconds on one CPU core."""
    return JobSpec(
        CompressSpec(ModelSpec(arch, str(weights) if weights else None),
                     DataSpec(str(data) if data else None, calibration_images=100, evaluation_images=100),
                     PruneSpec(criterion, target_reduction=target),
                     ReconstructSpec(enabled=reconstruct),
                     finetune or FinetuneSpec(), threads=1),
        benchmark=benchmark or BenchmarkSpec(targets=()),
        gate=GateSpec(max_drop))


def long_finetune() -> FinetuneSpec:
    """Fine-tuning that lasts minutes (no validation slice, so no early stop)."""
    return FinetuneSpec(minutes=5, batch_size=32, validation_images=0, augment=False)


@pytest.fixture
def make_server(tmp_path):
    """``make_server(**ServerSettings fields)`` starts an in-process server on a free loopback port."""
    from service.api.server import create_server

    servers = []

    def make(**settings):         # no spare worker unless asked: it competes for the two CPU cores of CI
        srv, port = create_server("127.0.0.1:0", tmp_path / f"state{len(servers)}",
                                  **{"watch_poll_s": 0.05, "warm_spare": False, **settings})
        srv.start()
        srv.address = f"127.0.0.1:{port}"
        servers.append(srv)
        return srv
    yield make
    for srv in servers:
        srv.stop(grace_s=0.5)


@pytest.fixture
def server(make_server):
    return make_server()


@pytest.fixture
def client(server):
    from service.client import Client

    with Client(server.address) as c:
        yield c


def wait_for(predicate, timeout_s: float = 60.0, interval_s: float = 0.05, what: str = "condition"):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def process_gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@pytest.fixture
def make_agent():
    """Start device agents on free loopback ports; each gets ``.address``. Stopped after the test."""
    from service.agent.server import AgentSettings, DeviceAgentServicer, create_agent_server

    agents = []

    def make(name="edge0", token_file=None, servicer_class=DeviceAgentServicer, **settings):
        agent, port = create_agent_server("127.0.0.1:0", name, token_file, AgentSettings(**settings),
                                          servicer_class=servicer_class)
        agent.start()
        agent.address = f"127.0.0.1:{port}"
        agents.append(agent)
        return agent
    yield make
    for agent in agents:
        agent.stop(0)
