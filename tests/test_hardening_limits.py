"""Spec values are bounded before any work: each refusal names the field, the value and the limit."""
from __future__ import annotations

import pytest

from pruning.compress import CompressSpec, DataSpec, FinetuneSpec, ModelSpec, PruneSpec
from pruning.errors import SpecError
from pruning.limits import DEFAULT_SPEC_LIMITS, SpecLimits, check_compress_spec, check_spec_limits, size_text


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_size=(100_000, 100_000)),
     "data.input_size (100000, 100000): height 100000 exceeds the limit max_input_side=4096"),
    (dict(input_size=(32, 5000)), "data.input_size (32, 5000): width 5000 exceeds the limit max_input_side=4096"),
    (dict(input_size=(4096, 4096)),
     "data.input_size (4096, 4096): 16777216 pixels exceed the limit max_input_pixels=4194304"),
    (dict(input_size=(1024, 1024), batch_size=200),
     "data.input_size (1024, 1024): a batch of 200 x 3 x 1024 x 1024 = 629145600 values exceeds the limit "
     "max_batch_elements=268435456; use a smaller batch size or input size"),
    (dict(input_size=(0, 32)), "data.input_size 0: must be >= 1"),
    (dict(num_classes=2_000_000_000), "model.num_classes 2000000000: exceeds the limit max_classes=100000"),
    (dict(num_classes=0), "model.num_classes 0: must be >= 1"),
    (dict(batch_size=1 << 20), "data.batch_size 1048576: exceeds the limit max_batch_size=4096"),
    (dict(calibration_images=10**9), "data.calibration_images 1000000000: exceeds the limit "
                                     "max_calibration_images=50000"),
    (dict(seed=-1), "seed -1: must be >= 0"),
    (dict(seed=2**64), "seed 18446744073709551616: exceeds the limit max_seed=4294967295"),
    (dict(seed=1.5), "seed 1.5: must be a whole number"),
    (dict(threads=float("nan")), "threads nan: must be a whole number"),
    (dict(finetune_epochs=float("inf")), "finetune.epochs inf: must be a finite number"),
    (dict(finetune_minutes=-1.0), "finetune.minutes -1.0: must be >= 0.0"),
    (dict(benchmark_batch_sizes=(1, 10_000)), "benchmark.batch_sizes 10000: exceeds the limit max_batch_size=4096"),
    (dict(std=(0.2, 0.0, 0.2)), "data.std[1] is 0.0; it must be > 0 (it divides the pixels)"),
    (dict(mean=(float("nan"),)), "data.mean[0] is nan; it must be a finite number"),
    (dict(mean=tuple(range(17))), "data.mean (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16): 17 values "
                                  "exceed the limit max_channels=16"),
    (dict(paths={"data.path": "/x\x00y"}), "data.path /x?y: contains a NUL character"),
])
def test_each_limit_is_named_with_the_value(kwargs, message):
    with pytest.raises(SpecError) as info:
        check_spec_limits(**kwargs)
    assert str(info.value) == message


def test_long_values_are_clipped_in_the_message():
    with pytest.raises(SpecError) as info:
        check_spec_limits(names={"model.arch": "r" * 10_000})
    message = str(info.value)
    assert message.startswith("model.arch rrr") and message.endswith(
        ": 10000 characters exceed the limit max_name_length=256")
    assert len(message) < 200
    with pytest.raises(SpecError, match="max_path_length=4096"):
        check_spec_limits(paths={"model.weights": "/" + "p" * 5000})


def test_values_at_the_limits_pass_and_limits_are_settings():
    check_spec_limits(input_size=(2048, 2048), batch_size=16, num_classes=100_000, seed=2**32 - 1,
                      calibration_images=50_000, threads=1, mean=(0.5,) * 3, std=(0.25,) * 3, finetune_epochs=0.0)
    check_spec_limits(input_size=(32, 32), benchmark_batch_sizes=(1, 4096))
    strict = SpecLimits(max_classes=10)
    with pytest.raises(SpecError, match="max_classes=10$"):
        check_spec_limits(num_classes=11, limits=strict)
    with pytest.raises(TypeError, match="unknown field"):
        check_spec_limits(num_clases=3)
    with pytest.raises(AttributeError):
        DEFAULT_SPEC_LIMITS.max_classes = 1      # frozen


def test_channels_enter_the_batch_check():
    check_spec_limits(input_size=(512, 512), batch_size=256, channels=4)        # 2^28 exactly: allowed
    check_spec_limits(input_size=(512, 512), batch_size=341, channels=3)
    with pytest.raises(SpecError, match=r"a batch of 341 x 4 x 512 x 512 = 357564416 values exceeds"):
        check_spec_limits(input_size=(512, 512), batch_size=341, channels=4)


def test_compress_spec_is_checked_field_by_field():
    check_compress_spec(CompressSpec(ModelSpec("cifar/resnet56")))
    bad = CompressSpec(ModelSpec("cifar/resnet56", num_classes=2_000_000_000))
    with pytest.raises(SpecError, match="^model.num_classes 2000000000: exceeds the limit max_classes=100000$"):
        check_compress_spec(bad)
    with pytest.raises(SpecError, match=r"^data.input_size \(100000, 100000\): height 100000 exceeds"):
        check_compress_spec(CompressSpec(ModelSpec("x"), data=DataSpec(input_size=(100_000, 100_000))))
    with pytest.raises(SpecError, match="^finetune.batch_size 0: must be >= 1$"):
        check_compress_spec(CompressSpec(ModelSpec("x"), finetune=FinetuneSpec(batch_size=0)))
    with pytest.raises(SpecError, match="^prune.criterion c+…"):
        check_compress_spec(CompressSpec(ModelSpec("x"), prune=PruneSpec(criterion="c" * 300)))
    with pytest.raises(SpecError, match="^seed -3: must be >= 0$"):
        check_compress_spec(CompressSpec(ModelSpec("x"), seed=-3))


def test_size_text():
    assert [size_text(n) for n in (5, 2048, 3 << 20, 3 << 30)] == ["5 B", "2.0 KiB", "3.0 MiB", "3.0 GiB"]
