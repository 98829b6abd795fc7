"""The service commands through ``interprune``'s entry point: exit codes CI can rely on (0 passed, 4 gate
failed, 3 job failed or cancelled, 2 bad input — refused at submit or failed on it —, 5 no server) and one JSON
object with --json."""
from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from service.cli.main import main
from tests.service_helpers import data_file, make_server, model_file, server  # noqa: F401


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def job_flags(model_file, data_file, *extra):
    return ["--arch", "demo/small_cnn", "--weights", model_file, "--data", data_file, "--calibration-images", 100,
            "--eval-images", 100, "--targets", "", "--no-reconstruct", "--threads", 1, *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_submit_json_passes_the_gate_and_downloads_the_results(server, model_file, data_file, tmp_path, capsys):
    out = tmp_path / "results"
    code, stdout, _ = run(capsys, "submit", "--server", server.address, "--json", "--out", out,
                          *job_flags(model_file, data_file, "--max-accuracy-drop", 100))
    report = json.loads(stdout)
    assert code == 0 and report["exit_code"] == 0 and report["state"] == "SUCCEEDED"
    assert report["result"]["gate"] == {**report["result"]["gate"], "evaluated": True, "passed": True}
    assert {p.name for p in out.iterdir()} >= {"plan.json", "weights.pt", "model.onnx", "report.json"}
    job_id = report["id"]

    code, stdout, _ = run(capsys, "get", job_id, "--server", server.address, "--json")
    assert code == 0 and json.loads(stdout)["spec"]["model"]["arch"] == "demo/small_cnn"
    code, stdout, _ = run(capsys, "list", "--server", server.address, "--state", "succeeded")
    assert code == 0 and job_id in stdout
    code, stdout, _ = run(capsys, "watch", job_id, "--server", server.address)
    assert code == 0 and "SUCCEEDED" in stdout
    code, _, err = run(capsys, "cancel", job_id, "--server", server.address)
    assert code == 2 and "already SUCCEEDED" in err
    target = tmp_path / "again.onnx"
    code, _, _ = run(capsys, "download", report["result"]["outputs"]["onnx"], "--out", target,
                     "--server", server.address)
    assert code == 0 and target.read_bytes() == (out / "model.onnx").read_bytes()


def test_submit_exits_4_when_the_gate_fails(server, model_file, data_file, capsys):
    code, stdout, err = run(capsys, "submit", "--server", server.address,
                            *job_flags(model_file, data_file, "--max-accuracy-drop", -100))
    assert code == 4 and "quality gate FAILED" in stdout
    assert "SUCCEEDED" in err                                            # progress lines go to stderr


def test_submit_exits_2_when_the_job_fails_on_bad_input(server, model_file, tmp_path, capsys):
    from tests.service_helpers import make_npz

    rgb = make_npz(tmp_path / "rgb.npz", channels=3)
    code, stdout, _ = run(capsys, "submit", "--server", server.address, "--json", *job_flags(model_file, rgb))
    report = json.loads(stdout)
    assert code == 2 and report["state"] == "FAILED" and "3-channel images" in report["failure"]["message"]
    assert report["failure"]["kind"] == "invalid_input" and "rgb.npz" in report["failure"]["message"]


@pytest.mark.parametrize("state,kind,code", [("FAILED", "invalid_input", 2), ("FAILED", "export_check", 3),
                                             ("FAILED", "timed_out", 3), ("FAILED", "crashed", 3),
                                             ("FAILED", "internal", 3), ("CANCELLED", None, 3)])
def test_exit_codes_follow_the_failure_kind(state, kind, code):
    from types import SimpleNamespace

    from service.cli.follow import exit_code
    from service.client import Failure, JobState

    job = SimpleNamespace(state=JobState(state), failure=Failure(kind, "m") if kind else None, result=None)
    assert exit_code(job) == code


def test_submit_exits_5_when_no_server_listens(model_file, data_file, capsys):
    code, stdout, _ = run(capsys, "submit", "--server", f"127.0.0.1:{free_port()}", "--json",
                          *job_flags(model_file, data_file))
    assert code == 5 and json.loads(stdout)["exit_code"] == 5 and "cannot reach" in json.loads(stdout)["error"]


@pytest.mark.parametrize("extra,needle", [(["--arch", "cifar/resnet57"], "unknown architecture"),
                                          (["--target-macs", "1.5"], "impossible")])
def test_submit_exits_2_on_bad_input(server, model_file, data_file, capsys, extra, needle):
    code, _, err = run(capsys, "submit", "--server", server.address, *job_flags(model_file, data_file, *extra))
    assert code == 2 and needle in err


def test_a_data_folder_is_packed_read_as_the_folder_and_the_same_bytes_are_stored_once(server, model_file,
                                                                                     data_file, tmp_path, capsys):
    import tarfile

    from service.client.packing import pack_folder

    with np.load(data_file) as arrays:
        images, labels = arrays["images"], arrays["labels"]
    folder = tmp_path / "digits"
    folder.mkdir()
    np.savez(folder / "train_00.npz", images=images[:300], labels=labels[:300])
    np.savez(folder / "test.npz", images=images[300:], labels=labels[300:])
    first, second = pack_folder(folder, tmp_path), pack_folder(folder, tmp_path / "digits")   # deterministic
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        assert tar.getnames() == ["digits/test.npz", "digits/train_00.npz"]
    second.unlink()
    from pruning.data import load_images

    source = load_images(first)                      # what the server does with the upload: the folder's splits
    assert (len(source.train.labels), len(source.test.labels)) == (300, 100) and "npz folder" in source.description
    code, stdout, _ = run(capsys, "submit", "--server", server.address, "--json",
                          *job_flags(model_file, folder, "--max-accuracy-drop", 100))
    report = json.loads(stdout)
    assert code == 0 and report["state"] == "SUCCEEDED"
    code, stdout, _ = run(capsys, "artifacts", "--server", server.address, "--kind", "dataset", "--json")
    assert code == 0 and stdout.count("digits.tar") == 1


def test_a_folder_is_not_a_model(server, data_file, tmp_path, capsys):
    code, _, err = run(capsys, "submit", "--server", server.address, *job_flags(tmp_path, data_file))
    assert code == 2 and "--weights" in err and "one file each" in err


def test_a_wrong_token_exits_2(make_server, tmp_path, capsys):
    srv = make_server(run_jobs=False, tokens=frozenset({"right"}))
    token = tmp_path / "token"
    token.write_text("wrong\n")
    code, _, err = run(capsys, "list", "--server", srv.address, "--token-file", token)
    assert code == 2 and "refused the credentials" in err
    token.write_text("right\n")
    assert run(capsys, "list", "--server", srv.address, "--token-file", token)[0] == 0


def test_output_closed_by_its_reader_ends_quietly_with_141():
    # `interprune models | head -2` printed a BrokenPipeError traceback
    import subprocess
    import sys
    from pathlib import Path

    child = subprocess.Popen([sys.executable, "-m", "service.cli.main", "models"], cwd=Path(__file__).parents[1],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()                       # the reader goes away before anything was written
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err
