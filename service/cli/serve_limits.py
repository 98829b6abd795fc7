"""The ``interprune serve`` flags for the server's limits (``service.api.settings.ServerSettings``): upload streams,
queued jobs, RPC threads and retention."""
from __future__ import annotations

import argparse

from dataclasses import asdict

from service.api.settings import RESERVED_THREADS, ServerSettings
from service.cli.output import positive_float, positive_int
from service.core.streams import RATE_GRACE_S

DEFAULTS = asdict(ServerSettings())


def add_limit_arguments(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("limits")
    group.add_argument("--upload-idle-timeout", type=positive_float, default=DEFAULTS["upload_idle_timeout_s"],
                       metavar="SECONDS", help="end an upload that sends nothing this long (default %(default)s)")
    group.add_argument("--upload-min-rate", type=float, default=DEFAULTS["upload_min_rate_kib_s"], metavar="KIB_S",
                       help=f"end an upload that averages less than this many KiB/s once it has run "
                            f"{RATE_GRACE_S:g} s (0 = never; default %(default)s)")
    group.add_argument("--max-uploads", type=positive_int, default=DEFAULTS["max_uploads"],
                       help="upload streams open at once, all clients together (default %(default)s)")
    group.add_argument("--max-uploads-per-client", type=positive_int, default=DEFAULTS["max_uploads_per_client"],
                       help="upload streams open at once per client: its token, else its address "
                            "(default %(default)s)")
    group.add_argument("--max-queued-jobs", type=positive_int, default=DEFAULTS["max_queued_jobs_per_client"],
                       help="queued jobs per client (default %(default)s)")
    group.add_argument("--rpc-threads", type=positive_int, default=DEFAULTS["rpc_threads"],
                       help=f"threads serving calls; streams (uploads, watches) may hold all but {RESERVED_THREADS} "
                            "of them (default %(default)s)")
    group.add_argument("--retention-days", type=positive_float, metavar="DAYS",
                       help="remove finished jobs and artifacts no job refers to once older than this "
                            "(default: keep everything)")


def limit_settings(args: argparse.Namespace) -> dict:
    """The ``ServerSettings`` fields the limit flags set."""
    return {"upload_idle_timeout_s": args.upload_idle_timeout, "upload_min_rate_kib_s": args.upload_min_rate,
            "max_uploads": args.max_uploads,
            "max_uploads_per_client": args.max_uploads_per_client,
            "max_queued_jobs_per_client": args.max_queued_jobs, "rpc_threads": args.rpc_threads,
            "retention_days": args.retention_days}
