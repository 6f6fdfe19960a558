"""The offline interactive report of one GPU's calibration (calibration_<gpu>.html)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px

from ..cost import calibration
from . import page


def write_report(path, gpu_name: str, rows: pd.DataFrame) -> None:
    rows = rows.copy()
    rows["error_pct"] = (rows.predicted_ms / rows.latency_ms - 1) * 100
    sections = []
    summary = rows.groupby("op").error_pct.agg(
        median_abs=lambda e: np.median(np.abs(e)), p90_abs=lambda e: np.percentile(np.abs(e), 90), rows="size")
    sections.append(("Roofline fit error (in-sample)", page.frame_table(
        summary.rename(columns={"median_abs": "median abs error", "p90_abs": "p90 abs error"}),
        {"median abs error": "%", "p90 abs error": "%", "rows": "rows"}, index=True)))
    size_col = {"gemm": "m", "moe": "num_tokens", "attention_generation": "step", "attention_context": "isl",
                "allreduce": "message_size"}
    for op, g in rows.groupby("op"):
        g = g.sample(min(len(g), 4000), random_state=0)
        fig = px.scatter(g, x="latency_ms", y="predicted_ms", log_x=True, log_y=True, opacity=0.4,
                         hover_data=[c for c in g.columns if c in calibration.LAYOUT[op][0] + calibration.LAYOUT[op][1]
                                     + [size_col[op]]], title=f"{op}: predicted vs measured (roofline)")
        lo, hi = g.latency_ms.min(), g.latency_ms.max()
        fig.add_shape(type="line", x0=lo, y0=lo, x1=hi, y1=hi, line=dict(dash="dot"))
        sections.append((f"{op}: predicted vs measured", fig))
        by = g.assign(size=g[size_col[op]]).groupby("size").error_pct.apply(lambda e: np.median(np.abs(e))).reset_index()
        sections.append((f"{op}: median abs error by {size_col[op]}",
                         px.line(by, x="size", y="error_pct", log_x=True, markers=True)))
    page.write(path, f"Calibration of {gpu_name}", sections)
