import copy

import pytest
import torch
import torch.nn as nn

from pruning.feature_hints import FeatureHints, hint_loss, hint_pairs, stage_names
from pruning.finetune import FinetuneBudget, FinetuneSettings, finetune


def _net(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU()),
                         nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU()),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4))


def test_stage_names_are_the_containers_of_the_blocks_in_order():
    assert stage_names(["layer1.0", "layer1.1", "layer2.0", "layer3.2", "head"]) == ["layer1", "layer2", "layer3"]
    assert stage_names(["features.4.block.0"]) == ["features.4.block"]


def test_hint_loss_is_relative_zero_when_equal_and_skips_other_shapes():
    t = torch.randn(2, 4, 5, 5)
    assert hint_loss([t.clone()], [t]).item() == 0.0
    s = t + 0.1 * torch.randn_like(t)
    assert hint_loss([s * 10], [t * 10]).item() == pytest.approx(hint_loss([s], [t]).item(), rel=1e-5)
    assert hint_loss([torch.randn(2, 3, 5, 5)], [t]).item() == 0.0        # no pair of one shape: nothing to match


def test_hooks_capture_both_sides_and_are_removed_on_exit():
    student, teacher = _net(), _net()
    with torch.no_grad():
        student[1][0].weight.mul_(0.5)
    pairs = hint_pairs(student, teacher, ["0", "1", "missing"])
    assert [n for n, _, _ in pairs] == ["0", "1"]
    x = torch.randn(2, 3, 6, 6)
    with FeatureHints(pairs) as hints:
        student(x)
        teacher(x)
        assert hints.matched() == ["0", "1"]
        assert hints.loss().item() > 0.01
        assert hints.loss().item() == 0.0                                  # read once: cleared
    assert not any(m._forward_hooks for m in list(student.modules()) + list(teacher.modules()))


def test_finetune_with_hints_brings_the_stage_outputs_closer_than_logits_alone():
    teacher = _net().eval()
    damaged = copy.deepcopy(teacher)
    with torch.no_grad():
        damaged[0][0].weight.add_(0.5 * torch.randn_like(damaged[0][0].weight))
    data = [(torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))) for _ in range(8)]
    probe = torch.randn(64, 3, 8, 8)

    def stage_error(model: nn.Module) -> float:
        with torch.no_grad():
            return hint_loss([model[1](model[0](probe))], [teacher[1](teacher[0](probe))]).item()

    errors = {}
    for weight in (0.0, 4.0):
        student = copy.deepcopy(damaged)
        torch.manual_seed(1)
        finetune(student, teacher, lambda epoch: iter(data), len(data), 16, FinetuneBudget(epochs=4),
                 FinetuneSettings(lr=0.02, warmup=0.0, hint_weight=weight),
                 hints=hint_pairs(student, teacher, ["0", "1"]))
        errors[weight] = stage_error(student)
    assert errors[4.0] < 0.7 * errors[0.0]
