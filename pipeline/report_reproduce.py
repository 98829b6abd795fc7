"""The report's "reproduce" section: the exact spec, the environment, and the equivalent ``interprune compress``
command line (derived from ``pipeline.flags``), checked by parsing it back."""
from __future__ import annotations

import json
import math
import shlex

from pipeline.html_parts import escape, html_table


def reproduce(report: dict) -> str:
    spec = report["spec"]
    command, differences = command_line(spec)
    if differences is None:
        note = "Not checked against the spec (it could not be parsed back)."
    elif differences:
        note = ("Fields without a flag keep their defaults; these differ from the spec (submit the spec instead): "
                + ", ".join(differences))
    else:
        note = "Checked: parsing this command gives back the spec below exactly."
    env_rows = [[k, v if isinstance(v, str) else json.dumps(v)] for k, v in report.get("environment", {}).items()]
    return (f"<h3>Command line</h3><pre>{escape(command)}</pre><p class='d'>{escape(note)}</p>"
            "<h3>Spec</h3><p class='d'><code>JobSpec.from_dict(json.load(open('report.json'))['spec'])</code> "
            "rebuilds it.</p>"
            f"<pre>{escape(json.dumps(spec, indent=2))}</pre><h3>Environment</h3>" + html_table(["", ""], env_rows))


def command_line(spec: dict) -> tuple[str, list[str] | None]:
    """The ``interprune compress`` command for ``spec`` and the spec fields it cannot reproduce (``[]`` when
    parsing it gives back ``spec`` exactly; ``None`` when that could not be checked)."""
    import argparse

    from pipeline.flags import add_spec_arguments, argv_from_spec, spec_from_args

    argv = ["interprune", "compress", *argv_from_spec(spec), "--out", "OUT"]
    try:
        parser = argparse.ArgumentParser(add_help=False)
        add_spec_arguments(parser)
        parser.add_argument("--out")
        parsed = spec_from_args(parser.parse_args(argv[2:])).to_dict()
        differences = _diff(json.loads(json.dumps(parsed)), json.loads(json.dumps(spec)))   # tuples -> lists
    except Exception:   # noqa: BLE001 — the page must render whatever the spec holds
        differences = None
    return shlex.join(argv), differences


def _diff(got, want, path: str = "") -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        return [d for k in sorted(set(got) | set(want)) for d in _diff(got.get(k), want.get(k), f"{path}.{k}")]
    if isinstance(want, float) or isinstance(got, float):
        same = isinstance(got, (int, float)) and isinstance(want, (int, float)) and math.isclose(got, want,
                                                                                                  rel_tol=1e-9)
        return [] if same else [path.lstrip(".")]
    return [] if got == want else [path.lstrip(".")]
