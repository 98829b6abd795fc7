"""Does choosing the channels the re-fit recovers best lower the loss a single group's removal costs? ResNet-56.

    .venv/bin/python -m benchmarks.refit_selection [--data-root ../shared/data] > benchmarks/results/refit_selection.txt

For every inner channel group of the pretrained CIFAR ResNet-56 and removal depths of 25 / 50 / 75%, the rise of the
logits' squared error (``pruning.sensitivity.measure_sensitivity``: only that group pruned, its consumer re-fitted
from Gram statistics of 1,024 training images, loss on 512 others) when the removed channels are chosen by
(a) L1 norm, (b) greedy re-fit elimination (``pruning.channel_elimination``), (c) the same with each consumer output
weighed by its BatchNorm scale (the ``redundancy`` criterion's default). Prints one line per group and the sums.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pruning import surgery
from pruning.channel_elimination import Consumer, eliminate
from pruning.criteria.redundant_features import output_scale
from pruning.gram_stats import collect_stats
from pruning.intake.weights import load_file_weights
from pruning.models.cifar_resnet import cifar_resnet
from pruning.sensitivity import measure_sensitivity
from benchmarks.shared_data import add_data_root

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)   # CIFAR's (the weights were trained with ImageNet's:
                                                                  # 0.04-0.28 pt lower top-1; kept as measured)


def load(data_root: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    model = load_file_weights(cifar_resnet(56), data_root / "weights" / "resnet56-4bfd9763.th")
    images = np.load(data_root / "cifar10" / "train_00.npz")["images"][:1536]
    x = torch.from_numpy(images).float().div(255).permute(0, 3, 1, 2)
    return model.eval(), (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_root(parser)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, x = load(args.data_root)
    fit, loss_images = list(x[:1024].split(256)), x[1024:1536]
    groups = surgery.channel_groups(model, (3, 32, 32))
    stats = collect_stats(model, sorted({c for g in groups for c in g.consumers}), fit, positions_per_image=16,
                          seed=0, budget_bytes=2 ** 31)
    orders: dict[str, dict[str, list[int]]] = {"l1": {}, "refit": {}, "refit+bn": {}}
    for g in groups:
        name = g.consumers[0]
        weight = model.get_submodule(name).weight.detach().flatten(1).double()
        l1 = model.get_submodule(g.name).weight.detach().abs().flatten(1).sum(1)
        orders["l1"][g.name] = torch.argsort(l1).tolist()
        orders["refit"][g.name] = eliminate([Consumer(stats[name].xtx[0], weight, 9)], g.size).order
        scale = output_scale(model, name)
        orders["refit+bn"][g.name] = eliminate([Consumer(stats[name].xtx[0], weight * scale[:, None], 9)],
                                               g.size).order
    depths = {g.name: [g.size // 4, g.size // 2, 3 * g.size // 4] for g in groups}
    losses = {}
    for key, order in orders.items():
        removal = {g.name: (lambda n, o=order[g.name]: o[:n]) for g in groups}
        curves = measure_sensitivity(model, groups, removal, depths, fit, loss_images, positions_per_image=8).curves
        losses[key] = {n: c.loss[1:] for n, c in curves.items()}
    print("group  " + "  ".join(f"{k} (25/50/75%)" for k in losses))
    for g in groups:
        print(g.name, "  ".join(",".join(f"{v:.3f}" for v in losses[k][g.name]) for k in losses))
    for key in losses:
        sums = [sum(losses[key][g.name][i] for g in groups) for i in range(3)]
        print(f"sum {key}: " + " / ".join(f"{v:.2f}" for v in sums))


if __name__ == "__main__":
    main()
