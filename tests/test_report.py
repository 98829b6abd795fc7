"""The job report: report.html shows the verdict, the numbers, real plots and why each filter or block went, and
needs no network; report.json follows service/schemas/report.schema.json."""
from __future__ import annotations

import base64
import copy
import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pruning.compress import CompressSpec, DataSpec, FinetuneSpec, ModelSpec, PruneSpec
from pipeline.run import run_pipeline
from pipeline.spec import BenchmarkSpec, ExportSpec, GateSpec, JobSpec
from pipeline.report_html import command_line, render_html
from pipeline.report_schema import SCHEMA_PATH, ReportSchemaError, validate_report

DATA_URI = re.compile(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
FIGURE = re.compile(r'<figure(?: class="wide")?><img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)"')


def job(weights: Path, criterion: str, **prune) -> JobSpec:
    return JobSpec(CompressSpec(model=ModelSpec("demo/small_cnn", str(weights)),
                                data=DataSpec(None, calibration_images=300),
                                prune=PruneSpec(criterion, **prune), finetune=FinetuneSpec(steps=3, augment=False)),
                   benchmark=BenchmarkSpec(batch_sizes=(1,), seconds_per_batch=0.2),
                   gate=GateSpec(max_accuracy_drop=0.5))


@pytest.fixture(scope="module")
def l1_run(digits_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-l1")
    report = run_pipeline(job(digits_weights, "l1", target_reduction=0.4), out)
    return report, out, (out / "report.html").read_text()


@pytest.fixture(scope="module")
def probe_run(digits_weights, tmp_path_factory):
    from pruning.criteria import is_criterion

    if not is_criterion("layer_probe"):
        pytest.skip("criterion layer_probe is not registered")
    out = tmp_path_factory.mktemp("report-probe")
    report = run_pipeline(job(digits_weights, "layer_probe", target_reduction=0.3), out)
    return report, out, (out / "report.html").read_text()


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def assert_real_picture(image: Image.Image, min_width: int = 100) -> None:
    assert image.width > min_width and image.height > 50, image.size
    assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 2, "a single-colour image"


# --- the page ------------------------------------------------------------------------------------

def test_header_shows_the_verdict_and_the_key_numbers(l1_run):
    report, _, page = l1_run
    acc, cost = report["accuracy"], report["cost"]
    head = page[:page.index('<section id="summary"')]
    assert "QUALITY GATE PASSED" in head
    assert f"{acc['original']['top1']:.2%}" in head and f"{acc[report['final_stage']]['top1']:.2%}" in head
    assert f"{cost['original']['macs']:,}" in head and f"{cost['compressed']['macs']:,}" in head
    speed = report["speedup"][0]
    assert f"{speed['measured_speedup']:.2f}×" in head and f"{speed['macs_ratio']:.2f}×" in head
    for stage in ("original", "pruned", "reconstructed", "finetuned", "exported"):
        assert f"<td>{stage}</td><td>{acc[stage]['top1']:.2%}</td>" in page
    assert f"{report['export']['parity']['max_abs_error']:.2e}" in page


def test_a_failed_gate_is_shown_as_failed(l1_run, tmp_path):
    report = copy.deepcopy(l1_run[0])
    report["gate"].update(passed=False, max_accuracy_drop=0.0)
    page = render_html(report, tmp_path)
    assert "QUALITY GATE FAILED" in page and "QUALITY GATE PASSED" not in page


def test_every_plot_is_an_embedded_png_of_a_real_picture(l1_run):
    _, _, page = l1_run
    figures = dict((alt, b64) for b64, alt in FIGURE.findall(page))
    assert {"Kept vs original width per layer", "Accuracy per stage",
            "Latency before and after, per target and batch"} <= set(figures)
    for alt, b64 in figures.items():
        image = decode(b64)
        assert image.format == "PNG", alt
        assert_real_picture(image, min_width=400)


def test_the_page_is_self_contained(l1_run):
    _, _, page = l1_run
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    for target in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert target.startswith(("data:image/png;base64,", "#")), target


def test_removed_filters_are_listed_per_layer_with_score_and_reason(l1_run):
    report, _, page = l1_run
    groups = report["criterion"]["groups"]
    assert groups
    for group in groups:
        removed = [c for c in group["channels"] if not c["kept"]]
        kept = len(group["channels"]) - len(removed)
        assert f"<code>{group['layer']}</code> — kept {kept} of {len(group['channels'])}, removed {len(removed)}" \
               in page
        for channel in removed:
            norm = channel["reason"]["norm"]
            assert f"<td>#{channel['index']}</td><td>{channel['score']:.4g}</td><td>norm {norm:.4g}</td>" in page
    assert page.count("<details><summary><code>") == len(groups)   # no images: collapsed per layer


def test_kept_and_removed_filters_are_shown_apart_with_their_images(l1_run, tmp_path):
    report = copy.deepcopy(l1_run[0])
    group = report["criterion"]["groups"][0]
    size = len(group["channels"])
    removed = [c for c in group["channels"] if not c["kept"]]
    removed[0]["reason"] = {"cluster": 2, "representative": 5, "is_representative": False}
    rng = np.random.default_rng(0)
    images = {group["layer"]: rng.random((size, 1, 8, 8)).astype(np.float32)}
    page = render_html(report, tmp_path, visualizations=images)
    block = page[page.index(f"<code>{group['layer']}</code>"):]
    block = block[:block.index("</details>")]
    assert f"kept ({size - len(removed)})" in block and f"removed ({len(removed)})" in block
    tiles = re.findall(r'<figure class="tile[^"]*">(.*?)</figure>', block)
    assert len(tiles) == len(removed)
    assert 'title="filter #5"' in block and "duplicates #5 (cluster 2)" in block   # the partner beside it
    for b64 in DATA_URI.findall(block):
        image = decode(b64)
        assert image.width >= 48 and image.height >= 48
    mosaic = decode(DATA_URI.findall(block)[0])
    assert_real_picture(mosaic)


def test_saved_grids_are_embedded_when_images_are_not_passed(l1_run, tmp_path):
    import torch

    from pruning.visualize import save_grid

    report = copy.deepcopy(l1_run[0])
    layer = report["criterion"]["groups"][0]["layer"]
    save_grid(torch.rand(len(report["criterion"]["groups"][0]["channels"]), 1, 8, 8), tmp_path / "grid.png")
    report["files"]["visualizations"] = {layer: "grid.png"}
    page = render_html(report, tmp_path)
    assert 'alt="activation maximization of ' + layer + '"' in page


def test_latency_search_probes_are_plotted_when_present(l1_run, tmp_path):
    report = copy.deepcopy(l1_run[0])
    report["latency_search"] = [{"reduction": 0.0, "latency_ms": 2.0, "meets_budget": False},
                                {"reduction": 0.5, "latency_ms": 1.1, "meets_budget": False},
                                {"reduction": 0.6, "latency_ms": 0.9, "meets_budget": True}]
    report["spec"]["compress"]["prune"]["latency_budget_ms"] = 1.0
    page = render_html(report, tmp_path)
    figures = dict((alt, b64) for b64, alt in FIGURE.findall(page))
    assert_real_picture(decode(figures["Latency-budget search: the probes"]))
    validate_report(report)


def test_the_command_line_gives_back_the_exact_spec(l1_run):
    report, _, page = l1_run
    command, differences = command_line(report["spec"])
    assert differences == []
    assert command.startswith("interprune compress --arch demo/small_cnn") and "--target-macs 0.4" in command
    assert "Checked: parsing this command gives back the spec below exactly." in page
    spec_block = page[page.index("<h3>Spec</h3>"):]
    spec_json = html.unescape(re.search(r"<pre>(.*?)</pre>", spec_block, re.S).group(1))
    assert json.loads(spec_json) == json.loads(json.dumps(report["spec"]))


def test_the_command_line_carries_precision_agent_images_and_automatic_rounding(l1_run):
    spec = copy.deepcopy(l1_run[0]["spec"])
    spec["benchmark"].update(precision="int8", agent_eval_images=300, targets=["agent:jetson"])
    spec["compress"]["prune"]["round_to"] = None                    # automatic: no flag, and parsing keeps None
    command, differences = command_line(spec)
    assert differences == []
    assert "--precision int8" in command and "--agent-eval-images 300" in command and "--round-to" not in command
    spec["compress"]["prune"]["round_to"] = 8                       # a resolved value is given explicitly
    spec["benchmark"].update(precision="fp32", agent_eval_images=2000)
    command, differences = command_line(spec)
    assert differences == []
    assert "--round-to 8" in command and "--precision" not in command and "--agent-eval-images" not in command


def test_automatic_rounding_is_resolved_into_the_spec_and_explained_in_the_notes(l1_run):
    report, _, page = l1_run
    assert report["spec"]["compress"]["prune"]["round_to"] == 8       # job() leaves round_to unset
    assert report["criterion"]["round_to"] == 8
    note = next(n for n in report["notes"] if n.startswith("widths rounded to multiples of 8 (automatic;"))
    assert "CPU-only targets" in note
    assert f'<p class="note">{html.escape(note)}</p>' in page
    assert all(layer["kept"] % 8 == 0 for layer in report["layers"] if layer["kept"] < layer["original"])


def test_latency_rows_that_never_settled_are_marked_not_stable(l1_run, tmp_path):
    report = copy.deepcopy(l1_run[0])
    assert all(row["stable"] in (True, False) for row in report["latency"])   # local rows are judged
    for row in report["latency"]:
        row["stable"] = True
    calm = render_html(report, tmp_path)
    assert "not stable" not in calm and 'class="unstable"' not in calm
    shaky = next(r for r in report["latency"] if r["model"] == "compressed")
    shaky["stable"] = False
    page = render_html(report, tmp_path)
    summary = page[page.index("<h3>Latency per target and batch</h3>"):]
    row = re.search(r'<tr class="unstable"><td>([^<]*)</td><td>(\d+)</td><td>[^<]*</td><td>([^<]*)</td>', summary)
    assert row and (row.group(1), int(row.group(2))) == (shaky["target"], shaky["batch_size"])
    assert row.group(3) == f"{shaky['p50_ms']:.3f} / {shaky['p90_ms']:.3f} (not stable)"
    assert summary.count('class="unstable"') == 1
    assert "the time cap (--bench-seconds) came before" in summary
    validate_report(report)


def test_accuracy_measured_on_device_agents_is_tabled(l1_run, tmp_path):
    report = copy.deepcopy(l1_run[0])
    report["target_accuracy"] = {
        "agent:jetson": {"original": {"top1": 0.9512, "top5": 0.99, "num_images": 1500},
                         "compressed": {"top1": 0.9387, "top5": 0.98, "num_images": 1500},
                         "backend": "tensorrt:cuda", "precision": "int8", "device": "Orin <GPU>"},
        "agent:cpu-box": {"original": None, "compressed": {"top1": 0.5, "top5": 0.75, "num_images": 200},
                          "backend": "onnxruntime:cpu", "precision": "fp32", "device": ""},
    }
    validate_report(report)
    page = render_html(report, tmp_path)
    section = page[page.index("<h3>Accuracy measured on device agents</h3>"):]
    section = section[:section.index("</table>")]
    assert ("<th>target</th><th>backend</th><th>precision</th><th>device</th><th>original top-1</th>"
            "<th>compressed top-1</th><th>images</th>") in section
    assert ("<td>agent:jetson</td><td>tensorrt:cuda</td><td>int8</td><td>Orin &lt;GPU&gt;</td><td>95.12%</td>"
            "<td>93.87%</td><td>1,500</td>") in section
    assert ("<td>agent:cpu-box</td><td>onnxruntime:cpu</td><td>fp32</td><td>n/a</td><td>n/a</td>"
            "<td>50.00%</td><td>200</td>") in section
    assert page.index("<h3>Latency per target and batch</h3>") < page.index("<h3>Accuracy measured on device agents")
    assert "Accuracy measured on device agents" not in l1_run[2]      # no agents, no table


def test_compress_prints_where_the_html_report_is(l1_run, capsys):
    from service.cli.local import finish

    report, out, _ = l1_run
    finish(report, out, as_json=False)
    assert str(out / "report.html") in capsys.readouterr().out


# --- layer pruning -------------------------------------------------------------------------------

def test_removed_blocks_are_shown_with_their_probe_gains(probe_run):
    report, _, page = probe_run
    blocks = report["criterion"]["blocks"]
    assert blocks and any(b["removed"] for b in blocks)
    assert report["removed_blocks"] == [b["block"] for b in blocks if b["removed"]]
    section = page[page.index('<section id="removed-blocks-layer-pruning"'):]
    section = section[:section.index("</section>")]
    for b in blocks:
        status = "removed" if b["removed"] else "kept"
        row = f'<tr class="{status if b["removed"] else ""}"><td>{b["block"]}</td><td>{status}</td>' \
              f'<td>{b["reason"]["gain"]:.4g}</td><td>{b["reason"]["probe_accuracy"]:.2%}</td>'
        assert row in section
    figures = dict((alt, b64) for b64, alt in FIGURE.findall(page))
    assert_real_picture(decode(figures["Probe gain per block"]))


# --- report.json and its schema ------------------------------------------------------------------

def test_report_json_follows_the_schema(l1_run, probe_run):
    for report, out, _ in (l1_run, probe_run):
        on_disk = json.loads((out / "report.json").read_text())
        validate_report(on_disk)
        assert on_disk["files"]["report_html"] == "report.html"


def test_the_schema_file_is_a_valid_draft_2020_12_schema():
    from jsonschema import Draft202012Validator

    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def _set(path: str, value):
    def mutate(report):
        *parents, last = path.split(".")
        node = report
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return mutate


_DELETE = object()


@pytest.mark.parametrize("mutate, path", [
    (_set("accuracy.original.top1", "high"), "$.accuracy.original.top1"),
    (_set("accuracy.original.top1", 1.5), "$.accuracy.original.top1"),
    (_set("gate", _DELETE), "'gate' is a required property"),
    (_set("gate.passed", "yes"), "$.gate.passed"),
    (_set("schema", "interprune.report/v0"), "$.schema"),
    (_set("cost.compressed.macs", -1), "$.cost.compressed.macs"),
    (_set("latency.0.batch_size", 0), "$.latency[0].batch_size"),
    (_set("latency.0.stable", "yes"), "$.latency[0].stable"),
    (_set("criterion.groups.0.channels.0.kept", 1), "$.criterion.groups[0].channels[0].kept"),
    (_set("final_stage", "deployed"), "$.final_stage"),
])
def test_a_broken_report_fails_with_the_failing_path(l1_run, mutate, path):
    report = copy.deepcopy(l1_run[0])
    mutate(report)
    with pytest.raises(ReportSchemaError) as info:
        validate_report(report)
    assert path in str(info.value)


# --- images from a visualizing criterion, end to end ---------------------------------------------

def test_a_visualizing_criterion_puts_its_filter_images_in_the_page(digits_weights, tmp_path):
    spec = JobSpec(CompressSpec(model=ModelSpec("demo/small_cnn", str(digits_weights)),
                                data=DataSpec(None, calibration_images=200),
                                prune=PruneSpec("functionality", {"steps": 4, "max_batches": 1, "mean": [0.5],
                                                                  "std": [0.5]}, target_reduction=0.3)),
                   export=ExportSpec(onnx=False), benchmark=BenchmarkSpec(targets=()))
    report = run_pipeline(spec, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert report["files"]["visualizations"]
    removed = sum(not c["kept"] for g in report["criterion"]["groups"] for c in g["channels"])
    assert removed and len(re.findall(r'<figure class="tile', page)) == removed
    assert page.count("<h4>kept (") == len(report["criterion"]["groups"])


def test_a_missed_latency_budget_shows_in_the_summary_and_at_the_top_of_the_page(l1_run, tmp_path):
    from pipeline.report import summary_table

    report = copy.deepcopy(l1_run[0])
    report["latency_budget"] = {"budget_ms": 58.0, "batch_size": 64, "target": "local:cpu", "margin": 0.05,
                                "achieved_p90_ms": 61.5, "stable": False, "met": False}
    validate_report(report)
    assert ("latency budget NOT MET: p90 61.5 ms at batch 64 on local:cpu (budget 58 ms; the measurement was not "
            "stable)") in summary_table(report)
    page = render_html(report, tmp_path)
    top = page[:page.index("<h3>")]
    assert "latency budget" in top and "NOT MET: p90 61.5 ms" in top and "not stable" in top
    report["latency_budget"].update(achieved_p90_ms=53.0, stable=True, met=True)
    assert "latency budget MET: p90 53 ms" in summary_table(report)


def test_headline_says_what_the_refit_recovers_after_the_criterions_own_reason():
    from pipeline.report_html import _headline

    assert _headline({"votes": 0, "voters": 5}) == "0 of 5 votes"
    text = _headline({"votes": 0, "voters": 5, "refit": {"step": 2, "recovered": 0.87, "absorbed_by": 12}})
    assert text == "0 of 5 votes; 87% recovered by the kept units, mostly by #12"
    assert _headline({"probe_reliance": 0.0123, "probe_weight": 0.5, "probe_accuracy": 0.41}) == \
        "held-out log-loss of the layer's probe +0.0123 without it (probe accuracy 41%)"


def test_the_report_says_how_many_images_the_sensitivity_curves_were_measured_on(l1_run):
    report, _, _ = l1_run
    assert report["criterion"]["allocation"] == "sensitivity"
    assert report["criterion"]["sensitivity_images"] == 150     # 300 calibration images: half fit, half loss
