"""Small HTML pieces of the report: escaping, number formats, tables, sections, image mosaics as data URIs."""
from __future__ import annotations

import base64
import html
import io
import math
import re
from typing import Iterable

import numpy as np

STAGES = ("original", "pruned", "reconstructed", "finetuned", "exported")
PASS_COLOUR, FAIL_COLOUR, MUTED_COLOUR = "#1a7f37", "#cf222e", "#6e7781"
ORIGINAL_COLOUR, COMPRESSED_COLOUR = "#b6c2cf", "#2f6fb0"


def block_gain(block: dict) -> float:
    gain = block.get("reason", {}).get("gain")
    return float(gain if gain is not None else block["score"])



def as_images(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    images = np.asarray(value, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"visualizations must be [K, C, H, W], got shape {images.shape}")
    return images


def mosaic(images: np.ndarray, scale: int, pad: int = 1):
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


def to_png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def html_table(header: list[str], rows: Iterable[list], row_class=None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(f'<tr class="{row_class(row) if row_class else ""}">' + "".join(f"<td>{escape(v)}</td>" for v in row)
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_details(summary: str, content: str, raw_summary: bool = False, open_: bool = False) -> str:
    return (f"<details{' open' if open_ else ''}><summary>{summary if raw_summary else escape(summary)}</summary>"
            f"{content}</details>")


def html_section(title: str, content: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return f'<section id="{slug}"><h2>{escape(title)}</h2>\n{content}\n</section>'


def natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def escape(value) -> str:
    return html.escape("" if value is None else str(value))


def pct(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}%}"


def pts(value: float, signed: bool = False) -> str:
    return f"{value * 100:{'+' if signed else ''}.2f} pts"


def number(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def size_text(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
