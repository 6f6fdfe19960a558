"""Capacity planning: the search space of a plan.yaml, and the per-configuration SLO search.

For each configuration (GPU type, TP, EP, replicas, max_num_seqs, SD on/off, k, adaptive k) the
highest request rate whose simulated percentile TTFT/TPOT/E2EL and goodput meet the SLOs is found
by bisection on the rate with the SimPy engine (as Vidur-Search and DistServe do), starting from
the closed-form capacity of the configuration. Configurations that cannot run are pruned with the
reason (weights do not fit, TP does not divide the heads, ...).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Optional, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError, pydantic_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Draft(_Strict):
    method: str = "draft_model"
    model: Optional[Union[str, dict]] = None
    acceptance: dict = Field(default_factory=lambda: {"rate": 0.8})


class PlanSLO(_Strict):
    ttft_ms: Optional[float] = Field(default=None, gt=0)
    tpot_ms: Optional[float] = Field(default=None, gt=0)
    e2el_ms: Optional[float] = Field(default=None, gt=0)
    percentile: float = Field(default=90, gt=0, le=100)
    goodput_fraction: float = Field(default=0.0, ge=0, le=1, description="share of requests meeting every SLO")

    @model_validator(mode="after")
    def _any(self):
        if self.ttft_ms is None and self.tpot_ms is None and self.e2el_ms is None:
            raise ValueError("give at least one of ttft_ms, tpot_ms, e2el_ms")
        return self


class Search(_Strict):
    gpus: list[str] = Field(default_factory=lambda: ["h100_sxm"], min_length=1)
    total_gpus: list[int] = Field(default_factory=lambda: [2], min_length=1)
    tensor_parallel_size: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    enable_expert_parallel: list[bool] = Field(default_factory=lambda: [False])
    max_num_seqs: list[int] = Field(default_factory=lambda: [128], min_length=1)
    num_speculative_tokens: list[int] = Field(default_factory=lambda: [0, 3], min_length=1)
    adaptive_k: list[bool] = Field(default_factory=lambda: [False])


class Bisection(_Strict):
    rate_min: float = Field(default=0.05, gt=0)
    rate_max: float = Field(default=500.0, gt=0)
    rel_tol: float = Field(default=0.15, gt=0, lt=1)
    max_sims: int = Field(default=5, ge=2, le=40)


class PlanSpec(_Strict):
    name: str = "plan"
    model: Union[str, dict]
    drafts: list[Draft] = Field(default_factory=list)
    workload: dict = Field(default_factory=lambda: {"random_input_len": 512, "random_output_len": 256,
                                                    "random_range_ratio": 0.5, "num_prompts": 200})
    engine: dict = Field(default_factory=dict)
    routing: dict = Field(default_factory=dict)
    slo: PlanSLO
    target_request_rate: Optional[float] = Field(default=None, gt=0)
    load_levels: list[float] = Field(default_factory=list)
    search: Search = Field(default_factory=Search)
    costs: dict[str, float] = Field(default_factory=dict, description="$ per GPU-hour overrides")
    bisection: Bisection = Field(default_factory=Bisection)
    seed: int = 0


def load_plan(path, overrides: list[str] = ()) -> PlanSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such plan file" if not path.exists() else "not a file", source=str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise ConfigError("invalid YAML", source=str(path)) from None
    return parse_plan(data, str(path), overrides)


def parse_plan(data, source: str, overrides: list[str] = ()) -> PlanSpec:
    from .scenario import apply_overrides
    if not isinstance(data, dict):
        raise ConfigError("a plan must be a mapping", source=source)
    apply_overrides(data, overrides, source)
    try:
        return PlanSpec.model_validate(data)
    except ValidationError as exc:
        raise pydantic_error(exc, source) from None


# --- configurations ------------------------------------------------------------------------


def configurations(spec: PlanSpec) -> tuple[list[dict], list[dict]]:
    """(candidate configurations, pruned ones with their reason)."""
    from . import gpu as gpu_mod
    from .scenario import resolve_model
    target = resolve_model(spec.model, "plan", "model")
    drafts = spec.drafts or []
    s = spec.search
    out, pruned = [], []
    for g in s.gpus:
        gpu_mod.load(g, source="plan")          # unknown GPUs are an error, not a pruned row
    for g, total, tp, ep, seqs, k, adaptive in itertools.product(
            s.gpus, s.total_gpus, s.tensor_parallel_size, s.enable_expert_parallel, s.max_num_seqs,
            s.num_speculative_tokens, s.adaptive_k):
        if ep and not target.moe:
            continue                             # EP means nothing for a dense model: not a distinct config
        if adaptive and k == 0:
            continue
        for di, d in enumerate(drafts if k else [None]):
            cfg = {"gpu": g, "total_gpus": total, "tp": tp, "dp": total // tp if tp <= total else 0, "ep": ep,
                   "max_num_seqs": seqs, "k": k, "adaptive": adaptive, "draft": d.model_dump() if d else None,
                   "draft_index": di if d else -1}
            reason = _prune_reason(spec, target, cfg)
            (pruned if reason else out).append({**cfg, "reason": reason} if reason else cfg)
        if k and not drafts:
            pruned.append({"gpu": g, "total_gpus": total, "tp": tp, "k": k, "reason": "k > 0 but no drafts listed"})
    return out, pruned


def _prune_reason(spec, target, cfg) -> str:
    tp, total = cfg["tp"], cfg["total_gpus"]
    if tp > total or total % tp:
        return f"tensor_parallel_size {tp} does not divide total_gpus {total}"
    if target.num_attention_heads % tp:
        return f"{target.num_attention_heads} attention heads are not divisible by TP {tp}"
    if cfg["ep"] and target.moe.num_experts % tp:
        return f"{target.moe.num_experts} experts are not divisible by EP {tp}"
    try:
        from .simulate_cmd import build
        build(scenario_for(spec, cfg, rate=1.0), "plan")
    except ConfigError as exc:
        return str(exc).removeprefix("plan: ")
    return ""


def scenario_for(spec: PlanSpec, cfg: dict, rate: float):
    from .scenario import parse
    wl = {**spec.workload, "request_rate": rate, "seed": spec.seed}
    data = {"name": f"{spec.name}", "model": spec.model,
            "hardware": {"gpu": cfg["gpu"], "tensor_parallel_size": cfg["tp"], "data_parallel_size": cfg["dp"],
                         "enable_expert_parallel": cfg["ep"]},
            "engine": {**spec.engine, "max_num_seqs": cfg["max_num_seqs"]},
            "routing": dict(spec.routing), "workload": wl, "seed": spec.seed,
            "slo": {k: v for k, v in (("ttft_ms", spec.slo.ttft_ms), ("tpot_ms", spec.slo.tpot_ms),
                                      ("e2el_ms", spec.slo.e2el_ms)) if v is not None}}
    if cfg["k"]:
        d = cfg["draft"]
        data["speculative_config"] = {"method": d["method"], "model": d["model"], "acceptance": d["acceptance"],
                                      "num_speculative_tokens": cfg["k"], "adaptive": cfg["adaptive"]}
    return parse(data, "plan")


def config_label(cfg: dict) -> str:
    sd = "SD off" if not cfg["k"] else (f"SD adaptive k<={cfg['k']}" if cfg["adaptive"] else f"SD k={cfg['k']}")
    draft = f" ({cfg['draft']['model']})" if cfg["k"] and cfg.get("draft") and isinstance(cfg["draft"]["model"], str) else ""
    return (f"{cfg['gpu']} x{cfg['total_gpus']} TP{cfg['tp']}{' EP' if cfg['ep'] else ''} DP{cfg['dp']} "
            f"seqs{cfg['max_num_seqs']} {sd}{draft}")


# --- one configuration at one rate, and its max sustainable rate -----------------------------


def evaluate(spec_data: dict, cfg: dict, rate: float) -> dict:
    from .simulate_cmd import build, simulate
    spec = PlanSpec.model_validate(spec_data)
    setup = build(scenario_for(spec, cfg, rate), "plan")
    n = setup.scenario.workload.num_prompts
    # A run whose queue passes the sustain limit below cannot meet the SLOs: stop it there.
    setup.cfg.stop_waiting = int(max(2, 0.05 * n))
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
         "max_waiting": max(int(steps.num_waiting.max()) if len(steps) else 0,
                            setup.cfg.stop_waiting + 1 if stopped else 0)}
    ok = np.ones(len(done), dtype=bool)
    for name, col in (("ttft_ms", "ttft_s"), ("tpot_ms", "tpot_s"), ("e2el_ms", "e2el_s")):
        lim = getattr(spec.slo, name)
        if lim is not None:
            ok &= np.nan_to_num(done[col].values * 1e3, nan=0.0) <= lim
    m["slo_attainment"] = float(ok.sum() / max(len(req), 1))
    sustained = not stopped and m["max_waiting"] <= setup.cfg.stop_waiting
    m["meets_slo"] = bool(sustained and m["failed"] == 0 and all(
        getattr(spec.slo, n) is None or m[n] <= getattr(spec.slo, n) for n in ("ttft_ms", "tpot_ms", "e2el_ms"))
        and m["slo_attainment"] >= spec.slo.goodput_fraction)
    return m


def capacity_estimate(spec: PlanSpec, cfg: dict) -> float:
    """Closed-form upper bound on the sustainable rate (req/s): full batches of max_num_seqs."""
    from . import theory
    from .simulate_cmd import build
    setup = build(scenario_for(spec, cfg, 1.0), "plan")
    wl = setup.scenario.workload
    st = theory.step_times(setup, wl.random_input_len + wl.random_output_len / 2)
    b = cfg["max_num_seqs"]
    k = setup.cfg.k
    tok_s = b * theory.tokens_per_round(setup.acceptance, k) / st.step_s(b, k)
    return cfg["dp"] * tok_s / wl.random_output_len


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
    elif h["max_waiting"] > 2:
        parts.append(f"queue grows to {h['max_waiting']} waiting requests")
    if h["failed"]:
        parts.append(f"{h['failed']} requests failed")
    if not parts:
        parts.append(f"SLO attainment {h['slo_attainment']:.0%} < {spec.slo.goodput_fraction:.0%}")
    return f"SLOs not met even at {h['rate']:.3g} req/s: " + ", ".join(parts)
