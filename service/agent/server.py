"""The device agent (``interprune agent``): ``interprune.v1.DeviceAgent`` on the machine a model is meant for.

    agent, port = create_agent_server("0.0.0.0:50052", "jetson0", token_file="agent.tokens")
    agent.start()
    ...
    agent.stop(grace_s=5)

``Describe`` returns ``service.agent.device_info.describe_device``; ``Benchmark`` receives the settings and the blobs
(ONNX model, evaluation data, calibration data) into a temporary folder, checks each against the size and sha256
announced in the settings, runs ``service.agent.bench.run_benchmark`` (one benchmark at a time: timings must not
share the device) and returns the result. Bearer tokens as for the server (``service.core.auth``); health checking
and reflection stay open.

A client cannot hold the agent's threads: a Benchmark stream that sends nothing for ``upload_idle_timeout_s`` ends
with DEADLINE_EXCEEDED, and at most ``max_benchmarks`` calls (receiving or waiting for the device) are open at once;
one more is refused with RESOURCE_EXHAUSTED, so Describe and health checks always find a thread.
"""
from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service._proto.interprune.v1 import common_pb2 as cpb
from service._proto.interprune.v1 import device_agent_pb2 as apb
from service._proto.interprune.v1 import device_agent_pb2_grpc as apb_grpc
from service.agent.bench import BenchSettings, Outcome, run_benchmark
from service.agent.client import info_to_proto
from service.core.auth import BearerTokenInterceptor, load_tokens
from service.agent.device_info import describe_device
from service.core.lifecycle import run_until_signalled
from service.core.wire import precision_from_proto
from service.core.errors import Cancelled, FailedPrecondition, InvalidArgument, ResourceExhausted, rpc
from service.core.streams import IdleReader, at_least_rate

log = logging.getLogger(__name__)

SERVICE_NAME = apb.DESCRIPTOR.services_by_name["DeviceAgent"].full_name
BLOBS = ("model", "evaluation", "calibration")


@dataclass(frozen=True)
class AgentSettings:
    max_model_bytes: int = 2 << 30
    max_data_bytes: int = 64 << 20               # evaluation and calibration data, each
    tokens: frozenset[str] = field(default_factory=frozenset)      # empty = no authentication
    rpc_threads: int = 8
    work_dir: str | None = None                  # temporary files; default: the system's temp folder
    upload_idle_timeout_s: float = 30.0          # a Benchmark stream silent this long is ended (DEADLINE_EXCEEDED)
    max_benchmarks: int = 4                      # Benchmark calls open at once (receiving or queued for the device)
    upload_min_rate_kib_s: float = 16.0          # a Benchmark stream averaging less after 60 s is ended; 0 = off

    def __post_init__(self) -> None:
        if not self.upload_idle_timeout_s > 0:
            raise ValueError(f"upload_idle_timeout_s must be > 0, got {self.upload_idle_timeout_s}")
        if not 0 <= self.upload_min_rate_kib_s < math.inf:
            raise ValueError(f"upload_min_rate_kib_s must be a finite number >= 0, got {self.upload_min_rate_kib_s}")
        if not 1 <= self.max_benchmarks <= self.rpc_threads - 2:
            raise ValueError(f"max_benchmarks must be between 1 and rpc_threads - 2 = {self.rpc_threads - 2} (two "
                             f"threads stay free for Describe and health checks), got {self.max_benchmarks}")


class DeviceAgentServicer(apb_grpc.DeviceAgentServicer):
    def __init__(self, name: str, settings: AgentSettings) -> None:
        self.name, self.settings = name, settings
        self._one_at_a_time = threading.Lock()
        self._open_benchmarks = threading.BoundedSemaphore(settings.max_benchmarks)

    @property
    def open_benchmarks(self) -> int:
        """Benchmark calls open now (receiving, queued for the device or running)."""
        return self.settings.max_benchmarks - self._open_benchmarks._value

    @rpc
    def Describe(self, request, context):
        return info_to_proto(describe_device(self.name))

    @rpc
    def Benchmark(self, request_iterator, context):
        if not self._open_benchmarks.acquire(blocking=False):
            raise ResourceExhausted(f"this agent already has {self.settings.max_benchmarks} benchmarks receiving or "
                                    "waiting for the device (its --max-benchmarks); retry when one has finished")
        reader = IdleReader(request_iterator, self.settings.upload_idle_timeout_s, what="the Benchmark stream",
                            context=context, limit_name="the agent's --upload-idle-timeout")
        try:
            return self._benchmark(reader, context)
        finally:
            reader.close()
            self._open_benchmarks.release()

    def _benchmark(self, reader: IdleReader, context) -> apb.BenchmarkResult:
        first = reader.next_message()
        if first is None or first.WhichOneof("content") != "settings":
            raise InvalidArgument("the first Benchmark message must carry the settings; the model follows in "
                                  "model_chunk messages")
        settings = _settings(first.settings)
        self._check_sizes(first.settings)
        with tempfile.TemporaryDirectory(prefix="interprune-agent-", dir=self.settings.work_dir) as tmp:
            messages = at_least_rate(reader.messages(), self.settings.upload_min_rate_kib_s * 1024, reader.what,
                                     size=lambda message: message.ByteSize())
            paths = _receive(messages, first.settings, Path(tmp))
            self.on_received(settings, context)
            with self._one_at_a_time:
                if not context.is_active():
                    raise Cancelled("the caller went away while waiting for the device")
                outcome = run_benchmark(paths["model"], settings, paths.get("evaluation"), paths.get("calibration"),
                                        should_stop=lambda: not context.is_active(), work_dir=Path(tmp))
        return self._result(outcome)

    def on_received(self, settings: BenchSettings, context) -> None:
        """Called once every blob has arrived and checked out, before the benchmark (a hook for tests)."""

    def _check_sizes(self, s: apb.BenchmarkSettings) -> None:
        if s.model.size_bytes <= 0 or not s.model.sha256:
            raise InvalidArgument("settings.model must give the ONNX file's size_bytes and sha256")
        limits = {"model": self.settings.max_model_bytes, "evaluation": self.settings.max_data_bytes,
                  "calibration": self.settings.max_data_bytes}
        for key, limit in limits.items():
            size = getattr(s, key).size_bytes
            if size < 0:
                raise InvalidArgument(f"settings.{key}.size_bytes must be >= 0")
            if size > limit:
                raise ResourceExhausted(f"the {key} {'model' if key == 'model' else 'data'} is {_mib(size)}; this "
                                        f"agent accepts at most {_mib(limit)} (send fewer images, or start the "
                                        "agent with a larger --max-model-mb / --max-data-mb)")

    def _result(self, outcome: Outcome) -> apb.BenchmarkResult:
        out = apb.BenchmarkResult(device=info_to_proto(describe_device(self.name)), backend=outcome.backend,
                                  precision=outcome.precision, build_seconds=outcome.build_seconds,
                                  notes=outcome.notes)
        for r in outcome.latency:
            out.latency.append(cpb.LatencyRow(
                backend=r.backend, batch_size=r.batch_size, runs=r.runs, p50_ms=r.p50_ms, p90_ms=r.p90_ms,
                p99_ms=r.p99_ms, mean_ms=r.mean_ms, throughput_ips=r.throughput_ips, threads=r.threads,
                precision=r.precision, device=r.device, error=r.error or "", stable=r.stable))
        if outcome.accuracy is not None:
            a = outcome.accuracy
            out.accuracy.CopyFrom(cpb.Accuracy(top1=a.top1, top5=a.top5, num_images=a.num_images))
        return out


def _settings(s: apb.BenchmarkSettings) -> BenchSettings:
    settings = BenchSettings(input_shape=tuple(s.input_shape), batch_sizes=tuple(s.batch_sizes) or (1,),
                             precision=precision_from_proto(s.precision, "settings.precision") or "fp32",
                             backend=s.backend or "auto",
                             seconds_per_batch=s.seconds_per_batch or 3.0, warmup_seconds=s.warmup_seconds or 0.5,
                             threads=s.threads if s.HasField("threads") else None, label=s.label[:200])
    settings.check()
    return settings


def _receive(request_iterator, s: apb.BenchmarkSettings, folder: Path) -> dict[str, Path]:
    """Write each blob's chunks to ``folder``; check sizes (as they arrive) and digests (at the end)."""
    expected = {key: getattr(s, key) for key in BLOBS if getattr(s, key).size_bytes > 0}
    paths = {key: folder / f"{key}.{'onnx' if key == 'model' else 'npz'}" for key in expected}
    handles = {key: open(paths[key], "wb") for key in expected}
    digests = {key: hashlib.sha256() for key in expected}
    sizes = dict.fromkeys(expected, 0)
    try:
        for message in request_iterator:
            kind = message.WhichOneof("content")
            key = (kind or "").removesuffix("_chunk")
            if kind == "settings" or key not in BLOBS:
                raise InvalidArgument("only the first Benchmark message may carry settings; later ones carry chunks")
            if key not in expected:
                raise InvalidArgument(f"{kind} sent, but settings.{key}.size_bytes is 0; announce every blob")
            chunk = message.ListFields()[0][1]
            sizes[key] += len(chunk)
            if sizes[key] > expected[key].size_bytes:
                raise InvalidArgument(f"more {key} bytes arrived than the {expected[key].size_bytes} announced")
            digests[key].update(chunk)
            handles[key].write(chunk)
    finally:
        for handle in handles.values():
            handle.close()
    for key, info in expected.items():
        if sizes[key] != info.size_bytes:
            raise InvalidArgument(f"the {key} arrived incomplete ({sizes[key]} of {info.size_bytes} bytes); send it "
                                  "again")
        if digests[key].hexdigest() != info.sha256.lower():
            raise InvalidArgument(f"the {key} bytes hash to {digests[key].hexdigest()[:16]}..., not the announced "
                                  f"{info.sha256[:16]}...; send it again")
    return paths


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


# --- the server ------------------------------------------------------------------------------------------

class AgentServer:
    """A gRPC server with the agent's servicer and health service; see ``create_agent_server``."""

    def __init__(self, address: str, name: str, settings: AgentSettings,
                 servicer_class: Callable[..., DeviceAgentServicer] = DeviceAgentServicer) -> None:
        self.name, self.settings = name, settings
        interceptors = [BearerTokenInterceptor(settings.tokens)] if settings.tokens else []
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.rpc_threads, thread_name_prefix="agent-rpc"),
            interceptors=interceptors, options=[("grpc.max_receive_message_length", 8 << 20),
                                                ("grpc.max_send_message_length", 8 << 20), ("grpc.so_reuseport", 0)])
        self.servicer = servicer_class(name, settings)
        self.servicer.server = self
        apb_grpc.add_DeviceAgentServicer_to_server(self.servicer, self.grpc_server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                            self.grpc_server)
        try:
            self.port = self.grpc_server.add_insecure_port(address)
        except RuntimeError as exc:
            raise FailedPrecondition(f"cannot listen on {address}: {exc}; is another process using the port?") \
                from None

    def start(self) -> "AgentServer":
        describe_device(self.name)            # the slow part (imports, nvidia-smi, jtop) once, before serving
        self.grpc_server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("device agent %s serving on port %d", self.name, self.port)
        return self

    def stop(self, grace_s: float | None = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace_s)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def create_agent_server(address: str, name: str, token_file: str | None = None,
                        settings: AgentSettings | None = None,
                        servicer_class: Callable[..., DeviceAgentServicer] = DeviceAgentServicer
                        ) -> tuple[AgentServer, int]:
    """Build (not start) an agent on ``address``; tokens from ``token_file`` and ``$INTERPRUNE_TOKENS``."""
    settings = settings or AgentSettings()
    tokens = load_tokens(token_file)
    if tokens:
        from dataclasses import replace

        settings = replace(settings, tokens=settings.tokens | tokens)
    server = AgentServer(address, name, settings, servicer_class)
    return server, server.port


def serve_agent(address: str, name: str, token_file: str | None = None, settings: AgentSettings | None = None,
                ready: Callable[[AgentServer], None] | None = None) -> None:
    """Run until SIGTERM / SIGINT. ``ready(server)`` is called once listening."""
    server, _ = create_agent_server(address, name, token_file, settings)
    run_until_signalled(server, ready)
