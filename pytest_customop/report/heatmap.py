"""Where in a tensor a gradient disagrees: |got - expected| per element, max-pooled to a small 2-D grid
(builtins, so it travels in the report and in pytest-xdist's reports), and that grid as an inline SVG.

A backward wrong only on a border row, on every other element or on one channel shows its shape at a
glance. The grid is computed where a check compares element by element (``difference_grid``, the only
part that needs torch, imported lazily); rendering is pure text.
"""

from __future__ import annotations

import html
import math
from typing import Any, Optional

__all__ = ["MAX_SIDE", "difference_grid", "finding_heatmap", "heatmap_svg"]

#: The grid's largest side: larger tensors are max-pooled down to it (the worst element of each block).
MAX_SIDE = 32
#: Below this share of the worst difference an element is drawn white: finite differences' own rounding
#: (1e-10 next to an error of 1) is not a pattern.
_AGREES = 1e-3


def _round(value: float) -> Optional[float]:
    if not math.isfinite(value):
        return None  # NaN or inf: JSON has no such number; drawn black
    return float(f"{value:.4g}")


def difference_grid(got: Any, expected: Any, input_name: Optional[str] = None) -> Optional[dict[str, Any]]:
    """``{"input", "shape", "grid"}``: |got - expected| of two same-shaped tensors (None counts as zeros),
    seen as 2-D (rows = every leading dimension flattened, columns = the last one) and max-pooled to at
    most ``MAX_SIDE`` x ``MAX_SIDE``. None when there is nothing to draw."""
    import torch

    reference = expected if expected is not None else got
    if reference is None or reference.numel() == 0:
        return None
    g = (got if got is not None else torch.zeros_like(reference)).detach().to("cpu")
    e = (expected if expected is not None else torch.zeros_like(reference)).detach().to("cpu")
    if g.shape != e.shape:
        try:
            g = g.expand_as(e)
        except RuntimeError:
            return None
    diff = (g.to(torch.complex128 if g.is_complex() or e.is_complex() else torch.float64) - e).abs().double()
    shape = list(e.shape)
    flat = diff.reshape(1, -1) if diff.dim() < 2 else diff.reshape(-1, diff.shape[-1])
    rows, cols = flat.shape
    target = (min(rows, MAX_SIDE), min(cols, MAX_SIDE))
    if (rows, cols) != target:
        # NaN must survive the pooling: pool a copy with NaN as inf (inf is drawn like NaN).
        marked = torch.where(torch.isnan(flat), torch.full_like(flat, math.inf), flat)
        flat = torch.nn.functional.adaptive_max_pool2d(marked[None, None], target)[0, 0]
    grid = [[_round(v) for v in row] for row in flat.tolist()]
    return {"input": input_name, "shape": shape, "grid": grid}


def finding_heatmap(result: Any) -> dict[str, Any]:
    """``{"heatmap": ...}`` from the first finding of a check result that carries one, else ``{}``."""
    for finding in getattr(result, "findings", None) or []:
        heatmap = getattr(finding, "heatmap", None)
        if heatmap:
            return {"heatmap": heatmap}
    return {}


def _colour(value: Optional[float], top: float) -> str:
    if value is None:
        return "#000"
    share = value / top if top > 0 else 0.0
    if share < _AGREES:
        return "#fff"
    # pale (small) to deep red (the worst element)
    green_blue = round(230 * (1 - share) ** 1.5)
    return f"rgb(255,{green_blue},{green_blue})"


def heatmap_svg(heatmap: dict[str, Any], cell_px: Optional[int] = None) -> str:
    """The grid as an inline SVG (no script, nothing fetched): one square per pooled element, white where
    got equals expected (within 0.1% of the worst difference), red as |got - expected| nears its maximum, black for NaN/inf; each square's
    tooltip gives its place and value."""
    grid = heatmap.get("grid") or []
    rows, cols = len(grid), max((len(row) for row in grid), default=0)
    if not rows or not cols:
        return ""
    finite = [v for row in grid for v in row if v is not None]
    top = max(finite, default=0.0)
    size = cell_px or max(4, min(24, 256 // max(rows, cols)))
    shape = "x".join(str(n) for n in heatmap.get("shape", [])) or "scalar"
    name = heatmap.get("input") or "input"
    label = f"|got - expected| of {name} ({shape}), max {top:.3g}"
    out = [
        f'<svg class="heatmap" width="{cols * size}" height="{rows * size}" '
        f'viewBox="0 0 {cols * size} {rows * size}" role="img" aria-label="{html.escape(label)}">',
        f"<title>{html.escape(label)}</title>",
        f'<rect width="{cols * size}" height="{rows * size}" fill="#fff" stroke="#999"/>',
    ]
    for r, row in enumerate(grid):
        for c, value in enumerate(row):
            text = "NaN/inf" if value is None else f"{value:.4g}"
            out.append(
                f'<rect x="{c * size}" y="{r * size}" width="{size}" height="{size}" fill="{_colour(value, top)}" '
                f'stroke="#ddd" stroke-width="0.5"><title>[{r}, {c}] {text}</title></rect>'
            )
    out.append("</svg>")
    return "".join(out)
