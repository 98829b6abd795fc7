"""Plans record where the model came from; ``load_compressed`` rebuilds it from plan + weights alone."""
import json
from pathlib import Path

import pytest
import torch

from pruning import surgery, zoo
from pruning.compress import ModelSpec, compress, save_compressed
from pruning.errors import ModelError
from pruning.plan import PruningPlan
from tests.intake_helpers import ACME, acme_version, cifar_like_npz, quick_spec, reload_in_fresh_process

TINY = "python:acme_models.nets:tiny_resnet"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One compressed model per factory source (L1, -30% MACs, no fine-tuning), saved as plan + weights."""
    tmp = tmp_path_factory.mktemp("reload")
    data = cifar_like_npz(tmp / "d.npz")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ACME))
        python_run = compress(quick_spec(ModelSpec(TINY, arch_kwargs={"width": 8}), data), out_dir=tmp / "python",
                              allowed_packages={"acme_models"})
    timm_run = compress(quick_spec(ModelSpec("timm/test_resnet", num_classes=10, input_shape=(3, 32, 32)), data),
                        out_dir=tmp / "timm")
    return tmp, {"python": python_run, "timm": timm_run}


def test_plans_record_the_source_and_the_target_is_met(runs):
    _, results = runs
    python_plan, timm_plan = PruningPlan.load(results["python"].files["plan"]), PruningPlan.load(
        results["timm"].files["plan"])
    assert python_plan.source == {"kind": "python", "arch": TINY, "kwargs": {"width": 8}, "package_version": acme_version()}
    assert timm_plan.source["kind"] == "timm" and timm_plan.source["kwargs"] == {"num_classes": 10}
    assert timm_plan.source["timm_version"]
    for result in results.values():
        assert result.reduction("macs") == pytest.approx(0.3, abs=0.03)
        assert any(len(kept) < result.plan.original[name] for name, kept in result.plan.kept.items())


def test_python_and_timm_models_reload_in_a_fresh_process(runs):
    tmp, results = runs
    x = torch.randn(4, 3, 32, 32)
    files = [(results[k].files["plan"], results[k].files["weights"]) for k in ("python", "timm")]
    outputs, imported = reload_in_fresh_process(files, x, tmp)
    assert "acme_models.nets" in imported and "timm" in imported
    for output, key in zip(outputs, ("python", "timm")):
        expected = results[key].model.eval()(x).detach()
        assert output.shape == (4, 10)
        torch.testing.assert_close(output, expected, rtol=0, atol=1e-6)


def test_reload_of_an_entry_point_honours_the_allow_list(runs):
    files = runs[1]["python"].files
    with pytest.raises(ModelError, match="--allow-model-package acme_models"):
        surgery.load_compressed(files["plan"], files["weights"], allowed_packages={"other_pkg"})


def test_plans_written_before_sources_were_recorded_still_load(tmp_path):
    model = zoo.create_model("demo/small_cnn").eval()
    groups = surgery.channel_groups(model, (1, 8, 8))
    plan = PruningPlan("demo/small_cnn", 10, (1, 8, 8), {g.name: list(range(0, g.size, 2)) for g in groups},
                       {g.name: g.size for g in groups})
    pruned = surgery.apply_plan(model, plan)
    files = save_compressed(pruned, plan, tmp_path)
    old = plan.to_dict()
    del old["source"]
    Path(files["plan"]).write_text(json.dumps(old))                     # the plan.json of an earlier version
    assert PruningPlan.load(files["plan"]).source == {}
    reloaded = surgery.load_compressed(files["plan"], files["weights"])
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(reloaded(x), pruned(x))
