"""Streams that never end cannot take the server: 100 idle uploads are held to ``max_uploads`` (the rest refused at
once, naming the limit) while a health check and a small job still succeed; a silent upload ends with
DEADLINE_EXCEEDED and leaves no file; a client that cancels is one log line, no traceback."""
from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._proto.interprune.v1 import compression_pb2 as pb
from service._proto.interprune.v1 import compression_pb2_grpc as pb_grpc
from service.client import Client, JobState
from tests.service_helpers import make_server, tiny_spec, wait_for  # noqa: F401

SIZE = 3 << 20


def header(name: str = "idle.npz", size: int = SIZE, digest: str | None = None) -> pb.UploadArtifactRequest:
    return pb.UploadArtifactRequest(header=pb.ArtifactHeader(display_name=name, kind=pb.ARTIFACT_KIND_DATASET,
                                                             size_bytes=size, sha256=digest or "cd" * 32))


def stalled(release: threading.Event, first_chunk: bytes = b""):
    """An upload that sends its header (and a chunk) and then nothing until ``release``."""
    yield header()
    if first_chunk:
        yield pb.UploadArtifactRequest(chunk=first_chunk)
    release.wait(120)


def tmp_files(server) -> list:
    return list((server.state_dir / "artifacts" / "tmp").iterdir())


def test_100_idle_uploads_leave_room_for_health_and_a_job(make_server, caplog):  # noqa: F811
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    server = make_server(max_uploads=16, max_uploads_per_client=100, upload_idle_timeout_s=120, warm_spare=True)
    release = threading.Event()
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.CompressionStub(channel)
        calls = [stub.UploadArtifact.future(stalled(release, b"x" * 1000), timeout=150) for _ in range(100)]
        refused = wait_for(lambda: [c for c in calls if c.done()] if sum(c.done() for c in calls) >= 84 else None,
                           timeout_s=30, what="the uploads over the limit to be refused")
        assert len(refused) == 84 and server.servicer.uploads.open == 16
        assert {c.exception().code() for c in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "max_uploads=16" in refused[0].exception().details()

        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service="interprune.v1.Compression"), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with Client(server.address) as client:
            job = client.submit(tiny_spec(None, None))          # the bundled digits, random weights: no upload
            job = wait_for(lambda: (j := client.get(job.id)).done and j, timeout_s=120, what="the small job")
            assert job.state == JobState.SUCCEEDED, job.message
            assert client.list(page_size=5).jobs[0].id == job.id
        assert server.servicer.uploads.open == 16 and len(tmp_files(server)) == 16, "the idle uploads are still open"

        for call in calls:
            call.cancel()
        wait_for(lambda: server.servicer.uploads.open == 0 and not tmp_files(server), timeout_s=30,
                 what="the cancelled uploads to be released")
        release.set()
    assert caplog.text.count("upload cancelled by the client") == 16
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text
    assert time.monotonic() - started < 150


def test_a_silent_upload_ends_with_deadline_exceeded_and_keeps_nothing(make_server):  # noqa: F811
    server = make_server(run_jobs=False, upload_idle_timeout_s=1)
    release = threading.Event()
    before = threading.active_count()
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.CompressionStub(channel)
        begun = time.monotonic()
        with pytest.raises(grpc.RpcError) as ended:
            stub.UploadArtifact(stalled(release, b"x" * 1000), timeout=30)
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "sent nothing for 1 s" in ended.value.details() and "idle.npz" in ended.value.details()
        assert 0.9 < time.monotonic() - begun < 10
        with pytest.raises(grpc.RpcError) as silent:        # not even a header
            stub.UploadArtifact(iter(lambda: release.wait(60), True), timeout=30)
        assert silent.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        release.set()
    assert not tmp_files(server) and server.servicer.uploads.open == 0
    wait_for(lambda: threading.active_count() <= before + 2, timeout_s=10, what="the upload readers to exit")


def test_uploads_per_client_are_limited_and_a_slot_frees_when_one_ends(make_server):  # noqa: F811
    server = make_server(run_jobs=False, max_uploads_per_client=2, upload_idle_timeout_s=60)
    release = threading.Event()
    data = os.urandom(5000)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.CompressionStub(channel)
        held = [stub.UploadArtifact.future(stalled(release), timeout=60) for _ in range(2)]
        wait_for(lambda: server.servicer.uploads.open == 2, timeout_s=10, what="two open uploads")
        with Client(server.address) as client, pytest.raises(Exception) as refused:
            client.upload(_write(server, data), kind="dataset")
        assert "max_uploads_per_client=2" in str(refused.value)
        held[0].cancel()
        wait_for(lambda: server.servicer.uploads.open == 1, timeout_s=10, what="a slot to free")
        with Client(server.address) as client:
            assert client.upload(_write(server, data), kind="dataset").id == hashlib.sha256(data).hexdigest()
        release.set()


def _write(server, data: bytes):
    path = server.state_dir.parent / "upload.npz"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("auth", [False, True])
def test_a_made_up_or_repeated_authorization_header_earns_no_new_upload_slot(make_server, auth):  # noqa: F811
    """Without auth a header is unverified (the limit is the address's); with auth a call must carry exactly one
    (the check and the limit used to read different entries of 'bad, good')."""
    token = "the-real-token-0123"
    server = make_server(run_jobs=False, max_uploads_per_client=2, upload_idle_timeout_s=60,
                         **({"tokens": frozenset({token})} if auth else {}))
    release = threading.Event()
    real = ("authorization", f"Bearer {token}")
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.CompressionStub(channel)
        names = [f"Bearer fake{i}" for i in range(3)]
        meta = [((("authorization", n),) if not auth else (("authorization", n), real)) for n in names]
        held = [stub.UploadArtifact.future(stalled(release), timeout=60, metadata=m) for m in meta[:2]]
        if auth:
            for call in held:
                assert call.exception(timeout=10).code() == grpc.StatusCode.UNAUTHENTICATED
                assert "send exactly one" in call.exception().details()
            held = [stub.UploadArtifact.future(stalled(release), timeout=60, metadata=(real,)) for _ in range(2)]
        wait_for(lambda: server.servicer.uploads.open == 2, timeout_s=10, what="two open uploads")
        third = stub.UploadArtifact.future(stalled(release), timeout=60, metadata=(real,) if auth else meta[2])
        assert third.exception(timeout=10).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_uploads_per_client=2" in third.exception().details()
        release.set()
        for call in held:
            call.exception(timeout=30)


def test_an_upload_slower_than_the_minimum_rate_is_ended_after_the_grace_period():
    """The idle timeout alone let a client hold a slot for ever with a byte every few seconds."""
    from service.core.errors import DeadlineExceeded
    from service.core.streams import at_least_rate

    def fed(chunk_bytes: int, every_s: float, count: int, minimum: float):
        now = [0.0]

        def clock():
            return now[0]

        def chunks():
            for _ in range(count):
                now[0] += every_s
                yield b"x" * chunk_bytes
        return list(at_least_rate(chunks(), minimum, grace_s=60, what="the upload of d.npz", clock=clock))

    assert len(fed(1 << 20, 1.0, 100, 16 * 1024)) == 100             # 1 MiB/s: through
    assert len(fed(1, 3.0, 19, 16 * 1024)) == 19                      # within the grace period: through
    with pytest.raises(DeadlineExceeded) as slow:
        fed(1, 3.0, 100, 16 * 1024)                                   # a byte every 3 s: ended at 60 s
    assert "the upload of d.npz averaged 0 bytes/s over 60 s" in slow.value.message
    assert "--upload-min-rate" in slow.value.message
    assert len(fed(1, 3.0, 100, 0)) == 100                            # 0: no check


def test_an_impossible_minimum_upload_rate_is_refused():
    from service.api.settings import ServerSettings

    for rate in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="upload_min_rate_kib_s"):
            ServerSettings(upload_min_rate_kib_s=rate).check()


def test_the_agents_benchmark_stream_is_held_to_a_minimum_rate_counted_in_message_bytes():
    from service.agent.server import AgentSettings
    from service.core.errors import DeadlineExceeded
    from service.core.streams import at_least_rate

    now = [0.0]

    def messages():
        for _ in range(40):
            now[0] += 3.0
            yield pb.UploadArtifactRequest(chunk=b"x")             # a few bytes every 3 s

    with pytest.raises(DeadlineExceeded, match="the Benchmark stream averaged"):
        list(at_least_rate(messages(), 16 * 1024, "the Benchmark stream", grace_s=60, clock=lambda: now[0],
                           size=lambda m: m.ByteSize()))
    for rate in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="upload_min_rate_kib_s"):
            AgentSettings(upload_min_rate_kib_s=rate)
