"""Capacity planning: the configurations of a plan (:mod:`simulator.config.plan`), the per-configuration
SLO search, and the answer (cheapest configuration, Pareto front, SD per load level).

For each configuration (GPU type, TP, EP, replicas, max_num_seqs, SD on/off, k, adaptive k) the
highest request rate whose simulated percentile TTFT/TPOT/E2EL and goodput meet the SLOs is found
by bisection on the rate with the SimPy engine (as Vidur-Search and DistServe do), starting from
the closed-form capacity of the configuration. Configurations that cannot run are pruned with the
reason (weights do not fit, TP does not divide the heads, ...).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from ..common.errors import ConfigError
from ..config import gpu as gpu_mod
from ..config.plan import PlanSpec
from ..config.scenario import parse, resolve_model
from ..cost.forward import Parallel
from ..serving import theory
from ..serving.simulation import build, simulate
from .runner import run_many


# --- configurations ------------------------------------------------------------------------


def configurations(spec: PlanSpec) -> tuple[list[dict], list[dict]]:
    """(candidate configurations, pruned ones with their reason)."""
    target = resolve_model(spec.model, "plan", "model")
    drafts = spec.drafts or []
    s = spec.search
    out, pruned = [], []
    for g in s.gpus:
        gpu_mod.load(g, source="plan")          # unknown GPUs are an error, not a pruned row
    exchanges = s.moe_a2a_backend or [None]
    for g, total, tp, ep, adp, mode, px, seqs, k, adaptive, a2a in itertools.product(
            s.gpus, s.total_gpus, s.tensor_parallel_size, s.enable_expert_parallel, s.data_parallel_size, s.mode,
            s.prefill_workers, s.max_num_seqs, s.num_speculative_tokens, s.adaptive_k, exchanges):
        if (ep or adp > 1) and not target.moe:
            continue                             # EP / attention DP mean nothing for a dense model: not distinct
        if not (ep and adp > 1):
            if a2a != exchanges[0]:
                continue                         # the exchange exists only between attention-DP ranks and EP
            a2a = None
        if adaptive and k == 0:
            continue
        if mode == "agg" and px != s.prefill_workers[0]:
            continue                             # prefill_workers only splits disaggregated configurations
        worker = tp * adp
        workers = total // worker if worker <= total else 0
        for di, d in enumerate(drafts if k else [None]):
            cfg = {"gpu": g, "total_gpus": total, "tp": tp, "attn_dp": adp, "mode": mode,
                   "prefill_workers": px if mode == "disagg" else 0,
                   "dp": workers - px if mode == "disagg" else workers, "ep": ep,
                   "max_num_seqs": seqs, "k": k, "adaptive": adaptive, "draft": d.model_dump() if d else None,
                   "draft_index": di if d else -1, "a2a": a2a}
            reason = _prune_reason(spec, target, cfg)
            (pruned if reason else out).append({**cfg, "reason": reason} if reason else cfg)
        if k and not drafts:
            pruned.append({"gpu": g, "total_gpus": total, "tp": tp, "k": k, "reason": "k > 0 but no drafts listed"})
    return out, pruned


def _prune_reason(spec, target, cfg) -> str:
    tp, total, adp = cfg["tp"], cfg["total_gpus"], cfg["attn_dp"]
    worker = tp * adp
    if worker > total or total % worker:
        return f"a worker of TP {tp} x DP {adp} = {worker} GPUs does not divide total_gpus {total}"
    if cfg["mode"] == "disagg" and cfg["dp"] < 1:
        return f"{cfg['prefill_workers']} prefill workers leave no decode worker in {total // worker}"
    if target.num_attention_heads % tp:
        return f"{target.num_attention_heads} attention heads are not divisible by TP {tp}"
    if cfg["ep"] and target.moe.num_experts % worker:
        return f"{target.moe.num_experts} experts are not divisible by EP {worker}"
    try:
        build(scenario_for(spec, cfg, rate=1.0), "plan")
    except ConfigError as exc:
        return str(exc).removeprefix("plan: ")
    return ""


# The run-length rule: a sustainability verdict must not move with the sample size. Each evaluation
# runs at least STEADY_FILLS x (every replica's batch slots) requests, so batches fill and turn over
# before the run ends. The verdict reads the waiting queue at one instant, the last arrival: below
# capacity the batch slots absorb bursts and the queue is short at any instant, however long the
# run; above capacity it only grows. (The queue's running maximum would not do: a longer run sees
# rarer bursts.) A queue far past that limit stops the run early, for speed.
STEADY_FILLS = 2
STOP_FACTOR = 2


def run_length(spec: PlanSpec, cfg: dict) -> int:
    return max(int(spec.workload.get("num_prompts", 200)), STEADY_FILLS * cfg["dp"] * _ranks(cfg) * cfg["max_num_seqs"])


def _ranks(cfg: dict) -> int:
    return cfg.get("attn_dp", 1)


def _exchanges(cfg: dict) -> bool:       # attention DP + an EP MoE: the workers moe_a2a_backend applies to
    return _ranks(cfg) > 1 and bool(cfg["ep"])


def saturated_queue(cfg: dict) -> int:
    """Requests waiting on one replica (all its attention-DP ranks) at the last arrival that mark it saturated."""
    return max(8, _ranks(cfg) * cfg["max_num_seqs"] // 4)


def waiting_at(steps, t: float) -> int:
    """The longest replica queue at time ``t`` (from each replica's last step started by then)."""
    df = steps.frame()
    df = df[df.start_s <= t]
    return int(df.groupby("replica").num_waiting.last().max()) if len(df) else 0


def scenario_for(spec: PlanSpec, cfg: dict, rate: float):
    wl = {**spec.workload, "request_rate": rate, "seed": spec.seed, "num_prompts": run_length(spec, cfg)}
    layout = {"tensor_parallel_size": cfg["tp"], "data_parallel_size": _ranks(cfg), "enable_expert_parallel": cfg["ep"]}
    hardware = {"gpu": cfg["gpu"], **layout, "num_replicas": cfg["dp"]}
    engine = {**spec.engine, "max_num_seqs": cfg["max_num_seqs"]}
    if not _exchanges(cfg):
        engine.pop("moe_a2a_backend", None)   # the plan's exchange applies to its attention-DP + EP configurations
    elif cfg.get("a2a"):
        engine["moe_a2a_backend"] = cfg["a2a"]
    data = {"name": f"{spec.name}", "model": spec.model, "hardware": hardware, "engine": engine,
            "routing": dict(spec.routing), "workload": wl, "seed": spec.seed,
            "slo": {k: v for k, v in (("ttft_ms", spec.slo.ttft_ms), ("tpot_ms", spec.slo.tpot_ms),
                                      ("e2el_ms", spec.slo.e2el_ms)) if v is not None}}
    if cfg.get("mode") == "disagg":
        hardware.update(tensor_parallel_size=1, data_parallel_size=1, enable_expert_parallel=False, num_replicas=1)
        data["disaggregation"] = {"prefill": {**layout, "num_workers": cfg["prefill_workers"]},
                                  "decode": {**layout, "num_workers": cfg["dp"]}}
    if cfg["k"]:
        d = cfg["draft"]
        data["speculative_config"] = {"method": d["method"], "model": d["model"], "acceptance": d["acceptance"],
                                      "num_speculative_tokens": cfg["k"], "adaptive": cfg["adaptive"]}
    return parse(data, "plan")


def config_label(cfg: dict) -> str:
    sd = "SD off" if not cfg["k"] else (f"SD adaptive k<={cfg['k']}" if cfg["adaptive"] else f"SD k={cfg['k']}")
    draft = f" ({cfg['draft']['model']})" if cfg["k"] and cfg.get("draft") and isinstance(cfg["draft"]["model"], str) else ""
    adp = _ranks(cfg)
    a2a = {"deepep": " DeepEP", "none": " allgather"}.get(cfg.get("a2a"), "")
    worker = f"TP{cfg['tp']}{f' DPattn{adp}' if adp > 1 else ''}{' EP' if cfg['ep'] else ''}{a2a}"
    copies = (f"{cfg['prefill_workers']}P{cfg['dp']}D" if cfg.get("mode") == "disagg" else f"DP{cfg['dp']}")
    return f"{cfg['gpu']} x{cfg['total_gpus']} {worker} {copies} seqs{cfg['max_num_seqs']} {sd}{draft}"


# --- one configuration at one rate, and its max sustainable rate -----------------------------


def evaluate(spec_data: dict, cfg: dict, rate: float) -> dict:
    spec = PlanSpec.model_validate(spec_data)
    setup = build(scenario_for(spec, cfg, rate), "plan")
    # A run whose queue passes STOP_FACTOR x the saturation limit is certainly not sustained: stop it.
    setup.cfg.stop_waiting = STOP_FACTOR * saturated_queue(cfg)
    summary, req, steps = simulate(setup)
    done = req[req.completed]
    stopped = bool(summary.get("stopped_early"))
    p = spec.slo.percentile
    pct = lambda col: float(np.percentile(done[col].dropna().values * 1e3, p)) if len(done) else math.inf  # noqa: E731
    m = {"rate": rate, "ttft_ms": pct("ttft_s"), "tpot_ms": pct("tpot_s"), "e2el_ms": pct("e2el_s"),
         "mean_tpot_ms": summary["mean_tpot_ms"] or math.inf, "stopped_early": stopped,
         "failed": int(summary["failed"] - (req.fail_reason.str.startswith("not finished").sum() if stopped else 0)),
         "output_throughput": summary["output_throughput"], "request_throughput": summary["request_throughput"],
         "max_concurrent_requests": summary["max_concurrent_requests"],
         "mean_batch_size": summary["mean_batch_size"] or 0.0,
         "acceptance_length": summary.get("spec_decode_acceptance_length"),
         # a short run can meet latency SLOs above capacity; a queue that keeps growing shows it
         "max_waiting": max(steps.stats.max_waiting, setup.cfg.stop_waiting + 1 if stopped else 0),
         "waiting_at_last_arrival": setup.cfg.stop_waiting + 1 if stopped else
         waiting_at(steps, float(req.start_s.max()) if len(req) else 0.0)}
    ok = np.ones(len(done), dtype=bool)
    for name, col in (("ttft_ms", "ttft_s"), ("tpot_ms", "tpot_s"), ("e2el_ms", "e2el_s")):
        lim = getattr(spec.slo, name)
        if lim is not None:
            ok &= np.nan_to_num(done[col].values * 1e3, nan=0.0) <= lim
    m["slo_attainment"] = float(ok.sum() / max(len(req), 1))
    sustained = not stopped and m["waiting_at_last_arrival"] <= saturated_queue(cfg)
    m["meets_slo"] = bool(sustained and m["failed"] == 0 and all(
        getattr(spec.slo, n) is None or m[n] <= getattr(spec.slo, n) for n in ("ttft_ms", "tpot_ms", "e2el_ms"))
        and m["slo_attainment"] >= spec.slo.goodput_fraction)
    return m


def capacity_estimate(spec: PlanSpec, cfg: dict) -> float:
    """Closed-form upper bound on the sustainable rate (req/s): full batches of max_num_seqs."""
    setup = build(scenario_for(spec, cfg, 1.0), "plan")
    wl = setup.scenario.workload
    st = theory.step_times(setup, wl.random_input_len + wl.random_output_len / 2)
    b = cfg["max_num_seqs"]
    k = setup.cfg.k
    tok_s = b * theory.tokens_per_round(setup.acceptance, k) / st.step_s(b, k)
    return cfg["dp"] * _ranks(cfg) * tok_s / wl.random_output_len


def max_rate(job: dict) -> dict:
    """Bisection (in log rate) for the highest rate that meets the SLOs (a runner job)."""
    spec = PlanSpec.model_validate(job["spec"])
    cfg, b = job["cfg"], spec.bisection
    history = []

    def check(rate):
        m = evaluate(job["spec"], cfg, rate)
        history.append(m)
        return m["meets_slo"]

    cap = min(max(capacity_estimate(spec, cfg), b.rate_min), b.rate_max)
    # Beyond the full-batch capacity the queue only grows, however long the run: a short run would
    # not show it (all its requests fit in the batch slots), so the search stops there.
    rate_max = min(b.rate_max, 1.05 * cap)
    lo, hi = None, None
    r = cap * 0.7
    while len(history) < b.max_sims:          # bracket
        if check(r):
            lo = r
            if r >= rate_max:
                break
            r = min(r * 1.6, rate_max)
            if hi is not None and r >= hi:
                break
        else:
            hi = r
            if r <= b.rate_min:
                break
            r = max(r / 2.0, b.rate_min)
        if lo is not None and hi is not None:
            break
    while lo is not None and hi is not None and hi / lo > 1 + b.rel_tol and len(history) < b.max_sims:
        mid = math.sqrt(lo * hi)
        if check(mid):
            lo = mid
        else:
            hi = mid
    best = max((h for h in history if h["meets_slo"]), key=lambda h: h["rate"], default=None)
    return {"cfg": cfg, "max_rate": best["rate"] if best else 0.0, "at_max": best, "history": history,
            "capacity_estimate": cap, "note": "" if best else _why(spec, history)}


def _why(spec: PlanSpec, history: list[dict]) -> str:
    h = min(history, key=lambda x: x["rate"])
    parts = [f"{n[:-3].upper()} p{spec.slo.percentile:g} {h[n]:.0f} ms > {getattr(spec.slo, n):g} ms"
             for n in ("ttft_ms", "tpot_ms", "e2el_ms") if getattr(spec.slo, n) is not None and h[n] > getattr(spec.slo, n)]
    if h.get("stopped_early"):
        parts.append(f"queue grows past {h['max_waiting'] - 1} waiting requests (run stopped there)")
    elif h.get("waiting_at_last_arrival", 0) > 0:
        parts.append(f"{h['waiting_at_last_arrival']} requests still waiting at the last arrival")
    if h["failed"]:
        parts.append(f"{h['failed']} requests failed")
    if not parts:
        parts.append(f"SLO attainment {h['slo_attainment']:.0%} < {spec.slo.goodput_fraction:.0%}")
    return f"SLOs not met even at {h['rate']:.3g} req/s: " + ", ".join(parts)


def evaluate_job(job: dict) -> dict:
    return evaluate(job["spec"], job["cfg"], job["rate"])


def price(spec: PlanSpec, gpu: str) -> float:
    return float(spec.costs.get(gpu, gpu_mod.load(gpu).cost_per_gpu_hour_usd))


def _row(spec: PlanSpec, r: dict) -> dict:
    c, m = r["cfg"], r["at_max"] or {}
    wl = spec.workload
    gpus = c["total_gpus"]
    tok_s = m.get("output_throughput", 0.0)
    cost = gpus * price(spec, c["gpu"])
    par = Parallel(c["tp"], c["ep"], data_parallel_size=_ranks(c))
    moe_tp, moe_ep = par.moe_tp, par.moe_ep
    row = {"config": config_label(c), "model": spec.model if isinstance(spec.model, str) else spec.model.get("name"),
           "isl": wl.get("random_input_len"), "osl": wl.get("random_output_len"),
           "concurrency": m.get("max_concurrent_requests", 0), "request_rate": r["max_rate"],
           "bs": c["max_num_seqs"], "ttft": m.get("ttft_ms"), "tpot": m.get("tpot_ms"),
           "request_latency": m.get("e2el_ms"), "seq/s": m.get("request_throughput", 0.0), "tokens/s": tok_s,
           "tokens/s/gpu": tok_s / gpus, "tokens/s/user": 1000.0 / m["mean_tpot_ms"] if m else 0.0,
           "num_total_gpus": gpus, "tp": c["tp"], "pp": 1, "dp": c["dp"], "attention_dp": _ranks(c),
           "moe_tp": moe_tp, "moe_ep": moe_ep, "mode": c.get("mode", "agg"),
           "prefill_workers": c.get("prefill_workers", 0),
           "backend": f"moesd-sim ({spec.engine.get('framework', 'vllm')})", "system": c["gpu"],
           "moe_a2a_backend": c.get("a2a") or (spec.engine.get("moe_a2a_backend", "") if _exchanges(c) else ""),
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
    hw = lambda c: (c["gpu"], c["tp"], c["dp"], c["ep"], c["max_num_seqs"], _ranks(c), c.get("mode", "agg"),  # noqa: E731
                    c.get("prefill_workers", 0), c.get("a2a"))       # everything but SD
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
