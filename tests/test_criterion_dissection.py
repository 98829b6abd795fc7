"""dissection: a unit aligned with the concept outranks one that fires elsewhere; the pure pieces; the controls."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pruning import surgery
from pruning.criteria import Batch, ScoringContext, create_criterion
from pruning.criteria.dissection import (ballots, concept_pairs, gradcam, gradcam_layer, iou, majority_votes,
                                         top_fraction_mask, unit_masks)

SIZE = 16


class ConceptNet(nn.Module):
    """conv 1x1 with three units -> bn -> relu -> pool -> linear that always predicts class 0.

    unit 0 (A) = relu(x - 0.5): fires on the bright square (the concept);
    unit 1 (B) = relu(0.5 - x): fires on the dark background;
    unit 2 (Z) = 0 everywhere (dead).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0, 0.0]).view(3, 1, 1, 1))
            self.bn.running_mean.copy_(torch.tensor([0.5, -0.5, 0.0]))
            self.bn.running_var.fill_(1.0)
            self.head.weight.zero_()
            self.head.bias.copy_(torch.tensor([1.0, 0.0]))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def concept_batches(n: int = 60, batch: int = 20, seed: int = 0) -> list[Batch]:
    """Dark noisy images (values in [0, 0.3]) with one bright 5x5 square (values in [0.7, 1]) = concept 1."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, SIZE, SIZE, generator=gen) * 0.3
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    for i in range(n):
        r, c = torch.randint(0, SIZE - 5, (2,), generator=gen).tolist()
        images[i, 0, r:r + 5, c:c + 5] = 0.7 + 0.3 * torch.rand(5, 5, generator=gen)
        masks[i, r:r + 5, c:c + 5] = 1
    labels = torch.zeros(n, dtype=torch.long)
    return [Batch(images[i:i + batch], labels[i:i + batch], masks[i:i + batch]) for i in range(0, n, batch)]


def context(model: nn.Module, batches: list[Batch], input_shape: tuple[int, int, int], num_classes: int
            ) -> ScoringContext:
    groups = surgery.channel_groups(model, input_shape)
    return ScoringContext(model=model, groups=groups, blocks=[], batches=lambda: iter(batches),
                          input_shape=input_shape, num_classes=num_classes, seed=0)


# --- pure functions --------------------------------------------------------------------------------------

def test_iou_on_hand_made_masks() -> None:
    units = torch.zeros(2, 3, 4, 4, dtype=torch.bool)          # [P, C, H, W]
    concept = torch.zeros(2, 4, 4, dtype=torch.bool)           # [P, H, W]
    concept[0, :2, :2] = True                                  # 4 pixels
    units[0, 0, :2, :2] = True                                 # identical -> 1
    units[0, 1, :2, :] = True                                  # 8 px, 4 shared -> 4 / 8
    # unit 2 empty -> 0; pair 1: empty concept and empty units -> 0 (empty union)
    concept[1, 3, 3] = True
    units[1, 0, 3, 2:] = True                                  # 2 px, 1 shared -> 1 / 2
    expected = torch.tensor([[1.0, 0.5, 0.0], [0.5, 0.0, 0.0]])
    torch.testing.assert_close(iou(units, concept), expected)


def test_majority_votes_top_m_above_floor() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.3, 0.00],
                           [0.1, 0.6, 0.7, 0.00],
                           [0.0, 0.005, 0.0, 0.02],             # only unit 3 clears the floor
                           [0.0, 0.0, 0.0, 0.0]])               # nobody does: no vote
    torch.testing.assert_close(majority_votes(scores, m=2, floor=0.01), torch.tensor([1.0, 2.0, 1.0, 1.0]))
    torch.testing.assert_close(majority_votes(scores, m=1, floor=0.01), torch.tensor([1.0, 0.0, 1.0, 1.0]))
    # ties at the cut go to the lower index
    tied = torch.tensor([[0.5, 0.5, 0.5]])
    assert ballots(tied, 2, 0.0).tolist() == [[True, True, False]]


def test_unit_masks_threshold_after_bilinear_upsampling() -> None:
    acts = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]], [[2.0, 2.0], [2.0, 2.0]]]])   # [1, 2, 2, 2]
    masks = unit_masks(acts, torch.tensor([0.5, 2.0]), (4, 4))
    assert masks.shape == (1, 2, 4, 4)
    up = F.interpolate(acts, size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.equal(masks[0, 0], up[0, 0] > 0.5)
    assert masks[0, 0, 0, 3] and not masks[0, 0, 3, 0]         # the hot corner, upsampled
    assert not masks[0, 1].any()                               # strictly above the threshold


def test_gradcam_points_at_the_evidence_and_top_fraction() -> None:
    features = torch.zeros(1, 2, 4, 4)
    features[0, 0, 1, 2] = 3.0                                 # channel 0 evidence at (1, 2)
    features[0, 1] = 1.0                                       # channel 1 everywhere, but its gradient is < 0
    grads = torch.stack([torch.ones(4, 4), -torch.ones(4, 4)]).unsqueeze(0)
    heat = gradcam(features, grads, (4, 4))
    assert heat.shape == (1, 4, 4)
    assert heat.flatten().argmax().item() == 1 * 4 + 2
    assert (heat >= 0).all()
    mask = top_fraction_mask(heat, 0.2)                        # ceil(0.2 * 16) = 4 pixels
    assert int(mask.sum()) == 4 and mask[0, 1, 2]


def test_concept_pairs_skip_background() -> None:
    masks = torch.zeros(3, 4, 4, dtype=torch.long)
    masks[0, 0, 0] = 2
    masks[1, :, :] = 1
    masks[1, 3, 3] = 2
    images, concepts, binary = concept_pairs(masks)
    assert sorted(zip(images.tolist(), concepts.tolist())) == [(0, 2), (1, 1), (1, 2)]
    assert binary.shape == (3, 4, 4)
    assert int(binary[concepts == 1].sum()) == 15


# --- the criterion ---------------------------------------------------------------------------------------

def test_concept_unit_outranks_background_unit() -> None:
    model = ConceptNet()
    before = copy.deepcopy(model.state_dict())
    ctx = context(model, concept_batches(), (1, SIZE, SIZE), 2)
    result = create_criterion("dissection").score(ctx)
    scores, reasons = result.channels["conv"], result.reasons["conv"]
    assert scores.shape == (3,)
    a, b, z = (reasons[k]["votes"] for k in range(3))
    assert reasons[0]["voters"] == 60                          # one (image, concept 1) pair per image
    assert a > 30 and b == 0 and z == 0                        # m = ceil(0.1 * 3) = 1 vote per voter
    assert scores[0] > scores[1] and scores[0] > scores[2]
    assert scores[1] > scores[2]                               # B only wins the mean-activation tie-break
    assert reasons[0]["top_concept"] == 1
    assert reasons[0]["mean_iou"] > 0.01 and reasons[1]["mean_iou"] == 0.0
    assert 0.2 < reasons[0]["threshold"] < 0.5                 # inside the bright square's activation range
    assert abs(float(scores[0]) - a / 60) < 1e-5
    for key, value in before.items():                          # the model is untouched
        assert torch.equal(model.state_dict()[key], value)
    assert not model.conv._forward_hooks


def test_random_and_whole_controls_vote_differently() -> None:
    model = ConceptNet()
    ctx = context(model, concept_batches(), (1, SIZE, SIZE), 2)
    auto = create_criterion("dissection").score(ctx).reasons["conv"]
    rand = create_criterion("dissection", masks="random").score(ctx).reasons["conv"]
    again = create_criterion("dissection", masks="random").score(ctx).reasons["conv"]
    auto_votes = [r["votes"] for r in auto]
    rand_votes = [r["votes"] for r in rand]
    assert rand_votes != auto_votes
    assert rand_votes[1] > 0                                   # the background unit now collects votes
    assert rand_votes == [r["votes"] for r in again]           # seeded
    assert rand[0]["voters"] == 60 and rand[0]["top_concept"] in (0, None)
    whole = create_criterion("dissection", masks="whole").score(ctx).reasons["conv"]
    assert whole[0]["voters"] == 60


def test_gradcam_path_without_masks() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    ).eval()
    images = torch.randn(24, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        predicted = model(images).argmax(1)
    labels = predicted.clone()
    labels[:4] = (labels[:4] + 1) % 3                          # 4 misclassified images do not vote
    batches = [Batch(images[i:i + 8], labels[i:i + 8]) for i in range(0, 24, 8)]
    ctx = context(model, batches, (3, 12, 12), 3)
    assert gradcam_layer(model, (3, 12, 12)) == "5"           # last 4-D output with H x W > 1 (the second ReLU)
    result = create_criterion("dissection", masks="auto").score(ctx)
    assert set(result.channels) == {"0", "3"}
    assert result.channels["0"].shape == (8,) and result.channels["3"].shape == (6,)
    assert all(torch.isfinite(s).all() for s in result.channels.values())
    voters = result.reasons["0"][0]["voters"]
    assert 0 < voters <= 20
    for name, size in (("0", 8), ("3", 6)):
        votes = sum(r["votes"] for r in result.reasons[name])
        assert len(result.reasons[name]) == size
        assert 0 < votes <= voters * 1                         # m = ceil(0.1 x size) = 1 unit per voter
    assert all(p.grad is None for p in model.parameters())     # gradients never land on the model


def test_bad_parameters_are_refused() -> None:
    from pruning.errors import SpecError
    with pytest.raises(SpecError):
        create_criterion("dissection", masks="everything")
    with pytest.raises(SpecError):
        create_criterion("dissection", quantile=1.5)
