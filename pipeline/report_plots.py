"""The report's plots (matplotlib, rendered in memory to PNG data URIs): widths per layer, accuracy per stage,
latency before and after, the latency-budget probes, the probe gains of layer pruning."""
from __future__ import annotations

import io

import numpy as np

from pipeline.html_parts import (COMPRESSED_COLOUR, FAIL_COLOUR, MUTED_COLOUR, ORIGINAL_COLOUR, PASS_COLOUR, STAGES,
                                 block_gain, data_uri, escape, natural)



def plots(report: dict) -> list[str]:
    figures = []
    if report["layers"]:
        figures.append(_figure(_plot_widths(report["layers"]), "Kept vs original width per layer"))
    figures.append(_figure(_plot_accuracy(report["accuracy"]), "Accuracy per stage"))
    if any(r.get("p50_ms") for r in report.get("latency", [])):
        figures.append(_figure(_plot_latency(report["latency"]), "Latency before and after, per target and batch"))
    if report.get("latency_search"):
        budget = report["spec"]["compress"]["prune"].get("latency_budget_ms")
        goal = None if budget is not None else (report.get("latency_allocation") or {}).get("goal_ms")
        title = "Latency-budget search: the probes" if budget is not None else "Latency target search: the probes"
        figures.append(_figure(_plot_search(report["latency_search"], budget, goal), title))
    if report["criterion"].get("blocks"):
        figures.append(_figure(_plot_blocks(report["criterion"]["blocks"]), "Probe gain per block"))
    return figures


def _new_figure(width: float, height: float = 3.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.subplots()


def _plot_widths(layers: list[dict]):
    layers = sorted(layers, key=lambda item: natural(item["layer"]))
    fig, ax = _new_figure(max(7.0, 0.32 * len(layers) + 2))
    x = np.arange(len(layers))
    ax.bar(x, [item["original"] for item in layers], color=ORIGINAL_COLOUR, label="original")
    ax.bar(x, [item["kept"] for item in layers], width=0.55, color=COMPRESSED_COLOUR, label="kept")
    ax.set_xticks(x, [item["layer"] for item in layers], rotation=60 if len(layers) > 6 else 0, ha="right"
                  if len(layers) > 6 else "center", fontsize=8)
    ax.set_ylabel("output channels")
    ax.legend(frameon=False)
    return fig


def _plot_accuracy(accuracy: dict):
    stages = [s for s in STAGES if s in accuracy]
    fig, ax = _new_figure(7.0)
    x = np.arange(len(stages))
    top1 = [accuracy[s]["top1"] for s in stages]
    ax.bar(x - 0.2, top1, 0.4, color=COMPRESSED_COLOUR, label="top-1")
    ax.bar(x + 0.2, [accuracy[s]["top5"] for s in stages], 0.4, color=ORIGINAL_COLOUR, label="top-5")
    for xi, value in zip(x, top1):
        ax.annotate(f"{value:.2%}", (xi - 0.2, value), ha="center", va="bottom", fontsize=8)
    ax.axhline(top1[0], color=MUTED_COLOUR, lw=0.8, ls="--")
    ax.set_xticks(x, stages)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.legend(frameon=False, loc="lower right")
    return fig


def _plot_latency(latency: list[dict]):
    keys = sorted({(r["target"], r["batch_size"]) for r in latency})
    value = {(r["target"], r["model"], r["batch_size"]): r.get("p50_ms") or 0.0 for r in latency}
    fig, ax = _new_figure(max(7.0, 1.2 * len(keys) + 2))
    x = np.arange(len(keys))
    orig = [value.get((t, "original", b), 0.0) for t, b in keys]
    comp = [value.get((t, "compressed", b), 0.0) for t, b in keys]
    ax.bar(x - 0.2, orig, 0.4, color=ORIGINAL_COLOUR, label="original p50")
    ax.bar(x + 0.2, comp, 0.4, color=COMPRESSED_COLOUR, label="compressed p50")
    for xi, o, c in zip(x, orig, comp):
        if o and c:
            ax.annotate(f"{o / c:.2f}×", (xi, max(o, c)), ha="center", va="bottom", fontsize=8)
    positive = [v for v in orig + comp if v > 0]
    if positive and max(positive) / min(positive) > 30:
        ax.set_yscale("log")
    ax.set_xticks(x, [f"{t}\nbatch {b}" for t, b in keys], fontsize=8)
    ax.set_ylabel("ms per batch")
    ax.legend(frameon=False)
    return fig


def _plot_search(probes: list[dict], budget: float | None, goal: float | None = None):
    fig, ax = _new_figure(7.0)
    points = [(p["reduction"], p.get("latency_ms", p.get("p90_ms")), p.get("meets_goal", p.get("meets_budget")))
              for p in probes]
    points = [p for p in points if p[1] is not None]
    ax.plot([p[0] for p in sorted(points)], [p[1] for p in sorted(points)], color=MUTED_COLOUR, lw=0.8)
    for i, (r, ms, ok) in enumerate(points):
        ax.scatter([r], [ms], color=PASS_COLOUR if ok else FAIL_COLOUR, zorder=3)
        ax.annotate(str(i + 1), (r, ms), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if budget is not None:
        ax.axhline(budget, color=FAIL_COLOUR, ls="--", lw=1, label=f"budget {budget:g} ms")
        ax.legend(frameon=False)
    elif goal is not None:
        ax.axhline(goal, color=MUTED_COLOUR, ls="--", lw=1, label=f"goal {goal:.4g} ms")
        ax.legend(frameon=False)
    by_latency = any(p.get("metric") == "latency" for p in probes)
    if by_latency:                        # allocation "latency": the table's prediction of each candidate, too
        for r, p in ((p["reduction"], p.get("predicted_ms")) for p in probes):
            if p is not None:
                ax.scatter([r], [p], marker="x", color=MUTED_COLOUR, zorder=2)
    ax.set_xlabel(("reduction of the predicted p90 (x: predicted)" if by_latency else "MACs reduction")
                  + " (probe order numbered)")
    ax.set_ylabel("p90 latency (ms)")
    return fig


def _plot_blocks(blocks: list[dict]):
    blocks = sorted(blocks, key=lambda b: natural(b["block"]))
    fig, ax = _new_figure(max(7.0, 0.4 * len(blocks) + 2))
    x = np.arange(len(blocks))
    colours = [FAIL_COLOUR if b["removed"] else COMPRESSED_COLOUR for b in blocks]
    ax.bar(x, [block_gain(b) for b in blocks], color=colours)
    ax.axhline(0, color=MUTED_COLOUR, lw=0.8)
    ax.set_xticks(x, [b["block"] for b in blocks], rotation=60 if len(blocks) > 6 else 0,
                  ha="right" if len(blocks) > 6 else "center", fontsize=8)
    ax.set_ylabel("probe accuracy gain")
    ax.set_title("red: removed", fontsize=9, color=FAIL_COLOUR)
    return fig


def _figure(fig, caption: str) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    wide = ' class="wide"' if fig.get_figwidth() > 8 else ""
    return (f'<figure{wide}><img src="{data_uri(buffer.getvalue())}" alt="{escape(caption)}">'
            f'<figcaption>{escape(caption)}</figcaption></figure>')
