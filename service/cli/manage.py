"""Housekeeping commands of ``interprune``: ``delete JOB`` (a finished job, with outputs no other job uses),
``artifacts`` (what the server stores) and ``delete-artifact NAME`` (refused while a queued or running job uses
it). Exit codes as for every command: 2 for what the server refuses (e.g. a running job), 5 no server."""
from __future__ import annotations

import argparse
import json

from service.cli.output import EXIT_OK, positive_int
from service.cli.remote import _client_arguments, _client_command, _connect
from service.core.wire import KIND_TO_PROTO

KINDS = tuple(KIND_TO_PROTO)


def add_manage_commands(subparsers) -> None:
    delete = subparsers.add_parser("delete", help="delete a finished job (and its outputs no other job uses)")
    delete.add_argument("job_id", metavar="JOB")
    _client_arguments(delete)
    delete.set_defaults(func=cmd_delete)

    listing = subparsers.add_parser("artifacts", help="list the artifacts the server stores, newest first")
    listing.add_argument("--kind", action="append", default=[], choices=KINDS, help="only this kind (repeatable)")
    listing.add_argument("--limit", type=positive_int, default=100)
    _client_arguments(listing)
    listing.set_defaults(func=cmd_artifacts)

    remove = subparsers.add_parser("delete-artifact", help="delete an artifact (not while a queued or running job "
                                                           "uses it)")
    remove.add_argument("artifact_id", metavar="ARTIFACT", help="its sha256 or artifacts/{sha256}")
    _client_arguments(remove)
    remove.set_defaults(func=cmd_delete_artifact)


@_client_command
def cmd_delete(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        removed = client.delete(args.job_id)
    if args.json:
        print(json.dumps({"deleted": args.job_id, "deleted_artifacts": removed}))
    else:
        print(f"job {args.job_id} deleted" + (f", with {len(removed)} output artifact(s)" if removed else ""))
    return EXIT_OK


@_client_command
def cmd_artifacts(args: argparse.Namespace) -> int:
    found = []
    with _connect(args) as client:
        for artifact in client.iter_artifacts(args.kind, page_size=min(args.limit, 100)):
            found.append(artifact)
            if len(found) >= args.limit:
                break
    if args.json:
        print(json.dumps({"artifacts": [{"id": a.id, "name": a.name, "kind": a.kind, "size_bytes": a.size_bytes,
                                         "created": a.created.isoformat() if a.created else None} for a in found]}))
        return EXIT_OK
    print(f"{'ARTIFACT':<66} {'KIND':<12} {'SIZE':>12}  {'CREATED':<20} NAME")
    for a in found:
        created = a.created.astimezone().strftime("%Y-%m-%d %H:%M:%S") if a.created else ""
        print(f"{a.id:<66} {a.kind:<12} {a.size_bytes:>12,}  {created:<20} {a.name}")
    return EXIT_OK


@_client_command
def cmd_delete_artifact(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        client.delete_artifact(args.artifact_id)
    print(json.dumps({"deleted": args.artifact_id}) if args.json else f"artifact {args.artifact_id} deleted")
    return EXIT_OK
