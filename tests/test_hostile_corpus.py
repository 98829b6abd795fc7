"""Every case of ``tests/hostile_corpus.py`` through ``interprune compress`` (in-process), ``interprune submit`` to a
server and the gRPC API: each refused with exit code 2 / INVALID_ARGUMENT / a job FAILED as INVALID_INPUT, with a
message naming the problem (and the user's file, never a server path), no traceback in any output or in the server
log, nothing left behind; then a good job succeeds on the same server and its report names no server path.

The cases that fail inside a job run once each (``interprune submit --detach``, side by side, followed with
``interprune watch`` and read back over gRPC), because a worker process costs seconds on two cores; every other
case goes through all three paths."""
from __future__ import annotations

import argparse
import json
import logging
import time

import grpc
import pytest

from pipeline.flags import add_spec_arguments, spec_from_args
from service._proto.interprune.v1 import compression_pb2 as pb
from service._proto.interprune.v1 import compression_pb2_grpc as pb_grpc
from service.cli.main import main
from service.client import Client
from service.core.wire import Execution, spec_to_proto
from tests.hostile_corpus import CASES, GRPC_ONLY, KINDS, Case, build
from tests.service_helpers import make_server, wait_for  # noqa: F401

GROUPS = {"non-finite", "bomb", "unbounded", "weak-message", "silent-nonsense"}


def cli(capfd, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def assert_named(message: str, case: Case, extra: tuple[str, ...], state_dir=None) -> None:
    for needle in case.needles + extra:
        assert needle in message, f"{case.name}: {needle!r} not in {message!r}"
    assert len(message.encode()) <= 2000, f"{case.name}: a {len(message)}-character message"
    if state_dir is not None:
        assert str(state_dir) not in message, f"{case.name}: the message shows a server path: {message!r}"


def test_the_corpus_covers_every_class():
    assert {c.group for c in CASES} | {c.group for c in GRPC_ONLY} == GROUPS
    assert {c.when for c in CASES} == {"submit", "job"}
    assert len({c.name for c in CASES + GRPC_ONLY}) == len(CASES) + len(GRPC_ONLY)


def test_hostile_input_is_refused_everywhere(make_server, tmp_path, capfd, caplog):  # noqa: F811
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    files = build(tmp_path / "corpus")
    _through_compress(files, tmp_path / "runs", capfd)
    server = make_server(warm_spare=True, job_workers=len([c for c in CASES if c.when == "job"]))
    with Client(server.address) as client:
        ids = {key: client.upload(path, KINDS[key]).id for key, path in files.items()}
    failed_jobs = _through_submit(server, files, capfd)
    _through_grpc(server, files, ids, failed_jobs)
    wait_for(lambda: not list((server.state_dir / "work").iterdir()), timeout_s=30, what="job folders removed")
    assert not list((server.state_dir / "artifacts" / "tmp").iterdir()), "an upload left a temporary file"

    out = tmp_path / "good"
    code, stdout, err = cli(capfd, "submit", "--server", server.address, "--json", "--out", out,
                            *Case("good", "", "", ()).argv(files))
    job = json.loads(stdout)
    assert code == 0 and job["state"] == "SUCCEEDED", (stdout, err)
    report = (out / "report.json").read_text()
    assert str(server.state_dir) not in report and "/work/" not in report, "report.json shows server paths"
    assert json.loads(report)["spec"]["compress"]["model"]["weights"] == f"artifact:{ids['model']}"
    _, rest = capfd.readouterr()
    for text in (caplog.text, err, rest):
        assert "Traceback" not in text
    assert time.monotonic() - started < 300, "runaway guard: 87-153 s measured on 2 cores shared at load 7-12"


def _through_compress(files, runs, capfd) -> None:
    runs.mkdir()
    for case in CASES:
        out = runs / case.name
        code, stdout, err = cli(capfd, "compress", "--out", out, *case.argv(files))
        errors = [line for line in err.splitlines() if line.startswith("interprune: error:")]
        assert code == 2 and len(errors) == 1, (case.name, code, err[-2000:])
        assert_named(errors[0], case, case.local)
        assert "Traceback" not in err + stdout, case.name
        assert not out.exists(), f"{case.name}: an output folder was left"
    assert not list(runs.iterdir()), f"partial folders left: {list(runs.iterdir())}"


def _through_submit(server, files, capfd) -> dict[str, str]:
    """Every case through `interprune submit --json`; returns case name -> job id of the cases that ran a job.
    Those are submitted with --detach, so the server runs them side by side, then followed with `watch`."""
    jobs = {}
    for case in CASES:
        detach = ("--detach",) if case.when == "job" else ()
        code, stdout, err = cli(capfd, "submit", "--server", server.address, "--json", *detach, *case.argv(files))
        assert "Traceback" not in err + stdout, case.name
        answer = json.loads(stdout)
        if case.when == "job":
            assert code == 0 and answer["state"] == "QUEUED", (case.name, stdout, err[-2000:])
            jobs[case.name] = answer["id"]
        else:
            assert code == 2 and answer["exit_code"] == 2 and "id" not in answer, (case.name, stdout, err[-2000:])
            assert_named(answer["error"], case, ())
    for name, job_id in jobs.items():
        case = next(c for c in CASES if c.name == name)
        code, stdout, err = cli(capfd, "watch", job_id, "--server", server.address, "--json")
        answer = json.loads(stdout)
        assert code == 2 and answer["exit_code"] == 2 and "Traceback" not in err, (name, stdout, err[-2000:])
        assert answer["state"] == "FAILED" and answer["failure"]["kind"] == "invalid_input", (name, answer)
        assert_named(answer["failure"]["message"], case, case.remote, server.state_dir)
    return jobs


def _proto(case: Case, ids: dict[str, str]) -> pb.JobSpec:
    parser = argparse.ArgumentParser()
    add_spec_arguments(parser)
    spec = spec_from_args(parser.parse_args(case.argv({k: k for k in KINDS})))    # files by key: ids follow
    return spec_to_proto(spec, ids[case.model] if case.model else "", ids[case.data] if case.data else "",
                         Execution())


def _through_grpc(server, files, ids, failed_jobs: dict[str, str]) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.CompressionStub(channel)
        for case in CASES:
            if case.when == "job":
                job = stub.GetJob(pb.GetJobRequest(name=f"jobs/{failed_jobs[case.name]}"), timeout=10)
                assert job.state == pb.JOB_STATE_FAILED and job.failure.kind == pb.FAILURE_KIND_INVALID_INPUT
                assert_named(job.failure.message, case, case.remote, server.state_dir)
                continue
            with pytest.raises(grpc.RpcError) as refused:
                stub.SubmitJob(pb.SubmitJobRequest(spec=_proto(case, ids)), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case.name, refused.value.details())
            assert_named(refused.value.details(), case, case.remote)
        for case in GRPC_ONLY:
            with pytest.raises(grpc.RpcError) as refused:
                case.call(stub, files, ids)
            assert refused.value.code().name == case.status, (case.name, refused.value.details())
            assert all(n in refused.value.details() for n in case.needles), (case.name, refused.value.details())
            assert len(refused.value.details()) <= 2000
        listed = stub.ListJobs(pb.ListJobsRequest(page_size=100), timeout=10).jobs
        assert {j.id for j in listed} == set(failed_jobs.values()), "a refused submit queued a job"
    with Client(server.address) as client:
        assert client.get_artifact(ids["data"]).size_bytes == files["data"].stat().st_size
