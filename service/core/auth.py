"""Bearer-token authentication (a server interceptor) and optional TLS.

Tokens come from a file (one per line; blank lines and ``#`` comments ignored) and/or the environment variable
``INTERPRUNE_TOKENS`` (comma or whitespace separated). Clients send ``authorization: Bearer <token>``; tokens
are compared with ``hmac.compare_digest`` against every known token. Health checking and reflection stay
reachable without a token so load balancers and ``grpcurl`` work. A rejected call ends with UNAUTHENTICATED
through a handler of the method's own streaming kind (unary or stream), so streaming methods fail the same
way as unary ones.
"""
from __future__ import annotations

import hmac
import logging
import os
import stat
from pathlib import Path
from typing import Iterable, Mapping

import grpc

log = logging.getLogger(__name__)

TOKENS_ENV = "INTERPRUNE_TOKENS"
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                        "/grpc.reflection.v1.ServerReflection/")


class AuthConfigError(ValueError):
    """The token file or TLS files cannot be used; the message says which and why."""


def load_tokens(token_file: str | Path | None = None, env: Mapping[str, str] | None = None) -> frozenset[str]:
    """Tokens from ``token_file`` and ``$INTERPRUNE_TOKENS``; empty = authentication off."""
    env = os.environ if env is None else env
    tokens = set(env.get(TOKENS_ENV, "").replace(",", " ").split())
    if token_file is not None:
        path = Path(token_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise AuthConfigError(f"cannot read token file {path}: {exc.strerror}") from None
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("token file %s is readable by other users; chmod 600 it", path)
        tokens.update(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
        if not tokens:
            raise AuthConfigError(f"token file {path} holds no tokens (one per line)")
    return frozenset(tokens)


def read_client_token(token_file: str | Path | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The token a client sends: the first token line of ``token_file``, else ``$INTERPRUNE_TOKEN``."""
    env = os.environ if env is None else env
    if token_file is None:
        return env.get("INTERPRUNE_TOKEN") or None
    try:
        lines = Path(token_file).read_text().splitlines()
    except OSError as exc:
        raise AuthConfigError(f"cannot read token file {token_file}: {exc.strerror}") from None
    tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise AuthConfigError(f"token file {token_file} holds no token")
    return tokens[0]


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Let a call through only with ``authorization: Bearer <known token>`` (open methods excepted)."""

    def __init__(self, tokens: Iterable[str], open_prefixes: tuple[str, ...] = OPEN_METHOD_PREFIXES) -> None:
        self._tokens = [t.encode() for t in tokens]
        if not self._tokens:
            raise AuthConfigError("BearerTokenInterceptor needs at least one token")
        self._open = open_prefixes

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith(self._open):
            return continuation(handler_call_details)
        headers = [v for k, v in handler_call_details.invocation_metadata or () if k == "authorization"]
        problem = (self._check(headers[0] if headers else None) if len(headers) <= 1 else
                   f"{len(headers)} authorization metadata entries: send exactly one 'authorization: Bearer <token>'")
        handler = continuation(handler_call_details)
        if problem is None or handler is None:          # unknown methods stay UNIMPLEMENTED
            return handler
        return _abort_handler(handler, problem)

    def _check(self, header: str | None) -> str | None:
        if not header:
            return ("missing credentials: send the metadata 'authorization: Bearer <token>' (interprune --token-file, "
                    "or $INTERPRUNE_TOKEN)")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "malformed authorization metadata: expected 'Bearer <token>'"
        given = token.strip().encode()
        matches = [hmac.compare_digest(given, known) for known in self._tokens]   # no early exit
        return None if any(matches) else "invalid bearer token: check the token the server's operator gave you"


def _abort_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that ends the call with UNAUTHENTICATED."""
    def abort(request_or_iterator, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort, **kwargs)


# --- TLS ---------------------------------------------------------------------------------------------

def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AuthConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None


def server_credentials(cert_file: str | Path, key_file: str | Path,
                       client_ca_file: str | Path | None = None) -> grpc.ServerCredentials:
    """TLS for the server; with ``client_ca_file`` clients must present a certificate it signed (mutual TLS)."""
    pair = [(_read(key_file, "TLS private key"), _read(cert_file, "TLS certificate"))]
    if client_ca_file is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(pair, root_certificates=_read(client_ca_file, "client CA certificate"),
                                       require_client_auth=True)


def channel_credentials(root_cert_file: str | Path | None = None) -> grpc.ChannelCredentials:
    """TLS for a client; ``root_cert_file`` for a private CA (None = the system's roots)."""
    root = _read(root_cert_file, "CA certificate") if root_cert_file else None
    return grpc.ssl_channel_credentials(root_certificates=root)
