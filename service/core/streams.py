"""Upload streams without trusting the client to send, finish or go away politely (the server's and the agent's).

- ``UploadSlots``: how many upload streams may be open at once, per client and in all; one over is refused at
  once with RESOURCE_EXHAUSTED naming the limit (a refused stream holds no thread).
- ``IdleReader``: the messages of a client stream, read by a helper thread, so that a stream that sends nothing
  for ``idle_s`` seconds ends with DEADLINE_EXCEEDED (the handler stops waiting; gRPC ends the call, which
  releases the helper), and a client that cancels is told apart (``UploadCancelled``) from a bug.
- ``at_least_rate``: chunks passed through, ended with DEADLINE_EXCEEDED when, after a grace period, they average
  less than a minimum rate (a byte every few seconds would otherwise hold a slot for ever).
- ``client_key``: who a caller is, for per-client limits: its verified bearer token (hashed), else its address.
"""
from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import grpc

from service.core.errors import DeadlineExceeded, ResourceExhausted, ServiceError

_END, _CANCELLED = object(), object()


class UploadCancelled(ServiceError):
    """The client cancelled the upload (or its connection broke) before the last chunk."""

    code = grpc.StatusCode.CANCELLED


def client_key(context: grpc.ServicerContext, tokens_verified: bool) -> str:
    """``token:<12 hex>`` for a caller whose bearer token the server verified (``tokens_verified``: the server
    checks tokens, and then a call carries exactly one), else its address without the port (``ipv4:1.2.3.4``).
    Without verification a header is whatever the caller made up: keying on it would let one address take every
    per-client limit under a new name per call."""
    if tokens_verified:
        headers = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        if len(headers) == 1 and headers[0].startswith("Bearer "):
            return "token:" + hashlib.sha256(headers[0][7:].strip().encode()).hexdigest()[:12]
    peer = context.peer() or "unknown"
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return f"{kind}:{rest.rpartition(':')[0] or rest}"
    return peer


class UploadSlots:
    """Counts open upload streams per client and in all, under ``max_total`` and ``max_per_client``."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total, self.max_per_client = max_total, max_per_client
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        with self._lock:
            return sum(self._open.values())

    @contextmanager
    def slot(self, client: str):
        with self._lock:
            if self._open[client] >= self.max_per_client:
                raise ResourceExhausted(f"this client already has {self._open[client]} uploads in progress, the limit "
                                        f"max_uploads_per_client={self.max_per_client}; wait for one to finish")
            if sum(self._open.values()) >= self.max_total:
                raise ResourceExhausted(f"the server has {self.max_total} uploads in progress, the limit "
                                        f"max_uploads={self.max_total}; retry in a few seconds")
            self._open[client] += 1
        try:
            yield
        finally:
            with self._lock:
                self._open[client] -= 1
                if not self._open[client]:
                    del self._open[client]


class IdleReader:
    """The messages of ``request_iterator`` with an idle timeout. ``next_message()`` returns the next message or
    None at the end of the stream; raises ``DeadlineExceeded`` after ``idle_s`` seconds without one and
    ``UploadCancelled`` when the client went away."""

    def __init__(self, request_iterator, idle_s: float, what: str = "the upload", context=None,
                 limit_name: str = "the server's upload_idle_timeout_s") -> None:
        self.idle_s, self.what, self.limit_name = idle_s, what, limit_name
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._stop = threading.Event()
        self._ended = threading.Event()        # the call ended while the handler still runs: the client left
        if context is not None and not context.add_callback(self._ended.set):
            self._ended.set()
        self._thread = threading.Thread(target=self._read, args=(request_iterator,), name="upload-reader",
                                        daemon=True)
        self._thread.start()

    def _read(self, request_iterator) -> None:
        try:
            for message in request_iterator:
                if not self._put(message):
                    return
            self._put(_END)
        except grpc.RpcError:               # the client cancelled, or the call ended (our own timeout)
            self._put(_CANCELLED)
        except Exception:  # noqa: BLE001 - anything else ends the stream as cancelled; the handler reports it
            self._put(_CANCELLED)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def next_message(self):
        try:
            item = self._queue.get(timeout=self.idle_s)
        except queue.Empty:
            self.close()
            raise DeadlineExceeded(f"{self.what} sent nothing for {self.idle_s:g} s ({self.limit_name}); nothing "
                                   "was kept, upload the file again") from None
        if item is _END:
            return None
        if item is _CANCELLED:
            self.close()
            raise UploadCancelled(f"{self.what} was cancelled by the client")
        return item

    def messages(self) -> Iterator:
        while (message := self.next_message()) is not None:
            yield message

    def client_gone(self, wait_s: float = 0.5) -> bool:
        """True when the client cancelled or disconnected. A cancel can reach the reader as a plain end of the
        stream just before gRPC reports it, so a stream that ended too early asks here, waiting ``wait_s``."""
        return self._ended.wait(wait_s)

    def close(self) -> None:
        """Stop reading (the helper exits once gRPC ends the call)."""
        self._stop.set()


RATE_GRACE_S = 60.0     # how long an upload may run before it is held to its minimum rate (server and agent)


def at_least_rate(chunks: Iterable, min_bytes_per_s: float, what: str = "the upload", grace_s: float = RATE_GRACE_S,
                  clock: Callable[[], float] = time.monotonic, size: Callable[[Any], int] = len) -> Iterator:
    """``chunks`` passed through, ended with ``DeadlineExceeded`` when, ``grace_s`` seconds or more after the first,
    the bytes received so far (``size`` of each item) average less than ``min_bytes_per_s`` (0 = no check). The idle
    timeout alone lets a client hold a slot for ever by sending a byte every few seconds."""
    start, received = clock(), 0
    for chunk in chunks:
        received += size(chunk)
        elapsed = clock() - start
        if min_bytes_per_s > 0 and elapsed >= grace_s and received < min_bytes_per_s * elapsed:
            raise DeadlineExceeded(f"{what} averaged {received / elapsed:,.0f} bytes/s over {elapsed:.0f} s, below "
                                   f"the server's upload_min_rate of {min_bytes_per_s:,.0f} bytes/s; nothing was "
                                   "kept: upload again over a faster link, or ask the operator for a lower "
                                   "--upload-min-rate")
        yield chunk
