"""The service's errors, each carrying its gRPC status code, and the one place that turns them into aborts.

Servicer code raises these (``raise NotFound(f"no job {job_id!r}; list jobs with ListJobs")``); the ``rpc``
decorator aborts the call with the class's code and the message. Engine errors (``pruning.errors``) are mapped
once, in ``from_engine``. Anything else is a bug: logged with an error id, and the client gets INTERNAL with that
id, never a traceback.
"""
from __future__ import annotations

import functools
import inspect
import logging
import uuid
from typing import Any, Callable

import grpc

from pruning.errors import Cancelled as EngineCancelled
from pruning.errors import InterpruneError

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base class: ``code`` is the gRPC status the call ends with; the message says what to do."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class Cancelled(ServiceError):
    code = grpc.StatusCode.CANCELLED


class Internal(ServiceError):
    code = grpc.StatusCode.INTERNAL


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


#: Longest status message sent, in UTF-8 bytes. gRPC carries it in a trailer (percent-encoded: up to 3x) and
#: clients refuse trailers above 8 KiB by default, so a longer message would turn into an unreadable error.
MAX_MESSAGE_BYTES = 2000


def cap_message(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``message`` cut to at most ``limit`` UTF-8 bytes, the cut marked with how many characters were left out."""
    if len(message.encode("utf-8", "replace")) <= limit:
        return message
    keep = message.encode("utf-8", "replace")[:limit - 24].decode("utf-8", "ignore")
    return f"{keep}…[+{len(message) - len(keep)} chars]"


def from_engine(exc: InterpruneError) -> ServiceError:
    """The service error for an engine error. A bad model, data set or spec (``ModelError``, ``DataError``,
    ``SpecError``, and any other ``InterpruneError``) is input for the caller to fix: INVALID_ARGUMENT, whatever
    the server's state. A stop the caller asked for is CANCELLED."""
    if isinstance(exc, EngineCancelled):
        return Cancelled(str(exc))
    return InvalidArgument(str(exc))


def internal_error(exc: BaseException, where: str) -> Internal:
    """Log ``exc`` with a fresh error id and return the INTERNAL error that names it."""
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s in %s", error_id, where, exc_info=exc)
    return Internal(f"internal server error (error id {error_id}); the server log has the details")


def _to_service_error(exc: Exception, where: str) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, InterpruneError):
        return from_engine(exc)
    return internal_error(exc, where)


def rpc(method: Callable) -> Callable:
    """Decorate a servicer method: our errors abort with their code and their message (capped at
    ``MAX_MESSAGE_BYTES``); anything else is INTERNAL with an id.

    Works for unary and server-streaming methods (generators). An error raised by gRPC's own ``abort`` (the
    call is already finished) passes through untouched.
    """
    where = method.__qualname__

    def fail(context: grpc.ServicerContext, exc: Exception) -> None:
        error = _to_service_error(exc, where)
        context.abort(error.code, cap_message(error.message))

    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream(self, request: Any, context: grpc.ServicerContext):
            try:
                yield from method(self, request, context)
            except Exception as exc:  # noqa: BLE001 - sorted into ours / internal by fail()
                if _is_abort(exc, context):
                    raise
                fail(context, exc)
        return stream

    @functools.wraps(method)
    def unary(self, request: Any, context: grpc.ServicerContext):
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001
            if _is_abort(exc, context):
                raise
            fail(context, exc)
    return unary


def _is_abort(exc: Exception, context: grpc.ServicerContext) -> bool:
    """``context.abort`` raises a bare Exception after setting the code; do not wrap that one again."""
    return type(exc) is Exception and getattr(context, "code", lambda: None)() is not None
