"""Offline interactive HTML reports: plotly.js inlined once, figures as divs."""

from __future__ import annotations

import html

import numpy as np

import plotly.offline
from plotly.graph_objs import Figure

from ..common.atomic import write_text


# marks a file as this tool's, so a later run may replace it (and nothing else)
GENERATOR = "<meta name='generator' content='moesd'>"


STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:0 1em}"
         " .tbl{overflow-x:auto;max-width:100%} table{border-collapse:collapse}"
         " td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} th{background:#f4f4f4}"
         " td:first-child,th:first-child{text-align:left}")
_UNITS = ("", "K", "M", "G", "T", "P")


def fmt(v, unit: str = "") -> str:
    """A value for a report table: bytes in KB/MB/GB (decimal), other floats to 4 significant digits."""
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return str(v)
    if not np.isfinite(v):
        return "-"
    if unit == "bytes":
        i = 0
        while abs(v) >= 1000 and i < len(_UNITS) - 1:
            v, i = v / 1000, i + 1
        return f"{v:.3g} {_UNITS[i]}B"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return f"{v:.4g}"


def table(header: list[str], rows: list) -> str:
    """An HTML table that scrolls sideways instead of overflowing the page."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<div class='tbl'><table><tr>{head}</tr>{body}</table></div>"


def frame_table(df, units: dict | None = None, index: bool = False) -> str:
    """A DataFrame as :func:`table`, each header with its unit, values through :func:`fmt`."""
    units = units or {}
    d = df.reset_index() if index else df
    header = [f"{c} ({units[c]})" if units.get(c) else str(c) for c in d.columns]
    rows = [[fmt(v, units.get(c, "")) for c, v in zip(d.columns, r)] for r in d.itertuples(index=False)]
    return table(header, rows)


def diverging_scale(values, mid: float) -> dict:
    """Heatmap colour arguments: red below ``mid``, green above, the scale spanning the data only
    (plotly's ``zmid`` stretches it symmetrically, e.g. to -0.5 for speedups of 1-2.5)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    lo, hi = (float(v.min()), float(v.max())) if len(v) else (mid - 1, mid + 1)
    if hi - lo < 1e-9:
        lo, hi = lo - 1e-3, hi + 1e-3
    if lo >= mid:
        scale = [[0, "#ffffbf"], [1, "#1a9850"]]
    elif hi <= mid:
        scale = [[0, "#d73027"], [1, "#ffffbf"]]
    else:
        m = (mid - lo) / (hi - lo)
        scale = [[0, "#d73027"], [m, "#ffffbf"], [1, "#1a9850"]]
    return {"zmin": lo, "zmax": hi, "colorscale": scale}


def page(title: str, sections: list[tuple[str, Figure | str]]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'>{GENERATOR}<title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style>",
             f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for i, (heading, body) in enumerate(sections):
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(body, Figure):
            # legend above the plot: a right-hand legend sits on a second y axis's ticks
            body.update_layout(legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
                               margin=dict(t=60))
            parts.append(body.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{i}"))
        else:
            parts.append(body)
    parts.append("</body></html>")
    return "\n".join(parts)


def write(path, title, sections) -> None:
    write_text(path, page(title, sections))
