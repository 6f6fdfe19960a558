"""The offline interactive report of one sweep (report.html)."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import page
from ..common.paths import TRACES_DIR
from ..cost.routing import expected_distinct_experts


def _log_x(fig, title="batch size (sequences)"):
    fig.update_layout(xaxis_type="log", xaxis_title=title)
    return fig


def sweep_report(path, sc, table: pd.DataFrame, sparsity: pd.DataFrame, notes=()) -> None:
    fixed = table[~table.adaptive & (table.k > 0)]
    has_sim = "speedup_sim" in table and table.speedup_sim.notna().any()
    sections = [("Scenario", f"<p>{html.escape(sc.description or sc.name)}. Offline fixed-batch runs; engine "
                             "figures over full-batch decode steps; closed form = serving/theory.py at the same "
                             "context.</p>" + "".join(f"<p><b>Note:</b> {html.escape(n)}</p>" for n in notes))]

    fig = go.Figure()
    for (fam, name), t in fixed.groupby(["family", "scenario"], sort=False):
        for k, g in t.groupby("k"):
            dash = "solid" if fam == "moe" else "dot"
            fig.add_trace(go.Scatter(x=g.batch_size, y=g.speedup_closed, mode="lines", line=dict(dash=dash),
                                     name=f"{name} k={k} closed form", legendgroup=f"{name}{k}"))
            if has_sim and g.speedup_sim.notna().any():
                fig.add_trace(go.Scatter(x=g.batch_size, y=g.speedup_sim, mode="markers", legendgroup=f"{name}{k}",
                                         name=f"{name} k={k} engine"))
    ad = table[table.adaptive]
    if len(ad):
        fig.add_trace(go.Scatter(x=ad.batch_size, y=ad.speedup_sim, mode="lines+markers", name="adaptive k (engine)",
                                 line=dict(width=4, color="black")))
    fig.add_hline(y=1.0, line_dash="dash", line_color="grey")
    fig.update_layout(yaxis_title="speedup over no SD")
    sections.append(("Speedup vs batch size (MoE solid, dense dotted)", _log_x(fig)))

    fig = go.Figure()
    for (fam, name), t in fixed.groupby(["family", "scenario"], sort=False):
        for k, g in t.groupby("k"):
            fig.add_trace(go.Scatter(x=g.batch_size, y=g.eta_closed, mode="lines",
                                     line=dict(dash="solid" if fam == "moe" else "dot"), name=f"{name} k={k}"))
    measured = _measured_eta(table)
    for name, g in measured:
        fig.add_trace(go.Scatter(x=g.index, y=g.values, mode="markers", marker=dict(symbol="x", size=10), name=name))
    fig.update_layout(yaxis_title="target efficiency T_T(B,1)/T_T(B,k+1)")
    sections.append(("Target efficiency vs batch size (x: measured on hardware, traces/e2e)", _log_x(fig)))

    moe = fixed[fixed.family == "moe"]
    if len(moe) and moe.activated_experts_closed.max() > 0:
        fig = go.Figure()
        t = np.unique(np.geomspace(1, 2048, 80).astype(int))
        for (E, K), g in sparsity.groupby(["num_experts", "topk"]):
            fig.add_trace(go.Scatter(x=t, y=expected_distinct_experts(t, E, K), name=f"E={E}, K={K}"))
        fig.update_layout(yaxis_title="distinct experts activated N(t)")
        sections.append(("Activated experts N(t) = E(1-(1-K/E)^t)", _log_x(fig, "tokens routed t")))

    if len(sparsity):
        fig = go.Figure()
        for K, g in sparsity.groupby("topk"):
            fig.add_trace(go.Scatter(x=g.batch_size, y=g.speedup_closed, name=f"top-{K} of {g.num_experts.iloc[0]}"))
        fig.add_hline(y=1.0, line_dash="dash", line_color="grey")
        fig.update_layout(yaxis_title=f"speedup (k={int(sparsity.k.iloc[0])}, closed form)")
        sections.append(("Sparsity sweep: top-K at fixed E", _log_x(fig)))

    col = "speedup_sim" if has_sim else "speedup_closed"
    best = fixed.loc[fixed.groupby(["scenario", "batch_size"])[col].idxmax()]
    fig = go.Figure()
    for name, g in best.groupby("scenario", sort=False):
        fig.add_trace(go.Bar(x=g.batch_size.astype(str), y=g.k, name=name, text=g[col].round(2)))
    fig.update_layout(xaxis_title="batch size", yaxis_title="best k (label: its speedup)")
    sections.append(("Best k per batch size", fig))

    for name, t in fixed.groupby("scenario", sort=False):
        grid = t.pivot_table(index="k", columns="batch_size", values=col)
        fig = go.Figure(go.Heatmap(z=grid.values, x=[str(c) for c in grid.columns], y=grid.index,
                                   **page.diverging_scale(grid.values, 1.0), text=np.round(grid.values, 2),
                                   texttemplate="%{text}", colorbar=dict(title="speedup (x)")))
        fig.update_layout(xaxis_title="batch size", yaxis_title="k (num_speculative_tokens)")
        sections.append((f"SD go/no-go map: {name} (green: SD pays)", fig))

    cols = [c for c in ("family", "scenario", "batch_size", "k", "adaptive", "speedup_sim", "speedup_closed",
                        "eta_sim", "eta_closed", "acceptance_length", "active_experts", "expert_bytes_per_token",
                        "step_ms", "draft_ms", "attention_ms", "gemm_ms", "moe_ms", "comm_ms") if c in table]
    units = {"batch_size": "sequences", "speedup_sim": "x", "speedup_closed": "x", "acceptance_length": "tokens",
             "active_experts": "experts", "expert_bytes_per_token": "bytes", "step_ms": "ms", "draft_ms": "ms",
             "attention_ms": "ms", "gemm_ms": "ms", "moe_ms": "ms", "comm_ms": "ms"}
    sections.append(("Table (k = -1: adaptive k)", page.frame_table(table[cols], units)))
    page.write(path, f"moesd sweep: {sc.name}", sections)


def _measured_eta(table: pd.DataFrame):
    """Measured eta curves (traces/e2e) for the sweep's targets on its GPU, one layer slice at TP."""
    out = []
    for (target, gpu), t in table.groupby(["target", "gpu"]):
        f = TRACES_DIR / "e2e" / f"{gpu}_e2e_forward.csv"
        if not f.exists():
            continue
        e = pd.read_csv(f)
        e = e[e.model == target]
        for (tp, q), g in e[e.q_len > 1].groupby(["tp", "q_len"]):
            base = e[(e.tp == tp) & (e.q_len == 1)].set_index("batch_size").latency_per_layer_ms
            if q - 1 in set(table.k):
                out.append((f"{target} TP{tp} layer, k={q - 1}, {gpu} (measured)",
                            base / g.set_index("batch_size").latency_per_layer_ms))
    return out
