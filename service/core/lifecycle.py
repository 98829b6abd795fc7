"""Running a server (the gRPC service or the device agent) until SIGTERM / SIGINT."""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


def run_until_signalled(server, ready=None) -> None:
    """Start ``server`` (anything with start/stop), call ``ready(server)``, block until SIGTERM or SIGINT, stop it,
    and put the previous signal handlers back."""
    server.start()
    done = threading.Event()

    def on_signal(signum, frame):
        log.warning("received %s: shutting down gracefully", signal.Signals(signum).name)
        done.set()
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if ready is not None:
            ready(server)
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
