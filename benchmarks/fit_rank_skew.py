"""Fit the framework step model's TP/EP worker synchronisation (``rank_skew`` in
workloads/frameworks.yaml) on AIConfigurator's measured serving runs, per GPU architecture, scored
leaving one model out.

Why: the kernel tables time each collective with the ranks in lockstep (AIConfigurator's collector
interleaves its all-reduces with dummy compute in one CUDA graph so that no rank waits). In a serving
step each rank's GPU time between collectives varies a little, and every collective ends with the
slowest rank. With a relative spread s of that time, a step over n ranks waits about the expected
maximum of n such deviations, s * sqrt(2 ln n) of its GPU time: one parameter per GPU architecture,
shared by the frameworks (what differs between them, the CPU side and the kernels, has its own terms).
Measured against the simulated step, the TPOT the H100 rows miss grows with the step's GPU time
(about 6-12% of it at TP 8 from 16 to 128 users), not with the number of collectives alone.

How: the expressible rows with a collective (TP > 1 or EP > 1; a stratified sample, up to
--per-group rows per (model, backend, GPU, TP), seeded) are simulated at s = 0 and s = 0.1; a row's
TPOT is linear in s (every step pays s * sqrt(2 ln n) of its GPU time). Per architecture s minimises
the median |log(simulated / measured TPOT)| over a grid; each model's rows are predicted by a fit that
never saw that model (same-architecture checkpoints are one model).

    python benchmarks/fit_rank_skew.py [--per-group 8] [--workers N]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from simulator.analysis import silicon                  # noqa: E402
from simulator.cost.forward import Parallel             # noqa: E402
from simulator.serving.simulation import synced_ranks  # noqa: E402
from fit_kernel_scale import silicon_args, simulate_variants, stratified   # noqa: E402

PROBE = 0.1
GRID = np.round(np.arange(0.0, 0.3001, 0.0025), 4)


def sample(df: pd.DataFrame, per_group: int, seed: int = 0) -> pd.DataFrame:
    """The expressible rows whose workers synchronise more than one GPU (any pool), stratified."""
    rows = df[[silicon.classify(r) == "" for r in df.to_dict("records")]].copy()
    ranks = []
    for r in rows.to_dict("records"):
        pre = ("prefill_", "decode_") if r["mode"] == "disagg" else ("",)
        dense = silicon._arch(silicon.MODELS[str(r["model_path"])]).moe is None
        lays = [silicon.layout(r, p, dense)[0] for p in pre]
        ranks.append(max(synced_ranks(Parallel(l["tensor_parallel_size"], bool(l.get("enable_expert_parallel")),
                                                 data_parallel_size=l["data_parallel_size"],
                                                 moe_tensor_parallel_size=l.get("moe_tensor_parallel_size", 0)))
                         for l in lays))
    rows["ranks"] = ranks
    return stratified(rows[rows.ranks > 1], ["model_path", "backend", "system", "tp_size"], per_group, seed)


def simulate(rows: pd.DataFrame, workers) -> pd.DataFrame:
    out = simulate_variants(rows, {"0": {"rank_skew": 0.0}, "p": {"rank_skew": PROBE}}, workers, "rows x 2 skews")
    ok = out[["tpot_0", "tpot_p"]].notna().all(axis=1) & (out.silicon_tpot_ms > 0)
    return out[ok].reset_index(drop=True)


def at(t: pd.DataFrame, metric: str, skew) -> np.ndarray:
    """A row's metric at ``skew`` (broadcast over a grid of skews against the rows)."""
    a, b = (t[f"{metric}_{k}"].to_numpy(float) for k in ("0", "p"))
    return a + np.multiply.outer(np.asarray(skew, float) / PROBE, b - a)


def fit(t: pd.DataFrame) -> float:
    pred = at(t, "tpot", GRID)
    loss = np.median(np.abs(np.log(np.maximum(pred, 1e-6) / t.silicon_tpot_ms.to_numpy(float))), axis=-1)
    return float(GRID[int(np.argmin(loss))])


def err(t: pd.DataFrame, metric: str, skew: float) -> np.ndarray:
    return at(t, metric, skew) / t[f"silicon_{metric}_ms"].to_numpy(float) - 1.0


def report(t: pd.DataFrame) -> None:
    for arch, g in t.groupby("gpu_arch", sort=True):
        models = sorted(g.arch_model.unique())
        print(f"\n{arch}: {len(g)} rows, {len(models)} models, backends {', '.join(sorted(g.backend.unique()))}")
        if len(models) < 2:
            print("  one model only: nothing to hold out, no fit")
            continue
        held = np.zeros(len(g))
        print(f"  {'held-out model':<22} {'rows':>4} {'at 0':>7} | {'skew':>8} {'held out':>8} {'signed':>7}")
        for m in models:
            te = (g.arch_model == m).to_numpy()
            s = fit(g[~te])
            held[te] = err(g[te], "tpot", s)
            base = np.abs(err(g[te], "tpot", 0.0))
            print(f"  {m:<22} {te.sum():>4} {np.median(base):>7.1%} | {s:>8.4f} {np.median(np.abs(held[te])):>8.1%} "
                  f"{np.median(held[te]):>+7.1%}")
        s = fit(g)
        base, final = err(g, "tpot", 0.0), err(g, "tpot", s)
        print(f"  leave-one-model-out TPOT: median {np.median(np.abs(held)):.1%}, p90 {np.percentile(np.abs(held), 90):.1%}"
              f" (at 0: {np.median(np.abs(base)):.1%}, p90 {np.percentile(np.abs(base), 90):.1%})")
        for key, h in g.assign(h=np.abs(held), b=np.abs(base)).groupby(["backend", "tp_size"]):
            print(f"    {key[0]:<7} tp {int(key[1]):>2}: {len(h):>3} rows  held out {h.h.median():6.1%}  at 0 {h.b.median():6.1%}")
        tt = g.ttft_0.notna() & g.ttft_p.notna()
        print(f"  TTFT at the fit: {np.median(np.abs(err(g[tt], 'ttft', s))):.1%} (at 0: {np.median(np.abs(err(g[tt], 'ttft', 0.0))):.1%})")
        print(f"  fitted on all {len(g)} rows, {len(models)} models: rank_skew {arch}: {s:.4f} "
              f"(in-sample TPOT {np.median(np.abs(final)):.1%})")


def main() -> int:
    got = silicon_args(8)
    if got is None:
        return 1
    args, df = got
    rows = sample(df, args.per_group)
    print(f"{len(rows)} rows with a collective sampled (up to {args.per_group} per model, backend, GPU and TP)")
    report(simulate(rows, args.workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
