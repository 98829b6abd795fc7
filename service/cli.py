"""interprune: prune CNNs by what their filters detect, re-fit, fine-tune, export to ONNX and measure.

Local commands (no server): ``compress`` runs the whole pipeline in this process; ``demo`` trains the bundled
sample model and compresses it. Service commands (``serve``, ``submit``, ``watch``, ...) live in
``service.commands_remote``. Exit codes: 0 success (and quality gate passed), 2 usage or bad input, 3 job failed
or cancelled, 4 quality gate failed, 5 server unreachable.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

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


# --- the spec from flags (shared by `compress` and `submit`) -------------------------------------

def add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    m = parser.add_argument_group("model")
    m.add_argument("--arch", required=True, help="architecture, e.g. cifar/resnet56 (see `interprune models`)")
    m.add_argument("--weights", help="weights-only checkpoint (.th/.pt); omitted = random initialisation")
    m.add_argument("--num-classes", type=int)
    d = parser.add_argument_group("data")
    d.add_argument("--data", help="folder with train*.npz/test.npz, one .npz, an ImageFolder dir/.tar/.zip, or "
                                  "CIFAR python batches; omitted = the bundled sample (scikit-learn digits)")
    d.add_argument("--calibration-images", type=int, default=2000)
    d.add_argument("--eval-images", type=int, help="evaluation images (default: the whole test set)")
    d.add_argument("--finetune-pool", type=int, help="at most this many images in the fine-tune split")
    d.add_argument("--input-size", type=_size, help="resize images to HxW, e.g. 224x224")
    d.add_argument("--mean", type=_floats, help="per-channel mean, e.g. 0.485,0.456,0.406")
    d.add_argument("--std", type=_floats)
    p = parser.add_argument_group("pruning")
    p.add_argument("--criterion", default="l1", help="l1, l2, random, fpgm, taylor, dissection, functionality, "
                                                     "redundancy, layer_probe, visual_similarity")
    p.add_argument("--criterion-param", action="append", default=[], metavar="KEY=VALUE")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-macs", type=float, help="fraction of MACs to remove, e.g. 0.5")
    target.add_argument("--target-params", type=float, help="fraction of parameters to remove")
    target.add_argument("--latency-budget", type=float, metavar="MS",
                        help="instead of a fraction: p90 latency to reach at --latency-batch on --latency-target")
    p.add_argument("--latency-batch", type=int, default=1)
    p.add_argument("--latency-target", default="local:cpu")
    p.add_argument("--latency-margin", type=float, default=0.05, metavar="FRACTION",
                   help="the search aims at budget x (1 - margin): latency moves by a few %% between measurements")
    p.add_argument("--allocation", choices=("uniform", "global"), default="uniform")
    p.add_argument("--round-to", type=int, default=None,
                   help="keep widths at multiples of this (1 = off); default: automatic by target and precision, "
                        "32 for --precision int8 with a GPU or agent target, else 8 (the reason is in the report)")
    p.add_argument("--min-channels", type=int, default=1)
    p.add_argument("--protect", action="append", default=[], metavar="LAYER",
                   help="never prune this layer's output channels")
    p.add_argument("--layer-criterion", help="block criterion run first (layer_probe), then --criterion")
    p.add_argument("--layer-param", action="append", default=[], metavar="KEY=VALUE")
    r = parser.add_argument_group("reconstruction and fine-tuning")
    r.add_argument("--no-reconstruct", action="store_true", help="skip the least-squares kernel re-fit")
    r.add_argument("--batchnorm", choices=("auto", "on", "off"), default="auto",
                   help="re-estimate BatchNorm statistics (auto: only without reconstruction)")
    r.add_argument("--finetune", type=float, default=0.0, metavar="EPOCHS", help="fine-tune epochs (0 = none)")
    r.add_argument("--finetune-steps", type=int)
    r.add_argument("--finetune-images", type=int, help="fine-tune until this many images were seen")
    r.add_argument("--finetune-minutes", type=float)
    r.add_argument("--lr", type=float, default=0.01)
    r.add_argument("--no-augment", action="store_true", help="no flip/crop augmentation while fine-tuning")
    e = parser.add_argument_group("export and benchmark")
    e.add_argument("--opset", type=int, default=17)
    e.add_argument("--slim", action="store_true", help="simplify the ONNX graph with onnxslim")
    e.add_argument("--no-export", action="store_true")
    e.add_argument("--targets", default="local:cpu", help="comma-separated: local:cpu, local:cuda, agent:NAME; "
                                                          "'' = no benchmark")
    e.add_argument("--batch-sizes", type=_ints, default=(1, 64))
    e.add_argument("--bench-seconds", type=float, default=3.0, help="at most this long per batch size")
    e.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="precision of the engines agents build (fp16/int8 need TensorRT on the agent); also picks "
                        "the automatic --round-to")
    e.add_argument("--agent-eval-images", type=_non_negative_int, default=2000, metavar="N",
                   help="agent targets measure top-1 on the first N evaluation images (0 = none)")
    parser.add_argument("--max-accuracy-drop", type=float,
                        help="quality gate: largest accepted top-1 drop, in points (0.5 = half a point)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch / ONNX Runtime threads")


def spec_from_args(args: argparse.Namespace):
    """The ``JobSpec`` described by the flags of ``add_compress_arguments``."""
    from pruning.compress import CompressSpec, DataSpec, FinetuneSpec, ModelSpec, PruneSpec, ReconstructSpec
    from service.pipeline import BenchmarkSpec, ExportSpec, GateSpec, JobSpec

    metric, reduction = ("params", args.target_params) if args.target_params is not None else \
        ("macs", args.target_macs if args.target_macs is not None else 0.5)
    compress_spec = CompressSpec(
        model=ModelSpec(args.arch, args.weights, args.num_classes),
        data=DataSpec(args.data, args.calibration_images, args.eval_images, args.finetune_pool, args.input_size,
                      args.mean, args.std),
        prune=PruneSpec(args.criterion, _params(args.criterion_param), metric, reduction, args.allocation,
                        args.round_to, args.min_channels, tuple(args.protect), args.layer_criterion,
                        _params(args.layer_param), latency_budget_ms=args.latency_budget,
                        latency_batch=args.latency_batch, latency_target=args.latency_target,
                        latency_margin=args.latency_margin),
        reconstruct=ReconstructSpec(enabled=not args.no_reconstruct, batchnorm=args.batchnorm),
        finetune=FinetuneSpec(epochs=args.finetune or None, steps=args.finetune_steps,
                              images=args.finetune_images, minutes=args.finetune_minutes, lr=args.lr,
                              augment=not args.no_augment),
        seed=args.seed, threads=args.threads)
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    drop = None if args.max_accuracy_drop is None else args.max_accuracy_drop / 100.0
    return JobSpec(compress_spec, ExportSpec(onnx=not args.no_export, opset=args.opset, slim=args.slim),
                   BenchmarkSpec(targets=targets, batch_sizes=tuple(args.batch_sizes), threads=args.threads,
                                 seconds_per_batch=args.bench_seconds, agent_eval_images=args.agent_eval_images,
                                 precision=args.precision),
                   GateSpec(drop))


def _params(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected HxW like 224x224, got {text!r}")
    return int(parts[0]), int(parts[1])


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


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


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# --- local commands -----------------------------------------------------------------------------

def cmd_compress(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    report = run_into_folder(spec, Path(args.out), force=args.force, quiet=args.json)
    return finish(report, Path(args.out), as_json=args.json)


def run_into_folder(spec, out: Path, force: bool = False, quiet: bool = False) -> dict:
    """Run the pipeline into a temporary sibling of ``out`` and move it into place only when it succeeded."""
    from pruning.errors import Cancelled, InterpruneError
    from service.pipeline import run_pipeline

    if out.exists() and any(out.iterdir()) and not force:
        raise CliError(f"output folder {out} exists and is not empty; choose another --out or pass --force",
                       EXIT_USAGE)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    progress = ProgressPrinter(enabled=not quiet)
    try:
        report = run_pipeline(spec, work, progress=progress)
    except Cancelled as exc:
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
    from service.report import summary_table

    if as_json:
        print(json.dumps({"out": str(out), "accuracy": report["accuracy"], "reduction": report["reduction"],
                          "gate": report["gate"], "speedup": report["speedup"]}, indent=1))
    else:
        print(summary_table(report))
        print(f"\nwritten to {out}/ (report: {out / 'report.json'}"
              + (f", {out / 'report.html'}" if (out / "report.html").exists() else "") + ")")
    return EXIT_OK if report["gate"]["passed"] else EXIT_GATE


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


def cmd_demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    return run_demo(Path(args.out), as_json=args.json)


def cmd_models(args: argparse.Namespace) -> int:
    from pruning import zoo
    from pruning.criteria import list_criteria

    for name in zoo.list_models():
        print(f"{name:<32} {zoo.get_entry(name).description}")
    print("\ncriteria: " + ", ".join(list_criteria()))
    return EXIT_OK


# --- entry point --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interprune", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress", help="run the whole pipeline in this process")
    add_compress_arguments(c)
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
    try:
        from service.commands_remote import add_remote_commands
    except ImportError:
        pass
    else:
        add_remote_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except argparse.ArgumentTypeError as exc:
        print(f"interprune: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except argparse.ArgumentTypeError as exc:
        CliError(str(exc), EXIT_USAGE).show()
        return EXIT_USAGE
    except CliError as exc:
        exc.show()
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
