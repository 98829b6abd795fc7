"""``visual_similarity``: blank filters go first, similarity behaves, MMR prefers diversity."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from pruning import surgery
from pruning.criteria import ScoringContext, create_criterion
from pruning.criteria.visual_similarity import (forward_order, invalid_filters, mmr_order, rank_scores,
                                                silence_channels, similarity_matrix)

SHAPE = (3, 12, 12)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def textured(colour: tuple[float, float, float], seed: int = 0) -> torch.Tensor:
    """A checkerboard-ish pattern in ``colour``: [3, 16, 16] in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    pattern = (torch.rand(16, 16, generator=gen) > 0.5).float() * 0.7 + 0.3           # [16, 16]
    return torch.tensor(colour).view(3, 1, 1) * pattern                                # [3, 16, 16]


def test_similarity_identical_one_colour_lower() -> None:
    red = textured((1.0, 0.1, 0.1))
    green = textured((0.1, 1.0, 0.1))
    red_again = textured((1.0, 0.1, 0.1), seed=1)     # same colour, another random pattern of the same kind
    sim = similarity_matrix(torch.stack([red, green, red_again, red]))
    assert np.allclose(np.diag(sim), 1.0) and np.allclose(sim, sim.T)
    assert sim[0, 3] == 1.0
    assert sim[0, 1] < 0.85                            # hue differs: the colour half drops
    assert sim[0, 2] > sim[0, 1]
    colour_only = similarity_matrix(torch.stack([red, green]), beta=1.0)
    texture_only = similarity_matrix(torch.stack([red, green]), beta=0.0)
    assert colour_only[0, 1] < 0.7 and texture_only[0, 1] > 0.99    # same pattern, other colour
    grey = similarity_matrix(torch.stack([red[:1], red[:1] * 0.5 + 0.1]))   # greyscale: intensity histogram
    assert grey.shape == (2, 2) and grey[0, 1] <= 1.0


def test_mmr_picks_diverse_before_duplicates() -> None:
    strength = torch.tensor([1.0, 0.95, 0.9, 0.2])
    sim = np.array([[1.0, 0.95, 0.1, 0.1],
                    [0.95, 1.0, 0.1, 0.1],
                    [0.1, 0.1, 1.0, 0.1],
                    [0.1, 0.1, 0.1, 1.0]])
    order, partner = mmr_order(strength, sim, [True] * 4, gamma=1.0)
    assert order == [0, 2, 3, 1]              # the near-duplicate of the first pick comes last
    assert partner[1] == (0, 0.95) and partner[0] == (None, None)
    assert mmr_order(strength, sim, [True] * 4, gamma=0.0)[0] == [0, 1, 2, 3]   # no penalty: by strength
    order, _ = mmr_order(strength, sim, [True, True, False, True])
    scores = rank_scores(order, strength, 4)
    assert 2 not in order and float(scores[2]) < 1.0 <= float(scores[[0, 1, 3]].min())
    assert float(scores[0]) > float(scores[3]) > float(scores[1])


def test_invalid_rules() -> None:
    images = torch.rand(4, 3, 8, 8)
    images[1] = 0.5                                                   # no structure
    strength = torch.tensor([1.0, 1.0, 0.01, 0.0])
    why = invalid_filters(images, strength)
    assert why[0] is None and "blank" in why[1] and "weak" in why[2] and "never" in why[3]


def tiny(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 6, 3, padding=1, bias=False),
                          nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    with torch.no_grad():
        model[0].weight[2] = 0.0               # a blank filter: its image never changes from the flat start
        model[0].bias.fill_(0.1)
    return model.eval()


def context(model: nn.Module, keep_fraction: float | None) -> ScoringContext:
    return ScoringContext(model=model, groups=surgery.channel_groups(model, SHAPE), blocks=[],
                          batches=lambda: iter(()), input_shape=SHAPE, num_classes=3, keep_fraction=keep_fraction)


def test_blank_filter_is_invalid_and_lowest() -> None:
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = create_criterion("visual_similarity", steps=24, mean=MEAN, std=STD).score(context(model, 0.6))
    assert set(result.channels) == {"0", "2"}
    scores, reasons = result.channels["0"], result.reasons["0"]
    assert int(torch.argmin(scores)) == 2 and float(scores[2]) < 1.0
    assert reasons[2]["invalid"] and "blank" in reasons[2]["why"] and reasons[2]["rank"] is None
    valid = [k for k in range(5) if not reasons[k]["invalid"]]
    assert len(valid) >= 3 and sorted(reasons[k]["rank"] for k in valid) == list(range(len(valid)))
    assert result.visualizations["0"].shape == (5, *SHAPE)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # soft pruning on a copy


def test_silence_channels_and_forward_order() -> None:
    model = tiny(1)
    group = surgery.channel_groups(model, SHAPE)
    assert forward_order(model, ["2", "0"], SHAPE) == ["0", "2"]
    second = [g for g in group if g.name == "2"][0]
    silence_channels(model, second, [1, 4], SHAPE)                    # zeroes BatchNorm "3" rows 1 and 4
    with torch.no_grad():
        feats = model[4](model[3](model[2](model[1](model[0](torch.randn(2, *SHAPE))))))
    assert float(feats[:, [1, 4]].abs().max()) == 0.0 and float(feats.abs().max()) > 0
