"""Pure helpers of the benchmark scripts (the scripts themselves need ../shared/data and run outside the suite)."""
import torch

from benchmarks.criteria_cifar import merge_rows
from benchmarks.ranking_ablation import greedy_elimination_order, order_to_scores


def test_greedy_elimination_drops_the_duplicate_and_the_unused_channel_first():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=gen, dtype=torch.float64)          # 4 channels, 1x1 kernels
    x[:, 2] = x[:, 0]                                                      # channel 2 duplicates channel 0
    w = torch.tensor([[1.0, 2.0, 1.0, 0.0], [0.5, -1.0, 0.5, 0.0]], dtype=torch.float64)   # channel 3 unused
    y = x @ w.T
    order = greedy_elimination_order(x.T @ x, x.T @ y, channels=4, ridge=1e-9)
    assert set(order[:2]) == {3, 0} or set(order[:2]) == {3, 2}           # free removals first
    assert order[-1] == 1                                                  # the channel carrying the most stays
    assert order_to_scores(order)[order[0]] == 0 and order_to_scores(order)[order[-1]] == 3


def test_merge_rows_replaces_remeasured_rows_and_keeps_order():
    recipe = {"allocation": "uniform", "round_to": 8, "criterion_params": ""}
    old = [{"criterion": "l1", "target": 0.5, "finetune_images": 0, "top1": 0.1, **recipe},
           {"criterion": "random", "target": 0.5, "finetune_images": 0, "top1": 0.2, **recipe}]
    new = [{"criterion": "random", "target": 0.5, "finetune_images": 0, "top1": 0.3, **recipe},
           {"criterion": "l1", "target": 0.3, "finetune_images": 0, "top1": 0.4, **recipe},
           {"criterion": "l1", "target": 0.5, "finetune_images": 0, "top1": 0.5, **recipe, "round_to": 1}]
    merged = merge_rows(old, new)
    assert [(r["criterion"], r["target"], r["round_to"], r["top1"]) for r in merged] == [
        ("l1", 0.5, 8, 0.1), ("random", 0.5, 8, 0.3), ("l1", 0.3, 8, 0.4), ("l1", 0.5, 1, 0.5)]


def test_paired_latency_reads_each_models_input_shape_from_its_graph(tmp_path):
    import pytest

    from benchmarks.paired_latency import input_shape
    from exporters import export_onnx
    from pruning.errors import SpecError

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    path = export_onnx(net.eval(), tmp_path / "gray.onnx", torch.zeros(1, 1, 20, 24)).path
    assert input_shape(path, None) == (1, 20, 24)                       # not the 3x32x32 it used to assume
    with pytest.raises(SpecError, match="1x20x24"):
        input_shape(path, (3, 32, 32))
