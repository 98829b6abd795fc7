"""Why does L1 win at -50% MACs without fine-tuning? Rankings that are *not* criteria, through the same allocation,
surgery, reconstruction and evaluation as the criteria benchmark (ResNet-56 / CIFAR-10 from ../shared/data).

    .venv/bin/python -m benchmarks.ranking_ablation [--data-root ../shared/data] [--eval-images 10000]

Every ranking scores the 27 block-internal channel groups, then: uniform allocation to -50% MACs (widths rounded to
8), surgery, ridge reconstruction of each ``conv2`` from 2,000 calibration images, top-1 on held-out test images.

- ``l1``: the criterion (||conv1 filter||_1), for reference.
- ``random seed s``: three seeds, to see the spread of the control.
- ``mean activation``: E[A_k], post-ReLU, over the calibration images (dissection's tie-breaker alone).
- ``consumer energy``: sqrt(E[A_k^2]) x ||conv2[:, k]||_F: how much of conv2's input each channel carries.
- ``greedy least squares``: backward elimination that removes, one channel at a time, the channel whose removal
  raises conv2's least-squares residual least (ThiNet / He et al. 2017 style, exact block downdate of the
  inverse Gram matrix; each layer alone, on the original model's features).
- ``dissection reversed``: the dissection ranking upside down (is it anti-correlated with what matters?).
- two blends of dissection into L1: the top 25% voted units of each layer kept first, the rest by L1; and the sum
  of the two rank orders.

Prints one line per ranking; nothing here is used by the service.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from benchmarks.shared_data import add_data_root, weights_file



def greedy_elimination_order(gram: torch.Tensor, cross: torch.Tensor, channels: int, ridge: float = 1e-3
                             ) -> list[int]:
    """Channels in the order backward elimination removes them (first = least needed by the consumer).

    ``gram`` = X^T X [D, D] and ``cross`` = X^T Y [D, C_out] over sampled windows, D = channels x k x k in the
    (channel, kh, kw) order of ``weight.flatten(1)``. Removing feature block b from the ridge solution raises the
    residual by tr(B_b^T (P_bb)^-1 B_b), with P = (X^T X + lam I)^-1 and B = P X^T Y; P and B are then downdated.
    """
    d = gram.shape[0]
    k = d // channels
    lam = ridge * float(torch.trace(gram)) / d
    p = torch.linalg.inv(gram + lam * torch.eye(d, dtype=gram.dtype))
    b = p @ cross
    alive, order = list(range(channels)), []
    while len(alive) > 1:
        costs = []
        for slot in range(len(alive)):
            s = slice(slot * k, slot * k + k)
            costs.append(float(torch.trace(b[s].T @ torch.linalg.solve(p[s, s], b[s]))))
        slot = min(range(len(alive)), key=costs.__getitem__)
        drop = list(range(slot * k, slot * k + k))
        rest = [i for i in range(p.shape[0]) if i not in drop]
        inv = torch.linalg.inv(p[drop][:, drop])
        b = b[rest] - p[rest][:, drop] @ inv @ b[drop]
        p = p[rest][:, rest] - p[rest][:, drop] @ inv @ p[drop][:, rest]
        order.append(alive.pop(slot))
    return order + alive


def _rank(values: torch.Tensor) -> torch.Tensor:
    """Ranks scaled to [0, 1] (0 = lowest), ties by index."""
    return torch.argsort(torch.argsort(values.double(), stable=True)).float() / max(1, values.numel() - 1)


def order_to_scores(order: list[int]) -> torch.Tensor:
    """Removal order -> importance (first removed = lowest)."""
    scores = torch.empty(len(order))
    scores[torch.tensor(order)] = torch.arange(len(order), dtype=torch.float32)
    return scores


def main() -> None:
    from pruning import data as data_mod
    from pruning.activations import ChannelStats, collect
    from pruning.allocate import Target
    from pruning.compress import CompressSpec, DataSpec, ModelSpec, PruneSpec, load_inputs
    from pruning.criteria import Batch, ScoreResult, ScoringContext, create_criterion
    from pruning.measure import count_cost, evaluate
    from pruning.plan import PruningPlan
    from pruning.layer_io import patches, positions_of, rows, sample_positions
    from pruning.reconstruct import reconstruct
    from pruning.stages import allocate_for
    from pruning.surgery import apply_plan, build_graph, channel_groups

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_root(parser)
    parser.add_argument("--eval-images", type=int, default=10000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    weights = weights_file(args.data_root, "resnet56")
    spec = CompressSpec(model=ModelSpec("cifar/resnet56", str(weights)),
                        data=DataSpec(str(args.data_root / "cifar10"), calibration_images=2000,
                                      evaluation_images=args.eval_images), prune=PruneSpec("l1", round_to=8, allocation="uniform"))
    original, entry, splits, preprocess, input_shape = load_inputs(spec)
    calibration = [Batch(x, y, None) for x, y in data_mod.batches(splits.calibration, preprocess, 200)]
    graph = build_graph(original, input_shape)
    groups = channel_groups(original, input_shape, list(entry.protected(original)), graph=graph)
    base = count_cost(original, input_shape)
    ctx = ScoringContext(model=original, groups=groups, blocks=[], batches=lambda: iter(calibration),
                         input_shape=input_shape, num_classes=10, seed=0, keep_fraction=0.5, graph=graph)

    def accuracy(scores: dict[str, torch.Tensor]) -> tuple[float, float]:
        allocation = allocate_for(spec, groups, ScoreResult(channels=scores), original, input_shape, base, base,
                                  Target("macs", 0.5))
        plan = PruningPlan("cifar/resnet56", 10, input_shape, allocation.kept, allocation.original)
        pruned = apply_plan(copy.deepcopy(original), plan)
        consumers = sorted({c for g in groups if len(plan.kept[g.name]) < g.size for c in g.consumers})
        out = {m: plan.kept[g.name] for g in groups for m, side in g.members if side == "out" and m in consumers}
        reconstruct(original, pruned, consumers, out, lambda: iter([b.images for b in calibration]), seed=0)
        top1 = evaluate(pruned, data_mod.batches(splits.evaluation, preprocess, 500)).top1
        return top1, 1.0 - count_cost(pruned, input_shape).macs / base.macs

    def report(label: str, scores: dict[str, torch.Tensor]) -> None:
        start = time.perf_counter()
        top1, reduction = accuracy(scores)
        print(f"{label:<26} -{reduction:.1%} MACs  top-1 {top1:.2%}   ({time.perf_counter() - start:.0f} s)",
              flush=True)

    report("l1", create_criterion("l1").score(ctx).channels)
    for seed in (0, 1, 2):
        gen = torch.Generator().manual_seed(seed)
        report(f"random seed {seed}", {g.name: torch.rand(g.size, generator=gen) for g in groups})

    stats = {g.name: ChannelStats(g.size, 1000) for g in groups}
    collect(original, groups, iter(calibration), lambda b, maps, _: [stats[n].update(a) for n, a in maps.items()])
    column_norm = {g.name: original.get_submodule(g.consumers[0]).weight.detach().transpose(0, 1).flatten(1).norm(dim=1)
                   for g in groups}
    report("mean activation", {n: s.mean for n, s in stats.items()})
    report("consumer energy", {n: s.mean_sq.sqrt() * column_norm[n] for n, s in stats.items()})

    grams: dict[str, list] = {g.name: [0, 0] for g in groups}
    handles, batch_index = [], [0]
    for g in groups:
        layer = original.get_submodule(g.consumers[0])

        def hook(module, inputs, output, name=g.name, layer=layer):
            x = inputs[0]
            pos = sample_positions(name, batch_index[0], x.shape[0], positions_of(layer, x), 8, 0)
            xs, ys = patches(layer, x, pos).double(), rows(layer, output, pos).double()
            grams[name][0] = grams[name][0] + xs.T @ xs
            grams[name][1] = grams[name][1] + xs.T @ ys
        handles.append(layer.register_forward_hook(hook))
    with torch.no_grad():
        for batch_index[0], batch in enumerate(calibration):
            original(batch.images)
    for handle in handles:
        handle.remove()
    report("greedy least squares", {g.name: order_to_scores(greedy_elimination_order(*grams[g.name], g.size))
                                    for g in groups})
    dissection = create_criterion("dissection").score(ctx).channels
    report("dissection", dissection)
    report("dissection reversed", {n: -s for n, s in dissection.items()})
    l1 = create_criterion("l1").score(ctx).channels
    report("l1, top-25% voted guarded", {n: _rank(l1[n]) + (_rank(dissection[n]) >= 0.75).float() for n in l1})
    report("rank sum l1 + dissection", {n: _rank(l1[n]) + _rank(dissection[n]) for n in l1})


if __name__ == "__main__":
    main()
