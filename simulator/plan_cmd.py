"""``moesd plan``: the cheapest deployment that meets the SLOs, with and without SD.

Writes ``configs.csv`` (every configuration, its max sustainable rate or why it has none),
``best_config_topn.csv`` and ``pareto.csv`` (AIConfigurator's column names), ``plan.json`` (the
answer: cheapest configuration for the target rate, SD recommendation per load level, pruned
configurations and why) and ``report.html``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import gpu as gpu_mod
from .atomic import output_dir
from .errors import ConfigError
from .paths import REPORTS_DIR
from .plan import PlanSpec, config_label, configurations, evaluate, load_plan, max_rate, parse_plan
from .runner import run_many


def evaluate_job(job: dict) -> dict:
    return evaluate(job["spec"], job["cfg"], job["rate"])


def price(spec: PlanSpec, gpu: str) -> float:
    return float(spec.costs.get(gpu, gpu_mod.load(gpu).cost_per_gpu_hour_usd))


def _row(spec: PlanSpec, r: dict) -> dict:
    c, m = r["cfg"], r["at_max"] or {}
    wl = spec.workload
    gpus = c["tp"] * c["dp"]
    tok_s = m.get("output_throughput", 0.0)
    cost = gpus * price(spec, c["gpu"])
    moe_tp, moe_ep = (1, c["tp"]) if c["ep"] else (c["tp"], 1)
    row = {"config": config_label(c), "model": spec.model if isinstance(spec.model, str) else spec.model.get("name"),
           "isl": wl.get("random_input_len"), "osl": wl.get("random_output_len"),
           "concurrency": m.get("max_concurrent_requests", 0), "request_rate": r["max_rate"],
           "bs": c["max_num_seqs"], "ttft": m.get("ttft_ms"), "tpot": m.get("tpot_ms"),
           "request_latency": m.get("e2el_ms"), "seq/s": m.get("request_throughput", 0.0), "tokens/s": tok_s,
           "tokens/s/gpu": tok_s / gpus, "tokens/s/user": 1000.0 / m["mean_tpot_ms"] if m else 0.0,
           "num_total_gpus": gpus, "tp": c["tp"], "pp": 1, "dp": c["dp"], "moe_tp": moe_tp, "moe_ep": moe_ep,
           "backend": "moesd-sim (vLLM-like)", "system": c["gpu"],
           "sd": bool(c["k"]), "num_speculative_tokens": c["k"], "adaptive_k": c["adaptive"],
           "draft": (c["draft"] or {}).get("model") if c["k"] else None,
           "acceptance_length": m.get("acceptance_length"), "cost_per_hour_usd": cost,
           "usd_per_million_output_tokens": cost / (tok_s * 3600) * 1e6 if tok_s else math.inf,
           "capacity_estimate": r["capacity_estimate"], "note": r["note"], "sims": len(r["history"])}
    if spec.target_request_rate:
        copies = math.ceil(spec.target_request_rate / r["max_rate"] - 1e-9) if r["max_rate"] else math.inf
        row["copies_for_target"] = copies
        row["gpus_for_target"] = copies * gpus
        row["cost_for_target_per_hour_usd"] = copies * cost
    return row


def pareto(points: pd.DataFrame, x: str = "tokens/s/user", y: str = "tokens/s/gpu") -> pd.DataFrame:
    """Points not dominated in both x and y (higher is better)."""
    p = points.sort_values([x, y], ascending=[False, False])
    best_y, keep = -math.inf, []
    for i, v in zip(p.index, p[y]):
        if v > best_y:
            keep.append(i)
            best_y = v
    return p.loc[keep].sort_values(x)


def recommend(spec: PlanSpec, table: pd.DataFrame, results: list[dict], levels, run) -> dict:
    """SD on/off per load level on the hardware of the cheapest configuration."""
    best = table.iloc[0]
    hw = lambda c: (c["gpu"], c["tp"], c["dp"], c["ep"], c["max_num_seqs"])  # noqa: E731
    key = next(hw(r["cfg"]) for r in results if config_label(r["cfg"]) == best.config)
    same = [r for r in results if hw(r["cfg"]) == key]
    off = next((r for r in same if not r["cfg"]["k"]), None)
    on = max((r for r in same if r["cfg"]["k"]), key=lambda r: r["max_rate"], default=None)
    if off is None or on is None:
        return {"hardware": best.config,
                "levels": [], "summary": "the search space has no SD-on/SD-off pair on this hardware"}
    jobs = [{"spec": spec.model_dump(mode="json"), "cfg": r["cfg"], "rate": float(L)} for L in levels
            for r in (off, on)]
    res = run(evaluate_job, jobs, "recommend")
    rows = []
    for i, L in enumerate(levels):
        a, b = res[2 * i], res[2 * i + 1]
        if a["meets_slo"] != b["meets_slo"]:
            use_sd = b["meets_slo"]
        else:
            use_sd = b["tpot_ms"] < a["tpot_ms"]
        rows.append({"request_rate": float(L), "sd": use_sd, "tpot_ms_sd_off": a["tpot_ms"], "tpot_ms_sd_on": b["tpot_ms"],
                     "ttft_ms_sd_off": a["ttft_ms"], "ttft_ms_sd_on": b["ttft_ms"],
                     "meets_slo_sd_off": a["meets_slo"], "meets_slo_sd_on": b["meets_slo"],
                     "slo_attainment_sd_off": a["slo_attainment"], "slo_attainment_sd_on": b["slo_attainment"]})
    sd_label = config_label(on["cfg"]).split("seqs")[-1].split(" ", 1)[-1]
    return {"hardware": config_label(off["cfg"]).rsplit(" SD", 1)[0], "sd_config": sd_label,
            "levels": rows, "summary": _phrase(rows, sd_label)}


def _phrase(rows: list[dict], sd_label: str) -> str:
    parts, start = [], 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i]["sd"] != rows[start]["sd"]:
            seg = rows[start:i]
            state = f"{sd_label} on" if seg[0]["sd"] else "SD off"
            lo, hi = seg[0]["request_rate"], seg[-1]["request_rate"]
            parts.append(f"{state} for {lo:g}-{hi:g} req/s" if lo != hi else f"{state} at {lo:g} req/s")
            start = i
    return "; ".join(parts)


def plan(spec: PlanSpec, workers=None, executor="local", address=None, cache_dir=None, progress=True,
         top_n: int = 5) -> dict:
    configs, pruned = configurations(spec)
    if not configs:
        raise ConfigError("no configuration in the search space can run: "
                          + "; ".join(sorted({p["reason"] for p in pruned}))[:300], field="search")

    def run(fn, jobs, desc):
        return run_many(fn, jobs, workers, executor, address, cache_dir, desc=desc, progress=progress)

    results = run(max_rate, [{"spec": spec.model_dump(mode="json"), "cfg": c} for c in configs], "plan")
    table = pd.DataFrame([_row(spec, r) for r in results])
    feasible = table[table.request_rate > 0]
    if feasible.empty:
        closest = min(results, key=lambda r: min(h["tpot_ms"] for h in r["history"]))
        raise ConfigError(f"no configuration meets the SLOs; closest is {config_label(closest['cfg'])}: "
                          f"{closest['note']}", field="slo")
    if spec.target_request_rate:
        order = feasible.sort_values(["cost_for_target_per_hour_usd", "tokens/s/gpu"], ascending=[True, False])
    else:
        order = feasible.sort_values(["tokens/s/gpu", "cost_per_hour_usd"], ascending=[False, True])
    points = []
    for r in results:
        c = r["cfg"]
        gpus = c["tp"] * c["dp"]
        for h in r["history"]:
            if h["meets_slo"]:
                points.append({"config": config_label(c), "sd": bool(c["k"]), "request_rate": h["rate"],
                               "tokens/s/gpu": h["output_throughput"] / gpus,
                               "tokens/s/user": 1000.0 / h["mean_tpot_ms"], "ttft": h["ttft_ms"], "tpot": h["tpot_ms"],
                               "num_total_gpus": gpus, "system": c["gpu"]})
    pts = pd.DataFrame(points)
    front = pareto(pts)
    levels = spec.load_levels or _default_levels(spec, order.iloc[0]["request_rate"])
    rec = recommend(spec, order, results, levels, run)
    answer = {"name": spec.name, "target_request_rate": spec.target_request_rate,
              "best": order.iloc[0].replace({np.inf: None}).to_dict(),
              "sd_recommendation": rec, "configurations": int(len(configs)), "feasible": int(len(feasible)),
              "pruned": pruned, "slo": spec.slo.model_dump()}
    return {"table": table, "order": order, "top": order.head(top_n), "pareto": front, "points": pts,
            "answer": answer, "results": results}


def _default_levels(spec: PlanSpec, best_rate: float) -> list[float]:
    top = spec.target_request_rate or best_rate
    return [float(f"{top * f:.3g}") for f in (0.125, 0.25, 0.5, 0.75, 1.0)]


def spec_from_args(args) -> PlanSpec:
    if args.plan:
        return load_plan(args.plan, args.set)
    if not (args.model and args.system):
        raise ConfigError("give a plan.yaml, or at least --model and --system", field="plan")
    slo = {k: v for k, v in (("ttft_ms", args.ttft), ("tpot_ms", args.tpot), ("e2el_ms", args.e2el)) if v}
    data = {"name": f"plan_{args.model}_{args.system}", "model": args.model,
            "workload": {"random_input_len": args.isl, "random_output_len": args.osl, "random_range_ratio": 0.5,
                         "num_prompts": args.num_prompts},
            "slo": slo or {"tpot_ms": 50.0},
            "search": {"gpus": args.system.split(","), "total_gpus": [args.total_gpus],
                       "tensor_parallel_size": [t for t in (1, 2, 4, 8) if t <= args.total_gpus],
                       "num_speculative_tokens": [0] + ([args.k] if args.draft else []),
                       "adaptive_k": [False, True] if args.draft else [False]}}
    if args.draft:
        data["drafts"] = [{"method": args.draft_method, "model": args.draft,
                           "acceptance": {"rate": args.acceptance_rate}}]
    if args.target_rate:
        data["target_request_rate"] = args.target_rate
    return parse_plan(data, "command line", args.set)


def run(args) -> int:
    spec = spec_from_args(args)
    out = Path(args.out) if args.out else REPORTS_DIR / spec.name
    cache = Path(args.cache_dir) if args.cache_dir else REPORTS_DIR / ".plan_cache"
    res = plan(spec, args.workers, args.executor, args.address, cache, progress=not args.quiet, top_n=args.top_n)
    with output_dir(out) as tmp:
        res["table"].sort_values("request_rate", ascending=False).to_csv(tmp / "configs.csv", index=False,
                                                                        float_format="%.6g")
        res["top"].to_csv(tmp / "best_config_topn.csv", index=False, float_format="%.6g")
        res["pareto"].to_csv(tmp / "pareto.csv", index=False, float_format="%.6g")
        (tmp / "plan.json").write_text(json.dumps(res["answer"], indent=1, default=_plain) + "\n")
        if not args.no_report:
            from .plan_report import plan_report
            plan_report(tmp / "report.html", spec, res)
    print_answer(res["answer"], res["top"])
    print(f"  results: {out}")
    return 0


def _plain(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)


def print_answer(ans: dict, top: pd.DataFrame) -> None:
    b = ans["best"]
    print(f"{ans['configurations']} configurations ({ans['feasible']} meet the SLOs, {len(ans['pruned'])} pruned)")
    if ans["target_request_rate"]:
        print(f"cheapest for {ans['target_request_rate']:g} req/s: {b['config']} x{b['copies_for_target']} "
              f"= {b['gpus_for_target']} GPUs, ${b['cost_for_target_per_hour_usd']:.2f}/h")
    else:
        print(f"best tokens/s/GPU: {b['config']}")
    print(f"  max {b['request_rate']:.3g} req/s per copy, p{ans['slo']['percentile']:g} TTFT {b['ttft']:.0f} ms, "
          f"TPOT {b['tpot']:.1f} ms, {b['tokens/s/gpu']:.0f} tok/s/GPU, {b['tokens/s/user']:.0f} tok/s/user")
    rec = ans["sd_recommendation"]
    print(f"SD on {rec['hardware']}: {rec['summary']}")
    cols = ["config", "request_rate", "ttft", "tpot", "tokens/s/gpu", "tokens/s/user", "cost_per_hour_usd"]
    print(top[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
