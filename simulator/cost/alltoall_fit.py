"""Fit expert-parallel dispatch + combine (:mod:`.network`) on AIConfigurator's DeepEP tables.

Per GPU and mode (low-latency for decode, normal for prefill) two numbers, a latency and an NVLink
efficiency, on the single-node rows of the newest collected version; one network efficiency, shared
by all GPUs (the NIC, not the GPU, sets it), on the multi-node rows. Accuracy is reported leaving
one hidden size out: each size predicted by a fit that never saw it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.optimize import least_squares

from ..common.versions import version_key
from . import network

TABLES = {"ll": "wideep_deepep_ll_perf.parquet", "normal": "wideep_deepep_normal_perf.parquet"}


def _tables(gpu_dir: Path, mode: str) -> list[pd.DataFrame]:
    """Every collected version of a mode's table, newest first."""
    root = gpu_dir / "comm" / "sglang"
    if not root.is_dir():
        return []
    vers = sorted((p for p in root.iterdir() if (p / TABLES[mode]).is_file()), key=lambda p: version_key(p.name),
                  reverse=True)
    return [pd.read_parquet(p / TABLES[mode]).assign(version=p.name) for p in vers]


def _measured_s(df: pd.DataFrame, mode: str) -> pd.DataFrame:
    """One time per shape: dispatch + combine; normal mode at its fastest SM setting (the tuned one)."""
    if mode == "ll":
        t = (df.dispatch_avg_t_us + df.combine_avg_t_us) * 1e-6
    else:
        t = (df.dispatch_transmit_us + df.dispatch_notify_us + df.combine_transmit_us + df.combine_notify_us) * 1e-6
    keys = ["node_num", "hidden_size", "num_token", "num_topk", "num_experts"]
    return df.assign(t_s=t).groupby(keys, as_index=False).t_s.min()


def _gpus_per_node(gpu_dir: Path) -> int:
    sysf = gpu_dir / "system.yaml"
    return int(yaml.safe_load(sysf.read_text())["node"]["num_gpus_per_node"]) if sysf.is_file() else 8


def _predict(hw, p, df, ep, eff_inter) -> np.ndarray:
    """The model's dispatch + combine time of each row with latency/efficiency ``p``."""
    fit = {"ll": {"latency_s": p[0], "eff_link": p[1]}, "eff_inter": eff_inter}
    return np.array([network.dispatch_combine_s(hw, fit, [t], int(k), int(h), int(e), "ll")[0]
                     for t, k, h, e in zip(df.num_token.values, df.num_topk.values, df.hidden_size.values, ep)])


def _fit(hw, df, ep, eff_inter) -> np.ndarray:
    y = df.t_s.values

    def resid(p):
        return np.log(_predict(hw, (p[0], p[1]), df, ep, eff_inter) / y)
    r = least_squares(resid, x0=[1e-5, 0.3], bounds=([0.0, 0.01], [1e-3, 1.0]))
    return r.x


def fit_gpu(traces_dir: Path, hw, eff_inter: float = 1.0) -> dict | None:
    """{ll, normal}: latency, efficiency, rows, version, LOSO median error; None without tables."""
    gpu_dir = Path(traces_dir) / "kernels" / "aiconfigurator" / hw.name
    per_node = _gpus_per_node(gpu_dir)
    out = {}
    for mode in TABLES:
        frames = _tables(gpu_dir, mode)
        if not frames:
            return None
        df = _measured_s(frames[0], mode)
        df = df[df.node_num == 1]
        ep = np.full(len(df), per_node)
        p = _fit(hw, df, ep, eff_inter)
        errs = []
        for h in sorted(df.hidden_size.unique()):
            tr, te = df.hidden_size != h, df.hidden_size == h
            q = _fit(hw, df[tr], ep[tr.values], eff_inter)
            errs.extend(np.abs(_predict(hw, q, df[te], ep[te.values], eff_inter) / df[te].t_s.values - 1))
        out[mode] = {"latency_s": float(f"{p[0]:.4g}"), "eff_link": float(f"{p[1]:.4g}"), "rows": int(len(df)),
                     "version": frames[0].version.iloc[0], "ranks": per_node,
                     "loso_median_abs_err": round(float(np.median(errs)), 4)}
    return out


def fit_inter(traces_dir: Path, hw, fit: dict) -> tuple:
    """(network efficiency, rows, median abs error) on the multi-node low-latency rows of ``hw``."""
    gpu_dir = Path(traces_dir) / "kernels" / "aiconfigurator" / hw.name
    rows = [_measured_s(f, "ll") for f in _tables(gpu_dir, "ll")]
    df = pd.concat([r[r.node_num > 1] for r in rows]) if rows else pd.DataFrame()
    if df.empty:
        return None
    per_node = _gpus_per_node(gpu_dir)
    ep = df.node_num.values * per_node
    p = (fit["ll"]["latency_s"], fit["ll"]["eff_link"])

    def resid(x):
        return np.log(_predict(hw, p, df, ep, x[0]) / df.t_s.values)
    e = float(least_squares(resid, x0=[0.5], bounds=([0.01], [1.0])).x[0])
    err = float(np.median(np.abs(_predict(hw, p, df, ep, e) / df.t_s.values - 1)))
    return e, int(len(df)), err
