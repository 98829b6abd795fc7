"""Activation maximization on hand-made filters: it finds what the filter looks for, stops early, is seeded."""
from __future__ import annotations

import torch
import torch.nn as nn
from PIL import Image

from pruning.visualize import (denormalise, gaussian_blur3, measure_response, pixel_bounds, response_layer,
                               save_grid, visualize_layer)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SHAPE = (3, 16, 16)


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the forward pass should have stopped before this layer")


def hand_made(gamma: float = 1.0) -> nn.Sequential:
    """Filter 0: red minus the rest; 1: green minus the rest; 2: vertical edge (dark left, bright right)."""
    conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0], conv.weight[0, 1:] = 1.0, -0.5
        conv.weight[1, 1], conv.weight[1, [0, 2]] = 1.0, -0.5
        conv.weight[2, :, :, 0], conv.weight[2, :, :, 2] = -1.0, 1.0
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.weight.fill_(gamma)
    return nn.Sequential(conv, bn, nn.ReLU(), Boom()).eval()


def test_response_layer_is_the_batchnorm_after_the_conv() -> None:
    assert response_layer(hand_made(), "0", SHAPE) == "1"
    plain = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    assert response_layer(plain, "0", SHAPE) == "0"


def test_am_beats_noise_and_finds_the_colour() -> None:
    model = hand_made()
    vis = visualize_layer(model, "0", SHAPE, MEAN, STD, steps=64, seed=0)   # Boom would raise if reached
    assert vis.images.shape == (3, *SHAPE) and vis.activation.shape == (3,)
    assert float(vis.images.min()) >= 0.0 and float(vis.images.max()) <= 1.0
    noise = torch.rand(32, *SHAPE, generator=torch.Generator().manual_seed(1))
    for k in range(3):
        on_noise = measure_response(model, "0", noise, MEAN, STD, channels=[k] * 32)    # [32]
        assert float(vis.activation[k]) > float(on_noise.max()), k
        assert float(vis.activation[k]) > 1.15 * float(on_noise.mean()), k
    # the activation reported is the one the returned images achieve
    again = measure_response(model, "0", vis.images, MEAN, STD)
    assert torch.allclose(again, vis.activation, atol=1e-3)
    red, green = vis.images[0].mean((1, 2)), vis.images[1].mean((1, 2))   # [3] mean R, G, B
    assert red[0] > red[1] + 0.2 and red[0] > red[2] + 0.2
    assert green[1] > green[0] + 0.2 and green[1] > green[2] + 0.2


def test_negative_batchnorm_scale_flips_the_preference() -> None:
    vis = visualize_layer(hand_made(gamma=-1.0), "0", SHAPE, MEAN, STD, steps=64, seed=0)
    red = vis.images[0].mean((1, 2))
    assert red[0] < red[1] - 0.2     # maximising -red: the image turns away from red


def test_deterministic_with_a_seed_and_model_untouched() -> None:
    model = hand_made()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = visualize_layer(model, "0", SHAPE, MEAN, STD, steps=12, seed=3)
    b = visualize_layer(model, "0", SHAPE, MEAN, STD, steps=12, seed=3)
    c = visualize_layer(model, "0", SHAPE, MEAN, STD, steps=12, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.activation, b.activation)
    assert not torch.equal(a.images, c.images)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_channel_subset_and_identical_filters_give_identical_images() -> None:
    model = hand_made()
    with torch.no_grad():
        model[0].weight[1] = model[0].weight[0]
    vis = visualize_layer(model, "0", SHAPE, MEAN, STD, steps=8, channels=[0, 1])
    assert vis.images.shape == (2, *SHAPE)
    assert torch.allclose(vis.images[0], vis.images[1], atol=1e-6)


def test_helpers() -> None:
    lo, hi = pixel_bounds(MEAN, STD)
    assert torch.allclose(denormalise(lo.expand(1, 3, 2, 2), MEAN, STD), torch.zeros(1, 3, 2, 2), atol=1e-6)
    assert torch.allclose(denormalise(hi.expand(1, 3, 2, 2), MEAN, STD), torch.ones(1, 3, 2, 2), atol=1e-6)
    flat = torch.full((1, 2, 5, 5), 0.7)
    assert torch.allclose(gaussian_blur3(flat), flat)        # a blur keeps constants
    spike = torch.zeros(1, 1, 5, 5)
    spike[0, 0, 2, 2] = 1.0
    assert abs(float(gaussian_blur3(spike).sum()) - 1.0) < 1e-6 and float(gaussian_blur3(spike).max()) == 0.25


def test_save_grid(tmp_path) -> None:
    images = torch.rand(5, 3, 8, 8)
    path = save_grid(images, tmp_path / "grid.png", ncols=3, pad=1, scale=1)
    with Image.open(path) as img:
        assert img.size == (3 * 9 + 1, 2 * 9 + 1) and img.mode == "RGB"
    grey = save_grid(torch.rand(2, 1, 4, 4), tmp_path / "grey.png", scale=2)
    with Image.open(grey) as img:
        assert img.mode == "L"
