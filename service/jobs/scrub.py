"""Server paths out of what a job hands back: the report (``report.json``, ``report.html``) and failure messages.

A worker runs on files it materialised under the server's state directory, and the spec it is given names agent
token files on the server; none of those paths means anything to the user, and some say more than they should. The
worker replaces each by what the user knows: an input by its artifact reference, the output folder by nothing
(``model.onnx``), anything else by a placeholder.

Example::

    scrub_text("cannot read /srv/state/work/job-1/data/x.npz", [("/srv/state/work/job-1", "<job>")])
    # 'cannot read <job>/data/x.npz'
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from pipeline.jsonio import write_json

Replacements = list[tuple[str, str]]


def replacements(pairs: dict[str, str]) -> Replacements:
    """``pairs`` (path -> shown instead) ordered longest path first, so a folder never pre-empts a file in it."""
    return sorted(((str(k), v) for k, v in pairs.items() if str(k) not in ("", ".", "/")),
                  key=lambda kv: -len(kv[0]))


def scrub_text(text: str, pairs: Replacements) -> str:
    for path, shown in pairs:
        text = text.replace(path, shown)
    return text


def scrub_json(value: Any, pairs: Replacements) -> Any:
    """A copy of a JSON-able value with every string (and key) scrubbed."""
    if isinstance(value, str):
        return scrub_text(value, pairs)
    if isinstance(value, dict):
        return {scrub_text(str(k), pairs): scrub_json(v, pairs) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_json(v, pairs) for v in value]
    return value


def scrub_report_files(out: Path, pairs: Replacements) -> None:
    """Rewrite ``report.json`` and ``report.html`` in ``out`` with the paths replaced (as written, HTML-escaped
    and JSON-escaped, the forms the page shows them in)."""
    report = out / "report.json"
    if report.is_file():
        write_json(report, scrub_json(json.loads(report.read_text()), pairs))
    page = out / "report.html"
    if page.is_file():
        forms = [(form(path), form(shown)) for path, shown in pairs
                 for form in (lambda t: t, html.escape, lambda t: json.dumps(t)[1:-1])]
        page.write_text(scrub_text(page.read_text(), replacements(dict(forms))))
