"""``report.html``: the job report for a person deciding whether to ship the compressed model.

One self-contained page (inline CSS, every image a base64 ``data:`` URI, no script, no network), top-down:

1. the verdict (quality gate PASSED / FAILED) and the key numbers;
2. the summary tables: accuracy at every stage, cost, latency per target and batch with the measured speedup beside
   the MACs ratio (rows whose runs never settled marked "not stable"), the top-1 device agents measured on the
   artifact they built, export parity, target errors;
3. plots (matplotlib, rendered in memory): kept vs original width per layer, accuracy per stage, latency before and
   after, the probes of a latency-budget search, the probe gains of layer pruning;
4. removed blocks with their probe gains;
5. per pruned layer: activation-maximization images of kept and removed filters side by side, every removed filter
   with its score and the criterion's reason (collapsed ``<details>`` when there are no images);
6. the environment, the exact spec and the equivalent ``interprune compress`` command line.

Example::

    report = json.loads(Path("out/report.json").read_text())
    Path("out/report.html").write_text(render_html(report, Path("out")))
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

STAGES = ("original", "pruned", "reconstructed", "finetuned", "exported")
_PASS, _FAIL, _MUTED = "#1a7f37", "#cf222e", "#6e7781"
_ORIGINAL, _COMPRESSED = "#b6c2cf", "#2f6fb0"


def render_html(report: dict, out_dir: Path, visualizations: Mapping[str, Any] | None = None) -> str:
    """The page for ``report`` (a ``report.json`` dict). ``out_dir`` is the job folder (for the grids saved under
    ``visualizations/``); ``visualizations`` maps a layer to its activation-maximization images [K, C, H, W] in
    [0, 1] (numpy or torch), which lets the page show kept and removed filters apart."""
    images = {layer: _as_images(v) for layer, v in (visualizations or {}).items()}
    crit = report["criterion"]
    title = f"interprune · {report['model']['arch']} · {crit['name']}"
    body = [
        _header(report, title),
        _section("Summary", _summary(report)),
        _section("Plots", f'<div class="plots">{"".join(_plots(report))}</div>'),
    ]
    if crit.get("blocks"):
        body.append(_section("Removed blocks (layer pruning)", _blocks(crit["blocks"])))
    if crit.get("groups"):
        body.append(_section("Pruned layers: what was removed and why",
                             _layers(report, Path(out_dir), images)))
    body.append(_section("Reproduce this run", _reproduce(report)))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n" + "\n".join(body)
            + "\n</body></html>\n")


# --- header and summary -------------------------------------------------------------------------

def _header(report: dict, title: str) -> str:
    gate, acc, cost, red = report["gate"], report["accuracy"], report["cost"], report["reduction"]
    final = report["final_stage"]
    if gate.get("max_accuracy_drop") is None:
        verdict = f'<span class="verdict" style="background:{_MUTED}">NO QUALITY GATE</span>'
        rule = "no maximum accuracy drop was set"
    else:
        ok = gate["passed"]
        verdict = (f'<span class="verdict" style="background:{_PASS if ok else _FAIL}">'
                   f'QUALITY GATE {"PASSED" if ok else "FAILED"}</span>')
        rule = f"top-1 drop {_pts(gate['accuracy_drop'])} (allowed {_pts(gate['max_accuracy_drop'])})"
    cards = [
        ("top-1", f"{_pct(acc['original']['top1'])} → {_pct(acc[final]['top1'])}", f"{final}; {rule}"),
        ("MACs", f"−{_pct(red['macs'], 1)}", f"{cost['original']['macs']:,} → {cost['compressed']['macs']:,} "
                                              f"(ratio {red['macs_ratio']:.2f}×)"),
        ("parameters", f"−{_pct(red['params'], 1)}",
         f"{cost['original']['params']:,} → {cost['compressed']['params']:,}"),
        ("size", f"{_bytes(cost['original']['size_bytes'])} → {_bytes(cost['compressed']['size_bytes'])}",
         "float32 weights"),
    ]
    budget = report.get("latency_budget")
    if budget:
        achieved = budget.get("achieved_p90_ms")
        cards.append(("latency budget", ("MET" if budget["met"] else "NOT MET") + (
            f": p90 {achieved:.3g} ms" if achieved is not None else ""),
            f"budget {budget['budget_ms']:g} ms, batch {budget['batch_size']}, {budget['target']}"
            + ("; not stable" if budget.get("stable") is False else "")))
    speed = next((s for s in report.get("speedup", []) if s.get("measured_speedup")), None)
    if speed:
        cards.append(("measured speedup", f"{speed['measured_speedup']:.2f}×",
                      f"{speed['target']}, batch {speed['batch_size']}, p50; MACs predict {speed['macs_ratio']:.2f}×"))
    items = "".join(f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div>'
                    f'<div class="d">{_e(d)}</div></div>' for k, v, d in cards)
    warnings = "".join(f'<p class="warn">{_e(t)}: not measured: {_e(msg)}</p>'
                       for t, msg in report.get("target_errors", {}).items())
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in report.get("notes", []))
    crit = report["criterion"]
    what = f"criterion <b>{_e(crit['name'])}</b>"
    if crit.get("layer_criterion"):
        what += f" after block criterion <b>{_e(crit['layer_criterion'])}</b>"
    what += (f", target −{_pct(crit['target']['reduction'], 0)} {_e(crit['target']['metric'])}, "
             f"{_e(crit['allocation'])} allocation")
    narrowed = sum(layer["kept"] < layer["original"] for layer in report["layers"])
    return (f'<header><h1>{_e(title)}</h1>{verdict}<p class="sub">{what}; {narrowed} layers narrowed, '
            f'{len(report.get("removed_blocks", []))} blocks removed</p>'
            f'<div class="cards">{items}</div>{warnings}{notes}</header>')


def _summary(report: dict) -> str:
    acc, base = report["accuracy"], report["accuracy"]["original"]["top1"]
    rows = [[stage, _pct(a["top1"]), _pct(a["top5"]), f"{a['num_images']:,}",
             "" if stage == "original" else _pts(a["top1"] - base, signed=True)]
            for stage in STAGES if (a := acc.get(stage))]
    parts = ["<h3>Accuracy (evaluation split)</h3>",
             _table(["stage", "top-1", "top-5", "images", "Δ top-1"], rows)]
    cost, red = report["cost"], report["reduction"]
    parts += ["<h3>Cost</h3>", _table(["", "original", "compressed", "removed"], [
        ["MACs", f"{cost['original']['macs']:,}", f"{cost['compressed']['macs']:,}", _pct(red["macs"], 1)],
        ["parameters", f"{cost['original']['params']:,}", f"{cost['compressed']['params']:,}",
         _pct(red["params"], 1)],
        ["size", _bytes(cost["original"]["size_bytes"]), _bytes(cost["compressed"]["size_bytes"]),
         _pct(1 - cost["compressed"]["size_bytes"] / max(cost["original"]["size_bytes"], 1), 1)]])]
    parts += _latency_summary(report)
    parts += _target_accuracy(report)
    export = report.get("export") or {}
    if export:
        onnx, parity = export["onnx"], export["parity"]
        parts += ["<h3>ONNX export</h3>", _table(["opset", "file", "sha256", "parity max abs error", "tolerance",
                                                  "top-1 agreement"], [[
            onnx.get("opset"), _bytes(onnx.get("size_bytes", 0)), str(onnx.get("sha256", ""))[:16] + "…",
            f"{parity['max_abs_error']:.2e}", f"{export['parity_atol']:.0e}",
            _pct(parity["top1_agreement"]) if parity.get("top1_agreement") is not None else "n/a"]])]
    ft = report.get("finetune")
    if ft:
        best = ft.get("best_val_top1")
        parts.append(f"<p>Fine-tuning: {ft['steps']} steps, {ft['images_seen']:,} images, {ft['seconds']:.1f} s, "
                     f"stopped by {_e(ft['stopped_by'])}"
                     + (f", best validation top-1 {_pct(best)}" if best is not None else "") + ".</p>")
    if report.get("reconstruction"):
        fits = [[f["name"], f.get("inputs", ""), f.get("samples", ""), f"{f['error_before']:.4f}",
                 f"{f['error_after']:.4f}"] for f in report["reconstruction"]]
        parts.append(_details(f"Kernel reconstruction: {len(fits)} consumer layers re-fitted",
                              _table(["layer", "inputs", "samples", "rel. error before", "after"], fits)))
    timings = [[k, f"{v:.1f}"] for k, v in report.get("timings", {}).items()]
    parts.append(_details(f"Timings: {sum(v for v in report.get('timings', {}).values()):.0f} s in all",
                          _table(["stage", "seconds"], timings)))
    return "\n".join(parts)


def _latency_summary(report: dict) -> list[str]:
    rows_in = report.get("latency") or []
    if not rows_in:
        return ["<h3>Latency</h3><p>Not measured (no benchmark target).</p>"]
    by_key = {(r["target"], r["model"], r["batch_size"]): r for r in rows_in}
    speed = {(s["target"], s["batch_size"]): s for s in report.get("speedup", [])}
    rows = []
    for target, batch in sorted({(r["target"], r["batch_size"]) for r in rows_in}):
        orig, comp, s = by_key.get((target, "original", batch)), by_key.get((target, "compressed", batch)), \
            speed.get((target, batch), {})
        rows.append([target, batch, _lat(orig), _lat(comp),
                     f"{s['measured_speedup']:.2f}×" if s.get("measured_speedup") else "n/a",
                     f"{s['macs_ratio']:.2f}×" if s.get("macs_ratio") else "n/a",
                     f"{comp['throughput_ips']:,.0f}" if comp and comp.get("throughput_ips") else "n/a"])
    device = next((r.get("device") for r in rows_in if r.get("device")), "")
    unstable = {(r["target"], r["batch_size"]) for r in rows_in if r.get("stable") is False}
    parts = [f"<h3>Latency per target and batch</h3><p class='d'>ms per batch, p50 / p90; {_e(device)}; "
             "the measured speedup is original p50 / compressed p50, the MACs ratio is what the MAC count alone "
             "predicts.</p>",
             _table(["target", "batch", "original", "compressed", "measured speedup", "MACs ratio",
                     "images/s (compressed)"], rows,
                    row_class=lambda row: "unstable" if (row[0], row[1]) in unstable else "")]
    if unstable:
        parts.append(f"<p class='d'>{_UNSTABLE}: the time cap (--bench-seconds) came before the medians of the "
                     "last three windows of runs agreed within the stability tolerance (5% by default); the "
                     "latency was still moving (a busy machine, clocks or caches settling), so read these numbers "
                     "as approximate.</p>")
    return parts


_UNSTABLE = "not stable"


def _lat(row: dict | None) -> str:
    if row is None:
        return "n/a"
    if row.get("error"):
        return f"failed: {row['error']}"
    return f"{row['p50_ms']:.3f} / {row['p90_ms']:.3f}" + (f" ({_UNSTABLE})" if row.get("stable") is False else "")


def _target_accuracy(report: dict) -> list[str]:
    """Top-1 the device agents measured on the artifact they built (engine precision and device included)."""
    entries = report.get("target_accuracy") or {}
    if not entries:
        return []
    rows = []
    for target, entry in sorted(entries.items()):
        original, compressed = entry.get("original"), entry.get("compressed")
        images = next((a["num_images"] for a in (compressed, original) if a), None)
        rows.append([target, entry.get("backend") or "n/a", entry.get("precision") or "n/a",
                     entry.get("device") or "n/a", _pct(original["top1"]) if original else "n/a",
                     _pct(compressed["top1"]) if compressed else "n/a",
                     f"{images:,}" if images is not None else "n/a"])
    return ["<h3>Accuracy measured on device agents</h3><p class='d'>top-1 of the artifact each agent built and "
            "ran (its backend and precision), on the first images of the evaluation split.</p>",
            _table(["target", "backend", "precision", "device", "original top-1", "compressed top-1", "images"],
                   rows)]


# --- plots --------------------------------------------------------------------------------------

def _plots(report: dict) -> list[str]:
    figures = []
    if report["layers"]:
        figures.append(_figure(_plot_widths(report["layers"]), "Kept vs original width per layer"))
    figures.append(_figure(_plot_accuracy(report["accuracy"]), "Accuracy per stage"))
    if any(r.get("p50_ms") for r in report.get("latency", [])):
        figures.append(_figure(_plot_latency(report["latency"]), "Latency before and after, per target and batch"))
    if report.get("latency_search"):
        budget = report["spec"]["compress"]["prune"].get("latency_budget_ms")
        figures.append(_figure(_plot_search(report["latency_search"], budget), "Latency-budget search: the probes"))
    if report["criterion"].get("blocks"):
        figures.append(_figure(_plot_blocks(report["criterion"]["blocks"]), "Probe gain per block"))
    return figures


def _new_figure(width: float, height: float = 3.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.subplots()


def _plot_widths(layers: list[dict]):
    layers = sorted(layers, key=lambda item: _natural(item["layer"]))
    fig, ax = _new_figure(max(7.0, 0.32 * len(layers) + 2))
    x = np.arange(len(layers))
    ax.bar(x, [item["original"] for item in layers], color=_ORIGINAL, label="original")
    ax.bar(x, [item["kept"] for item in layers], width=0.55, color=_COMPRESSED, label="kept")
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
    ax.bar(x - 0.2, top1, 0.4, color=_COMPRESSED, label="top-1")
    ax.bar(x + 0.2, [accuracy[s]["top5"] for s in stages], 0.4, color=_ORIGINAL, label="top-5")
    for xi, value in zip(x, top1):
        ax.annotate(f"{value:.2%}", (xi - 0.2, value), ha="center", va="bottom", fontsize=8)
    ax.axhline(top1[0], color=_MUTED, lw=0.8, ls="--")
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
    ax.bar(x - 0.2, orig, 0.4, color=_ORIGINAL, label="original p50")
    ax.bar(x + 0.2, comp, 0.4, color=_COMPRESSED, label="compressed p50")
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


def _plot_search(probes: list[dict], budget: float | None):
    fig, ax = _new_figure(7.0)
    points = [(p["reduction"], p.get("latency_ms", p.get("p90_ms")), p.get("meets_goal", p.get("meets_budget")))
              for p in probes]
    points = [p for p in points if p[1] is not None]
    ax.plot([p[0] for p in sorted(points)], [p[1] for p in sorted(points)], color=_MUTED, lw=0.8)
    for i, (r, ms, ok) in enumerate(points):
        ax.scatter([r], [ms], color=_PASS if ok else _FAIL, zorder=3)
        ax.annotate(str(i + 1), (r, ms), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if budget is not None:
        ax.axhline(budget, color=_FAIL, ls="--", lw=1, label=f"budget {budget:g} ms")
        ax.legend(frameon=False)
    ax.set_xlabel("MACs reduction (probe order numbered)")
    ax.set_ylabel("p90 latency (ms)")
    return fig


def _plot_blocks(blocks: list[dict]):
    blocks = sorted(blocks, key=lambda b: _natural(b["block"]))
    fig, ax = _new_figure(max(7.0, 0.4 * len(blocks) + 2))
    x = np.arange(len(blocks))
    ax.bar(x, [_gain(b) for b in blocks], color=[_FAIL if b["removed"] else _COMPRESSED for b in blocks])
    ax.axhline(0, color=_MUTED, lw=0.8)
    ax.set_xticks(x, [b["block"] for b in blocks], rotation=60 if len(blocks) > 6 else 0,
                  ha="right" if len(blocks) > 6 else "center", fontsize=8)
    ax.set_ylabel("probe accuracy gain")
    ax.set_title("red: removed", fontsize=9, color=_FAIL)
    return fig


def _figure(fig, caption: str) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    wide = ' class="wide"' if fig.get_figwidth() > 8 else ""
    return (f'<figure{wide}><img src="{_data_uri(buffer.getvalue())}" alt="{_e(caption)}">'
            f'<figcaption>{_e(caption)}</figcaption></figure>')


# --- blocks and layers --------------------------------------------------------------------------

def _gain(block: dict) -> float:
    gain = block.get("reason", {}).get("gain")
    return float(gain if gain is not None else block["score"])


def _blocks(blocks: list[dict]) -> str:
    rows = []
    for b in sorted(blocks, key=lambda b: _natural(b["block"])):
        reason = dict(b.get("reason", {}))
        probe, prev = reason.pop("probe_accuracy", None), reason.pop("previous_accuracy", None)
        reason.pop("gain", None)
        rows.append([b["block"], "removed" if b["removed"] else "kept", _num(_gain(b)),
                     _pct(probe) if probe is not None else "", _pct(prev) if prev is not None else "",
                     _num(b["score"]), _reason_text(reason)])
    removed = sum(b["removed"] for b in blocks)
    return (f"<p>{removed} of {len(blocks)} candidate blocks removed. The gain is the accuracy of a linear probe on "
            "the block's output minus that on its input (held-out calibration images); blocks that add little "
            "go first.</p>"
            + _table(["block", "", "probe gain", "probe accuracy", "previous", "score", "details"], rows,
                     row_class=lambda row: "removed" if row[1] == "removed" else ""))


def _layers(report: dict, out_dir: Path, images: dict[str, np.ndarray]) -> str:
    grids = report.get("files", {}).get("visualizations", {})
    parts = [f"<p>Criterion <b>{_e(report['criterion']['name'])}</b>: a higher score means more important; "
             "the lowest-scoring filters of each layer were removed. Each removed filter is listed with the "
             "criterion's reason.</p>"]
    for group in sorted(report["criterion"]["groups"], key=lambda g: _natural(g["layer"])):
        layer, channels = group["layer"], group["channels"]
        removed = [c for c in channels if not c["kept"]]
        vis = images.get(layer)
        if vis is not None and len(vis) != len(channels):
            vis = None
        content = []
        if vis is not None:
            content.append(_kept_and_removed(vis, channels))
        elif layer in grids and (out_dir / grids[layer]).is_file():
            uri = _data_uri((out_dir / grids[layer]).read_bytes())
            content.append(f'<figure><img class="grid" src="{uri}" alt="activation maximization of {_e(layer)}">'
                           "<figcaption>all filters in index order, row by row (kept and removed together)"
                           "</figcaption></figure>")
        if removed:
            rows = [[f"#{c['index']}", _num(c["score"]), _headline(c["reason"]), _reason_text(c["reason"])]
                    for c in sorted(removed, key=lambda c: c["score"])]
            table = _table(["filter", "score", "why", "reason (all fields)"], rows)
            content.append(_details("every field of each removed filter's reason", table) if vis is not None
                           else table)
        kept = len(channels) - len(removed)
        summary = (f"<code>{_e(layer)}</code> — kept {kept} of {len(channels)}, removed {len(removed)}"
                   + (f" (lowest score kept {_num(min(c['score'] for c in channels if c['kept']))})"
                      if removed and kept else ""))
        parts.append(_details(summary, "\n".join(content) or "<p>nothing removed</p>", raw_summary=True,
                              open_=vis is not None))
    return "\n".join(parts)


def _kept_and_removed(vis: np.ndarray, channels: list[dict]) -> str:
    kept = [c["index"] for c in channels if c["kept"]]
    removed = sorted((c for c in channels if not c["kept"]), key=lambda c: c["score"])
    scale = max(1, math.ceil(48 / vis.shape[2]))
    left = (f'<div class="col"><h4>kept ({len(kept)})</h4>'
            f'<img class="grid" src="{_data_uri(_png(_mosaic(vis[kept], scale)))}" alt="kept filters">'
            f'<p class="d">row by row: {_e(", ".join(f"#{k}" for k in kept))}</p></div>' if kept else "")
    cards = "".join(_removed_card(vis, c, scale) for c in removed)
    right = (f'<div class="col"><h4>removed ({len(removed)})</h4><p class="d">lowest score first; red frame: the '
             f'removed filter, green frame: the filter its reason names</p><div class="tiles">{cards}</div></div>')
    return f'<div class="pair">{left}{right}</div>'


def _removed_card(vis: np.ndarray, channel: dict, scale: int) -> str:
    """A removed filter's image, beside the image of the filter it duplicates when the reason names one."""
    index, partner = channel["index"], _partner(channel["reason"])
    tiles = [index] + ([partner] if partner is not None and 0 <= partner < len(vis) else [])
    images = "".join(f'<img src="{_data_uri(_png(_mosaic(vis[[k]], scale, pad=0)))}" alt="filter {k}" '
                     f'title="filter #{k}">' for k in tiles)
    return (f'<figure class="tile{" two" if len(tiles) > 1 else ""}">{images}<figcaption><b>#{index}</b> '
            f'{_num(channel["score"])}<br>{_e(_headline(channel["reason"]))}</figcaption></figure>')


def _partner(reason: dict) -> int | None:
    """The filter a removed one duplicates or resembles, from the criterion's reason (None if it names none)."""
    if reason.get("representative") is not None and not reason.get("is_representative", True):
        return int(reason["representative"])
    if reason.get("partner") is not None and not reason.get("is_root", False):
        return int(reason["partner"])
    if reason.get("most_similar") is not None and not reason.get("why"):
        return int(reason["most_similar"])
    return None


def _headline(reason: dict) -> str:
    """The one reason a person reads first, from whatever fields the criterion gave."""
    if reason.get("why"):
        return str(reason["why"])
    if reason.get("representative") is not None and not reason.get("is_representative", True):
        return f"duplicates #{reason['representative']} (cluster {reason.get('cluster')})"
    if reason.get("partner") is not None and not reason.get("is_root", False):
        return f"duplicate of #{reason['partner']}"
    if reason.get("most_similar") is not None:
        return f"similar to #{reason['most_similar']} ({_num(reason.get('similarity'))})"
    if "votes" in reason:
        return f"{reason['votes']} of {reason.get('voters', '?')} votes"
    if "gain" in reason:
        return f"probe gain {_num(reason['gain'])}"
    if len(reason) == 1:
        key, value = next(iter(reason.items()))
        return f"{key} {_num(value)}"
    return "low score"


def _reason_text(reason: dict) -> str:
    return ", ".join(f"{k}={_num(v)}" for k, v in reason.items())


# --- reproduce ----------------------------------------------------------------------------------

def _reproduce(report: dict) -> str:
    spec = report["spec"]
    command, differences = command_line(spec)
    if differences is None:
        note = "Not checked against the spec (it could not be parsed back)."
    elif differences:
        note = ("Fields without a flag keep their defaults; these differ from the spec (submit the spec instead): "
                + ", ".join(differences))
    else:
        note = "Checked: parsing this command gives back the spec below exactly."
    env_rows = [[k, v if isinstance(v, str) else json.dumps(v)] for k, v in report.get("environment", {}).items()]
    return (f"<h3>Command line</h3><pre>{_e(command)}</pre><p class='d'>{_e(note)}</p>"
            "<h3>Spec</h3><p class='d'><code>JobSpec.from_dict(json.load(open('report.json'))['spec'])</code> "
            "rebuilds it.</p>"
            f"<pre>{_e(json.dumps(spec, indent=2))}</pre><h3>Environment</h3>" + _table(["", ""], env_rows))


def command_line(spec: dict) -> tuple[str, list[str] | None]:
    """The ``interprune compress`` command for ``spec`` and the spec fields it cannot reproduce (``[]`` when
    parsing it gives back ``spec`` exactly; ``None`` when that could not be checked)."""
    import argparse

    from pipeline.flags import add_spec_arguments, argv_from_spec, spec_from_args

    argv = ["interprune", "compress", *argv_from_spec(spec), "--out", "OUT"]
    try:
        parser = argparse.ArgumentParser(add_help=False)
        add_spec_arguments(parser)
        parser.add_argument("--out")
        parsed = spec_from_args(parser.parse_args(argv[2:])).to_dict()
        differences = _diff(json.loads(json.dumps(parsed)), json.loads(json.dumps(spec)))   # tuples -> lists
    except Exception:   # noqa: BLE001 — the page must render whatever the spec holds
        differences = None
    return shlex.join(argv), differences


def _diff(got, want, path: str = "") -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        return [d for k in sorted(set(got) | set(want)) for d in _diff(got.get(k), want.get(k), f"{path}.{k}")]
    if isinstance(want, float) or isinstance(got, float):
        same = isinstance(got, (int, float)) and isinstance(want, (int, float)) and math.isclose(got, want,
                                                                                                  rel_tol=1e-9)
        return [] if same else [path.lstrip(".")]
    return [] if got == want else [path.lstrip(".")]


# --- small helpers ------------------------------------------------------------------------------

def _as_images(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    images = np.asarray(value, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"visualizations must be [K, C, H, W], got shape {images.shape}")
    return images


def _mosaic(images: np.ndarray, scale: int, pad: int = 1):
    """Images [N, C, H, W] (each contrast-stretched) as one PIL image, about square, ``scale``× nearest."""
    from PIL import Image

    n, c, h, w = images.shape
    flat = images.reshape(n, -1)
    lo, hi = flat.min(1)[:, None, None, None], flat.max(1)[:, None, None, None]
    stretched = np.where(hi - lo > 1e-8, (images - lo) / np.maximum(hi - lo, 1e-8), 0.5)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.float32)
    for k in range(n):
        top, left = pad + (k // cols) * (h + pad), pad + (k % cols) * (w + pad)
        grid[top:top + h, left:left + w] = stretched[k].transpose(1, 2, 0)
    pixels = (grid.clip(0, 1) * 255).round().astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if c == 1 else pixels[..., :3])
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(header: list[str], rows: Iterable[list], row_class=None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(f'<tr class="{row_class(row) if row_class else ""}">' + "".join(f"<td>{_e(v)}</td>" for v in row)
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _details(summary: str, content: str, raw_summary: bool = False, open_: bool = False) -> str:
    return (f"<details{' open' if open_ else ''}><summary>{summary if raw_summary else _e(summary)}</summary>"
            f"{content}</details>")


def _section(title: str, content: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return f'<section id="{slug}"><h2>{_e(title)}</h2>\n{content}\n</section>'


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _pct(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}%}"


def _pts(value: float, signed: bool = False) -> str:
    return f"{value * 100:{'+' if signed else ''}.2f} pts"


def _num(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:0 auto;
 max-width:1200px;padding:0 24px 48px}
header{border-bottom:1px solid #d0d7de;padding:16px 0}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:18px 0 6px}h4{margin:4px 0;font-size:13px}
.verdict{display:inline-block;color:#fff;font-weight:700;padding:6px 14px;border-radius:6px;font-size:16px}
.sub{color:#57606a}.d{color:#57606a;font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-top:12px}
.card{border:1px solid #d0d7de;border-radius:8px;padding:8px 14px;min-width:160px}
.card .k{color:#57606a;font-size:12px;text-transform:uppercase}.card .v{font-size:20px;font-weight:600}
.card .d{max-width:260px}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;border-radius:6px}
.note{color:#57606a}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}tr.removed td{background:#ffebe9}tr.unstable td{background:#fff8c5}
figure{margin:12px 0}figure img{max-width:100%;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:12px}
details{margin:6px 0;border:1px solid #d0d7de;border-radius:6px;padding:4px 10px}
summary{cursor:pointer}
.pair{display:flex;gap:24px;align-items:flex-start}.col{flex:1}
img.grid,.tile img{image-rendering:pixelated}
.tiles{display:flex;flex-wrap:wrap;gap:8px}.tile{margin:0;width:110px;font-size:11px}
.tile.two{width:150px}.tile img{margin-right:4px;border-color:#cf222e}.tile img+img{border-color:#1a7f37}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:8px}.plots .wide{grid-column:1/-1}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:12px;white-space:pre-wrap}
"""
