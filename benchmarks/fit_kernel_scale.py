"""Fit each framework's serving-path kernel time (``kernel_time_scale`` in workloads/frameworks.yaml)
on AIConfigurator's measured serving runs, per GPU architecture, scored leaving one model out.

Why a scale: a framework's kernel tables time each GEMM and fused MoE as a separate op; its serving
path may run the same layers faster (TensorRT-LLM picks tactics with its autotuner and fuses the
activation quantisation into the op before; its collector times fixed tactics, e.g. NVFP4 GEMMs at
~21 us for any N at K=8192 and 4 tokens on B200). The scale multiplies every GEMM and MoE kernel time
of the framework on that architecture; attention, communication and the CPU side are untouched.

How: each expressible row of the framework (a stratified sample: up to --per-group rows per (model,
mode, GPU), seeded) is simulated at scale 1 and 0.5; a row's TPOT is linear in the scale between and
around them (its batch is set by the client's concurrency). Per architecture, the scale minimises the
median |log(simulated / measured TPOT)|; each model's rows are predicted by a fit that never saw
that model (same-architecture checkpoints, e.g. DeepSeek-R1 and its NVFP4 release, are one model).
An architecture with rows of fewer than two models gets no scale (nothing to hold out).

    python benchmarks/fit_kernel_scale.py [--framework trtllm,sglang] [--per-group 12] [--workers N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.analysis import silicon                  # noqa: E402
from simulator.analysis.runner import run_many          # noqa: E402
from simulator.config.gpu import load as load_gpu       # noqa: E402

SCALES = np.round(np.arange(0.20, 1.501, 0.01), 2)
LOW = 0.5                 # the second simulated scale


def sample(df: pd.DataFrame, framework: str, per_group: int, seed: int = 0) -> pd.DataFrame:
    rows = df[df.backend == framework]
    rows = rows[[silicon.classify(r) == "" for r in rows.to_dict("records")]]
    keep = []
    for _, g in rows.groupby(["model_path", "mode", "system"], sort=True):
        keep += list(g.sample(min(len(g), per_group), random_state=seed).index)
    out = rows.loc[sorted(keep)].copy()
    out["arch_model"] = [silicon.MODELS[m] for m in out.model_path]
    out["gpu_arch"] = [load_gpu(s).architecture for s in out.system]
    return out.reset_index(drop=True)


def simulate(rows: pd.DataFrame, workers) -> pd.DataFrame:
    jobs = []
    for scale in (1.0, LOW):
        for r in rows.to_dict("records"):
            sc = silicon.scenario(r)
            sc["engine"]["kernel_time_scale"] = scale
            jobs.append({"id": f"{r['id']}@{scale}", "scenario": sc})
    res = run_many(silicon.simulate_row, jobs, workers, "local", None, None, "rows x 2 scales", True)
    n = len(rows)
    out = rows.copy()
    for i, tag in enumerate(("1", "low")):
        part = res[i * n:(i + 1) * n]
        out[f"tpot_{tag}"] = [p.get("sim_tpot_ms") for p in part]
        out[f"ttft_{tag}"] = [p.get("sim_ttft_ms") for p in part]
    ok = out[["tpot_1", "tpot_low", "ttft_1", "ttft_low"]].notna().all(axis=1) & (out.silicon_tpot_ms > 0)
    return out[ok].reset_index(drop=True)


def at(t: pd.DataFrame, metric: str, scale: float) -> np.ndarray:
    hi, lo = t[f"{metric}_1"].to_numpy(float), t[f"{metric}_low"].to_numpy(float)
    return hi + (scale - 1.0) * (hi - lo) / (1.0 - LOW)


def loss(t: pd.DataFrame, scale: float) -> float:
    return float(np.median(np.abs(np.log(np.maximum(at(t, "tpot", scale), 1e-6) / t.silicon_tpot_ms.to_numpy(float)))))


def fit(t: pd.DataFrame) -> float:
    return float(min(SCALES, key=lambda s: loss(t, s)))


def err(t: pd.DataFrame, metric: str, scale: float) -> np.ndarray:
    meas = t[f"silicon_{metric}_ms"].to_numpy(float)
    return at(t, metric, scale) / meas - 1.0


def report(fw: str, t: pd.DataFrame) -> None:
    for arch, g in t.groupby("gpu_arch", sort=True):
        models = sorted(g.arch_model.unique())
        base = np.abs(err(g, "tpot", 1.0))
        print(f"\n{fw} on {arch}: {len(g)} rows, {len(models)} models ({', '.join(models)})")
        if len(models) < 2:
            print(f"  one model only: no scale (median TPOT error at 1.0: {np.median(base):.1%})")
            continue
        s_all = fit(g)
        held = np.zeros(len(g))
        held_ttft = np.full(len(g), np.nan)
        print(f"  {'held-out model':<22} {'rows':>4} {'scale':>6} {'TPOT at 1.0':>12} {'held out':>9} {'signed':>7}")
        for m in models:
            te = (g.arch_model == m).to_numpy()
            s = fit(g[~te])
            e = err(g[te], "tpot", s)
            held[te] = e
            held_ttft[te] = err(g[te], "ttft", s)
            print(f"  {m:<22} {te.sum():>4} {s:>6.2f} {np.median(base[te]):>12.1%} {np.median(np.abs(e)):>9.1%} "
                  f"{np.median(e):>+7.1%}")
        a = np.abs(held)
        tt0 = np.abs(err(g, "ttft", 1.0))
        print(f"  leave-one-model-out TPOT: median {np.median(a):.1%}, p90 {np.percentile(a, 90):.1%} "
              f"(at 1.0: {np.median(base):.1%}, p90 {np.percentile(base, 90):.1%}); TTFT median "
              f"{np.nanmedian(np.abs(held_ttft)):.1%} (at 1.0: {np.median(tt0):.1%})")
        print(f"  adopted: kernel_time_scale {arch}: {s_all:.2f} (fitted on all {len(g)} rows, {len(models)} models)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--framework", default="trtllm,sglang")
    ap.add_argument("--silicon", default=str(silicon.training_file()))
    ap.add_argument("--per-group", type=int, default=12)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    path = Path(args.silicon)
    if not path.is_file():
        print(f"{path}: not found (needs ../shared)")
        return 1
    df = silicon.load_rows(path)
    for fw in args.framework.split(","):
        rows = sample(df, fw, args.per_group)
        print(f"{fw}: {len(rows)} rows sampled (up to {args.per_group} per model, mode and GPU)")
        report(fw, simulate(rows, args.workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
