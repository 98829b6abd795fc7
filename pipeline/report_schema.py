"""The JSON Schema of ``report.json`` (``service/schemas/report.schema.json``, draft 2020-12) and its check.

Example::

    from pipeline.report_schema import validate_report
    validate_report(json.loads(Path("out/report.json").read_text()))   # raises ReportSchemaError when invalid
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "report.schema.json"


class ReportSchemaError(ValueError):
    """``report.json`` does not follow its schema; ``errors`` lists (path, message), path like ``$.gate.passed``."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        lines = [f"  {path}: {message}" for path, message in errors]
        super().__init__(f"report does not follow {SCHEMA_PATH.name} ({len(errors)} error(s)):\n" + "\n".join(lines))


@lru_cache(maxsize=1)
def _validator():
    from jsonschema import Draft202012Validator

    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validate_report(report: dict) -> None:
    """Raise ``ReportSchemaError`` naming every failing path; return None when ``report`` is valid."""
    errors = sorted(_validator().iter_errors(report), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise ReportSchemaError([(_path(e.absolute_path), e.message) for e in errors])


def _path(parts) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)
