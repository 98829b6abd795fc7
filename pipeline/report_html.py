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

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pipeline.html_parts import (FAIL_COLOUR, MUTED_COLOUR, PASS_COLOUR, STAGES, as_images, block_gain, data_uri,
                                 escape, html_details, html_section, html_table, mosaic, natural, number, pct, pts,
                                 size_text, to_png)
from pipeline.report_plots import plots
from pipeline.report_reproduce import command_line, reproduce  # noqa: F401 - command_line is part of this API



def render_html(report: dict, out_dir: Path, visualizations: Mapping[str, Any] | None = None) -> str:
    """The page for ``report`` (a ``report.json`` dict). ``out_dir`` is the job folder (for the grids saved under
    ``visualizations/``); ``visualizations`` maps a layer to its activation-maximization images [K, C, H, W] in
    [0, 1] (numpy or torch), which lets the page show kept and removed filters apart."""
    images = {layer: as_images(v) for layer, v in (visualizations or {}).items()}
    crit = report["criterion"]
    title = f"interprune · {report['model']['arch']} · {crit['name']}"
    body = [
        _header(report, title),
        html_section("Summary", _summary(report)),
        html_section("Plots", f'<div class="plots">{"".join(plots(report))}</div>'),
    ]
    if crit.get("blocks"):
        body.append(html_section("Removed blocks (layer pruning)", _blocks(crit["blocks"])))
    if crit.get("groups"):
        body.append(html_section("Pruned layers: what was removed and why",
                             _layers(report, Path(out_dir), images)))
    body.append(html_section("Reproduce this run", reproduce(report)))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n<body>\n" + "\n".join(body)
            + "\n</body></html>\n")


# --- header and summary -------------------------------------------------------------------------

def _header(report: dict, title: str) -> str:
    gate, acc, cost, red = report["gate"], report["accuracy"], report["cost"], report["reduction"]
    final = report["final_stage"]
    if gate.get("max_accuracy_drop") is None:
        verdict = f'<span class="verdict" style="background:{MUTED_COLOUR}">NO QUALITY GATE</span>'
        rule = "no maximum accuracy drop was set"
    else:
        ok = gate["passed"]
        verdict = (f'<span class="verdict" style="background:{PASS_COLOUR if ok else FAIL_COLOUR}">'
                   f'QUALITY GATE {"PASSED" if ok else "FAILED"}</span>')
        rule = f"top-1 drop {pts(gate['accuracy_drop'])} (allowed {pts(gate['max_accuracy_drop'])})"
    cards = [
        ("top-1", f"{pct(acc['original']['top1'])} → {pct(acc[final]['top1'])}", f"{final}; {rule}"),
        ("MACs", f"−{pct(red['macs'], 1)}", f"{cost['original']['macs']:,} → {cost['compressed']['macs']:,} "
                                              f"(ratio {red['macs_ratio']:.2f}×)"),
        ("parameters", f"−{pct(red['params'], 1)}",
         f"{cost['original']['params']:,} → {cost['compressed']['params']:,}"),
        ("size", f"{size_text(cost['original']['size_bytes'])} → {size_text(cost['compressed']['size_bytes'])}",
         "float32 weights"),
    ]
    budget = report.get("latency_budget")
    if budget:
        achieved = budget.get("achieved_p90_ms")
        cards.append(("latency budget", ("MET" if budget["met"] else "NOT MET") + (
            f": p90 {achieved:.3g} ms" if achieved is not None else ""),
            f"budget {budget['budget_ms']:g} ms, batch {budget['batch_size']}, {budget['target']}"
            + ("; not stable" if budget.get("stable") is False else "")))
    allocated = report.get("latency_allocation")
    if allocated:
        final = allocated.get("final_p90_ms")
        cards.append(("latency (table)", f"p90 {allocated['predicted_ms']:.3g} ms predicted",
                      f"measured {allocated['measured_ms']:.3g} ms"
                      + (f" (-{allocated['measured_reduction']:.1%})" if "measured_reduction" in allocated else "")
                      + (f", final benchmark {final:.3g} ms" if final is not None else "")
                      + f"; unpruned {allocated['original_ms']:.3g} ms, batch {allocated['batch_size']}, "
                        f"{allocated['target']}"
                      + (f"; {len(allocated['removed_blocks'])} block(s) removed whole"
                         if allocated.get("removed_blocks") else "")))
    speed = next((s for s in report.get("speedup", []) if s.get("measured_speedup")), None)
    if speed:
        cards.append(("measured speedup", f"{speed['measured_speedup']:.2f}×",
                      f"{speed['target']}, batch {speed['batch_size']}, p50; MACs predict {speed['macs_ratio']:.2f}×"))
    items = "".join(f'<div class="card"><div class="k">{escape(k)}</div><div class="v">{escape(v)}</div>'
                    f'<div class="d">{escape(d)}</div></div>' for k, v, d in cards)
    warnings = "".join(f'<p class="warn">{escape(t)}: not measured: {escape(msg)}</p>'
                       for t, msg in report.get("target_errors", {}).items())
    notes = "".join(f'<p class="warn">warning: {escape(w)}</p>' for w in report.get("warnings", []))
    notes += "".join(f'<p class="note">{escape(n)}</p>' for n in report.get("notes", []))
    crit = report["criterion"]
    what = f"criterion <b>{escape(crit['name'])}</b>"
    if crit.get("layer_criterion"):
        what += f" after block criterion <b>{escape(crit['layer_criterion'])}</b>"
    what += (f", target −{pct(crit['target']['reduction'], 0)} {escape(crit['target']['metric'])}, "
             f"{escape(crit['allocation'])} allocation")
    narrowed = sum(layer["kept"] < layer["original"] for layer in report["layers"])
    return (f'<header><h1>{escape(title)}</h1>{verdict}<p class="sub">{what}; {narrowed} layers narrowed, '
            f'{len(report.get("removed_blocks", []))} blocks removed</p>'
            f'<p class="sub">model: {escape(model_origin(report["model"].get("source") or {}))}</p>'
            f'<div class="cards">{items}</div>{warnings}{notes}</header>')


def model_origin(source: dict) -> str:
    """Where the compressed model came from, in one line (the plan's ``source`` record)."""
    kind = source.get("kind", "zoo")
    if kind == "onnx":
        check = source.get("conversion_check") or {}
        checked = (f"; converted to PyTorch, max relative difference from ONNX Runtime "
                   f"{check['max_rel_error']:.1e}" if "max_rel_error" in check else "")
        return (f"ONNX file {source.get('file_name', '?')} (sha256 {str(source.get('sha256', ''))[:12]}…, opset "
                f"{source.get('opset', '?')}{', by ' + source['producer'] if source.get('producer') else ''}){checked}")
    if kind == "python":
        kwargs = source.get("kwargs") or {}
        return (f"factory {source.get('arch', '?')}"
                + (f"({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})" if kwargs else "()")
                + (f", package version {source['package_version']}" if source.get("package_version") else ""))
    if kind == "timm":
        return f"{source.get('arch', '?')}" + (f" (timm {source['timm_version']})" if source.get("timm_version") else "")
    return f"zoo architecture {source.get('arch', '?')}"


def _summary(report: dict) -> str:
    acc, base = report["accuracy"], report["accuracy"]["original"]["top1"]
    rows = [[stage, pct(a["top1"]), pct(a["top5"]), f"{a['num_images']:,}",
             "" if stage == "original" else pts(a["top1"] - base, signed=True)]
            for stage in STAGES if (a := acc.get(stage))]
    parts = ["<h3>Accuracy (evaluation split)</h3>",
             html_table(["stage", "top-1", "top-5", "images", "Δ top-1"], rows)]
    cost, red = report["cost"], report["reduction"]
    parts += ["<h3>Cost</h3>", html_table(["", "original", "compressed", "removed"], [
        ["MACs", f"{cost['original']['macs']:,}", f"{cost['compressed']['macs']:,}", pct(red["macs"], 1)],
        ["parameters", f"{cost['original']['params']:,}", f"{cost['compressed']['params']:,}",
         pct(red["params"], 1)],
        ["size", size_text(cost["original"]["size_bytes"]), size_text(cost["compressed"]["size_bytes"]),
         pct(1 - cost["compressed"]["size_bytes"] / max(cost["original"]["size_bytes"], 1), 1)]])]
    parts += _latency_summary(report)
    parts += _target_accuracy(report)
    export = report.get("export") or {}
    if export:
        onnx, parity = export["onnx"], export["parity"]
        relative = parity.get("max_rel_error")
        parts += ["<h3>ONNX export</h3>", html_table(["opset", "file", "sha256", "parity max abs error", "tolerance",
                                                  "relative to the largest output", "top-1 agreement"], [[
            onnx.get("opset"), size_text(onnx.get("size_bytes", 0)), str(onnx.get("sha256", ""))[:16] + "…",
            f"{parity['max_abs_error']:.2e}", f"{export['parity_atol']:.0e}",
            "n/a" if relative is None else f"{relative:.1e}" + (
                f" (tolerance {export['parity_rtol']:.0e})" if export.get("parity_rtol") else ""),
            pct(parity["top1_agreement"]) if parity.get("top1_agreement") is not None else "n/a"]])]
    ft = report.get("finetune")
    if ft:
        best = ft.get("best_val_top1")
        parts.append(f"<p>Fine-tuning: {ft['steps']} steps, {ft['images_seen']:,} images, {ft['seconds']:.1f} s, "
                     f"stopped by {escape(ft['stopped_by'])}"
                     + (f", best validation top-1 {pct(best)}" if best is not None else "")
                     + (f"; weights returned: {escape(ft['returned'])}" if ft.get("returned") else "") + ".</p>")
    if report.get("reconstruction"):
        fits = [[f["name"], f.get("inputs", ""), f.get("samples", ""), f"{f['error_before']:.4f}",
                 f"{f['error_after']:.4f}"] for f in report["reconstruction"]]
        parts.append(html_details(f"Kernel reconstruction: {len(fits)} consumer layers re-fitted",
                              html_table(["layer", "inputs", "samples", "rel. error before", "after"], fits)))
    timings = [[k, f"{v:.1f}"] for k, v in report.get("timings", {}).items()]
    parts.append(html_details(f"Timings: {sum(v for v in report.get('timings', {}).values()):.0f} s in all",
                          html_table(["stage", "seconds"], timings)))
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
    parts = [f"<h3>Latency per target and batch</h3><p class='d'>ms per batch, p50 / p90; {escape(device)}; "
             "the measured speedup is original p50 / compressed p50, the MACs ratio is what the MAC count alone "
             "predicts.</p>",
             html_table(["target", "batch", "original", "compressed", "measured speedup", "MACs ratio",
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
                     entry.get("device") or "n/a", pct(original["top1"]) if original else "n/a",
                     pct(compressed["top1"]) if compressed else "n/a",
                     f"{images:,}" if images is not None else "n/a"])
    return ["<h3>Accuracy measured on device agents</h3><p class='d'>top-1 of the artifact each agent built and "
            "ran (its backend and precision), on the first images of the evaluation split.</p>",
            html_table(["target", "backend", "precision", "device", "original top-1", "compressed top-1", "images"],
                   rows)]


# --- blocks and layers --------------------------------------------------------------------------

def _blocks(blocks: list[dict]) -> str:
    rows = []
    for b in sorted(blocks, key=lambda b: natural(b["block"])):
        reason = dict(b.get("reason", {}))
        probe, prev = reason.pop("probe_accuracy", None), reason.pop("previous_accuracy", None)
        reason.pop("gain", None)
        rows.append([b["block"], "removed" if b["removed"] else "kept", number(block_gain(b)),
                     pct(probe) if probe is not None else "", pct(prev) if prev is not None else "",
                     number(b["score"]), _reason_text(reason)])
    removed = sum(b["removed"] for b in blocks)
    window = next((b["reason"]["window"] for b in blocks if "window" in b.get("reason", {})), None)
    order = ("blocks that add little go first." if window is None else
             f"at each removal, among the {window:.0%} of the remaining blocks with the lowest gain, the one whose "
             "skip costs least once the next two layers are re-fitted (skip_loss: the logits' squared error) "
             "went first; the score is that order.")
    return (f"<p>{removed} of {len(blocks)} candidate blocks removed. The gain is the accuracy of a linear probe on "
            "the block's output minus that on its input (held-out calibration images); " + order + "</p>"
            + html_table(["block", "", "probe gain", "probe accuracy", "previous", "score", "details"], rows,
                     row_class=lambda row: "removed" if row[1] == "removed" else ""))


def _layers(report: dict, out_dir: Path, images: dict[str, np.ndarray]) -> str:
    grids = report.get("files", {}).get("visualizations", {})
    parts = [f"<p>Criterion <b>{escape(report['criterion']['name'])}</b>: a higher score means more important; "
             "the lowest-scoring filters of each layer were removed. Each removed filter is listed with the "
             "criterion's reason.</p>"]
    for group in sorted(report["criterion"]["groups"], key=lambda g: natural(g["layer"])):
        layer, channels = group["layer"], group["channels"]
        removed = [c for c in channels if not c["kept"]]
        vis = images.get(layer)
        if vis is not None and len(vis) != len(channels):
            vis = None
        content = []
        if vis is not None:
            content.append(_kept_and_removed(vis, channels))
        elif layer in grids and (out_dir / grids[layer]).is_file():
            uri = data_uri((out_dir / grids[layer]).read_bytes())
            content.append(f'<figure><img class="grid" src="{uri}" alt="activation maximization of {escape(layer)}">'
                           "<figcaption>all filters in index order, row by row (kept and removed together)"
                           "</figcaption></figure>")
        if removed:
            rows = [[f"#{c['index']}", number(c["score"]), _headline(c["reason"]), _reason_text(c["reason"])]
                    for c in sorted(removed, key=lambda c: c["score"])]
            table = html_table(["filter", "score", "why", "reason (all fields)"], rows)
            content.append(html_details("every field of each removed filter's reason", table) if vis is not None
                           else table)
        kept = len(channels) - len(removed)
        summary = (f"<code>{escape(layer)}</code> — kept {kept} of {len(channels)}, removed {len(removed)}"
                   + (f" (lowest score kept {number(min(c['score'] for c in channels if c['kept']))})"
                      if removed and kept else ""))
        parts.append(html_details(summary, "\n".join(content) or "<p>nothing removed</p>", raw_summary=True,
                              open_=vis is not None))
    return "\n".join(parts)


def _kept_and_removed(vis: np.ndarray, channels: list[dict]) -> str:
    kept = [c["index"] for c in channels if c["kept"]]
    removed = sorted((c for c in channels if not c["kept"]), key=lambda c: c["score"])
    scale = max(1, math.ceil(48 / vis.shape[2]))
    left = (f'<div class="col"><h4>kept ({len(kept)})</h4>'
            f'<img class="grid" src="{data_uri(to_png(mosaic(vis[kept], scale)))}" alt="kept filters">'
            f'<p class="d">row by row: {escape(", ".join(f"#{k}" for k in kept))}</p></div>' if kept else "")
    cards = "".join(_removed_card(vis, c, scale) for c in removed)
    right = (f'<div class="col"><h4>removed ({len(removed)})</h4><p class="d">lowest score first; red frame: the '
             f'removed filter, green frame: the filter its reason names</p><div class="tiles">{cards}</div></div>')
    return f'<div class="pair">{left}{right}</div>'


def _removed_card(vis: np.ndarray, channel: dict, scale: int) -> str:
    """A removed filter's image, beside the image of the filter it duplicates when the reason names one."""
    index, partner = channel["index"], _partner(channel["reason"])
    tiles = [index] + ([partner] if partner is not None and 0 <= partner < len(vis) else [])
    images = "".join(f'<img src="{data_uri(to_png(mosaic(vis[[k]], scale, pad=0)))}" alt="filter {k}" '
                     f'title="filter #{k}">' for k in tiles)
    return (f'<figure class="tile{" two" if len(tiles) > 1 else ""}">{images}<figcaption><b>#{index}</b> '
            f'{number(channel["score"])}<br>{escape(_headline(channel["reason"]))}</figcaption></figure>')


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
    """The one reason a person reads first, from whatever fields the criterion gave, and, when the re-fit picked
    the unit among those the criterion nominated, how much of its signal the kept units recover."""
    refit = reason.get("refit")
    if isinstance(refit, dict) and refit.get("recovered") is not None:
        taker = f", mostly by #{refit['absorbed_by']}" if refit.get("absorbed_by") is not None else ""
        return f"{_own_headline(reason)}; {float(refit['recovered']):.0%} recovered by the kept units{taker}"
    return _own_headline(reason)


def _own_headline(reason: dict) -> str:
    if reason.get("why"):
        return str(reason["why"])
    if reason.get("representative") is not None and not reason.get("is_representative", True):
        return f"duplicates #{reason['representative']} (cluster {reason.get('cluster')})"
    if reason.get("partner") is not None and not reason.get("is_root", False):
        return f"duplicate of #{reason['partner']}"
    if reason.get("most_similar") is not None:
        return f"similar to #{reason['most_similar']} ({number(reason.get('similarity'))})"
    if "votes" in reason:
        return f"{reason['votes']} of {reason.get('voters', '?')} votes"
    if "gain" in reason:
        return f"probe gain {number(reason['gain'])}"
    if "probe_reliance" in reason:
        return (f"held-out log-loss of the layer's probe +{number(reason['probe_reliance'])} without it "
                f"(probe accuracy {float(reason.get('probe_accuracy', 0.0)):.0%})")
    if len(reason) == 1:
        key, value = next(iter(reason.items()))
        return f"{key} {number(value)}"
    return "low score"


def _reason_text(reason: dict) -> str:
    return ", ".join(f"{k}={number(v)}" for k, v in reason.items())


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
