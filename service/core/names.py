"""Resource names on the wire: a job is ``jobs/{id}``, an artifact ``artifacts/{sha256}``. Both ends use these
helpers; a malformed name is an ``InvalidArgument`` that shows the expected form."""
from __future__ import annotations

import re

from service.core.errors import InvalidArgument

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_DIGEST = re.compile(r"^[0-9a-f]{64}\Z")


def job_name(job_id: str) -> str:
    return f"jobs/{job_id}"


def artifact_name(sha256: str) -> str:
    return f"artifacts/{sha256}" if sha256 else ""


def parse_job_name(name: str, field: str = "name") -> str:
    """The job id in ``jobs/{id}``."""
    return _parse(name, "jobs", _JOB_ID, field, "a job name; expected jobs/{id} as SubmitJob and ListJobs return it")


def parse_artifact_name(name: str, field: str = "name") -> str:
    """The SHA-256 in ``artifacts/{sha256}``."""
    return _parse(name, "artifacts", _DIGEST, field, "an artifact name; expected artifacts/{sha256} (64 lowercase "
                                                     "hex digits) as UploadArtifact returns it")


def _parse(name: str, collection: str, pattern: re.Pattern, field: str, expected: str) -> str:
    prefix, _, value = name.partition("/")
    if prefix != collection or not pattern.match(value):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise InvalidArgument(f"{field} {shown!r} is not {expected}")
    return value
