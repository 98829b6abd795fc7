import copy

import pytest
import torch

from pruning import allocate, data, surgery, zoo
from pruning.finetune import FinetuneBudget, FinetuneSettings, distillation_loss, finetune
from pruning.plan import PruningPlan
from pruning.reconstruct import reconstruct, recalibrate_batchnorm


@pytest.fixture(scope="module")
def resnet_and_batches():
    torch.manual_seed(0)
    model = zoo.create_model("cifar/resnet20").eval()
    batches = [torch.randn(32, 3, 32, 32) for _ in range(4)]
    recalibrate_batchnorm(model, batches)    # give the random network sensible BN statistics
    return model.eval(), batches


def _prune_half(model):
    entry = zoo.get_entry("cifar/resnet20")
    groups = surgery.channel_groups(model, entry.input_shape, entry.protected(model))
    kept = {g.name: list(range(0, g.size, 2)) for g in groups}
    plan = PruningPlan("cifar/resnet20", 10, entry.input_shape, kept, {g.name: g.size for g in groups})
    return surgery.apply_plan(copy.deepcopy(model), plan).eval(), groups


def test_reconstruction_brings_outputs_back_towards_the_original(resnet_and_batches):
    model, batches = resnet_and_batches
    pruned, groups = _prune_half(model)
    probe = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        reference = model(probe)
        before = (pruned(probe) - reference).pow(2).mean().item()
    fits = reconstruct(model, pruned, [c for g in groups for c in g.consumers], {}, lambda: iter(batches))
    with torch.no_grad():
        after = (pruned(probe) - reference).pow(2).mean().item()
    assert len(fits) == 9 and all(f.error_after <= f.error_before for f in fits)
    assert all(f.residual_compensated for f in fits)
    assert after < 0.5 * before


def test_exact_refit_when_the_removed_channels_were_redundant():
    # conv2 sees channel 1 == channel 0; dropping channel 1 and re-fitting must be exact
    from pruning.models.small import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(10, in_channels=1, width=4).eval()
    with torch.no_grad():
        first = model.features[0]
        first[0].weight[1] = first[0].weight[0]
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(first[1], name)[1] = getattr(first[1], name)[0]
    groups = surgery.channel_groups(model, (1, 8, 8))
    g = next(g for g in groups if g.name == "features.0.0")
    plan = PruningPlan("demo/small_cnn", 10, (1, 8, 8), {g.name: [0, 2, 3]}, {g.name: 4})
    pruned = surgery.apply_plan(copy.deepcopy(model), plan).eval()
    batches = [torch.randn(16, 1, 8, 8) for _ in range(4)]
    fits = reconstruct(model, pruned, list(g.consumers), {}, lambda: iter(batches), positions_per_image=64,
                       ridge=1e-9)
    assert fits[0].error_after < 1e-6 < fits[0].error_before
    x = torch.randn(8, 1, 8, 8)
    assert torch.allclose(pruned(x), model(x), atol=1e-4)


def test_distillation_loss_is_zero_for_identical_logits_with_alpha_one():
    logits = torch.randn(4, 10)
    assert distillation_loss(logits, logits, torch.zeros(4, dtype=torch.long), 4.0, 1.0).item() == \
        pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(logits, -logits, torch.zeros(4, dtype=torch.long), 4.0, 1.0).item() > 0.1


def test_finetune_improves_a_damaged_student_and_keeps_the_best():
    from pruning.measure import evaluate

    source = data.digits_sample()
    splits = data.make_splits(source, 1000, None, seed=0)
    pre = data.Preprocess((0.5,), (0.5,))
    teacher = zoo.create_model("demo/small_cnn")
    opt = torch.optim.Adam(teacher.parameters(), 3e-3)
    for epoch in range(6):
        teacher.train()
        for x, y in data.batches(splits.calibration, pre, 64, shuffle=True, seed=epoch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(teacher(x), y).backward()
            opt.step()
    teacher.eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.features[4][0].weight.mul_(0.0)
    val = lambda m: evaluate(m, data.batches(splits.evaluation, pre, 500)).top1  # noqa: E731
    start = val(student)
    report = finetune(student, teacher, lambda e: data.batches(splits.calibration, pre, 64, shuffle=True, seed=e),
                      16, 64, FinetuneBudget(epochs=3), FinetuneSettings(lr=0.05, eval_every=10), validate=val)
    assert report.steps == 48 and report.images_seen == 3 * 1000
    assert report.best_val_top1 >= start
    assert val(student) > start + 0.1


def test_one_cycle_schedule_warms_up_linearly_then_decays_to_zero():
    settings = FinetuneSettings(lr=0.1, warmup=0.2)
    lrs = [settings.lr_at(step, 100) for step in range(101)]
    assert lrs[0] == pytest.approx(0.1 / 20) and lrs[19] == pytest.approx(0.1) == lrs[20]
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:20]))               # rising through the warm-up
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:]))               # then never rising
    assert lrs[60] == pytest.approx(0.05) and lrs[100] == pytest.approx(0.0, abs=1e-12)
    plain = FinetuneSettings(lr=0.1, warmup=0.0)
    assert plain.lr_at(0, 100) == pytest.approx(0.1) and plain.lr_at(50, 100) == pytest.approx(0.05)


def test_mse_distillation_matches_logits_and_ignores_the_temperature():
    logits, labels = torch.randn(4, 10), torch.zeros(4, dtype=torch.long)
    assert distillation_loss(logits, logits, labels, 4.0, 1.0, "mse").item() == pytest.approx(0.0, abs=1e-7)
    shifted = logits + 1.0    # same softmax: KL sees nothing, MSE does
    assert distillation_loss(logits, shifted, labels, 4.0, 1.0, "kl").item() == pytest.approx(0.0, abs=1e-5)
    assert distillation_loss(logits, shifted, labels, 1.0, 1.0, "mse").item() == pytest.approx(1.0) == \
        distillation_loss(logits, shifted, labels, 4.0, 1.0, "mse").item()


def test_early_stopping_waits_for_the_warm_up_and_keeps_the_best_weights():
    teacher = torch.nn.Linear(4, 3)
    student = copy.deepcopy(teacher)
    x, y = torch.randn(16, 4), torch.zeros(16, dtype=torch.long)
    scores = iter([0.9] + [0.1] * 100)    # the start is best; every trained check is worse
    report = finetune(student, teacher, lambda e: iter([(x, y)] * 10), 10, 16, FinetuneBudget(steps=40),
                      FinetuneSettings(lr=0.01, warmup=0.5, eval_every=2, patience=3), validate=lambda m: next(scores))
    # checks at 2, 4, .., 20 fall in the warm-up and do not count; 22 sets the bar, 24/26/28 miss it: stop at 28
    assert report.stopped_by == "early stopping" and report.steps == 28
    assert report.best_val_top1 == 0.9 and torch.equal(student.weight, teacher.weight)


def test_an_unknown_distillation_is_refused_before_any_training():
    from pruning.errors import SpecError

    with pytest.raises(SpecError, match="finetune.distillation must be one of mse, kl, got 'l2'"):
        finetune(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), lambda e: iter([]), 1, 1, FinetuneBudget(steps=1),
                 FinetuneSettings(loss="l2"))


def test_finetune_settings_out_of_range_name_the_flag():
    import pytest

    from pruning.errors import SpecError
    from pruning.finetune import check_settings

    check_settings(0.01, 0.5, 4.0)
    with pytest.raises(SpecError, match="--kd-alpha"):
        check_settings(0.01, 1.5, 4.0)
    with pytest.raises(SpecError, match="--kd-temperature"):
        check_settings(0.01, 0.5, 0.0)
    with pytest.raises(SpecError, match="lr"):
        check_settings(float("nan"), 0.5, 4.0)


@pytest.mark.parametrize("field, value, message", [
    ("positions_per_image", 0, "--refit-positions"), ("holdout", 1, "holdout"), ("max_memory_mb", 0.0, "max_memory_mb"),
    ("scope", "all", "scope"),
])
def test_reconstruct_settings_out_of_range_are_refused(field, value, message):
    from dataclasses import replace

    from pruning.compress import ReconstructSpec, _validate_reconstruct_spec
    from pruning.errors import SpecError

    _validate_reconstruct_spec(ReconstructSpec(positions_per_image=1))
    with pytest.raises(SpecError, match=message):
        _validate_reconstruct_spec(replace(ReconstructSpec(), **{field: value}))


def test_the_annealed_last_step_comes_back_when_within_the_slices_noise():
    from pruning.finetune import final_tolerance, keeps_last_step

    assert final_tolerance(0.98, 500) == pytest.approx((0.98 * 0.02 / 500) ** 0.5)    # 0.63 points
    assert final_tolerance(0.98, 0) == 0.0
    assert keeps_last_step(0.982, 0.986, 500) and not keeps_last_step(0.975, 0.986, 500)
    teacher = torch.nn.Linear(4, 3)
    x, y = torch.randn(16, 4), torch.zeros(16, dtype=torch.long)

    def run(scores, validation_images):
        student = copy.deepcopy(teacher)
        checks = iter(scores)
        report = finetune(student, teacher, lambda e: iter([(x, y)] * 10), 10, 16, FinetuneBudget(steps=20),
                          FinetuneSettings(lr=0.5, warmup=0.0, eval_every=10), validate=lambda m: next(checks),
                          validation_images=validation_images)
        return report, torch.equal(student.weight, teacher.weight)

    # checks at 0 (start), 10, 20: the last is 2 images of 500 below the best -> the last step's weights
    report, is_start = run([0.97, 0.986, 0.982], 500)
    assert report.returned == "last step" and not is_start and report.best_val_top1 == 0.986
    # without a slice size there is no noise allowance: the best check (step 10) comes back
    report, is_start = run([0.97, 0.986, 0.982], 0)
    assert report.returned == "step 10" and not is_start
    # the last step fell 2.2 points below the start (3.5 standard errors): the start comes back unchanged
    report, is_start = run([0.97, 0.95, 0.948], 500)
    assert report.returned == "the start" and is_start


def test_a_diverging_fine_tune_stops_and_returns_the_start_without_a_validation_slice():
    teacher = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    student = copy.deepcopy(teacher)
    x, y = torch.randn(16, 4), torch.zeros(16, dtype=torch.long)
    report = finetune(student, teacher, lambda e: iter([(1e3 * x, y)] * 10), 10, 16,
                      FinetuneBudget(steps=50), FinetuneSettings(lr=1e12, warmup=0.0))
    assert report.stopped_by == "diverged" and report.diverged_at is not None and report.diverged_at < 50
    assert report.diverged_why in ("loss nan", "loss inf") and report.returned == "the start"
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), teacher.state_dict().values()))


def test_non_finite_validation_logits_count_as_divergence_and_the_best_check_comes_back():
    from pruning.errors import NonFiniteLogits

    teacher = torch.nn.Linear(4, 3)
    student = copy.deepcopy(teacher)
    x, y = torch.randn(16, 4), torch.zeros(16, dtype=torch.long)
    seen = []

    def validate(model):
        seen.append(model.weight.detach().clone())
        if len(seen) == 3:                    # the start, step 5, then step 10 "blows up"
            raise NonFiniteLogits("the model gives non-finite logits (NaN or infinite) for 16 of 16 images")
        return [0.5, 0.7][len(seen) - 1]

    report = finetune(student, teacher, lambda e: iter([(x, y)] * 10), 10, 16, FinetuneBudget(steps=20),
                      FinetuneSettings(lr=0.1, warmup=0.0, eval_every=5), validate=validate)
    assert report.stopped_by == "diverged" and report.diverged_at == 10
    assert report.diverged_why == "non-finite logits on the validation slice"
    assert report.returned == "step 5" and torch.equal(student.weight, seen[1]) and report.best_val_top1 == 0.7


def test_other_model_errors_in_validation_are_not_taken_for_divergence():
    from pruning.errors import ModelError

    teacher = torch.nn.Linear(4, 3)
    x, y = torch.randn(16, 4), torch.zeros(16, dtype=torch.long)
    checks = iter([0.5])

    def validate(model):
        value = next(checks, None)
        if value is None:
            raise ModelError("something else broke")
        return value

    with pytest.raises(ModelError, match="something else broke"):
        finetune(copy.deepcopy(teacher), teacher, lambda e: iter([(x, y)] * 10), 10, 16, FinetuneBudget(steps=20),
                 FinetuneSettings(lr=0.1, warmup=0.0, eval_every=5), validate=validate)
