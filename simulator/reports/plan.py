"""The offline interactive report of one plan (report.html)."""

from __future__ import annotations

import html

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from . import page
from ..analysis.plan import config_label


def plan_report(path, spec, res: dict) -> None:
    ans = res["answer"]
    b = ans["best"]
    intro = (f"<p>{ans['configurations']} configurations, {ans['feasible']} meet the SLOs "
             f"({html.escape(str(ans['slo']))}). Best: <b>{html.escape(b['config'])}</b>. "
             f"SD: {html.escape(ans['sd_recommendation']['summary'])}</p>")
    sections = [("Answer", intro + res["top"].to_html(index=False, float_format=lambda x: f"{x:.3g}"))]
    pts = res["points"]
    fig = px.scatter(pts, x="tokens/s/user", y="tokens/s/gpu", color="sd", symbol="system",
                     hover_data=["config", "request_rate", "ttft", "tpot"])
    fr = res["pareto"]
    fig.add_trace(go.Scatter(x=fr["tokens/s/user"], y=fr["tokens/s/gpu"], mode="lines", name="Pareto frontier",
                             line=dict(color="black")))
    sections.append(("Pareto frontier: tokens/s/GPU vs tokens/s/user (every SLO-meeting point)", fig))

    t = res["table"][res["table"].request_rate > 0]
    if spec.target_request_rate or len(t):
        fig = go.Figure()
        top = float(spec.target_request_rate or t.request_rate.max()) * 1.5
        rates = [top * i / 40 for i in range(1, 41)]
        for sd, g in t.groupby("sd"):
            costs = [min(((-(-r // m)) * c for m, c in zip(g.request_rate, g.cost_per_hour_usd)), default=None)
                     for r in rates]
            fig.add_trace(go.Scatter(x=rates, y=costs, mode="lines", line_shape="hv", name=f"SD {'on' if sd else 'off'}"))
        fig.update_layout(xaxis_title="request rate (req/s)", yaxis_title="cheapest $/hour (copies of a config)")
        sections.append(("Cost vs request rate", fig))

    fig = go.Figure()
    for r in res["results"]:
        h = pd.DataFrame(r["history"]).sort_values("rate")
        fig.add_trace(go.Scatter(x=h.rate, y=h.slo_attainment, mode="lines+markers", name=config_label(r["cfg"]),
                                 line=dict(dash="solid" if r["cfg"]["k"] else "dot"), opacity=0.6))
    fig.update_layout(xaxis_title="request rate (req/s)", yaxis_title="share of requests meeting every SLO",
                      xaxis_type="log")
    sections.append(("SLO attainment vs rate (SD on solid, off dotted)", fig))
    rec = pd.DataFrame(ans["sd_recommendation"]["levels"])
    if len(rec):
        sections.append((f"SD per load level on {ans['sd_recommendation']['hardware']}",
                         rec.to_html(index=False, float_format=lambda x: f"{x:.3g}")))
    if ans["pruned"]:
        sections.append(("Pruned configurations", pd.DataFrame(ans["pruned"]).to_html(index=False)))
    page.write(path, f"moesd plan: {spec.name}", sections)
