"""Jobs and artifacts can be removed without pulling one from under a job: DeleteJob (finished jobs only; outputs
go unless another job uses them), ListArtifacts (paged), DeleteArtifact (refused while a queued or running job
uses it), retention, the per-client limit on queued jobs, and a restart after an unclean stop that does not
re-hash every blob before listening."""
from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from service.cli.main import main
from service.client import Client, InterpruneRPCError, JobState, StatusCode
from service.core.errors import FailedPrecondition
from service.jobs.artifacts import ArtifactStore
from service.jobs.lifecycle import apply_retention, delete_artifact, delete_job
from service.jobs.memory_store import MemoryJobStore
from tests.service_helpers import data_file, make_server, model_file, tiny_spec, wait_for  # noqa: F401


def put(artifacts, data: bytes, name: str, kind: str):
    return artifacts.put_stream(name, kind, len(data), hashlib.sha256(data).hexdigest(), [data])


def finished_job(store, spec: dict, outputs: dict | None = None):
    job, _ = store.create(spec)
    store.claim_next()
    return store.transition(job.id, JobState.RUNNING, JobState.SUCCEEDED, result={"outputs": outputs or {}})


def spec_using(*ids: str) -> dict:
    return {"compress": {"model": {"arch": "demo/small_cnn", "weights": f"artifact:{ids[0]}"},
                         "data": {"path": f"artifact:{ids[1]}" if len(ids) > 1 else None}}}


def test_delete_job_takes_outputs_no_other_job_uses(tmp_path):
    store, artifacts = MemoryJobStore(), ArtifactStore(tmp_path)
    model = put(artifacts, b"m" * 100, "m.pt", "model").id
    shared, own = put(artifacts, b"s" * 10, "plan.json", "plan").id, put(artifacts, b"o" * 10, "w.pt", "weights").id
    first = finished_job(store, spec_using(model), {"plan": shared, "weights": own})
    finished_job(store, spec_using(model), {"plan": shared})
    job, removed = delete_job(store, artifacts, first.id)
    assert job.id == first.id and removed == [own]
    assert artifacts.has(shared) and artifacts.has(model) and not artifacts.has(own)
    queued, _ = store.create(spec_using(model))
    with pytest.raises(FailedPrecondition, match="only finished jobs can be deleted"):
        delete_job(store, artifacts, queued.id)


def test_an_artifact_in_use_cannot_be_deleted(tmp_path):
    store, artifacts = MemoryJobStore(), ArtifactStore(tmp_path)
    model, data = put(artifacts, b"m" * 100, "m.pt", "model").id, put(artifacts, b"d" * 100, "d.npz", "dataset").id
    queued, _ = store.create(spec_using(model, data))
    with pytest.raises(FailedPrecondition, match=f"used by queued or running job.*{queued.id}"):
        delete_artifact(store, artifacts, data)
    store.request_cancel(queued.id)
    delete_artifact(store, artifacts, data)
    assert not artifacts.has(data) and artifacts.has(model)


def test_retention_removes_old_finished_jobs_and_unreferenced_artifacts(tmp_path):
    store, artifacts = MemoryJobStore(), ArtifactStore(tmp_path)
    model, loose = put(artifacts, b"m" * 100, "m.pt", "model").id, put(artifacts, b"l" * 10, "l.npz", "dataset").id
    output = put(artifacts, b"o" * 10, "w.pt", "weights").id
    old = finished_job(store, spec_using(model), {"weights": output})
    queued, _ = store.create(spec_using(model))
    assert apply_retention(store, artifacts, days=1).jobs == []          # nothing is old yet
    report = apply_retention(store, artifacts, days=1, now=time.time() + 2 * 86400)
    assert report.jobs == [old.id] and sorted(report.artifacts) == sorted([loose, output])
    assert artifacts.has(model), "the queued job still uses the model"
    assert store.get(queued.id).state == JobState.QUEUED


def test_lifecycle_rpcs_and_commands(make_server, model_file, data_file, tmp_path, capsys):  # noqa: F811
    server = make_server(run_jobs=False, max_queued_jobs_per_client=2)
    with Client(server.address) as client:
        uploaded = [client.upload(model_file, "model"), client.upload(data_file, "dataset")]
        uploaded.append(client.upload(_file(tmp_path, b"x" * 99), "other"))
        page = client.list_artifacts(page_size=2)
        rest = client.list_artifacts(page_size=2, page_token=page.next_page_token)
        assert len(page.artifacts) == 2 and len(rest.artifacts) == 1 and not rest.next_page_token
        assert {a.id for a in page.artifacts + rest.artifacts} == {a.id for a in uploaded}
        assert [a.id for a in client.list_artifacts(["dataset"]).artifacts] == [uploaded[1].id]

        spec = tiny_spec(uploaded[0].id, uploaded[1].id)
        first, second = client.submit(spec), client.submit(spec)
        with pytest.raises(InterpruneRPCError) as full:
            client.submit(spec)
        assert full.value.status == StatusCode.RESOURCE_EXHAUSTED
        assert "max_queued_jobs_per_client=2" in full.value.message
        with pytest.raises(InterpruneRPCError) as busy:
            client.delete_artifact(uploaded[1].id)
        assert busy.value.status == StatusCode.FAILED_PRECONDITION and first.id in busy.value.message
        with pytest.raises(InterpruneRPCError) as running:
            client.delete(first.id)
        assert running.value.status == StatusCode.FAILED_PRECONDITION
        client.cancel(first.id)
        client.cancel(second.id)
        assert client.delete(first.id) == []
        assert [j.id for j in client.list().jobs] == [second.id]

    flags = ["--server", server.address]
    assert main(["delete", second.id, *flags]) == 0 and "deleted" in capsys.readouterr().out
    assert main(["delete", second.id, *flags]) == 2 and "no job" in capsys.readouterr().err
    assert main(["artifacts", "--kind", "dataset", "--json", *flags]) == 0
    assert [a["id"] for a in json.loads(capsys.readouterr().out)["artifacts"]] == [uploaded[1].id]
    assert main(["delete-artifact", uploaded[1].id, *flags]) == 0
    assert main(["delete-artifact", f"artifacts/{uploaded[1].id}", *flags]) == 2
    assert "not on this server" in capsys.readouterr().err
    assert not server.artifacts.has(uploaded[1].id)


def test_an_unclean_restart_listens_first_and_verifies_lazily(make_server, tmp_path, monkeypatch):  # noqa: F811
    import service.jobs.integrity as integrity

    state = tmp_path / "state0"
    artifacts = ArtifactStore(state / "artifacts")
    good = put(artifacts, os.urandom(3000), "g.npz", "dataset")
    bad = put(artifacts, os.urandom(3000), "b.npz", "dataset")
    os.chmod(artifacts.path(bad.id), 0o644)
    artifacts.path(bad.id).write_bytes(b"flipped")
    (state / "server.lock").write_text("running pid 1\n")            # the last server was killed
    hashed = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda path: hashed.append(path) or real(path))
    from service.api.server import create_server

    server, _ = create_server("127.0.0.1:0", state, run_jobs=False)
    assert server.recovery.unclean_shutdown and server.recovery.marked == 2 and hashed == []
    server.stop(0)
    srv = make_server(run_jobs=False)       # the same folder (state0): markers survive a restart before verifying
    with Client(srv.address) as client:
        with pytest.raises(InterpruneRPCError) as corrupt:
            client.download(bad.id, tmp_path / "b.npz")
        assert corrupt.value.status == StatusCode.NOT_FOUND            # quarantined (by the read or the thread)
        assert client.download(good.id, tmp_path / "g.npz").stat().st_size == 3000
    wait_for(lambda: not integrity.pending(srv.artifacts), timeout_s=30, what="the background verification")
    assert (state / "artifacts" / "quarantine" / bad.id).exists()


def _file(tmp_path, data: bytes):
    path = tmp_path / "other.bin"
    path.write_bytes(data)
    return path


def test_a_corrupt_blob_quarantined_by_a_concurrent_check_is_not_found_not_an_internal_error(tmp_path, monkeypatch):
    from service.core.errors import NotFound
    from service.jobs import integrity

    artifacts = ArtifactStore(tmp_path / "artifacts")
    info = put(artifacts, b"the original bytes", "x.npz", "dataset")
    integrity.mark_unverified(artifacts)
    blob = artifacts.path(info.id)
    blob.write_bytes(b"corrupted after an unclean stop")

    def hash_while_the_other_check_quarantines(path):
        os.replace(path, artifacts.root / "quarantine" / info.id)      # the other reader got there first
        return "0" * 64
    monkeypatch.setattr(integrity, "sha256_file", hash_while_the_other_check_quarantines)
    with pytest.raises(NotFound, match="quarantined"):
        integrity.ensure_verified(artifacts, info.id)
    assert (artifacts.root / "quarantine" / info.id).read_bytes() == b"corrupted after an unclean stop"
    assert not (artifacts.unverified / info.id).exists()


def test_a_jobs_page_ends_at_its_byte_budget_and_the_next_page_goes_on(make_server, model_file, data_file,  # noqa: F811
                                                                       monkeypatch):
    """Large jobs used to push a default page past the 8 MiB message limit: ListJobs failed for every client."""
    import service.api.servicer as servicer

    server = make_server(run_jobs=False)
    with Client(server.address) as client:
        ids = [client.submit(tiny_spec(model_file, data_file, target=t)).id for t in (0.3, 0.4, 0.5)]
        monkeypatch.setattr(servicer, "MAX_PAGE_BYTES", 1)        # every job is over it: one a page, never none
        seen, token = [], ""
        for _ in range(5):
            page = client.list(page_size=100, page_token=token)
            assert len(page.jobs) == 1
            seen += [j.id for j in page.jobs]
            token = page.next_page_token
            if not token:
                break
        assert seen == ids[::-1]
