"""One spec definition: flags -> spec -> proto -> spec -> flags comes back unchanged, and defaults live only in the
dataclasses."""
from __future__ import annotations

import argparse

import pytest

from pipeline.flags import FLAGS, add_spec_arguments, argv_from_spec, spec_from_args, unrepresented
from pipeline.spec import JobSpec
from service.core.wire import Execution, spec_to_dict, spec_to_proto

EVERY_FIELD = [
    "--arch", "python:acme_models.nets:tiny_resnet", "--num-classes", "7", "--arch-kwargs", '{"width": 8, "stages": [1, 2]}',
    "--input-shape", "3,40,48",
    "--calibration-images", "123", "--eval-images", "45", "--finetune-pool", "678", "--input-size", "40x48",
    "--mean", "0.1,0.2,0.3", "--std", "0.4,0.5,0.6",
    "--criterion", "redundancy", "--criterion-param", "threshold=0.25", "--criterion-param", "merge=true",
    "--target-params", "0.3", "--latency-batch", "8", "--latency-target", "local:cuda", "--latency-margin", "0.1",
    "--allocation", "global", "--round-to", "16", "--min-channels", "4", "--sensitivity-images", "100", "--protect", "conv1", "--protect", "fc",
    "--layer-criterion", "layer_probe", "--layer-param", "probe_epochs=3",
    "--no-reconstruct", "--refit-positions", "12", "--batchnorm", "on", "--finetune", "1.5", "--finetune-steps", "9", "--finetune-images", "999",
    "--finetune-minutes", "2.5", "--lr", "0.05", "--distillation", "kl", "--no-augment",
    "--opset", "18", "--slim", "--targets", "local:cpu,agent:edge0", "--batch-sizes", "1,8,32",
    "--bench-seconds", "1.5", "--precision", "fp16", "--agent-eval-images", "100",
    "--max-accuracy-drop", "0.75", "--seed", "3", "--threads", "2",
]


def parse(argv: list[str]) -> JobSpec:
    parser = argparse.ArgumentParser()
    add_spec_arguments(parser)
    return spec_from_args(parser.parse_args(argv))


def test_every_flag_sets_a_field_and_comes_back():
    spec = parse(EVERY_FIELD)
    c = spec.compress
    assert (c.model.arch, c.model.num_classes, c.data.input_size, c.data.mean) == (
        "python:acme_models.nets:tiny_resnet", 7, (40, 48), (0.1, 0.2, 0.3))
    assert c.model.arch_kwargs == {"width": 8, "stages": [1, 2]} and c.model.input_shape == (3, 40, 48)
    assert (c.prune.target_metric, c.prune.target_reduction, c.prune.protected) == ("params", 0.3, ("conv1", "fc"))
    assert dict(c.prune.criterion_params) == {"threshold": 0.25, "merge": True}
    assert (c.reconstruct.enabled, c.finetune.augment, c.finetune.epochs, spec.export.slim) == (False, False, 1.5, True)
    assert c.reconstruct.positions_per_image == 12 and c.prune.sensitivity_images == 100
    assert spec.benchmark.targets == ("local:cpu", "agent:edge0") and spec.benchmark.threads == c.threads == 2
    assert spec.gate.max_accuracy_drop == pytest.approx(0.0075)
    assert parse(argv_from_spec(spec.to_dict())).to_dict() == spec.to_dict()


def test_flags_spec_proto_spec_flags_round_trip():
    spec = parse(EVERY_FIELD)
    message = spec_to_proto(spec, execution=Execution(timeout_seconds=60, retry_on_crash=True))
    as_dict, execution = spec_to_dict(message)
    back = JobSpec.from_dict(as_dict)
    assert back.to_dict() == spec.to_dict()
    assert execution == Execution(timeout_seconds=60, retry_on_crash=True)
    assert argv_from_spec(back.to_dict()) == argv_from_spec(spec.to_dict())


def test_defaults_give_no_flags_and_no_flags_give_defaults():
    spec = parse(["--arch", "demo/small_cnn"])
    assert spec.to_dict() == JobSpec.from_dict({"compress": {"model": {"arch": "demo/small_cnn"}}}).to_dict()
    assert argv_from_spec(spec.to_dict()) == ["--arch", "demo/small_cnn", "--target-macs", "0.5"]


def test_an_onnx_model_round_trips_through_flags_and_the_wire():
    spec = parse(["--model", "net.onnx", "--targets", ""])
    assert (spec.compress.model.arch, spec.compress.model.model_file) == ("onnx", "net.onnx")
    assert argv_from_spec(spec.to_dict())[:2] == ["--model", "net.onnx"]
    message = spec_to_proto(spec, model_artifact="c" * 64)
    assert message.model.model == "artifacts/" + "c" * 64
    assert spec_to_dict(message)[0]["compress"]["model"]["model_file"] == "artifact:" + "c" * 64


@pytest.mark.parametrize("argv,says", [([], "name the model"), (["--arch", "x", "--model", "y.onnx"], "not both")])
def test_the_model_is_named_once(argv, says):
    with pytest.raises(argparse.ArgumentTypeError, match=says):
        parse(argv)


@pytest.mark.parametrize("argv", [["--latency-budget", "12.5", "--latency-batch", "64"], ["--targets", ""],
                                  ["--finetune", "0"], ["--target-macs", "0.25"]])
def test_special_flags_round_trip(argv):
    spec = parse(["--arch", "demo/small_cnn", *argv])
    assert parse(argv_from_spec(spec.to_dict())).to_dict() == spec.to_dict()


def test_fields_without_a_flag_are_named():
    spec = parse(["--arch", "demo/small_cnn"]).to_dict()
    spec["compress"]["reconstruct"]["ridge"] = 0.5
    assert unrepresented(spec) == ["compress.reconstruct.ridge"]


def test_every_flag_names_a_real_field():
    defaults = JobSpec.from_dict({"compress": {"model": {"arch": "x"}}}).to_dict()
    for flag in FLAGS:
        node = defaults
        for key in flag.path.split("."):
            assert key in node, f"{flag.name} -> {flag.path}"
            node = node[key]
