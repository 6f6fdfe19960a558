"""Offline interactive HTML reports: plotly.js inlined once, figures as divs."""

from __future__ import annotations

import html

import plotly.offline
from plotly.graph_objs import Figure

from ..common.atomic import write_text


# marks a file as this tool's, so a later run may replace it (and nothing else)
GENERATOR = "<meta name='generator' content='moesd'>"


def page(title: str, sections: list[tuple[str, Figure | str]]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'>{GENERATOR}<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto} table{border-collapse:collapse}"
             " td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style>",
             f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for i, (heading, body) in enumerate(sections):
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(body, Figure):
            parts.append(body.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{i}"))
        else:
            parts.append(body)
    parts.append("</body></html>")
    return "\n".join(parts)


def write(path, title, sections) -> None:
    write_text(path, page(title, sections))
