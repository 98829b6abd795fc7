"""Following a job and showing its outcome: progress lines, downloaded outputs, the summary and the exit code.
Used by ``submit``, ``watch`` and ``demo``."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, is_dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

from service.cli.output import EXIT_FAILED, EXIT_GATE, EXIT_OK, EXIT_USAGE, CliError, ProgressPrinter
from service.core.states import INVALID_INPUT

OUTPUT_NAMES = {"plan": "plan.json", "weights": "weights.pt", "onnx": "model.onnx", "report_json": "report.json",
                "report_html": "report.html"}


def follow(client, job_id: str, as_json: bool = False):
    """Print a job's progress on stderr until it ends; returns the finished job."""
    printer = ProgressPrinter(enabled=not as_json)
    try:
        for event in client.watch(job_id):
            if event.type == "progress":
                printer(event)
            elif not as_json:
                newline = "\n" if printer.tty and event.state.value != "QUEUED" else ""
                print(f"{newline}job {job_id}: {event.state.value} {event.message}".rstrip(), file=sys.stderr)
    except KeyboardInterrupt:
        raise CliError(f"stopped watching; job {job_id} keeps running (interprune watch {job_id}, "
                       f"interprune cancel {job_id})", EXIT_FAILED) from None
    return client.get(job_id)


def download_outputs(client, job, out: Path) -> dict[str, str]:
    files = {}
    for key, artifact_id in job.result.outputs.items():
        target = out / OUTPUT_NAMES.get(key, key)
        client.download(artifact_id, target)
        files[key] = str(target)
    return files


def report_job(job, files: dict[str, str], as_json: bool = False) -> int:
    """Print a finished job's summary (or one JSON object) and return the CLI exit code."""
    code = exit_code(job)
    if as_json:
        print(json.dumps({**job_json(job), "files": files, "exit_code": code}))
        return code
    if job.state.value != "SUCCEEDED":
        raise CliError(f"job {job.id} {job.state.value.lower()}: {job.message}", code)
    report_path = files.get("report_json")
    if report_path:
        from pipeline.report import summary_table

        print(summary_table(json.loads(Path(report_path).read_text())))
    else:
        print(result_lines(job))
    if files:
        print(f"\nwritten to {Path(next(iter(files.values()))).parent}/")
        if files.get("report_html"):
            print(f"report: {files['report_html']}")
    elif job.result and job.result.outputs.get("report_html"):
        print(f"report: artifact {job.result.outputs['report_html']} (interprune download ARTIFACT --out PATH)")
    return code


def exit_code(job) -> int:
    """0 succeeded (gate passed), 2 failed on bad input (the model, data or spec: fix and resubmit), 3 failed
    otherwise (export check, time budget, crash, server stop, internal) or cancelled, 4 gate failed."""
    if job.state.value != "SUCCEEDED":
        failure = getattr(job, "failure", None)
        return EXIT_USAGE if failure is not None and failure.kind == INVALID_INPUT else EXIT_FAILED
    gate = job.result.gate if job.result else None
    return EXIT_GATE if gate is not None and gate.evaluated and not gate.passed else EXIT_OK


def result_lines(job) -> str:
    r = job.result
    lines = [f"WARNING: {w}" for w in r.warnings]
    lines += [f"{stage:<13} top-1 {acc.top1:7.2%}" for stage, acc in r.accuracy.items()]
    lines.append(f"MACs -{r.macs_reduction:.1%}, params -{r.params_reduction:.1%}")
    if r.gate.evaluated:
        lines.append(f"quality gate {'PASSED' if r.gate.passed else 'FAILED'}: drop {r.gate.accuracy_drop:.2%} "
                     f"(allowed {r.gate.max_accuracy_drop:.2%})")
    return "\n".join(lines)




def print_nodes(nodes) -> None:
    """The Ray cluster's nodes (``interprune devices`` with ``serve --executor ray``)."""
    if not nodes:
        print("Ray executor: no cluster nodes reported")
        return
    print(f"{'RAY NODE':<14} {'ADDRESS':<16} {'STATE':<6} {'CPUS FREE':>10} {'GPUS FREE':>10}  RESOURCES")
    for n in nodes:
        extra = ", ".join(f"{k}={v:g}" for k, v in sorted(n.resources.items()))
        print(f"{n.node_id[:12]:<14} {n.address:<16} {'alive' if n.alive else 'DEAD':<6} "
              f"{n.free_cpus:>4g}/{n.cpus:<5g} {n.free_gpus:>4g}/{n.gpus:<5g}  {extra}")
    print()


def plain(value: Any) -> Any:
    if is_dataclass(value):
        return {k: plain(v) for k, v in asdict(value).items() if k != "spec"}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and value != value:
        return None
    return value


def job_json(job) -> dict:
    data = plain(job)
    data["spec"] = None
    if job.spec is not None:
        from google.protobuf import json_format

        data["spec"] = json_format.MessageToDict(job.spec, preserving_proto_field_name=True)
    return data


def job_text(job) -> str:
    lines = [f"job {job.id}: {job.state.value}" + (f" — {job.message}" if job.message else "")]
    if job.worker_node:
        lines.append(f"  worker: {job.worker_node}")
    if job.progress and not job.done:
        lines.append(f"  at {job.progress.stage} {job.progress.fraction:.0%}: {job.progress.message}")
    if job.failure:
        f = job.failure
        extra = f" (exit code {f.exit_code})" if f.exit_code is not None else \
            (f" (signal {f.signal})" if f.signal is not None else "")
        lines.append(f"  failure: {f.kind}{extra}: {f.message}")
    if job.result:
        lines += ["  " + line for line in result_lines(job).splitlines()]
        lines += [f"  {key}: {value}" for key, value in job.result.outputs.items()]
    return "\n".join(lines)
