"""PrefixCache (pruning.prefix_cache): a forward that skips the layers before the first changed one is exact."""
import torch
import torch.nn as nn

from pruning import zoo
from pruning.prefix_cache import PrefixCache


def _resnet20():
    torch.manual_seed(0)
    model = zoo.create_model("cifar/resnet20").eval()
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, images


@torch.no_grad()
def test_a_replayed_forward_equals_the_full_forward_after_a_change_deep_in_the_network(monkeypatch):
    model, images = _resnet20()
    cache = PrefixCache(model, images, budget_bytes=2 ** 30)
    assert torch.equal(cache.reference, model(images))
    layer = "layer3.1.conv1"
    skipped = cache.skippable([layer])
    assert skipped == ["conv1", "bn1", "layer1", "layer2", "layer3.0"]    # the outermost modules done before it
    conv = model.get_submodule(layer)
    conv.weight[:4] = 0
    computed = []
    real_forward = nn.Conv2d.forward
    monkeypatch.setattr(nn.Conv2d, "forward", lambda self, x: computed.append(self) or real_forward(self, x))
    replayed = cache.forward([layer])
    names = {m: n for n, m in model.named_modules()}
    assert [names[m] for m in computed] == ["layer3.1.conv1", "layer3.1.conv2", "layer3.2.conv1", "layer3.2.conv2"]
    computed.clear()
    full = model(images)
    assert len(computed) == 19                           # every convolution when nothing is replayed
    assert torch.equal(replayed, full)                   # bit for bit the full forward with the change
    assert cache.skippable(["layer3.1"]) == cache.skippable(["layer3.1.bn2", "layer3.1.conv1"]) == skipped
    assert not torch.equal(replayed, cache.reference)    # ... and the change shows
    assert all("forward" not in vars(model.get_submodule(n)) for n in skipped)    # forwards restored


@torch.no_grad()
def test_the_budget_and_unknown_or_shared_modules_limit_what_is_skipped():
    model, images = _resnet20()
    one_output = 16 * 16 * 32 * 32 * 4                    # the stem conv's output for 16 images, float32
    small = PrefixCache(model, images, budget_bytes=one_output)
    assert list(small.outputs) == ["conv1"] and small.cached_bytes == one_output   # stem first (shallowest, first)
    assert small.skippable(["layer3.1.conv1"]) == ["conv1"]
    assert small.skippable(["not.a.module"]) == []       # never ran in the reference pass: skip nothing
    assert small.skippable(["conv1"]) == []

    shared = nn.Conv2d(3, 3, 1)
    twice = nn.Sequential(shared, nn.ReLU(), shared, nn.Conv2d(3, 2, 1))
    cache = PrefixCache(twice, torch.randn(2, 3, 4, 4), budget_bytes=2 ** 20)
    assert "0" not in cache.outputs and "3" in cache.outputs   # called twice: its second call saw other inputs
    assert cache.skippable(["3"]) == ["1"]                     # the ReLU module's output, computed from both calls
    twice[3].weight.mul_(2)
    assert torch.equal(cache.forward(["3"]), twice(cache.images))


@torch.no_grad()
def test_the_budget_goes_to_the_outermost_modules_first():
    model, images = _resnet20()
    block = 16 * 16 * 32 * 32 * 4                          # any stage-1 output for 16 images, float32
    cache = PrefixCache(model, images, budget_bytes=3 * block)
    assert list(cache.outputs) == ["conv1", "bn1", "layer1"]
    assert cache.skippable(["layer2.0.conv1"]) == ["conv1", "bn1", "layer1"]
    assert cache.skippable(["layer1.2.conv2"]) == ["conv1", "bn1"]      # inside layer1: its blocks were not kept
    model.get_submodule("layer2.0.conv1").weight.mul_(-1)
    assert torch.equal(cache.forward(["layer2.0.conv1"]), model(images))


class _NeedsTwoImages(nn.Module):
    """Fails on a batch of one (as a model that squeezes its batch dimension would)."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        if len(x) < 2:
            raise RuntimeError("expected a batch of at least 2")
        return self.head(self.conv(x).mean((2, 3)))


@torch.no_grad()
def test_a_model_that_fails_on_one_image_is_probed_with_all_of_them():
    torch.manual_seed(0)
    model, images = _NeedsTwoImages().eval(), torch.randn(4, 3, 8, 8)
    cache = PrefixCache(model, images, budget_bytes=2 ** 20)
    assert cache.skippable(["head"]) == ["conv"]
    model.head.weight.mul_(3)
    assert torch.equal(cache.forward(["head"]), model(images))
