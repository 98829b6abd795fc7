"""The service's own guards, one by one: quota by received bytes, re-uploads verified, capped messages, NaN-safe
checks, exporter failures as export checks, settings that would starve health checks, the agent's .npz checks,
label-coverage notes and server paths scrubbed from reports."""
from __future__ import annotations

import hashlib
import json
import math
import os
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from service.core.errors import InvalidArgument, ResourceExhausted, cap_message, rpc
from service.jobs.artifacts import ArtifactStore


def chunks(data: bytes, size: int = 1000):
    return (data[i:i + size] for i in range(0, len(data), size))


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(tmp_path / "artifacts", max_artifact_bytes=10_000, quota_bytes=25_000)


def test_the_quota_counts_bytes_received_and_frees_them_with_the_stream(store):
    store.put_stream("a.npz", "dataset", 9000, hashlib.sha256(b"a" * 9000).hexdigest(), chunks(b"a" * 9000))
    other = os.urandom(9000)
    seen = {}

    def stalls_then_breaks():                     # declares 9000, sends 1000; another upload completes meanwhile
        yield b"s" * 1000
        seen["reserved"] = store._reserved
        seen["other"] = store.put_stream("b.npz", "dataset", 9000, hashlib.sha256(other).hexdigest(), chunks(other))
        raise ConnectionError("the client went away")
    with pytest.raises(ConnectionError):
        store.put_stream("s.npz", "dataset", 9000, "0" * 64, stalls_then_breaks())
    assert seen["reserved"] == 1000, "only the bytes received are held, not the 9000 declared"
    assert seen["other"].size_bytes == 9000 and store.usage() == 18_000
    assert store._reserved == 0 and not list((store.root / "tmp").iterdir())
    with pytest.raises(ResourceExhausted, match="store is full"):        # 18000 + 9000 declared > 25000
        store.put_stream("c.npz", "dataset", 9000, "1" * 64, chunks(os.urandom(9000)))


def test_a_stored_digest_is_still_read_and_checked(store):
    data = os.urandom(4000)
    digest = hashlib.sha256(data).hexdigest()
    store.put_stream("real.pt", "model", 4000, digest, chunks(data))
    read = []

    def lying():
        for block in chunks(os.urandom(4000)):
            read.append(len(block))
            yield block
    with pytest.raises(InvalidArgument, match="hash to"):
        store.put_stream("fake.pt", "model", 4000, digest, lying())
    assert sum(read) == 4000 and store.path(digest).read_bytes() == data
    assert store.put_stream("again.pt", "model", 4000, digest, chunks(data)).name == "real.pt"


def test_messages_are_capped_below_the_trailer_limit():
    assert cap_message("short") == "short"
    capped = cap_message("é" * 10_000)
    assert len(capped.encode()) <= 2000 and capped.endswith("chars]")
    aborted = {}
    context = SimpleNamespace(abort=lambda code, message: aborted.update(code=code, message=message),
                              code=lambda: None)

    class Servicer:
        @rpc
        def Call(self, request, context):
            raise InvalidArgument("unknown criterion " + "x" * 10_000)
    Servicer().Call(None, context)
    assert aborted["code"] == grpc.StatusCode.INVALID_ARGUMENT and len(aborted["message"].encode()) <= 2000


def test_nan_never_passes_parity_or_the_gate():
    from pipeline.export import parity_ok
    from pipeline.report import gate_verdict

    assert parity_ok(1e-5, 1e-4) and not parity_ok(math.nan, 1e-4) and not parity_ok(1e-3, 1e-4)
    accuracy = {"original": {"top1": 0.9}, "pruned": {"top1": math.nan}}
    assert gate_verdict(0.05, accuracy, "pruned")["passed"] is False
    assert gate_verdict(math.nan, {"original": {"top1": 0.9}, "pruned": {"top1": 0.9}}, "pruned")["passed"] is False
    assert gate_verdict(None, accuracy, "pruned")["passed"] is True


def test_exporter_errors_are_export_checks_not_internal_errors():
    from exporters import NonFiniteError, ParityError
    from pipeline.export import export_checks
    from pipeline.run import ExportCheckFailed
    from service.core.states import EXPORT_CHECK
    from service.jobs.worker import _unexpected

    with pytest.raises(ExportCheckFailed, match="NonFiniteError: the compressed outputs hold 3 non-finite"):
        with export_checks():
            raise NonFiniteError("the compressed outputs hold 3 non-finite value(s)")
    failure = _unexpected("job-1", ParityError("ONNX differs"))
    assert failure.kind == EXPORT_CHECK and "ONNX differs" in failure.message


def test_settings_that_would_starve_short_calls_are_refused(capsys):
    from service.api.settings import ServerSettings
    from service.cli.main import main

    assert ServerSettings().watch_limit == 32
    ServerSettings().check()
    for bad in (dict(max_uploads=60), dict(max_watchers=50), dict(upload_idle_timeout_s=0), dict(retention_days=-1)):
        with pytest.raises(ValueError):
            ServerSettings(**bad).check()
    assert main(["serve", "--state-dir", "/nonexistent/x", "--max-uploads", "60"]) == 2
    assert "rpc_threads" in capsys.readouterr().err


def test_the_agent_checks_uploaded_arrays_from_their_headers_and_for_nan(tmp_path):
    from service.agent.bench import load_images
    from tests.hostile_files import npz_bomb

    with pytest.raises(InvalidArgument, match="max_array_bytes"):
        load_images(npz_bomb(tmp_path / "bomb.npz", shape=(2560, 1024, 1024, 1)), (1, 1024, 1024), "evaluation")
    images = np.zeros((4, 1, 8, 8), np.float32)
    images[1, 0, 0, 0] = np.inf
    np.savez(tmp_path / "inf.npz", images=images, labels=np.zeros(4, np.int64))
    with pytest.raises(InvalidArgument, match="non-finite"):
        load_images(tmp_path / "inf.npz", (1, 8, 8), "evaluation")


def test_label_coverage_warnings_reach_the_report_and_the_summary(tmp_path, capsys):
    from service.cli.main import main

    rng = np.random.default_rng(0)
    data = tmp_path / "two_classes.npz"
    np.savez(data, images=rng.integers(0, 256, (300, 8, 8, 1), dtype=np.uint8), labels=rng.integers(0, 2, 300))
    code = main(["compress", "--arch", "demo/small_cnn", "--data", str(data), "--calibration-images", "100",
                 "--targets", "", "--no-reconstruct", "--no-export", "--threads", "1", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    notes = json.loads((tmp_path / "out" / "report.json").read_text())["notes"]
    assert any("evaluation split has 2 distinct label(s)" in n for n in notes), notes
    assert "note: the evaluation split has 2 distinct label(s)" in out


def test_server_paths_are_scrubbed_from_reports(tmp_path):
    from service.jobs.scrub import replacements, scrub_report_files, scrub_text

    out = tmp_path / "state" / "work" / "job-1" / "out"
    out.mkdir(parents=True)
    weights = tmp_path / "state" / "work" / "job-1" / "weights" / "resnet.pt"
    report = {"spec": {"compress": {"model": {"weights": str(weights)}}},
              "export": {"onnx": {"path": str(out / "model.onnx")}},
              "notes": [f"token {tmp_path}/state/agent.token"]}
    (out / "report.json").write_text(json.dumps(report))
    (out / "report.html").write_text(f"<pre>{json.dumps(report)}</pre>")
    pairs = replacements({str(weights): "artifact:ab", f"{out}/": "", str(tmp_path / "state"): "<server state>"})
    scrub_report_files(out, pairs)
    scrubbed = json.loads((out / "report.json").read_text())
    assert scrubbed["spec"]["compress"]["model"]["weights"] == "artifact:ab"
    assert scrubbed["export"]["onnx"]["path"] == "model.onnx"
    assert scrubbed["notes"] == ["token <server state>/agent.token"]
    assert str(tmp_path) not in (out / "report.html").read_text()
    assert scrub_text("x /a/b/c y", replacements({"/a/b": "B", "/a/b/c": "C"})) == "x C y"
