"""``moesd calibrate``: fit one GPU from kernel traces, write its spec and an HTML report."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import plotly.express as px
import yaml

from . import calibration, gpu as gpu_mod, htmlreport
from .atomic import write_text
from .paths import GPU_SPECS_DIR


def run(traces_dir, gpu_name: str, report_path=None, log=print, write: bool = True) -> dict:
    """Fit ``gpu_name`` from ``traces_dir``; with ``write`` replace its spec's calibration."""
    hw = gpu_mod.load(gpu_name)
    calib, residuals, rows = calibration.calibrate_gpu(traces_dir, hw, progress=lambda op: log(f"  fitted {op}"))
    if not write:
        if report_path:
            write_report(report_path, gpu_name, rows)
        return calib
    res_path = GPU_SPECS_DIR / "calibration" / f"{gpu_name}_residuals.parquet"
    calib["residuals_file"] = f"calibration/{res_path.name}"
    spec_file = gpu_mod.spec_path(gpu_name)
    data = yaml.safe_load(spec_file.read_text())
    data["calibration"] = _plain(calib)
    gpu_mod.Hardware.model_validate(data)  # validate before anything is replaced
    res_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    residuals.to_parquet(buf, index=False)
    tmp = res_path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(res_path)
    write_text(spec_file, yaml.safe_dump(data, sort_keys=False, width=120))
    if report_path:
        write_report(report_path, gpu_name, rows)
    return calib


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    return obj


def write_report(path, gpu_name: str, rows: pd.DataFrame) -> None:
    rows = rows.copy()
    rows["error_pct"] = (rows.predicted_ms / rows.latency_ms - 1) * 100
    sections = []
    summary = rows.groupby("op").error_pct.agg(
        median_abs=lambda e: np.median(np.abs(e)), p90_abs=lambda e: np.percentile(np.abs(e), 90), rows="size")
    sections.append(("Roofline fit error (in-sample, %)", summary.round(2).to_html()))
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
    htmlreport.write(path, f"Calibration of {gpu_name}", sections)
