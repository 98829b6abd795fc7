"""The job report: ``report.json`` (a stable, versioned schema for machines) and ``report.html`` (for people).

``build_report`` turns a finished pipeline into plain JSON-able data; ``write_reports`` writes both files and the
activation-maximization grids the criteria produced.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pipeline.benchmark import Measurements
from pipeline.jsonio import write_json
from pruning.compress import CompressResult, PruneSpec

log = logging.getLogger(__name__)

REPORT_SCHEMA = "interprune.report/v1"
STAGES = ("original", "pruned", "reconstructed", "finetuned", "exported")


def build_report(spec, result: CompressResult, exported: dict, measured: Measurements, timings: dict[str, float],
                 environment: dict) -> dict:
    """The complete report of a finished job (only ``files`` is filled in by ``write_reports``)."""
    latency, target_errors = measured.rows, measured.errors
    accuracy = {stage: result.accuracy[stage].to_dict() for stage in STAGES if stage in result.accuracy}
    final_stage = next(s for s in reversed(STAGES) if s in accuracy)
    prune = spec.compress.prune
    budget = budget_verdict(prune, latency, target_errors) if prune.latency_budget_ms is not None else None
    report = {
        "schema": REPORT_SCHEMA,
        "spec": spec.to_dict(),
        "model": {"arch": spec.compress.model.arch, "input_shape": list(result.input_shape),
                  "num_classes": result.plan.num_classes, "source": dict(result.plan.source)},
        "data": {"splits": result.splits.sizes(), "mean": list(result.preprocess.mean),
                 "std": list(result.preprocess.std)},
        "accuracy": accuracy,
        "final_stage": final_stage,
        "cost": {k: v.to_dict() for k, v in result.cost.items()},
        "reduction": {"macs": result.reduction("macs"), "params": result.reduction("params"),
                      "macs_ratio": result.cost["original"].macs / max(result.cost["compressed"].macs, 1)},
        "layers": result.layers,
        "removed_blocks": list(result.plan.removed_blocks),
        "criterion": _criterion_section(result),
        "reconstruction": [fit.to_dict() for fit in result.fits],
        "finetune": result.finetune.to_dict() if result.finetune else None,
        "export": exported,
        "latency": latency,
        "speedup": measured.speedups,
        "target_errors": target_errors,
        "target_accuracy": measured.accuracy,
        "latency_search": result.latency_search,
        "gate": gate_verdict(spec.gate.max_accuracy_drop, accuracy, final_stage, budget),
        "timings": timings,
        "environment": environment,
        "notes": list(result.notes),
        "warnings": list(getattr(result, "warnings", [])),
        "files": {},
    }
    if budget is not None:
        report["latency_budget"] = budget
    if result.latency_allocation is not None:
        report["latency_allocation"] = latency_allocation_section(result.latency_allocation, latency)
    return report


def latency_allocation_section(allocated: dict, latency: list[dict]) -> dict:
    """Allocation "latency": what was targeted, the table's predicted p90 of the plan, the probe's measurement of
    it, and the final benchmark's p90 at the same batch on the same target (when it ran)."""
    section = dict(allocated)
    row = next((r for r in latency if r["target"] == allocated["target"] and r["model"] == "compressed"
                and r["batch_size"] == allocated["batch_size"] and not r.get("error")), None)
    section["final_p90_ms"] = row["p90_ms"] if row else None
    return section


def gate_verdict(max_drop: float | None, accuracy: dict, final_stage: str, budget: dict | None = None) -> dict:
    """The quality gate: the top-1 drop within ``max_drop`` (when set) and, with a latency budget, the budget met."""
    drop = accuracy["original"]["top1"] - accuracy[final_stage]["top1"]
    passed = True if max_drop is None else bool(drop <= max_drop + 1e-12)   # a NaN drop or limit fails
    verdict = {"max_accuracy_drop": max_drop, "accuracy_drop": drop, "stage": final_stage, "passed": passed}
    if budget is not None:
        verdict["latency_budget_met"] = budget["met"]
        verdict["passed"] = passed and budget["met"]
    return verdict


def budget_verdict(prune: PruneSpec, latency: list[dict], target_errors: dict[str, str]) -> dict:
    """Did the final benchmark meet the latency budget? The compressed model's p90 at the budget's batch size on
    the budget's target, from the same protocol as the search's probes."""
    row = next((r for r in latency if r["target"] == prune.latency_target and r["model"] == "compressed"
                and r["batch_size"] == prune.latency_batch and not r.get("error")), None)
    verdict = {"budget_ms": prune.latency_budget_ms, "batch_size": prune.latency_batch,
               "target": prune.latency_target, "margin": prune.latency_margin,
               "achieved_p90_ms": row["p90_ms"] if row else None, "stable": row.get("stable") if row else None,
               "met": bool(row) and row["p90_ms"] <= prune.latency_budget_ms}
    if row is None:
        verdict["error"] = target_errors.get(prune.latency_target, "the final benchmark has no row for the budget")
    return verdict


def _criterion_section(result: CompressResult) -> dict:
    spec = result.spec.prune
    target = {"metric": spec.target_metric, "reduction": spec.target_reduction}
    if spec.allocation == "latency":                      # what the allocator aimed at: a predicted-latency fraction
        target = dict(result.plan.notes.get("target") or {"metric": "latency", "reduction": 0.0})
    section: dict[str, Any] = {"name": spec.criterion, "params": dict(spec.criterion_params),
                               "allocation": spec.allocation, "round_to": spec.round_to, "target": target,
                               "layer_criterion": spec.layer_criterion, "groups": [], "blocks": [],
                               "sensitivity_images": result.sensitivity.images if result.sensitivity else None}
    if result.scores is not None:
        for name, kept in result.plan.kept.items():
            scores = result.scores.channels[name]
            reasons = result.scores.reasons.get(name) or [{} for _ in range(len(scores))]
            keep = set(kept)
            section["groups"].append({
                "layer": name,
                "channels": [{"index": i, "kept": i in keep, "score": float(scores[i]), "reason": reasons[i]}
                             for i in range(len(scores))],
            })
    if result.block_scores is not None:
        removed = set(result.plan.removed_blocks)
        for block, score in result.block_scores.blocks.items():
            section["blocks"].append({"block": block, "removed": block in removed, "score": float(score),
                                      "reason": result.block_scores.block_reasons.get(block, {})})
    return section


def write_reports(report: dict, out: Path, result: CompressResult) -> None:
    images = _save_visualizations(result, out)
    report["files"] = {"plan": "plan.json", "weights": "weights.pt", "report_json": "report.json",
                       "visualizations": images}
    if (out / "model.onnx").exists():
        report["files"]["onnx"] = "model.onnx"
    try:
        from pipeline.report_html import render_html

        # The images themselves (not only the grids on disk) let the page show kept and removed filters apart.
        am_images = result.scores.visualizations if result.scores is not None else None
        (out / "report.html").write_text(render_html(report, out, am_images))
        report["files"]["report_html"] = "report.html"
    except ImportError:
        pass
    write_json(out / "report.json", report)
    if os.environ.get("INTERPRUNE_VALIDATE_REPORTS") == "1":   # set by tests/conftest.py: every report is checked
        from pipeline.report_schema import validate_report

        validate_report(json.loads((out / "report.json").read_text()))


def _save_visualizations(result: CompressResult, out: Path) -> dict[str, str]:
    if result.scores is None or not result.scores.visualizations:
        return {}
    try:
        from pruning.visualize import save_grid
    except ImportError:
        return {}
    folder = out / "visualizations"
    folder.mkdir(exist_ok=True)
    saved = {}
    for layer, images in result.scores.visualizations.items():
        path = folder / f"{layer.replace('.', '_')}.png"
        save_grid(images, path)
        saved[layer] = str(path.relative_to(out))
    return saved


def summary_table(report: dict) -> str:
    """A compact plain-text table for the end of ``compress`` and ``submit``."""
    lines = [f"WARNING: {w}" for w in report.get("warnings", [])] + ([""] if report.get("warnings") else [])
    acc = report["accuracy"]
    lines.append("stage          top-1    top-5   images")
    for stage in STAGES:
        if stage in acc:
            a = acc[stage]
            lines.append(f"{stage:<13} {a['top1']:7.2%}  {a['top5']:7.2%}  {a['num_images']:>6}")
    cost = report["cost"]
    lines.append("")
    lines.append(f"MACs    {cost['original']['macs']:>14,} -> {cost['compressed']['macs']:>14,}  "
                 f"(-{report['reduction']['macs']:.1%}, ratio {report['reduction']['macs_ratio']:.2f}x)")
    lines.append(f"params  {cost['original']['params']:>14,} -> {cost['compressed']['params']:>14,}  "
                 f"(-{report['reduction']['params']:.1%})")
    if report.get("export"):
        parity = report["export"]["parity"]
        lines.append(f"ONNX parity: max abs error {parity['max_abs_error']:.2e} "
                     f"(tolerance {report['export']['parity_atol']:.0e})"
                     + (f", relative {parity['max_rel_error']:.1e}" if "max_rel_error" in parity else ""))
    if report.get("speedup"):
        lines.append("")
        lines.append("target      batch  original p50   compressed p50   speedup   MACs ratio")
        for row in report["speedup"]:
            speed = f"{row['measured_speedup']:.2f}x" if row.get("measured_speedup") else "n/a"
            lines.append(f"{row['target']:<11} {row['batch_size']:>5}  {_ms(row.get('original_p50_ms'))}"
                         f"     {_ms(row.get('pruned_p50_ms'))}     {speed:>7}   {row['macs_ratio']:.2f}x")
    for target, entry in (report.get("target_accuracy") or {}).items():     # measured on a device agent
        top1 = [f"{model} {entry[model]['top1']:.2%}" for model in ("original", "compressed") if entry.get(model)]
        images = next((entry[m]["num_images"] for m in ("compressed", "original") if entry.get(m)), 0)
        lines.append(f"{target} top-1 on {entry.get('device') or 'the device'} ({entry.get('backend')} "
                     f"{entry.get('precision')}, {images} images): {', '.join(top1) or 'n/a'}")
    for target, error in report.get("target_errors", {}).items():
        lines.append(f"{target}: not measured: {error}")
    budget = report.get("latency_budget")
    if budget:
        achieved = budget.get("achieved_p90_ms")
        lines.append(f"\nlatency budget {'MET' if budget['met'] else 'NOT MET'}: p90 "
                     + (f"{achieved:.3g} ms" if achieved is not None else f"not measured ({budget.get('error')})")
                     + f" at batch {budget['batch_size']} on {budget['target']} (budget {budget['budget_ms']:g} ms"
                     + ("; the measurement was not stable" if budget.get("stable") is False else "") + ")")
    if report.get("latency_allocation"):
        lines.append("\n" + latency_allocation_line(report["latency_allocation"]))
    for note in report.get("notes") or []:
        lines.append(f"note: {note}")
    gate = report["gate"]
    if gate["max_accuracy_drop"] is not None:
        verdict = "PASSED" if gate["passed"] else "FAILED"
        lines.append(f"\nquality gate {verdict}: top-1 drop {gate['accuracy_drop']:.2%} "
                     f"(allowed {gate['max_accuracy_drop']:.2%})")
    return "\n".join(lines)


def latency_allocation_line(section: dict) -> str:
    """One line: what allocation "latency" targeted, and its predicted vs measured p90."""
    aimed = (f"a p90 budget of {section['budget_ms']:g} ms" if section["targeted"] == "budget"
             else f"-{section['reduction']:.1%} of the measured p90")
    measured = f"measured {section['measured_ms']:.4g} ms"
    if section.get("unpruned_beside_ms"):
        measured += f" beside the unpruned model's {section['unpruned_beside_ms']:.4g} ms"
    if section.get("candidates"):
        measured += f" (-{section['measured_reduction']:.1%}; {section['candidates']} measured candidate(s))"
    final = section.get("final_p90_ms")
    blocks = [b["block"] for b in section.get("removed_blocks") or []]
    return (f"latency allocation targeted {aimed} at batch {section['batch_size']} on {section['target']}: p90 "
            f"{section['original_ms']:.4g} ms unpruned -> predicted {section['predicted_ms']:.4g} ms, {measured}"
            + (f" (final benchmark {final:.4g} ms)" if final is not None else "")
            + (f"; {len(blocks)} block(s) removed whole: {', '.join(blocks)}" if blocks else ""))


def _ms(value) -> str:
    return f"{value:9.3f} ms" if value is not None else "      n/a   "
