"""The offline interactive report of one simulation (report.html)."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import page

PARTS = ["draft_s", "attention_s", "gemm_s", "moe_s", "comm_s", "overhead_s"]


def _cdf(fig, values, name):
    v = np.sort(values[~np.isnan(values)])
    if len(v):
        fig.add_trace(go.Scatter(x=v, y=np.arange(1, len(v) + 1) / len(v), name=name, mode="lines"))


def simulation_report(path, sc, summary: dict, req: pd.DataFrame, steps: pd.DataFrame) -> None:
    done = req[req.completed]
    keys = ["completed", "failed", "duration", "request_throughput", "output_throughput", "mean_ttft_ms",
            "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "spec_decode_acceptance_length",
            "target_efficiency", "mean_batch_size", "mean_active_experts_per_layer", "expert_bytes_per_output_token"]
    table = "<table>" + "".join(
        f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(round(summary[k], 4) if isinstance(summary.get(k), float) else summary.get(k)))}</td></tr>"
        for k in keys if k in summary) + "</table>"
    sections = [("Summary", f"<p>{html.escape(sc.description or sc.name)}</p>" + table)]

    fig = go.Figure()
    for col, name in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2el_s", "E2E latency")):
        _cdf(fig, done[col].values * 1e3, name)
    fig.update_layout(xaxis_title="ms", yaxis_title="fraction of requests", xaxis_type="log")
    sections.append(("Latency CDFs", fig))

    if len(steps):
        t = steps.start_s + steps.duration_s
        bins = np.linspace(0, float(t.max()) + 1e-9, 60)
        idx = np.digitize(t, bins)
        width = bins[1] - bins[0]
        tput = steps.groupby(idx).emitted_tokens.sum() / width
        bs = steps.groupby(idx).num_decode.mean()
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=bins[tput.index - 1], y=tput.values, name="output tok/s"))
        fig.add_trace(go.Scatter(x=bins[bs.index - 1], y=bs.values, name="decode batch size", yaxis="y2"))
        fig.update_layout(xaxis_title="simulated time (s)", yaxis_title="tok/s",
                          yaxis2=dict(title="batch size", overlaying="y", side="right"))
        sections.append(("Throughput and batch size over time", fig))

        by = steps.assign(b=steps.num_decode.clip(lower=0)).groupby("b")[PARTS].mean() * 1e3
        fig = go.Figure([go.Bar(x=by.index, y=by[p], name=p.replace("_s", "")) for p in PARTS])
        fig.update_layout(barmode="stack", xaxis_title="decode batch size", yaxis_title="mean step time (ms)")
        sections.append(("Step-time breakdown by batch size", fig))

        if steps.active_experts.max() > 0:
            fig = go.Figure()
            fig.add_trace(go.Scatter(x=steps.num_tokens, y=steps.active_experts, mode="markers", opacity=0.3,
                                     name="steps"))
            fig.update_layout(xaxis_title="tokens in step", yaxis_title="distinct experts activated per MoE layer",
                              xaxis_type="log")
            sections.append(("Expert activation", fig))
    page.write(path, f"moesd simulate: {sc.name}", sections)
