"""Job-scoped credentials for remote workers (the ``interprune.v1.JobWorker`` protocol, ``proto/.../worker.proto``).

The server makes a random secret at start; a worker for attempt ``n`` of job ``j`` gets
``HMAC-SHA256(secret, "j:n")`` from the executor and sends it with every call. The token opens that job's calls
only, and only while that attempt is the job's current one: a worker left behind on a lost node cannot touch the
job once it has been re-queued. A server restart makes a new secret, so workers of the previous server are shut
out as well (their jobs were recovered at start).
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

JOB_KEY, ATTEMPT_KEY, TOKEN_KEY = "x-interprune-job", "x-interprune-attempt", "x-interprune-job-token"


@dataclass(frozen=True)
class JobCredentials:
    """What a worker sends with every call: which job and attempt it works for, and the proof."""

    job_id: str
    attempt: int
    token: str

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (JOB_KEY, self.job_id), (ATTEMPT_KEY, str(self.attempt)), (TOKEN_KEY, self.token)

    def to_text(self) -> str:
        """``job:attempt:token``, e.g. for ``$INTERPRUNE_WORKER_CREDENTIALS``."""
        return f"{self.job_id}:{self.attempt}:{self.token}"

    @classmethod
    def from_text(cls, text: str) -> "JobCredentials":
        job_id, attempt, token = text.strip().split(":")
        return cls(job_id, int(attempt), token)


class JobTokens:
    """Mints and checks job tokens under one secret (a fresh random one by default)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or os.urandom(32)

    def _token(self, job_id: str, attempt: int) -> str:
        return hmac.new(self._secret, f"{job_id}:{attempt}".encode(), hashlib.sha256).hexdigest()

    def credentials(self, job_id: str, attempt: int) -> JobCredentials:
        return JobCredentials(job_id, attempt, self._token(job_id, attempt))

    def check(self, metadata) -> tuple[str, int] | None:
        """The (job id, attempt) the call's metadata proves, or None."""
        values = dict(metadata or ())
        job_id, attempt, token = values.get(JOB_KEY), values.get(ATTEMPT_KEY), values.get(TOKEN_KEY)
        if not (job_id and attempt and token) or not attempt.isdigit() or len(job_id) > 64:
            return None
        expected = self._token(job_id, int(attempt))
        return (job_id, int(attempt)) if hmac.compare_digest(expected.encode(), token.encode()) else None
