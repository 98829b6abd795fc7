"""What the CLI shows: exit codes, the one-line error, and progress on stderr.

Exit codes: 0 success (and quality gate passed), 2 usage or bad input, 3 job failed or cancelled, 4 quality gate
failed, 5 server unreachable.
"""
from __future__ import annotations

import argparse
import sys
import time

EXIT_OK, EXIT_USAGE, EXIT_FAILED, EXIT_GATE, EXIT_UNREACHABLE = 0, 2, 3, 4, 5


class CliError(Exception):
    """An error with its exit code; ``show()`` prints one line a person can act on."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    def show(self) -> None:
        print(f"interprune: error: {self}", file=sys.stderr)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


class ProgressPrinter:
    """Progress on stderr: one rewritten line on a terminal; otherwise (CI logs) one line per event, with the
    per-step events of fine-tuning at most one every ``THROTTLE_SECONDS``."""

    THROTTLED = ("finetune",)
    THROTTLE_SECONDS = 10.0

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._last = ""
        self._last_step = -self.THROTTLE_SECONDS

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        text = f"[{event.stage:<11}] {event.message}"
        if self.tty:
            bar = "#" * int(20 * event.fraction)
            sys.stderr.write(f"\r{text[:60]:<60} |{bar:<20}|")
            if event.fraction >= 1.0 and event.message.startswith("done"):
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif text != self._last:
            step = event.fraction not in (0.0, 1.0) and event.stage in self.THROTTLED
            if step and time.monotonic() - self._last_step < self.THROTTLE_SECONDS:
                return
            print(text, file=sys.stderr, flush=True)
            self._last = text
            if step:
                self._last_step = time.monotonic()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
