"""The offline interactive report of one simulation (report.html)."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import page

PARTS = ["draft_s", "attention_s", "gemm_s", "moe_s", "comm_s", "overhead_s"]
# summary key -> (label, unit) for the report's table
ROWS = [("completed", "completed requests", ""), ("failed", "failed requests", ""), ("duration", "duration", "s"),
        ("request_throughput", "request throughput", "req/s"), ("output_throughput", "output throughput", "tok/s"),
        ("mean_ttft_ms", "TTFT mean", "ms"), ("p99_ttft_ms", "TTFT p99", "ms"), ("mean_tpot_ms", "TPOT mean", "ms"),
        ("p99_tpot_ms", "TPOT p99", "ms"), ("mean_itl_ms", "ITL mean", "ms"),
        ("spec_decode_acceptance_length", "acceptance length", "tokens/round"),
        ("acceptance_model", "acceptance assumed", ""),
        ("target_efficiency", "target efficiency", ""), ("mean_batch_size", "mean decode batch", "sequences"),
        ("mean_prompts_per_prefill", "prompts sharing each prompt's prefill step", "prompts"),
        ("mean_active_experts_per_layer", "active experts per MoE layer", "experts"),
        ("expert_bytes_per_output_token", "expert weights read per output token", "bytes"),
        ("gpu_spec_file", "GPU spec", ""), ("model_file", "model", ""),
        ("kernel_tables", "kernel tables (GEMM, MoE)", ""), ("mla_decode_tables", "MLA decode tables", ""),
        ("linear_attention", "linear-attention layers", ""), ("sparse_attention", "sparse attention (DSA)", "")]


def _cdf(fig, values, name, points: int = 1000):
    """The empirical CDF, at most ``points`` points (a long run has hundreds of thousands of requests)."""
    v = np.sort(values[~np.isnan(values)])
    if len(v):
        q = np.arange(1, len(v) + 1) / len(v)
        if len(v) > points:
            idx = np.unique(np.linspace(0, len(v) - 1, points).round().astype(int))
            v, q = v[idx], q[idx]
        fig.add_trace(go.Scatter(x=v, y=q, name=name, mode="lines"))


def simulation_report(path, sc, summary: dict, req: pd.DataFrame, steps) -> None:
    """``steps``: the run's step log (its running statistics; the rows themselves may be on disk)."""
    done = req[req.completed & req.measured] if "measured" in req else req[req.completed]
    rows = [(label, unit, summary.get(k)) for k, label, unit in ROWS if k in summary]
    table = page.table(["figure", "value", "unit"],
                       [(label, page.fmt(v, unit), "" if unit == "bytes" else unit) for label, unit, v in rows])
    sections = [("Summary", f"<p>{html.escape(sc.description or sc.name)}</p>" + table)]

    fig = go.Figure()
    for col, name in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2el_s", "E2E latency")):
        _cdf(fig, done[col].values * 1e3, name)
    fig.update_layout(xaxis_title="latency (ms)", yaxis_title="fraction of requests", xaxis_type="log")
    sections.append(("Latency CDFs", fig))

    st = steps.stats
    if st.n:
        tl = st.timeline()
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=tl.time_s, y=tl.output_tok_s, name="output tok/s"))
        fig.add_trace(go.Scatter(x=tl.time_s, y=tl.mean_batch, name="mean decode batch (sequences)", yaxis="y2"))
        fig.update_layout(xaxis_title="simulated time (s)", yaxis_title="output throughput (tok/s)",
                          yaxis2=dict(title="decode batch (sequences)", overlaying="y", side="right"))
        sections.append(("Throughput and batch size over time", fig))

        by = st.parts_by_batch()
        fig = go.Figure([go.Bar(x=by.num_decode, y=by[p], name=p.replace("_s", "")) for p in PARTS])
        fig.update_layout(barmode="stack", xaxis_title="decode batch size (sequences)", yaxis_title="mean step time (ms)")
        sections.append(("Step-time breakdown by batch size", fig))

        ex = st.experts_by_tokens()
        if len(ex) and ex.active_experts.max() > 0:
            fig = go.Figure(go.Scatter(x=ex.num_tokens, y=ex.active_experts, mode="markers", name="mean over steps"))
            fig.update_layout(xaxis_title="tokens in step", yaxis_title="distinct experts per MoE layer (mean)",
                              xaxis_type="log")
            sections.append(("Expert activation", fig))
    page.write(path, f"moesd simulate: {sc.name}", sections)
