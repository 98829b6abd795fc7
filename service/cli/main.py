"""interprune: prune CNNs by what their filters detect, re-fit, fine-tune, export to ONNX and measure.

Local commands (no server): ``compress`` runs the whole pipeline in this process; ``demo`` trains the bundled
sample model and compresses it. Service commands (``serve``, ``submit``, ``watch``, ...) live in
``service.cli.remote``. Exit codes (``service.cli.output``): 0 success (and quality gate passed), 2 usage or bad input, 3 job failed
or cancelled, 4 quality gate failed, 5 server unreachable; 141 when whoever read the output closed it early
(``interprune list | head``), as a shell reports a process ended by SIGPIPE.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from service.cli.local import add_local_commands
from service.cli.manage import add_manage_commands
from service.cli.output import EXIT_USAGE, CliError
from service.cli.remote import add_remote_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interprune", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    add_local_commands(sub)
    add_remote_commands(sub)
    add_manage_commands(sub)
    return parser


EXIT_OUTPUT_CLOSED = 141


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()                # a closed pipe shows here, not as a traceback when Python exits
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())    # what is left to print goes nowhere
        return EXIT_OUTPUT_CLOSED


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except argparse.ArgumentTypeError as exc:
        print(f"interprune: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from pruning.errors import InterpruneError

    try:
        return args.func(args)
    except (argparse.ArgumentTypeError, InterpruneError) as exc:     # bad input found outside a command's checks
        CliError(str(exc), EXIT_USAGE).show()
        return EXIT_USAGE
    except CliError as exc:
        exc.show()
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
