"""Sensitivity curves (pruning.sensitivity) and the allocation that uses them."""
import copy

import torch

from pruning import allocate, surgery, zoo
from pruning.measure import count_cost
from pruning.plan import PruningPlan
from pruning.reconstruct import reconstruct
from pruning.sensitivity import SensitivityCurve, measure_sensitivity, refit_weights


def test_curve_interpolates_and_extrapolates():
    curve = SensitivityCurve("g", (0, 8, 16), (0.0, 1.0, 5.0))
    assert curve.at(0) == 0.0
    assert curve.at(4) == 0.5
    assert curve.at(12) == 3.0
    assert curve.at(16) == 5.0
    assert curve.at(24) == 9.0                       # the last slope beyond the last depth


def test_refit_weights_solves_the_ridge_problem_without_dropped_columns():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=gen, dtype=torch.float64)
    w_true = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    y = x @ w_true.T
    keep = torch.tensor([True, True, False, True, False, True])
    w = refit_weights(x.T @ x, x.T @ y, w_true, keep, ridge=0.0)
    assert torch.all(w[:, ~keep] == 0)
    expected = torch.linalg.lstsq(x[:, keep], y).solution.T
    assert torch.allclose(w[:, keep], expected, atol=1e-8)


def _resnet20():
    entry = zoo.get_entry("cifar/resnet20")
    torch.manual_seed(0)
    model = zoo.create_model("cifar/resnet20").eval()
    groups = surgery.channel_groups(model, entry.input_shape, entry.protected(model))
    return entry, model, groups


def test_simulated_removal_matches_the_real_pruned_and_refitted_model():
    """One group pruned for real (Torch-Pruning + reconstruct, ridge without hold-out) and simulated in place give
    the same logits; the model is left exactly as it was."""
    entry, model, groups = _resnet20()
    group = groups[4]
    images = torch.randn(64, *entry.input_shape, generator=torch.Generator().manual_seed(1))
    gone = list(range(0, group.size, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sens = measure_sensitivity(model, [group], {group.name: lambda n: gone}, {group.name: [len(gone)]},
                               [images], images, positions_per_image=1024, ridge=1e-3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    kept = [i for i in range(group.size) if i not in gone]
    plan = PruningPlan("cifar/resnet20", 10, entry.input_shape, {group.name: kept}, {group.name: group.size})
    pruned = surgery.apply_plan(copy.deepcopy(model), plan)
    fits = reconstruct(model, pruned, list(group.consumers), {}, lambda: iter([images]), positions_per_image=1024,
                       ridge=1e-3, holdout=0)
    assert fits[0].status == "refit"
    with torch.no_grad():
        real = float(((pruned(images) - model(images)) ** 2).sum(1).mean())
    measured = sens.curves[group.name].loss[-1]
    assert real > 0
    assert abs(measured - real) <= 0.05 * real


def test_sensitivity_allocation_spares_the_group_that_costs_most():
    entry, model, groups = _resnet20()
    base = count_cost(model, entry.input_shape)
    cm = allocate.CostModel(model, entry.input_shape, base.macs, base.params)
    scores = {g.name: torch.arange(g.size, dtype=torch.float32) for g in groups}
    units = allocate.removal_units(groups, scores, round_to=4)
    fragile = groups[3].name
    curves = {g.name: SensitivityCurve(g.name, (0, g.size), (0.0, 1000.0 if g.name == fragile else 1.0))
              for g in groups}
    assert allocate.chunk_boundaries(units[fragile])[0] == 4
    result = allocate.allocate(groups, scores, cm, allocate.Target("macs", 0.3), base.macs, mode="sensitivity",
                               round_to=4, curves=curves)
    assert len(result.kept[fragile]) == groups[3].size
    assert abs(result.achieved_reduction - 0.3) < 0.02
    plan = PruningPlan("cifar/resnet20", 10, entry.input_shape, result.kept, result.original)
    surgery.apply_plan(copy.deepcopy(model), plan)          # a valid plan


class _ViewHead(torch.nn.Module):
    """Flattens its feature map with ``.view``, which a channels-last tensor refuses."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        out = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(out.view(out.size(0), -1))


def test_a_model_that_refuses_channels_last_is_measured_in_the_default_layout():
    torch.manual_seed(0)
    model = _ViewHead().eval()
    with torch.no_grad():
        try:
            model(torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last))
            refuses = False
        except RuntimeError:
            refuses = True
    assert refuses, "the test model must refuse channels-last input"
    group = next(g for g in surgery.channel_groups(model, (3, 6, 6)) if g.name == "conv1")
    images = torch.randn(32, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    sens = measure_sensitivity(model, [group], {"conv1": lambda n: list(range(n))}, {"conv1": [2, 4]}, [images],
                               images)
    assert sens.curves["conv1"].loss[1] > 0 and sens.curves["conv1"].loss[2] >= sens.curves["conv1"].loss[1]


def test_the_loss_images_shrink_for_a_costly_forward_pass_but_not_below_the_floor():
    from pruning.stages import sensitivity_loss_images

    assert sensitivity_loss_images(None, 125.5e6) == 256          # CIFAR ResNet-56: as before
    assert sensitivity_loss_images(None, 313.5e6) == 256          # CIFAR VGG-16: 96 G MACs cover 306 images
    assert sensitivity_loss_images(None, 0.93e9) == 103           # ResNet-18 at 160x160
    assert sensitivity_loss_images(None, 1.82e9) == 64            # ResNet-18 at 224x224: the floor
    assert sensitivity_loss_images(40, 1.82e9) == 40              # asked for: as asked
    assert sensitivity_loss_images(None, 0.0) == 256
