"""Bearer tokens: every method, unary or streaming, refuses a missing or wrong token with UNAUTHENTICATED;
health checking and reflection stay open."""
from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service._proto.interprune.v1 import compression_pb2 as pb
from service._proto.interprune.v1 import compression_pb2_grpc as pb_grpc
from service.core.auth import load_tokens
from service.client import Client, InterpruneRPCError, StatusCode
from tests.service_helpers import make_server  # noqa: F401

TOKEN = "s3cret-token"


def calls(stub):
    """One call per method, each consumed fully (streams included)."""
    header = pb.UploadArtifactRequest(header=pb.ArtifactHeader(display_name="a", kind=pb.ARTIFACT_KIND_MODEL, size_bytes=1,
                                                               sha256="0" * 64))
    return {
        "UploadArtifact (client stream)": lambda md: stub.UploadArtifact(iter([header]), metadata=md),
        "DownloadArtifact (server stream)": lambda md: list(stub.DownloadArtifact(
            pb.DownloadArtifactRequest(name="artifacts/" + "0" * 64), metadata=md)),
        "WatchJob (server stream)": lambda md: list(stub.WatchJob(pb.WatchJobRequest(name="jobs/job-x"), metadata=md)),
        "GetArtifact": lambda md: stub.GetArtifact(pb.GetArtifactRequest(name="artifacts/" + "0" * 64), metadata=md),
        "SubmitJob": lambda md: stub.SubmitJob(pb.SubmitJobRequest(), metadata=md),
        "GetJob": lambda md: stub.GetJob(pb.GetJobRequest(name="jobs/job-x"), metadata=md),
        "ListJobs": lambda md: stub.ListJobs(pb.ListJobsRequest(), metadata=md),
        "CancelJob": lambda md: stub.CancelJob(pb.CancelJobRequest(name="jobs/job-x"), metadata=md),
        "ListDevices": lambda md: stub.ListDevices(pb.ListDevicesRequest(), metadata=md),
    }


@pytest.fixture
def channel(make_server):
    server = make_server(run_jobs=False, tokens=frozenset({TOKEN, "another-token"}))
    with grpc.insecure_channel(server.address) as channel:
        channel.address = server.address
        yield channel


@pytest.mark.parametrize("metadata,needle", [((), "missing credentials"),
                                             ((("authorization", "Bearer wrong"),), "invalid bearer token"),
                                             ((("authorization", TOKEN),), "malformed")])
def test_every_method_refuses_bad_credentials(channel, metadata, needle):
    stub = pb_grpc.CompressionStub(channel)
    for name, call in calls(stub).items():
        with pytest.raises(grpc.RpcError) as error:
            call(metadata)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert needle in error.value.details(), name


def test_the_right_token_passes(channel):
    stub = pb_grpc.CompressionStub(channel)
    for name, call in calls(stub).items():
        try:
            call((("authorization", f"Bearer {TOKEN}"),))
        except grpc.RpcError as error:       # past authentication: the request itself is judged
            assert error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), name
    assert stub.ListJobs(pb.ListJobsRequest(), metadata=(("authorization", "bearer another-token"),)).jobs == []


def test_health_and_reflection_need_no_token(channel):
    request = health_pb2.HealthCheckRequest(service="interprune.v1.Compression")
    status = health_pb2_grpc.HealthStub(channel).Check(request)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in next(responses).list_services_response.service}
    assert {"interprune.v1.Compression", "grpc.health.v1.Health"} <= names


def test_the_client_sends_its_token(channel):
    with Client(channel.address, token=TOKEN) as client:
        assert client.list().jobs == []
    with Client(channel.address, token="nope") as client, pytest.raises(InterpruneRPCError) as error:
        client.list()
    assert error.value.status == StatusCode.UNAUTHENTICATED


def test_tokens_from_a_file_and_the_environment(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# team tokens\nalpha\n\n  beta  \n")
    path.chmod(0o600)
    assert load_tokens(path, env={"INTERPRUNE_TOKENS": "gamma, delta"}) == {"alpha", "beta", "gamma", "delta"}
    assert load_tokens(None, env={}) == frozenset()


def test_tls_with_a_private_ca(make_server, tmp_path):
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed; it makes the test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    from service.core.auth import channel_credentials

    server = make_server(run_jobs=False, tls_cert=str(cert), tls_key=str(key), tokens=frozenset({TOKEN}))
    with Client(server.address, token=TOKEN, credentials=channel_credentials(cert)) as client:
        assert client.list().jobs == []
    with Client(server.address, token=TOKEN) as plaintext, pytest.raises(InterpruneRPCError) as error:
        plaintext.list()
    assert error.value.status == StatusCode.UNAVAILABLE
