"""How the project's own GPU traces (``moesd profile``, torch kernels) compare with the cost model
calibrated on AIConfigurator's vLLM traces, and whether H100 -> H200 transfer holds.

1. H100: measured (ours) / predicted (h100_sxm model, warm L2 as both collectors time) per op:
   the kernel-implementation gap between torch (cuBLAS, CUTLASS grouped GEMM, SDPA) and vLLM
   (Triton fused MoE, FA3).
2. H200 vs H100 on the same shapes and the same code: the measured ratio against the ratio the
   transferred h200_sxm model predicts. This isolates what differs between the GPUs (bandwidth,
   capacity), the part the transfer must get right.

    python benchmarks/profile_compare.py [--traces traces/kernels]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from simulator.cost import traces
from simulator.cost.costmodel import CostModel
from simulator.cost.routing import collector_counts

KEYS = {"gemm": ["m", "n", "k"],
        "moe": ["num_tokens", "hidden_size", "inter_size", "num_experts", "topk", "moe_tp_size", "distribution"],
        "attention_generation": ["batch_size", "step", "num_heads", "num_key_value_heads", "head_dim"],
        "attention_context": ["batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim"]}


def predict(cm: CostModel, op: str, r) -> float:
    if op == "gemm":
        return cm.gemm(int(r.m), int(r.n), int(r.k)).latency_s
    if op == "moe":
        c = collector_counts(int(r.num_tokens), int(r.num_experts), int(r.topk), 1, r.distribution,
                             np.random.default_rng(0))
        return cm.moe_from_counts(c, int(r.hidden_size), int(r.inter_size), int(r.topk), int(r.moe_tp_size)).latency_s
    if op == "attention_generation":
        return cm.attention_decode(int(r.batch_size), int(r.step), int(r.num_heads), int(r.num_key_value_heads),
                                   int(r.head_dim)).latency_s
    return cm.attention_prefill(int(r.batch_size), int(r.isl), int(r.num_heads), int(r.num_key_value_heads),
                                int(r.head_dim)).latency_s


def stats(x) -> str:
    x = np.asarray(x)
    return f"{np.median(x):6.2f} [{np.percentile(x, 10):5.2f}, {np.percentile(x, 90):5.2f}]"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", default="traces/kernels")
    args = ap.parse_args()
    root = Path(args.traces)
    h100, h200 = CostModel("h100_sxm", l2_warm=True), CostModel("h200_sxm", l2_warm=True)
    print("1. ours (torch) / model calibrated on vLLM kernels, H100: median [p10, p90] of the ratio")
    for op in KEYS:
        df = traces.load(root, "h100_sxm", op)
        pred = np.array([predict(h100, op, r) for r in df.itertuples()])
        ratio = df.latency_ms.values / 1e3 / pred
        extra = ""
        if op == "moe":
            extra = "  " + ", ".join(f"{d}: {np.median(ratio[df.distribution == d]):.2f}"
                                     for d in sorted(df.distribution.unique()))
        print(f"  {op:<22} rows={len(df):>4}  {stats(ratio)}{extra}")
    print("2. H200/H100 latency ratio, same shapes and code: measured vs transferred model")
    for op in KEYS:
        a, b = traces.load(root, "h100_sxm", op), traces.load(root, "h200_sxm", op)
        j = a.merge(b, on=KEYS[op], suffixes=("_h100", "_h200"))
        meas = j.latency_ms_h200.values / j.latency_ms_h100.values
        ra = j.rename(columns=lambda c: c[:-5] if c.endswith("_h100") else c)
        pa = np.array([predict(h100, op, r) for r in ra.itertuples()])
        pb = np.array([predict(h200, op, r) for r in ra.itertuples()])
        err = np.abs((pb / pa) / meas - 1)
        print(f"  {op:<22} shapes={len(j):>4}  measured {stats(meas)}  predicted {stats(pb / pa)}  "
              f"|error| median {np.median(err):.1%} p90 {np.percentile(err, 90):.1%}")
    e = pd.concat([pd.read_csv(p) for p in sorted(root.parent.glob("e2e/*_e2e_forward.csv"))])
    e = e[(e.tp == 1) & e.q_len.isin([1, 4])]
    p = e.pivot_table(index=["model", "batch_size"], columns=["gpu", "q_len"], values="latency_per_layer_ms")
    print("3. end-to-end decoder layer, TP1, ms per layer, and H200/H100 ratio (q_len 1)")
    p[("ratio", "q1")] = p[("h200_sxm", 1)] / p[("h100_sxm", 1)]
    print(p.round(3).to_string())


if __name__ == "__main__":
    main()
