"""`interprune compress` end to end on the bundled digits, and every bad input it must refuse cleanly."""
import io
import json
import tarfile

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.cli.main import main
from tests.conftest import make_npz


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def compressed(digits_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    code = main(["compress", "--arch", "demo/small_cnn", "--weights", str(digits_weights), "--criterion", "l1",
                 "--target-macs", "0.5", "--calibration-images", "400", "--batch-sizes", "1,8",
                 "--bench-seconds", "0.3", "--max-accuracy-drop", "5", "--out", str(out), "--json"])
    return code, out


def test_compress_writes_a_reloadable_plan_onnx_and_report(compressed):
    from pruning.surgery import load_compressed

    code, out = compressed
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert 0.48 <= report["reduction"]["macs"] <= 0.52
    assert report["export"]["parity"]["max_abs_error"] <= 1e-4
    assert report["export"]["onnx"]["path"] == "model.onnx"    # was the vanished staging folder's path
    acc = report["accuracy"]
    assert acc["original"]["top1"] > 0.9
    assert acc["reconstructed"]["top1"] > acc["pruned"]["top1"]
    assert acc["exported"]["top1"] == pytest.approx(acc["reconstructed"]["top1"], abs=1e-9)
    assert {r["batch_size"] for r in report["latency"]} == {1, 8}
    assert all(r["p50_ms"] > 0 for r in report["latency"])
    assert report["gate"]["passed"] is True
    model = load_compressed(out / "plan.json", out / "weights.pt")
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert np.allclose(onnx_out, model(torch.from_numpy(x)).detach().numpy(), atol=1e-4)
    widths = {layer["layer"]: layer["kept"] for layer in report["layers"]}
    assert all(w % 8 == 0 for w in widths.values())


def test_gate_failure_has_its_own_exit_code(digits_weights, tmp_path, capsys):
    code, out, _ = run(capsys, "compress", "--arch", "demo/small_cnn", "--weights", str(digits_weights),
                       "--target-macs", "0.7", "--no-reconstruct", "--batchnorm", "off", "--targets", "",
                       "--max-accuracy-drop", "0", "--out", str(tmp_path / "o"))
    assert code == 4 and "quality gate FAILED" in out


def test_a_diverging_fine_tune_keeps_the_refitted_model_and_says_to_lower_the_rate(digits_weights, tmp_path, capsys):
    code, out, _ = run(capsys, "compress", "--arch", "demo/small_cnn", "--weights", str(digits_weights),
                       "--target-macs", "0.5", "--calibration-images", "200", "--finetune-steps", "6", "--lr", "1e9",
                       "--targets", "", "--out", str(tmp_path / "o"), "--json")
    assert code == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["finetune"]["stopped_by"] == "diverged" and report["finetune"]["returned"] == "the start"
    assert any("fine-tuning diverged at step" in w and "--lr, 1e+09" in w for w in report["warnings"])
    acc = report["accuracy"]
    assert acc["finetuned"]["top1"] == acc["reconstructed"]["top1"] == acc["exported"]["top1"] > 0.5


def _bad_input(tmp_path, capsys, *extra, arch="demo/small_cnn"):
    out = tmp_path / "never"
    code, _, err = run(capsys, "compress", "--arch", arch, "--targets", "", *extra, "--out", str(out))
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("interprune: error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0])    # one line, last, after any progress
    assert not out.exists() and not list(tmp_path.glob(".never.partial-*"))
    return err


def test_truncated_weights(tmp_path, capsys, digits_weights):
    bad = tmp_path / "w.pt"
    bad.write_bytes(digits_weights.read_bytes()[:300])
    assert "truncated" in _bad_input(tmp_path, capsys, "--weights", str(bad))


class Payload:
    """Stands for any class a checkpoint might smuggle in; loading it would run its module's code."""

    def __init__(self):
        self.weights = torch.zeros(2)


def test_pickled_class_checkpoint(tmp_path, capsys):
    bad = tmp_path / "w.pt"
    torch.save({"model": Payload()}, bad)
    assert "pickled code" in _bad_input(tmp_path, capsys, "--weights", str(bad))


def test_object_array_npz(tmp_path, capsys):
    bad = tmp_path / "d.npz"
    np.savez(bad, images=np.array([object()] * 3, dtype=object), labels=np.arange(3))
    assert "object arrays" in _bad_input(tmp_path, capsys, "--data", str(bad))


def test_labels_out_of_range(tmp_path, capsys):
    bad = make_npz(tmp_path / "d.npz", n=50, classes=15)
    assert "classes" in _bad_input(tmp_path, capsys, "--data", str(bad))


def test_one_channel_data_for_three_channel_model(tmp_path, capsys):
    bad = make_npz(tmp_path / "d.npz", n=50, size=32, channels=1)
    assert "1-channel" in _bad_input(tmp_path, capsys, "--data", str(bad), arch="cifar/resnet20")


def test_archive_escaping_its_folder(tmp_path, capsys):
    bad = tmp_path / "d.tar"
    with tarfile.open(bad, "w") as tf:
        info = tarfile.TarInfo("../evil.png")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    assert "outside" in _bad_input(tmp_path, capsys, "--data", str(bad))


def test_unknown_criterion_and_architecture(tmp_path, capsys):
    assert "unknown criterion" in _bad_input(tmp_path, capsys, "--criterion", "nope")
    assert "unknown architecture" in _bad_input(tmp_path, capsys, arch="resnet9000")


@pytest.mark.parametrize("extra,says", [
    (["--bench-seconds", "-1"], "--bench-seconds"), (["--opset", "3"], "must be in 7..30"),
    (["--opset", "99"], "--opset"), (["--max-accuracy-drop", "-101"], "between -1 and 1"),
    (["--min-channels", "0"], "--min-channels")])
def test_impossible_export_benchmark_and_gate_values_are_refused_before_any_work(tmp_path, capsys, extra, says):
    # before: --bench-seconds -1 ran the whole job and ended in a traceback, --opset 3 failed at export (exit 3),
    # --max-accuracy-drop -101 (points) failed the gate after the run
    assert says in _bad_input(tmp_path, capsys, *extra)


def test_an_agent_target_is_refused_by_a_local_run_before_any_work(tmp_path, capsys):
    # before: the whole job ran and exited 0 with the target "not measured"
    assert "interprune serve --agent nosuch=HOST:PORT" in _bad_input(tmp_path, capsys, "--targets", "agent:nosuch")


@pytest.mark.parametrize("target", ["local:cpux", "''", "cpu"])
def test_an_unknown_benchmark_target_is_refused_before_any_work(tmp_path, capsys, target):
    # before: the whole job ran and exited 0 with the target "not measured" (a typo in CI got no latency figures)
    err = _bad_input(tmp_path, capsys, "--targets", target)
    assert "is not a target" in err and "local:cpu, local:cuda, local:tensorrt or agent:NAME" in err


def test_a_standard_library_or_loader_callable_is_never_called_as_a_model_factory(tmp_path, capsys):
    marker = tmp_path / "ran"
    for arch in ("python:os:system", "python:subprocess:run", "python:torch:load", "python:torch.hub:load"):
        err = _bad_input(tmp_path, capsys, "--arch-kwargs", json.dumps({"command": f"touch {marker}"}), arch=arch)
        assert "not a model factory" in err or "other than a model definition" in err
    assert not marker.exists()


def test_existing_output_folder_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "compress", "--arch", "demo/small_cnn", "--out", str(out))
    assert code == 2 and "--force" in err and (out / "keep.txt").read_text() == "mine"


# --- flags -> spec (shared by `compress` and `submit`) --------------------------------------------

@pytest.mark.parametrize("command", [["compress", "--out", "o"], ["submit"]])
def test_precision_agent_images_and_round_to_reach_the_spec(command):
    from pipeline.flags import spec_from_args
    from service.cli.main import build_parser

    if command[0] == "submit":
        pytest.importorskip("grpc", reason="the service commands need grpcio")
    parser = build_parser()
    base = [*command, "--arch", "demo/small_cnn"]
    default = spec_from_args(parser.parse_args(base))
    assert (default.benchmark.precision, default.benchmark.agent_eval_images) == ("fp32", 2000)
    assert default.compress.prune.round_to is None                  # automatic, resolved by the pipeline
    spec = spec_from_args(parser.parse_args([*base, "--precision", "int8", "--agent-eval-images", "300",
                                             "--round-to", "16", "--targets", "agent:jetson"]))
    assert (spec.benchmark.precision, spec.benchmark.agent_eval_images) == ("int8", 300)
    assert spec.compress.prune.round_to == 16 and spec.benchmark.targets == ("agent:jetson",)
    assert default.compress.finetune.batch_size == 128
    assert spec_from_args(parser.parse_args([*base, "--finetune-batch", "32"])).compress.finetune.batch_size == 32


@pytest.mark.parametrize("extra", [["--precision", "fp64"], ["--agent-eval-images", "-1"],
                                   ["--agent-eval-images", "many"]])
def test_bad_precision_or_agent_images_is_a_usage_error(capsys, extra):
    with pytest.raises(SystemExit) as info:
        main(["compress", "--arch", "demo/small_cnn", "--out", "o", *extra])
    assert info.value.code == 2
    assert extra[0] in capsys.readouterr().err


def test_progress_lines_in_logs_keep_probes_and_throttle_finetune_steps(capsys, monkeypatch):
    from pruning.compress import ProgressEvent
    from service.cli.output import ProgressPrinter

    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    printer = ProgressPrinter()
    printer.tty = False
    for event in [ProgressEvent("allocate", 0.0, "started"),
                  ProgressEvent("allocate", 0.5, "probe -25% MACs: p90 60 ms (budget 50 ms)"),
                  ProgressEvent("allocate", 0.5, "probe -50% MACs: p90 48 ms (budget 50 ms)"),
                  ProgressEvent("finetune", 0.1, "step 1"), ProgressEvent("finetune", 0.2, "step 2"),
                  ProgressEvent("finetune", 1.0, "done in 3.0s")]:
        printer(event)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("] ")[1] for line in lines] == [
        "started", "probe -25% MACs: p90 60 ms (budget 50 ms)", "probe -50% MACs: p90 48 ms (budget 50 ms)",
        "step 1", "done in 3.0s"]                        # step 2 came within 10 s of step 1
