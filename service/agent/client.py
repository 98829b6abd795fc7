"""Talking to device agents: the client the server and the job workers use, and the server's list of agents.

    agents = parse_agents(["edge0=10.0.0.7:50052"], agents_file="agents.json")   # name -> AgentEndpoint
    with AgentClient(agents["edge0"].address, token=agents["edge0"].token()) as agent:
        info = agent.describe()                                   # interprune.v1.DeviceInfo
        result = agent.benchmark(Path("model.onnx"), input_shape=(3, 32, 32), batch_sizes=(1, 8),
                                 evaluation=Path("eval.npz"))     # interprune.v1.BenchmarkResult

An agents file is JSON: ``{"edge0": "10.0.0.7:50052", "jetson1": {"address": "jetson1:50052",
"token_file": "/etc/interprune/jetson1.token"}}``. Agents without a token file of their own use the server's
``--agent-token-file`` (or ``$INTERPRUNE_AGENT_TOKEN``). Every failure is an ``AgentError`` with the gRPC status
name and a message that says which agent and what to check.
"""
from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Iterator

import grpc

from service._proto.interprune.v1 import compression_pb2 as pb
from service._proto.interprune.v1 import device_agent_pb2 as apb
from service._proto.interprune.v1 import device_agent_pb2_grpc as apb_grpc
from service._proto.interprune.v1 import device_pb2 as dpb
from service.core.hashing import sha256_file

CHUNK_BYTES = 1 << 20
AGENT_TOKEN_ENV = "INTERPRUNE_AGENT_TOKEN"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
_UNREACHABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")


class AgentError(Exception):
    """A device agent refused or could not be reached; ``status`` is the gRPC status name."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message

    @property
    def unreachable(self) -> bool:
        return self.status in _UNREACHABLE


@dataclass(frozen=True)
class AgentEndpoint:
    name: str
    address: str                                   # HOST:PORT
    token_file: str | None = None

    def token(self) -> str | None:
        from service.core.auth import read_client_token

        if self.token_file:
            return read_client_token(self.token_file)
        return os.environ.get(AGENT_TOKEN_ENV) or None


# --- the server's list of agents -------------------------------------------------------------------------

def parse_agents(specs: Iterable[str] = (), agents_file: str | Path | None = None,
                 token_file: str | None = None) -> dict[str, AgentEndpoint]:
    """Agents from ``NAME=HOST:PORT`` strings and a JSON file (the strings win); ValueError when malformed."""
    agents: dict[str, AgentEndpoint] = {}
    if agents_file is not None:
        agents.update(_load_agents_file(Path(agents_file), token_file))
    for spec in specs:
        name, sep, address = spec.partition("=")
        if not sep:
            raise ValueError(f"--agent {spec!r}: expected NAME=HOST:PORT, e.g. edge0=10.0.0.7:50052")
        agents[name.strip()] = _endpoint(name.strip(), address.strip(), token_file, f"--agent {spec!r}")
    return dict(sorted(agents.items()))


def _load_agents_file(path: Path, token_file: str | None) -> dict[str, AgentEndpoint]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the agents file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"the agents file {path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f'the agents file {path} must be a JSON object: {{"edge0": "HOST:PORT", ...}}')
    agents = {}
    for name, value in data.items():
        where = f"{path}: agent {name!r}"
        if isinstance(value, str):
            value = {"address": value}
        if not isinstance(value, dict) or not isinstance(value.get("address"), str) or \
                set(value) - {"address", "token_file"}:
            raise ValueError(f'{where}: expected "HOST:PORT" or {{"address": "HOST:PORT", "token_file": "..."}}')
        own = value.get("token_file")
        if own is not None:
            own = str((path.parent / own).resolve()) if not Path(own).is_absolute() else own
        agents[name] = _endpoint(name, value["address"], own or token_file, where)
    return agents


def _endpoint(name: str, address: str, token_file: str | None, where: str) -> AgentEndpoint:
    if not _NAME.match(name):
        raise ValueError(f"{where}: agent names are 1-64 letters, digits, '_', '.', '-' (used as agent:NAME)")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{where}: address {address!r} is not HOST:PORT")
    return AgentEndpoint(name, address, token_file)


# --- the client ------------------------------------------------------------------------------------------

class AgentClient:
    """One device agent at ``address``; ``token`` is sent as a bearer token."""

    def __init__(self, address: str, token: str | None = None, name: str = "") -> None:
        self.address, self.name = address, name or address
        options = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]
        self._channel = grpc.insecure_channel(address, options)
        self._stub = apb_grpc.DeviceAgentStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self, timeout_s: float = 5.0) -> dpb.DeviceInfo:
        try:
            return self._stub.Describe(apb.DescribeRequest(), timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise self._error(error) from None

    def benchmark(self, model: Path, *, input_shape: tuple[int, ...], batch_sizes: Iterable[int] = (1,),
                  precision: str = "fp32", backend: str = "auto", seconds_per_batch: float = 3.0,
                  warmup_seconds: float = 0.5, evaluation: Path | None = None, calibration: Path | None = None,
                  threads: int | None = None, label: str = "", timeout_s: float = 3600.0) -> apb.BenchmarkResult:
        """Send the model (and data) and wait for the agent's result; ``timeout_s`` covers build and timing."""
        blobs = {"model": Path(model), "evaluation": evaluation, "calibration": calibration}
        settings = apb.BenchmarkSettings(batch_sizes=list(batch_sizes), precision=_precision(precision),
                                         backend=backend,
                                         seconds_per_batch=seconds_per_batch, warmup_seconds=warmup_seconds,
                                         input_shape=list(input_shape), label=label)
        if threads:
            settings.threads = threads
        for key, path in blobs.items():
            if path is not None:
                getattr(settings, key).CopyFrom(apb.BlobInfo(size_bytes=path.stat().st_size, sha256=sha256_file(path)))

        def messages() -> Iterator[apb.BenchmarkRequest]:
            yield apb.BenchmarkRequest(settings=settings)
            for key, path in blobs.items():
                if path is None:
                    continue
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
                        yield apb.BenchmarkRequest(**{f"{key}_chunk": block})
        try:
            return self._stub.Benchmark(messages(), timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise self._error(error) from None

    def _error(self, error: grpc.RpcError) -> AgentError:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = (error.details() if hasattr(error, "details") else "") or str(error)
        where = f"agent {self.name} at {self.address}"
        if code.name in _UNREACHABLE:
            return AgentError(code.name, f"{where} is unreachable or stopped answering ({details}); is "
                                         "`interprune agent` running there, and is the address right?")
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return AgentError(code.name, f"{where} refused the token ({details}); give the server the agent's "
                                         "token (serve --agent-token-file, or token_file in --agents-file)")
        return AgentError(code.name, f"{where}: {details}")


def _precision(name: str) -> int:
    from service.core.wire import PRECISION_TO_PROTO

    try:
        return PRECISION_TO_PROTO[name]
    except KeyError:
        raise AgentError("INVALID_ARGUMENT", f"precision {name!r}: choose fp32, fp16 or int8") from None


def list_devices(agents: dict[str, AgentEndpoint], timeout_s: float = 3.0) -> list[pb.Device]:
    """Ask every agent for its description at once; an agent that does not answer is listed unhealthy."""
    def probe(agent: AgentEndpoint) -> pb.Device:
        device = pb.Device(name=agent.name, address=agent.address)
        try:
            with AgentClient(agent.address, agent.token(), agent.name) as client:
                device.info.CopyFrom(client.describe(timeout_s))
            device.healthy = True
        except (AgentError, ValueError) as exc:          # ValueError: AuthConfigError (unreadable token file)
            device.error = str(exc)
        return device

    if not agents:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(agents)), thread_name_prefix="list-devices") as pool:
        return list(pool.map(probe, sorted(agents.values(), key=lambda a: a.name)))


# --- conversions -----------------------------------------------------------------------------------------

def info_to_proto(info) -> dpb.DeviceInfo:
    """A ``service.agent.device_info.DeviceInfo`` as its message."""
    values = {f.name: getattr(info, f.name) for f in fields(info)}
    return dpb.DeviceInfo(**values)


def info_to_dict(message: dpb.DeviceInfo) -> dict:
    """A ``DeviceInfo`` message as plain JSON-able data (every field, empty ones included)."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        out[field.name] = dict(value) if field.message_type else (list(value) if field.is_repeated else value)
    return out
