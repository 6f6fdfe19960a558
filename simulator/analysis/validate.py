"""Simulate every hardware case in traces/e2e/cases.csv and compare (``moesd validate``).

A case is a measured end-to-end run (source, setup, batch, lengths, SD knobs, measured acceptance
length) and the scenario in traces/e2e/scenarios/ that reproduces its setup. One calibration per
GPU serves all cases; the only per-case inputs are what the source reports.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..common.errors import ConfigError
from ..common.paths import TRACES_DIR
from ..config.scenario import load_scenario
from ..serving.simulation import build, simulate
from .runner import run_many


CASES_FILE = TRACES_DIR / "e2e" / "cases.csv"
SCENARIO_DIR = TRACES_DIR / "e2e" / "scenarios"
FAMILIES = ("dense_decode", "moe_decode", "moe_sd")


def load_cases(path: Path = CASES_FILE) -> pd.DataFrame:
    if not Path(path).exists():
        raise ConfigError("no cases file; run python traces/e2e/derive_cases.py", source=str(path))
    cases = pd.read_csv(path)
    cases["baseline"] = cases.baseline.fillna("").astype(str)
    return cases


def select(cases: pd.DataFrame, spec: str | None) -> pd.DataFrame:
    """Cases by id, family or scenario (comma list); SD cases bring their no-SD baselines."""
    if not spec:
        return cases
    want = {s.strip() for s in spec.split(",") if s.strip()}
    if not want:
        raise ConfigError(f"no case named in {spec!r}; give case ids, families {list(FAMILIES)} or scenarios",
                          field="--cases")
    known = set(cases.case) | set(cases.family) | set(cases.scenario)
    unknown = sorted(want - known)
    if unknown:
        raise ConfigError(f"unknown case {unknown[0]!r}; give case ids, families {list(FAMILIES)} or scenarios "
                          f"{sorted(set(cases.scenario))}", field="--cases")
    sel = cases.case.isin(want) | cases.family.isin(want) | cases.scenario.isin(want)
    sel |= cases.case.isin(set(cases[sel].baseline) - {""})
    return cases[sel]


def case_overrides(c) -> list[str]:
    o = [f"workload.random_input_len={int(c['input_len'])}", f"workload.random_output_len={int(c['output_len'])}",
         f"workload.num_prompts={int(c['num_prompts'])}", f"workload.max_concurrency={int(c['batch_size'])}",
         "workload.request_rate=inf"]
    spread = float(c.get("length_spread") or 0.0)
    # spread 0: every request exactly these lengths; else uniform within +-spread (vllm bench's range ratio)
    o += (["workload.dataset_name=random", f"workload.random_range_ratio={spread}"] if spread
          else ["workload.dataset_name=fixed"])
    k = int(c["num_speculative_tokens"])
    if k:
        o += [f"speculative_config.num_speculative_tokens={k}",
              f"speculative_config.speculative_eagle_topk={max(1, int(c['eagle_topk']))}",
              f"speculative_config.speculative_num_draft_tokens={int(c['num_draft_tokens'])}",
              f"speculative_config.acceptance={{mean_acceptance_length: {float(c['acceptance_length'])}}}"]
    elif (SCENARIO_DIR / f"{c['scenario']}.yaml").read_text().find("speculative_config") >= 0:
        o.append("speculative_config.num_speculative_tokens=0")
    return o


def run_case(job: dict) -> dict:
    """One case through the engine (a runner job)."""
    c = job["case"]
    path = SCENARIO_DIR / f"{c['scenario']}.yaml"
    summary, req, steps = simulate(build(load_scenario(path, case_overrides(c)), str(path)))
    dur = float(summary["duration"])
    total = float(req.input_len.sum() + req.output_len.sum())
    return {"case": c["case"], "sim_latency_s": dur, "sim_total_tok_s": total / dur,
            "sim_output_tok_s": float(summary["output_throughput"]),
            "sim_acceptance_length": summary.get("spec_decode_acceptance_length") or 1.0,
            "sim_mean_step_ms": summary.get("mean_step_ms"), "failed": int(summary["failed"])}


def compare(cases: pd.DataFrame, sims: pd.DataFrame) -> pd.DataFrame:
    t = cases.merge(sims, on="case")
    t["sim_throughput_tok_s"] = np.where(t.throughput_kind == "output", t.sim_output_tok_s, t.sim_total_tok_s)
    t["throughput_err"] = t.sim_throughput_tok_s / t.measured_throughput_tok_s - 1
    t["latency_err"] = t.sim_latency_s / t.measured_latency_s - 1
    by = t.set_index("case")
    base = [b or None for b in t.baseline]
    t["measured_speedup"] = [r.measured_throughput_tok_s / by.measured_throughput_tok_s[b] if b else np.nan
                             for r, b in zip(t.itertuples(), base)]
    t["sim_speedup"] = [r.sim_throughput_tok_s / by.sim_throughput_tok_s[b] if b else np.nan
                        for r, b in zip(t.itertuples(), base)]
    t["sd_sign_right"] = np.where(t.measured_speedup.notna(),
                                  (t.measured_speedup > 1) == (t.sim_speedup > 1), np.nan)
    return t


def stats(t: pd.DataFrame) -> dict:
    def agg(g):
        thr, lat = g.throughput_err.abs(), g.latency_err.abs().dropna()
        sd = g[g.sd_sign_right.notna()]
        return {"cases": int(len(g)),
                "throughput_median_abs_err": float(thr.median()), "throughput_p90_abs_err": float(thr.quantile(0.9)),
                "latency_median_abs_err": float(lat.median()) if len(lat) else None,
                "latency_p90_abs_err": float(lat.quantile(0.9)) if len(lat) else None,
                "sd_cases": int(len(sd)), "sd_sign_right": int(sd.sd_sign_right.astype(bool).sum())}
    out = {"overall": agg(t)}
    for fam, g in t.groupby("family"):
        out[fam] = agg(g)
    for scen, g in t.groupby("scenario"):
        out[f"scenario:{scen}"] = agg(g)
    return out


def validate(spec: str | None = None, workers=None, executor="local", address=None, cache_dir=None,
             progress=True) -> tuple[pd.DataFrame, dict]:
    cases = select(load_cases(), spec)
    jobs = [{"case": {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}}
            for r in cases.to_dict("records")]
    sims = pd.DataFrame(run_many(run_case, jobs, workers, executor, address, cache_dir, desc="validate",
                                 progress=progress))
    t = compare(cases, sims)
    return t, stats(t)
