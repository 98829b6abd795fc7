"""The service commands of ``interprune``: ``serve``, ``agent``, ``submit``, ``watch``, ``get``, ``list``,
``cancel``, ``download``, ``devices``. ``service.cli.main`` adds them with ``add_remote_commands(subparsers)``.

Exit codes (as for every ``interprune`` command): 0 success (and the quality gate passed), 2 usage or bad input
(including what the server rejected: unknown architecture, bad token, file too large), 3 the job failed or was
cancelled, 4 the quality gate failed, 5 the server cannot be reached. With ``--json`` a command prints exactly
one JSON object on stdout, errors included (``{"error": ..., "status": ..., "exit_code": ...}``).

Client settings come from flags or the environment: ``--server`` / ``$INTERPRUNE_SERVER`` (default
127.0.0.1:50051), ``--token-file`` / ``$INTERPRUNE_TOKEN``, ``--tls-ca`` for a server with TLS.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from pipeline.flags import add_spec_arguments
from service.cli.follow import (download_outputs, exit_code, follow, job_json, job_text, plain, print_nodes,
                                report_job)
from service.cli.local import checked_spec
from service.cli.output import (EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, CliError,
                                positive_float, positive_int)
from service.cli.serve_limits import add_limit_arguments, limit_settings
from service.core.streams import RATE_GRACE_S

log = logging.getLogger(__name__)

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_AGENT = "127.0.0.1:50052"
_UNREACHABLE = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
_JOB_FAILED = {"INTERNAL", "UNKNOWN", "DATA_LOSS"}


def add_remote_commands(subparsers) -> None:
    """Add the service commands to ``interprune``'s subparsers."""
    _add_serve(subparsers)
    _add_agent(subparsers)
    _add_submit(subparsers)
    _add_job_commands(subparsers)


def _add_serve(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="run the gRPC service (jobs, artifacts, progress)")
    serve.add_argument("--listen", default=DEFAULT_SERVER, metavar="HOST:PORT",
                       help="address to listen on (default %(default)s; port 0 picks a free one)")
    serve.add_argument("--state-dir", required=True, help="job store and artifacts live here (created if missing)")
    serve.add_argument("--token-file", help="accepted bearer tokens, one per line (also $INTERPRUNE_TOKENS); "
                                            "none = no authentication")
    serve.add_argument("--max-upload-mb", type=positive_float, default=4096, help="largest artifact (MiB)")
    serve.add_argument("--quota-gb", type=positive_float, default=100, help="all artifacts together (GiB)")
    serve.add_argument("--workers", type=positive_int, help="jobs run at once (default 1: one per GPU, 1 on CPU; "
                                                             "with --executor ray, the cluster's CPU slots)")
    serve.add_argument("--job-timeout", type=positive_float, help="default wall-time budget of a job (seconds)")
    serve.add_argument("--no-spare-worker", action="store_true",
                       help="do not keep a worker process started for the next job (saves its memory)")
    serve.add_argument("--tls-cert", help="server certificate (PEM); with --tls-key enables TLS")
    serve.add_argument("--tls-key", help="server private key (PEM)")
    serve.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    serve.add_argument("--agent", action="append", default=[], metavar="NAME=HOST:PORT",
                       help="a device agent jobs can benchmark on as target agent:NAME (repeatable)")
    serve.add_argument("--agents-file", help='device agents as JSON: {"edge0": "HOST:PORT", "jetson1": {"address": '
                                             '"HOST:PORT", "token_file": "..."}}')
    serve.add_argument("--agent-token-file", help="token the server sends to agents without a token_file of their "
                                                  "own (first line; default $INTERPRUNE_AGENT_TOKEN)")
    serve.add_argument("--allow-model-package", action="append", default=[], metavar="PKG",
                       help="jobs may use python:PKG.MODULE:FACTORY architectures from this installed package "
                            "(repeatable; default none: no user-named code runs on the server)")
    add_limit_arguments(serve)
    _add_executor_arguments(serve)
    serve.set_defaults(func=cmd_serve)


def _add_executor_arguments(serve) -> None:
    group = serve.add_argument_group("where jobs run")
    group.add_argument("--executor", choices=["local", "ray"], default="local",
                       help="local: worker processes on this machine (default); ray: Ray tasks on a cluster's nodes "
                            "(pip install 'interprune[ray]')")
    group.add_argument("--ray-address", default="auto", metavar="ADDRESS",
                       help="with --executor ray: the cluster's head HOST:PORT, 'auto' (the running cluster: "
                            "$RAY_ADDRESS or this machine's, default), 'local' (start a one-machine cluster) or "
                            "ray://HOST:PORT (Ray Client, from outside the cluster)")
    group.add_argument("--ray-cpus-per-job", type=positive_float, default=1.0,
                       help="CPUs a job asks Ray for when its spec sets no --threads (default %(default)s)")
    group.add_argument("--advertise-address", metavar="HOST:PORT",
                       help="where Ray workers reach this server (default: --listen, a 0.0.0.0 host replaced by "
                            "this node's IP)")


def _add_agent(subparsers) -> None:
    agent = subparsers.add_parser("agent", help="run the device agent: benchmarks models on this machine for a server")
    agent.add_argument("--listen", default=DEFAULT_AGENT, metavar="HOST:PORT",
                       help="address to listen on (default %(default)s; 0.0.0.0:50052 for other machines)")
    agent.add_argument("--name", required=True, help="this device's name; jobs name it as target agent:NAME")
    agent.add_argument("--token-file", help="accepted bearer tokens, one per line (also $INTERPRUNE_TOKENS); "
                                            "none = no authentication")
    agent.add_argument("--max-model-mb", type=positive_float, default=2048, help="largest ONNX model (MiB)")
    agent.add_argument("--max-data-mb", type=positive_float, default=64,
                       help="largest evaluation / calibration data (MiB)")
    agent.add_argument("--work-dir", help="temporary files (default: the system's temp folder)")
    agent.add_argument("--upload-idle-timeout", type=positive_float, default=30.0, metavar="SECONDS",
                       help="end a benchmark upload that sends nothing for this long (default %(default)s)")
    agent.add_argument("--upload-min-rate", type=float, default=16.0, metavar="KIB_S",
                       help=f"end a benchmark upload that averages less than this many KiB/s once it has run "
                            f"{RATE_GRACE_S:g} s (0 = never; default %(default)s)")
    agent.add_argument("--max-benchmarks", type=int, default=4, metavar="N",
                       help="benchmark calls open at once, receiving or waiting for the device; more are refused "
                            "with RESOURCE_EXHAUSTED (default %(default)s, at most 6)")
    agent.set_defaults(func=cmd_agent)


def _add_submit(subparsers) -> None:
    submit = subparsers.add_parser("submit", help="upload, submit, watch and download a job on a server")
    add_spec_arguments(submit)
    _client_arguments(submit)
    submit.add_argument("--out", help="download the results (plan, weights, ONNX, report) into this folder")
    submit.add_argument("--request-id", help="idempotency key: resubmitting with it returns the same job "
                                             "(default: a fresh one per call)")
    submit.add_argument("--timeout", type=positive_float, dest="job_timeout",
                        help="the job's wall-time budget on the server (seconds)")
    submit.add_argument("--retry-on-crash", action="store_true", help="re-queue if the server stops mid-job")
    submit.add_argument("--detach", action="store_true", help="return after submitting (prints the job id)")
    submit.set_defaults(func=cmd_submit)


def _add_job_commands(subparsers) -> None:
    for name, func, help_text in (("watch", cmd_watch, "follow a job's progress until it ends"),
                                  ("get", cmd_get, "show a job"), ("cancel", cmd_cancel, "cancel a job")):
        sub = subparsers.add_parser(name, help=help_text)
        sub.add_argument("job_id", metavar="JOB")
        if name == "cancel":
            sub.add_argument("--no-wait", action="store_true", help="return once the cancel is recorded, without "
                                                                     "waiting for a running job to stop")
        _client_arguments(sub)
        sub.set_defaults(func=func)

    listing = subparsers.add_parser("list", help="list jobs, newest first")
    listing.add_argument("--state", action="append", default=[], type=str.upper,
                         choices=["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"])
    listing.add_argument("--limit", type=positive_int, default=50)
    _client_arguments(listing)
    listing.set_defaults(func=cmd_list)

    download = subparsers.add_parser("download", help="download an artifact (digest-checked, atomic)")
    download.add_argument("artifact_id", metavar="ARTIFACT")
    download.add_argument("--out", required=True, help="file to write")
    _client_arguments(download)
    download.set_defaults(func=cmd_download)

    devices = subparsers.add_parser("devices", help="list the server's device agents and whether they answer")
    _client_arguments(devices)
    devices.set_defaults(func=cmd_devices)


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--server", default=os.environ.get("INTERPRUNE_SERVER", DEFAULT_SERVER), metavar="HOST:PORT")
    group.add_argument("--token-file", help="bearer token (first line); default $INTERPRUNE_TOKEN")
    group.add_argument("--tls-ca", help="CA certificate of a TLS server (PEM); 'system' for the system's roots")
    parser.add_argument("--json", action="store_true", help="print one JSON object for machines")


# --- errors -> exit codes ----------------------------------------------------------------------------------

def _client_command(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn client errors into ``CliError`` with the exit code; with --json, print them as one object."""
    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from service.core.auth import AuthConfigError
        from service.client import InterpruneClientError, InterpruneRPCError

        try:
            return func(args)
        except InterpruneRPCError as exc:
            error = _rpc_cli_error(exc, args)
        except (InterpruneClientError, AuthConfigError) as exc:
            error = CliError(str(exc), EXIT_USAGE)
        except CliError as exc:
            error = exc
        if getattr(args, "json", False):
            print(json.dumps({"error": str(error), "exit_code": error.exit_code}))
        else:
            error.show()
        return error.exit_code
    return run


def _rpc_cli_error(exc, args: argparse.Namespace) -> CliError:
    status = exc.status.value
    if status in _UNREACHABLE:
        return CliError(f"cannot reach the interprune server at {args.server} ({exc.message}); is `interprune serve` "
                        "running there, and is --server right?", EXIT_UNREACHABLE)
    if status == "UNAUTHENTICATED":
        return CliError(f"the server refused the credentials: {exc.message}", EXIT_USAGE)
    return CliError(str(exc), EXIT_FAILED if status in _JOB_FAILED else EXIT_USAGE)


def _connect(args: argparse.Namespace):
    from service.core.auth import channel_credentials, read_client_token
    from service.client import Client

    credentials = None
    if args.tls_ca:
        credentials = channel_credentials(None if args.tls_ca == "system" else args.tls_ca)
    # two attempts: a CLI against a dead address answers in well under a second (exit 5); the Python client's
    # default of four suits long-running callers better
    return Client(args.server, token=read_client_token(args.token_file), credentials=credentials, retry_attempts=2)


# --- serve -------------------------------------------------------------------------------------------------

@_client_command
def cmd_serve(args: argparse.Namespace) -> int:
    from service.core.auth import AuthConfigError, load_tokens
    from service.core.errors import ServiceError
    from service.api.server import ServerSettings, serve

    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    try:
        tokens = load_tokens(args.token_file)
    except AuthConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    host = args.listen.rpartition(":")[0].strip("[]")
    if not tokens and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("no tokens configured: anyone who can reach %s can submit jobs (use --token-file)", args.listen)
    from service.agent.client import parse_agents

    try:
        agents = parse_agents(args.agent, args.agents_file, args.agent_token_file)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    settings = ServerSettings(max_upload_bytes=int(args.max_upload_mb * (1 << 20)), agents=agents,
                              quota_bytes=int(args.quota_gb * (1 << 30)),
                              job_workers=args.workers or (0 if args.executor == "ray" else 1),
                              executor=args.executor, ray_address=args.ray_address,
                              ray_cpus_per_job=args.ray_cpus_per_job, advertise_address=args.advertise_address,
                              job_timeout_s=args.job_timeout, warm_spare=not args.no_spare_worker, tokens=tokens,
                              tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                              allowed_model_packages=frozenset(args.allow_model_package), **limit_settings(args))

    def ready(server) -> None:
        host_part = args.listen.rpartition(":")[0]
        print(f"interprune: serving on {host_part}:{server.port} (state {server.state_dir}, "
              f"{'token auth' if tokens else 'no auth'}, {'TLS' if args.tls_cert else 'plaintext'}"
              + (f", jobs on Ray at {args.ray_address}" if args.executor == "ray" else "")
              + (f", agents {', '.join(agents)}" if agents else "")
              + (f", model packages {', '.join(sorted(args.allow_model_package))}" if args.allow_model_package else "")
              + ")", flush=True)

    try:
        settings.check()
        serve(args.listen, args.state_dir, settings, ready=ready)
    except ServiceError as exc:
        raise CliError(exc.message, EXIT_USAGE) from None
    except (AuthConfigError, ValueError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return EXIT_OK


# --- agent -------------------------------------------------------------------------------------------------

@_client_command
def cmd_agent(args: argparse.Namespace) -> int:
    import re

    from service.agent.server import AgentSettings, serve_agent
    from service.core.errors import ServiceError

    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.name):
        raise CliError(f"--name {args.name!r}: use 1-64 letters, digits, '_', '.', '-' (jobs name it agent:NAME)",
                       EXIT_USAGE)
    try:
        settings = AgentSettings(max_model_bytes=int(args.max_model_mb * (1 << 20)),
                                 max_data_bytes=int(args.max_data_mb * (1 << 20)), work_dir=args.work_dir,
                                 upload_idle_timeout_s=args.upload_idle_timeout, max_benchmarks=args.max_benchmarks,
                                 upload_min_rate_kib_s=args.upload_min_rate)
    except ValueError as exc:
        flags = {"upload_min_rate_kib_s": "--upload-min-rate", "upload_idle_timeout_s": "--upload-idle-timeout"}
        flag = next((f for field, f in flags.items() if field in str(exc)), "--max-benchmarks")
        raise CliError(f"{flag}: {exc}", EXIT_USAGE) from None

    def ready(server) -> None:
        from service.agent.device_info import describe_device

        info = describe_device(args.name)
        print(f"interprune agent {args.name}: serving on {args.listen.rpartition(':')[0]}:{server.port} "
              f"({info.summary()}; backends {', '.join(info.backends)}; "
              f"{'token auth' if server.settings.tokens else 'no auth'})", flush=True)
        host = args.listen.rpartition(":")[0].strip("[]")
        if not server.settings.tokens and host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("no tokens configured: anyone who can reach %s can run models here (use --token-file)",
                        args.listen)

    try:
        serve_agent(args.listen, args.name, args.token_file, settings, ready=ready)
    except ServiceError as exc:
        raise CliError(exc.message, EXIT_USAGE) from None
    return EXIT_OK


@_client_command
def cmd_devices(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        listing = client.devices()
    devices = listing.agents
    if args.json:
        print(json.dumps({"devices": [plain(d) for d in devices], "executor": listing.executor,
                          "nodes": [plain(n) for n in listing.nodes]}))
        return EXIT_OK
    if listing.executor == "ray":
        print_nodes(listing.nodes)
    if not devices:
        print("no device agents configured on this server (interprune serve --agent NAME=HOST:PORT)")
        return EXIT_OK
    print(f"{'TARGET':<20} {'ADDRESS':<22} {'STATUS':<11} DEVICE")
    for d in devices:
        if d.healthy:
            from service.agent.device_info import DeviceInfo

            info = DeviceInfo(**d.info)
            what = f"{info.summary()}; {', '.join(info.backends)}"
        else:
            what = d.error
        print(f"{'agent:' + d.name:<20} {d.address:<22} {'healthy' if d.healthy else 'UNHEALTHY':<11} {what}")
    return EXIT_OK


# --- submit ------------------------------------------------------------------------------------------------

@_client_command
def cmd_submit(args: argparse.Namespace) -> int:
    spec = checked_spec(args)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; give a folder", EXIT_USAGE)
    for label, value in (("--weights", spec.compress.model.weights), ("--data", spec.compress.data.path),
                         ("--model", spec.compress.model.model_file)):
        if value and not Path(value).is_file() and not (label == "--data" and Path(value).is_dir()):
            hint = " (--weights and --model take one file each)" if Path(value).is_dir() else ""
            raise CliError(f"{label} {value}: not a file{hint}", EXIT_USAGE)
    spec = _with_model_data(args, spec)                  # before connecting: a missing data file is a local problem
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(_connect(args))
        job = client.submit(spec, request_id=args.request_id, timeout_seconds=args.job_timeout,
                            retry_on_crash=args.retry_on_crash)
        _say(args, f"job {job.id} queued on {args.server}")
        if args.detach:
            if args.json:
                print(json.dumps(job_json(job)))
            else:
                print(job.id)
            return EXIT_OK
        job = follow(client, job.id, args.json)
        files = download_outputs(client, job, out) if out is not None and job.result else {}
    return report_job(job, files, args.json)


def _with_model_data(args: argparse.Namespace, spec):
    """``spec`` with its ONNX model's external data files named (``spec.model.external_data``, found once, here,
    as a local run finds them), so ``Client.submit`` uploads them with the model; a missing one raises here,
    before any connection."""
    from service.client import model_data_files

    files = model_data_files(spec.compress.model)
    if not files:
        return spec
    size = sum(Path(f).stat().st_size for f in files.values() if Path(f).is_file())
    _say(args, f"{Path(spec.compress.model.model_file).name} keeps its weights in {', '.join(sorted(files))}: "
               f"uploading {'it' if len(files) == 1 else 'them'} with the model ({size / 2 ** 20:.1f} MiB)")
    model = dataclasses.replace(spec.compress.model, external_data=files)
    return dataclasses.replace(spec, compress=dataclasses.replace(spec.compress, model=model))


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(text, file=sys.stderr)


# --- watch / get / list / cancel / download ----------------------------------------------------------------

@_client_command
def cmd_watch(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        if args.json:
            events = [plain(e) for e in client.watch(args.job_id)]
            job = client.get(args.job_id)
            print(json.dumps({**job_json(job), "events": events, "exit_code": exit_code(job)}))
            return exit_code(job)
        job = follow(client, args.job_id, args.json)
    print(job_text(job))
    return exit_code(job)


@_client_command
def cmd_get(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        job = client.get(args.job_id)
    print(json.dumps(job_json(job)) if args.json else job_text(job))
    return EXIT_OK


@_client_command
def cmd_list(args: argparse.Namespace) -> int:
    jobs = []
    with _connect(args) as client:
        for job in client.iter_jobs(args.state, page_size=min(args.limit, 100)):
            jobs.append(job)
            if len(jobs) >= args.limit:
                break
    if args.json:
        print(json.dumps({"jobs": [job_json(j) for j in jobs]}))
        return EXIT_OK
    print(f"{'JOB':<22} {'STATE':<10} {'CREATED':<20} MESSAGE")
    for job in jobs:
        created = job.created.astimezone().strftime("%Y-%m-%d %H:%M:%S") if job.created else ""
        print(f"{job.id:<22} {job.state.value:<10} {created:<20} {job.message}")
    return EXIT_OK


@_client_command
def cmd_cancel(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        job = client.cancel(args.job_id)            # returns at once; a running job stops at its next check
        if not job.done and not args.no_wait:
            job = client.wait(job.id)
    print(json.dumps(job_json(job)) if args.json else f"job {job.id}: {job.state.value} {job.message}".rstrip())
    return EXIT_OK


@_client_command
def cmd_download(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        path = client.download(args.artifact_id, args.out)
    print(json.dumps({"artifact_id": args.artifact_id, "path": str(path)}) if args.json else str(path))
    return EXIT_OK


