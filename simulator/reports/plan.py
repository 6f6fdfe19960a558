"""The offline interactive report of one plan (report.html)."""

from __future__ import annotations

import html

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from . import page
from ..analysis.plan import config_label


UNITS = {"request_rate": "req/s", "ttft": "ms", "tpot": "ms", "request_latency": "ms", "seq/s": "req/s",
         "tokens/s": "tok/s", "tokens/s/gpu": "tok/s", "tokens/s/user": "tok/s", "cost_per_hour_usd": "$/h",
         "usd_per_million_output_tokens": "$", "cost_for_target_per_hour_usd": "$/h", "capacity_estimate": "req/s",
         "isl": "tokens", "osl": "tokens", "acceptance_length": "tokens"}


def plan_report(path, spec, res: dict) -> None:
    ans = res["answer"]
    b = ans["best"]
    slo = ans["slo"]
    limits = ", ".join(f"{n.upper()} <= {slo[f'{n}_ms']:g} ms" for n in ("ttft", "tpot", "e2el") if slo.get(f"{n}_ms"))
    intro = (f"<p>{ans['configurations']} configurations, {ans['feasible']} meet the SLOs "
             f"({html.escape(limits)} at p{slo['percentile']:g}). Best: <b>{html.escape(b['config'])}</b>. "
             f"SD: {html.escape(ans['sd_recommendation']['summary'])}</p>")
    sections = [("Answer", intro + page.frame_table(res["top"], UNITS))]
    pts = res["points"].assign(SD=lambda d: d.sd.map({True: "SD on", False: "SD off"}))
    fig = px.scatter(pts, x="tokens/s/user", y="tokens/s/gpu", color="SD", symbol="system",
                     hover_data=["config", "request_rate", "ttft", "tpot"])
    fig.update_layout(xaxis_title="tokens/s per user", yaxis_title="tokens/s per GPU")
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
                         page.frame_table(rec, {"request_rate": "req/s", **{c: "ms" for c in rec.columns
                                                                             if "_ms_" in c}})))
    if ans["pruned"]:
        pruned = pd.DataFrame([{"configuration": _label(p), "reason": p["reason"]} for p in ans["pruned"]])
        sections.append(("Pruned configurations", page.frame_table(pruned)))
    page.write(path, f"moesd plan: {spec.name}", sections)


def _label(cfg: dict) -> str:
    try:
        return config_label(cfg)
    except KeyError:            # pruned before it was a whole configuration
        return f"{cfg.get('gpu')} x{cfg.get('total_gpus')} TP{cfg.get('tp')} k={cfg.get('k')}"
