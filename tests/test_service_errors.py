"""Status codes live on the error classes; one decorator aborts with them, and hides everything else behind
INTERNAL with an error id. The client's public surface is pinned."""
from __future__ import annotations

import logging

import grpc
import pytest

import service.client
from pruning.errors import Cancelled, DataError, ModelError, SpecError
from service.core.errors import (AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted,
                            Unauthenticated, Unavailable, from_engine, rpc)


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self):
        self.aborted = None

    def abort(self, code, message):
        self.aborted = (code, message)
        raise Aborted()

    def code(self):
        return self.aborted and self.aborted[0]


class Servicer:
    def __init__(self, error):
        self.error = error

    @rpc
    def Unary(self, request, context):
        raise self.error

    @rpc
    def Stream(self, request, context):
        yield 1
        raise self.error


@pytest.mark.parametrize("error,code", [
    (InvalidArgument("bad"), grpc.StatusCode.INVALID_ARGUMENT), (NotFound("x"), grpc.StatusCode.NOT_FOUND),
    (AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED), (Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
    (ModelError("weights do not fit"), grpc.StatusCode.INVALID_ARGUMENT),
    (DataError("3 channels"), grpc.StatusCode.INVALID_ARGUMENT), (SpecError("no"), grpc.StatusCode.INVALID_ARGUMENT),
    (Cancelled("stop"), grpc.StatusCode.CANCELLED),
])
def test_our_errors_abort_with_their_code_and_message(error, code):
    for call in (lambda s, c: s.Unary(None, c), lambda s, c: list(s.Stream(None, c))):
        context = FakeContext()
        with pytest.raises(Aborted):
            call(Servicer(error), context)
        assert context.aborted == (code, str(error))


def test_anything_else_is_internal_with_an_error_id_in_the_log(caplog):
    context = FakeContext()
    with caplog.at_level(logging.ERROR), pytest.raises(Aborted):
        Servicer(KeyError("secret detail")).Unary(None, context)
    code, message = context.aborted
    assert code == grpc.StatusCode.INTERNAL and "secret detail" not in message
    error_id = message.split("error id ")[1].split(")")[0]
    assert error_id in caplog.text and "KeyError" in caplog.text


def test_engine_errors_map_once():
    assert isinstance(from_engine(ModelError("m")), InvalidArgument)
    assert isinstance(from_engine(DataError("d")), InvalidArgument)


def test_the_client_surface_is_pinned():
    assert sorted(service.client.__all__) == [
        "Accuracy", "Artifact", "ArtifactPage", "Client", "ClusterNode", "Cost", "Device", "Devices", "Failure",
        "GateVerdict", "InterpruneClientError",
        "InterpruneRPCError", "Job", "JobEvent", "JobPage", "JobResult", "JobState", "LatencyRow", "Progress",
        "StatusCode", "TargetAccuracy"]
    assert issubclass(service.client.InterpruneRPCError, service.client.InterpruneClientError)
    assert {c.name for c in grpc.StatusCode} == {c.value for c in service.client.StatusCode}
