"""The local commands: ``compress`` runs the whole pipeline in this process, ``demo`` trains the bundled sample
model and compresses it through a local server, ``models`` lists architectures and criteria."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline.flags import add_spec_arguments, spec_from_args
from service.cli.output import EXIT_FAILED, EXIT_GATE, EXIT_OK, EXIT_USAGE, CliError, ProgressPrinter


def add_local_commands(sub) -> None:
    c = sub.add_parser("compress", help="run the whole pipeline in this process")
    add_spec_arguments(c)
    c.add_argument("--out", required=True, help="output folder (written only if the run succeeds)")
    c.add_argument("--force", action="store_true", help="replace an existing output folder")
    c.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    c.set_defaults(func=cmd_compress)
    demo = sub.add_parser("demo", help="train the bundled sample model and compress it")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--json", action="store_true")
    demo.set_defaults(func=cmd_demo)
    models = sub.add_parser("models", help="list architectures and criteria")
    models.set_defaults(func=cmd_models)


def cmd_compress(args: argparse.Namespace) -> int:
    spec = checked_spec(args)
    unknown = [t for t in spec.benchmark.targets if t.startswith("agent:") and t[6:] not in spec.benchmark.agents]
    if unknown:
        raise CliError(f"--targets {unknown[0]}: a device agent is measured through a server that knows it "
                       f"(interprune serve --agent {unknown[0][6:]}=HOST:PORT, then interprune submit); a local "
                       "run measures local:cpu or local:cuda", EXIT_USAGE)
    report = run_into_folder(spec, Path(args.out), force=args.force, quiet=args.json)
    return finish(report, Path(args.out), as_json=args.json)


def checked_spec(args: argparse.Namespace):
    """The spec of the flags, within the limits a server enforces at submit (``pipeline.checks``): exit 2 with
    the field, its value and the limit otherwise, before anything is read or uploaded."""
    from pipeline.checks import check_job_limits
    from pruning.errors import SpecError

    try:
        spec = spec_from_args(args)
        check_job_limits(spec)
    except SpecError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return spec


def run_into_folder(spec, out: Path, force: bool = False, quiet: bool = False) -> dict:
    """Run the pipeline into a temporary sibling of ``out`` and move it into place only when it succeeded."""
    from pipeline.run import ExportCheckFailed, run_pipeline
    from pruning.errors import Cancelled, InterpruneError
    from service.agent.targets import AgentTargets

    if out.exists() and any(out.iterdir()) and not force:
        raise CliError(f"output folder {out} exists and is not empty; choose another --out or pass --force",
                       EXIT_USAGE)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    progress = ProgressPrinter(enabled=not quiet)
    try:
        report = run_pipeline(spec, work, progress=progress, remote_targets=AgentTargets)
    except (Cancelled, ExportCheckFailed) as exc:        # the job failed, not its input: exit 3, as a server job
        raise CliError(str(exc), EXIT_FAILED) from None
    except InterpruneError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except KeyboardInterrupt:
        raise CliError("interrupted; nothing was written", EXIT_FAILED) from None
    finally:
        progress.close()
        if sys.exc_info()[0] is not None:
            shutil.rmtree(work, ignore_errors=True)
    if out.exists():
        shutil.rmtree(out)
    work.replace(out)
    return report


def finish(report: dict, out: Path, as_json: bool) -> int:
    from pipeline.report import summary_table

    if as_json:
        print(json.dumps({"out": str(out), "accuracy": report["accuracy"], "reduction": report["reduction"],
                          "gate": report["gate"], "speedup": report["speedup"]}, indent=1))
    else:
        print(summary_table(report))
        print(f"\nwritten to {out}/ (report: {out / 'report.json'}"
              + (f", {out / 'report.html'}" if (out / "report.html").exists() else "") + ")")
    return EXIT_OK if report["gate"]["passed"] else EXIT_GATE


def cmd_demo(args: argparse.Namespace) -> int:
    from service.cli.demo import run_demo

    return run_demo(Path(args.out), as_json=args.json)


def cmd_models(args: argparse.Namespace) -> int:
    from pruning import zoo
    from pruning.criteria import list_criteria

    for name in zoo.list_models():
        print(f"{name:<32} {zoo.get_entry(name).description}")
    print("\ncriteria: " + ", ".join(list_criteria()))
    return EXIT_OK
