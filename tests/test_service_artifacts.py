"""The content-addressed artifact store: digests verified, limits enforced, nothing kept on failure, atomic
writes, no paths from client names, and a re-verification that finds corrupted blobs."""
from __future__ import annotations

import hashlib
import os

import pytest

from service.jobs.artifacts import ArtifactStore, data_suffix
from service.core.errors import InvalidArgument, NotFound, ResourceExhausted


def chunks(data: bytes, size: int = 1000):
    return (data[i:i + size] for i in range(0, len(data), size))


def put(store, data: bytes, name="model.pt", kind="model", digest=None, size=None):
    return store.put_stream(name, kind, len(data) if size is None else size,
                            digest or hashlib.sha256(data).hexdigest(), chunks(data))


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(tmp_path / "artifacts", max_artifact_bytes=10_000, quota_bytes=25_000)


def leftovers(store) -> list:
    return list((store.root / "tmp").iterdir())


def test_upload_is_stored_under_its_digest(store):
    data = os.urandom(5000)
    info = put(store, data)
    assert info.id == hashlib.sha256(data).hexdigest() and info.size_bytes == 5000 and info.kind == "model"
    assert store.path(info.id).read_bytes() == data
    assert b"".join(store.read_chunks(info.id, 999)) == data
    assert store.get(info.id).name == "model.pt" and not leftovers(store)


def test_same_bytes_are_stored_once(store):
    data = os.urandom(3000)
    first, second = put(store, data, name="a.pt"), put(store, data, name="b.pt")
    assert first.id == second.id and second.name == "a.pt"
    assert len(store.list()) == 1 and store.usage() == 3000


@pytest.mark.parametrize("mutate,match", [
    (lambda d: (d, "0" * 64, None), "hash to"),
    (lambda d: (d[:-1], hashlib.sha256(d).hexdigest(), len(d)), "ended after"),
    (lambda d: (d, hashlib.sha256(d).hexdigest(), len(d) - 10), "more bytes arrived"),
    (lambda d: (d, "not-a-digest", None), "64 hex"),
])
def test_mismatches_are_invalid_and_keep_nothing(store, mutate, match):
    data, digest, size = mutate(os.urandom(2000))
    with pytest.raises(InvalidArgument, match=match):
        put(store, data, digest=digest, size=size)
    assert store.list() == [] and not leftovers(store)


def test_size_limit_from_the_declared_size_and_while_streaming(store):
    big = os.urandom(12_000)
    with pytest.raises(ResourceExhausted, match="accepts artifacts up to"):
        put(store, big)
    sent = []

    def lying(data):                                   # declares 100 bytes, then keeps sending
        for block in chunks(data, 1000):
            sent.append(len(block))
            yield block
    with pytest.raises(InvalidArgument, match="more bytes arrived than the 100 declared"):
        store.put_stream("model.pt", "model", 100, hashlib.sha256(big).hexdigest(), lying(big))
    assert sum(sent) <= 1000, "reading stopped at the first chunk past the declared size"
    assert store.list() == [] and not leftovers(store)


def test_quota_counts_what_is_stored(store):
    put(store, os.urandom(9000))
    put(store, os.urandom(9000))
    with pytest.raises(ResourceExhausted, match="store is full"):
        put(store, os.urandom(9000))


def test_ids_are_checked_before_any_path_is_made(store):
    for bad in ("../../etc/passwd", "A" * 64, "abc", ""):
        with pytest.raises(InvalidArgument):
            store.path(bad)
    with pytest.raises(NotFound, match="upload it first"):
        store.get("0" * 64)


def test_client_names_never_become_paths(store):
    info = put(store, os.urandom(100), name="../../../../tmp/evil\x00.npz")
    files = {p.name for p in (store.root / "blobs").rglob("*")}
    assert files == {info.id[:2], info.id, info.id + ".json"}
    assert info.name == "evil.npz"
    assert data_suffix("x.TAR.GZ") == ".tar.gz" and data_suffix("../../x.sh") == ".npz"


def test_verify_all_quarantines_corrupted_blobs(store):
    good, bad = put(store, os.urandom(1000)), put(store, os.urandom(1000))
    path = store.path(bad.id)
    os.chmod(path, 0o644)
    path.write_bytes(b"flipped")
    report = store.verify_all()
    assert report.checked == 2 and report.corrupt == [bad.id] and not report.ok
    assert store.has(good.id) and not store.has(bad.id)
    assert (store.root / "quarantine" / bad.id).exists()


def test_half_written_uploads_are_cleaned(store):
    (store.root / "tmp" / "x.part").write_bytes(b"partial")
    assert store.cleanup_tmp() == 1 and not leftovers(store)
