"""A job's states and the kinds of failure: shared by the job system, the API and the client."""
from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


# Failure kinds (mirrored by the proto's FailureKind).
INVALID_INPUT, EXPORT_CHECK, TIMED_OUT, CRASHED, SERVER_STOPPED, INTERNAL = (
    "invalid_input", "export_check", "timed_out", "crashed", "server_stopped", "internal")
