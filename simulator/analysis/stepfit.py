"""Fitting the framework step model (simulator/cost/framework.py) to measured TPOTs.

A row is one measured run simulated once with no framework overhead: its zero-overhead TPOT and
its decode steps per batch size with their mean GPU time. Under step-model parameters p the same
steps each take gpu + overhead_p(gpu, batch), so the row's TPOT scales by
sum(n * (g + overhead_p)) / sum(n * g). That makes a fit a cheap least-squares problem instead of
a simulation per trial.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares

from ..cost.framework import FrameworkStep

# (lower, upper) per fitted term, seconds
BOUNDS = {"step_cpu_s": (1e-6, 2e-2), "per_seq_cpu_s": (1e-9, 1e-3), "sync_s": (1e-7, 1e-2)}


def predict_tpot(p: FrameworkStep, tpot0: float, by_batch) -> float:
    """TPOT under ``p`` of a row whose zero-overhead run had TPOT ``tpot0`` and decode steps
    ``by_batch`` = [(batch, steps, mean GPU s)]."""
    base = sum(n * g for _, n, g in by_batch)
    return tpot0 * sum(n * (g + p.overhead_s(g, b)) for b, n, g in by_batch) / base


def fit(rows: list[dict], overlap: bool) -> FrameworkStep:
    """Step CPU, per-sequence CPU and sync that best explain ``rows`` (dicts with ``tpot0``,
    ``by_batch`` and ``measured_tpot``), robust to a few odd runs."""
    # without overlap a step pays CPU + sync: only their sum is identifiable, so sync is folded in
    names = list(BOUNDS) if overlap else ["step_cpu_s", "per_seq_cpu_s"]
    lo = np.log([BOUNDS[k][0] for k in names])
    hi = np.log([BOUNDS[k][1] for k in names])

    def make(x):
        return FrameworkStep(float(np.exp(x[0])), float(np.exp(x[1])), 0.0, overlap,
                             float(np.exp(x[2])) if overlap else 0.0)

    def resid(x):
        p = make(x)
        return [np.log(predict_tpot(p, r["tpot0"], r["by_batch"]) / r["measured_tpot"]) for r in rows]

    # with overlap the loss is flat while the CPU stays under every step's GPU time: start from
    # several CPU costs and keep the best
    starts = [np.log([c, 1e-5, 1e-4][:len(names)]) for c in ((2e-4, 1e-3, 5e-3, 1.5e-2) if overlap else (1e-3,))]
    fits = [least_squares(resid, x0, bounds=(lo, hi), loss="soft_l1", f_scale=0.1) for x0 in starts]
    return make(min(fits, key=lambda f: f.cost).x)


def leave_one_group_out(rows: list[dict], key: str, overlap: bool) -> np.ndarray:
    """|predicted / measured - 1| of every row, each predicted by a fit without its ``key`` group."""
    errs = []
    for g in sorted({r[key] for r in rows}):
        train = [r for r in rows if r[key] != g]
        if not train:
            continue
        p = fit(train, overlap)
        errs += [abs(predict_tpot(p, r["tpot0"], r["by_batch"]) / r["measured_tpot"] - 1) for r in rows if r[key] == g]
    return np.array(errs)
