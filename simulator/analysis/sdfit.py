"""Fitting the speculative round's framework cost (``spec_round_cpu_ms`` + ``draft_pass_cpu_ms`` x
draft passes, simulator/cost/framework.py) to published SD measurements, jointly over sources.

An observation is one measured value of a setup run with SD (throughput, TPOT, ITL, latency, or a
stated speedup), with the setup simulated twice: with no round cost and with ``probe_ms`` per round.
The round cost adds the same time to every speculative step, so a time metric is linear in it and a
rate's inverse is too: x = spec_round + draft_pass x passes predicts every observation without
another simulation. Fits minimise a robust loss on log(predicted / measured); every figure a user
sees is re-simulated with the fitted values.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares

RATE_METRICS = {"throughput_tok_s", "speedup", "slowdown", "speedup_pct_e2e_runtime"}
BOUNDS_MS = (0.0, 20.0)


def predict(o: dict, x_ms) -> np.ndarray:
    """An observation's value when a speculative round costs ``x_ms`` more than in its first run."""
    f = np.asarray(x_ms, dtype=float) / o["probe_ms"]
    if o["metric"] in RATE_METRICS:
        return 1.0 / (1.0 / o["v0"] + (1.0 / o["v1"] - 1.0 / o["v0"]) * f)
    return o["v0"] + (o["v1"] - o["v0"]) * f


def round_ms(p, o: dict) -> float:
    return p[0] + p[1] * o["passes"]


def residuals(p, obs: list[dict]) -> np.ndarray:
    return np.array([np.log(predict(o, round_ms(p, o)) / o["measured"]) for o in obs])


def fit(obs: list[dict]) -> tuple[float, float]:
    """(spec_round_ms, draft_pass_ms) that best explain ``obs``. Both terms need rounds with different
    numbers of draft passes to be told apart; otherwise only the round term is fitted."""
    lo, hi = BOUNDS_MS
    if len({o["passes"] for o in obs}) < 2:
        r = least_squares(lambda a: residuals((a[0], 0.0), obs), [1.0], bounds=([lo], [hi]), loss="soft_l1",
                          f_scale=0.1)
        return float(r.x[0]), 0.0
    starts = ([0.5, 0.1], [3.0, 0.5], [0.1, 1.0])
    fits = [least_squares(residuals, x0, args=(obs,), bounds=([lo, lo], [hi, hi]), loss="soft_l1", f_scale=0.1)
            for x0 in starts]
    best = min(fits, key=lambda r: r.cost)
    return float(best.x[0]), float(best.x[1])


def leave_one_source_out(obs: list[dict]) -> dict:
    """{source: (params fitted without it, or None when the rest is fewer than two setups)}."""
    out = {}
    for s in sorted({o["source"] for o in obs}):
        train = [o for o in obs if o["source"] != s]
        out[s] = fit(train) if len({o["setup"] for o in train}) >= 2 else None
    return out
