"""Simulating the setups of an SD table (:mod:`simulator.analysis.sdtable`) with and without SD, and
comparing each row's measured values and speedup with the simulated ones: per row, per source, per
framework."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..config.scenario import parse
from ..common.errors import ConfigError
from ..serving.simulation import build, simulate
from .runner import run_many
from ..common.cells import number
from .sdtable import HIGHER_BETTER, SPEEDUP_METRICS, framework_of, load, needs_base, setup_key, setups


def simulate_setup(job: dict) -> dict:
    """Output throughput, mean TPOT/ITL/latency and duration of one setup with and without SD."""
    out = {}
    for arm in ("sd", "base"):
        sc = dict(job["scenario"])
        if arm == "base":
            if not job["need_base"]:
                continue
            sc.pop("speculative_config")
        try:
            summary, _, _ = simulate(build(parse(sc, f"sd-table row {job['id']}")))
        except ConfigError as exc:
            return {"blocked": exc.message}
        out[arm] = {"throughput_tok_s": summary["output_throughput"], "tpot_ms": summary.get("mean_tpot_ms"),
                    "itl_ms": summary.get("mean_itl_ms"), "latency_s": (summary.get("mean_e2el_ms") or 0) / 1e3,
                    "median_tpot_ms": summary.get("median_tpot_ms"), "duration_s": summary["duration"],
                    "acceptance_length": summary.get("spec_decode_acceptance_length")}
    return out


def measured_speedup(metric: str, base, sd) -> float | None:
    """SD speedup a row's values state (base/SD for times, SD/base for rates); None for an ITL."""
    if metric == "speedup":
        return sd
    if metric == "slowdown":
        return 1.0 / sd if sd else None
    if metric == "speedup_pct_e2e_runtime":
        return 1.0 + sd / 100.0
    if metric == "itl_ms" or base is None or not sd:
        return None     # with SD an ITL is per verify step: its ratio is not the speedup
    return sd / base if metric in HIGHER_BETTER else base / sd


def sim_value(sim: dict, metric: str, unit: str):
    """The simulated figure a row's metric and unit name (mean or median TPOT, request latency or
    the whole run's time)."""
    if metric == "latency_ms":
        return sim["latency_s"] * 1e3 if "avg" in unit or "mean" in unit else sim["duration_s"] * 1e3
    if metric == "latency_s":
        return sim["duration_s"] if "total" in unit else sim["latency_s"]
    if metric == "tpot_ms" and "median" in unit:
        return sim["median_tpot_ms"]
    return sim.get(metric)


def compare_row(r: dict, sims: dict) -> dict:
    """Measured vs simulated values and SD speedup of one row."""
    metric, unit = r["metric"], r["unit"].lower()
    base, sd = number(r["baseline_value"]), number(r["sd_value"])
    out = {"measured_base": base, "measured_sd": sd, "sim_base": None, "sim_sd": None,
           "measured_speedup": measured_speedup(metric, base, sd), "sim_speedup": None}
    s_sd, s_base = sims.get("sd"), sims.get("base")
    if metric in SPEEDUP_METRICS:
        if s_sd and s_base:
            out["sim_speedup"] = s_sd["throughput_tok_s"] / s_base["throughput_tok_s"]
    else:
        out["sim_sd"] = sim_value(s_sd, metric, unit) if s_sd else None
        out["sim_base"] = sim_value(s_base, metric, unit) if s_base and base is not None else None
        if out["measured_speedup"] is not None and out["sim_base"] and out["sim_sd"]:
            out["sim_speedup"] = measured_speedup(metric, out["sim_base"], out["sim_sd"])
    for arm in ("sd", "base"):
        m, s = out[f"measured_{arm}"], out[f"sim_{arm}"]
        out[f"{arm}_err"] = s / m - 1.0 if (s is not None and m) and metric not in SPEEDUP_METRICS else None
    ms, ss = out["measured_speedup"], out["sim_speedup"]
    out["speedup_err"] = ss / ms - 1.0 if ms and ss else None
    # the sign counts where the measurement is clearly on one side of 1.0 (by more than 3%)
    out["sign_right"] = (bool((ms > 1) == (ss > 1)) if abs(ms - 1) > 0.03 else None) if ms and ss else None
    return out


def validate_sd_table(path: Path, assume: Path | None = None, source: str | None = None, workers=None,
                      executor="local", address=None, cache_dir=None, progress=True) -> tuple[pd.DataFrame, dict]:
    """(per-row table, summary) of every row of ``path`` (those whose source contains ``source``)."""
    rows, applied = load(path, assume, source)
    groups = setups(rows)
    described = {k: d for k, (_, d) in groups.items()}
    keys = [k for k, (_, (sc, _, _)) in groups.items() if sc is not None]
    jobs = [{"id": groups[k][0][0]["row"], "scenario": groups[k][1][0], "need_base": needs_base(groups[k][0])}
            for k in keys]
    sims = dict(zip(keys, run_many(simulate_setup, jobs, workers, executor, address, cache_dir, "sd-table setups",
                                   progress)))
    out = []
    for r in rows:
        key = setup_key(r)
        sc, blocked, note = described[key]
        res = sims.get(key, {})
        blocked = blocked or res.get("blocked", "")
        fw = framework_of(r["framework"]) or r["framework"]
        rec = {"row": r["row"], "source": r["source"], "framework": fw, "gpu": r["gpu"], "model": r["target_model"],
               "draft_method": r["draft_method"], "k": r["k"], "concurrency": r["batch_or_concurrency"],
               "metric": r["metric"], "expressible": not blocked, "blocked_by": blocked,
               "assumption": "; ".join(x for x in (applied.get(r["row"], ""), "" if blocked else note) if x)}
        rec.update(compare_row(r, res) if not blocked else
                   {"measured_base": number(r["baseline_value"]), "measured_sd": number(r["sd_value"])})
        out.append(rec)
    t = pd.DataFrame(out)
    return t, summarize(t)


def _abs(s) -> pd.Series:
    return s.dropna().astype(float).abs() if s is not None else pd.Series(dtype=float)


def _group_stats(g: pd.DataFrame) -> dict:
    sp = _abs(g.get("speedup_err"))
    thr = g[g.metric == "throughput_tok_s"]
    tpot = g[g.metric == "tpot_ms"]
    val = lambda x: pd.concat([_abs(x.get("sd_err")), _abs(x.get("base_err"))])  # noqa: E731
    sign = g["sign_right"].dropna() if "sign_right" in g else pd.Series(dtype=bool)
    med = lambda s: float(s.median()) if len(s) else None  # noqa: E731
    return {"rows": int(len(g)), "speedup_rows": int(len(sp)), "speedup_median_abs_error": med(sp),
            "speedup_p90_abs_error": float(np.percentile(sp, 90)) if len(sp) else None,
            "throughput_median_abs_error": med(val(thr)), "tpot_median_abs_error": med(val(tpot)),
            "sign_rows": int(len(sign)), "sign_right": float(sign.astype(bool).mean()) if len(sign) else None}


def summarize(t: pd.DataFrame) -> dict:
    ok = t[t.expressible]
    s = {"rows": int(len(t)), "expressible": int(len(ok)), **{k: v for k, v in _group_stats(ok).items() if k != "rows"}}
    s["blocked"] = {str(k): int(v) for k, v in t[~t.expressible].blocked_by.value_counts().items()}
    s["by_source"] = {str(k): _group_stats(g) for k, g in ok.groupby("source")}
    s["by_framework"] = {str(k): _group_stats(g) for k, g in ok.groupby("framework")}
    cols = ["row", "source", "metric", "expressible", "blocked_by", "assumption", "measured_base", "measured_sd",
            "sim_base", "sim_sd", "measured_speedup", "sim_speedup", "speedup_err", "sign_right"]
    s["per_row"] = [{c: (None if (v := rec.get(c)) is None or (isinstance(v, float) and not np.isfinite(v)) else v)
                     for c in cols} for rec in t.to_dict("records")]
    return s
