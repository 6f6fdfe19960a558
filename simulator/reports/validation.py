"""The offline interactive report of one validation run (report.html)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px

from . import page


def report(path, t: pd.DataFrame, s: dict) -> None:
    fig = px.scatter(t, x="measured_throughput_tok_s", y="sim_throughput_tok_s", color="scenario", symbol="family",
                     hover_data=["case", "batch_size", "input_len", "throughput_err"], log_x=True, log_y=True)
    lo, hi = t.measured_throughput_tok_s.min() * 0.8, t.measured_throughput_tok_s.max() * 1.2
    fig.add_shape(type="line", x0=lo, y0=lo, x1=hi, y1=hi, line=dict(dash="dash", color="grey"))
    fig.update_layout(xaxis_title="measured tok/s", yaxis_title="simulated tok/s")
    err = px.bar(t, x="case", y="throughput_err", color="family")
    err.update_layout(yaxis_tickformat=".0%", xaxis_tickangle=60)
    sd = t[t.measured_speedup.notna()]
    sections = [("Measured vs simulated throughput", fig), ("Throughput error per case", err)]
    if len(sd):
        sp = px.scatter(sd, x="measured_speedup", y="sim_speedup", hover_data=["case", "acceptance_length"],
                        color="batch_size")
        sp.add_hline(y=1, line_dash="dash")
        sp.add_vline(x=1, line_dash="dash")
        sections.append(("SD speedup: measured vs simulated (same quadrant = sign right)", sp))
    summary = pd.DataFrame(s).T.rename_axis("group")
    sections.append(("Error summary (errors as fractions: 0.05 = 5%)", page.frame_table(summary, index=True)))
    cols = ["case", "family", "measured_throughput_tok_s", "sim_throughput_tok_s", "throughput_err",
            "measured_latency_s", "sim_latency_s", "latency_err", "measured_speedup", "sim_speedup", "source"]
    sections.append(("Cases", page.frame_table(t[cols], {"measured_throughput_tok_s": "tok/s",
                                                         "sim_throughput_tok_s": "tok/s", "measured_latency_s": "s",
                                                         "sim_latency_s": "s", "measured_speedup": "x",
                                                         "sim_speedup": "x"})))
    page.write(path, "moesd validate", sections)
