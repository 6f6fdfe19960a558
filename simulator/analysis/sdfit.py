"""Fitting the speculative round's framework cost (``spec_round_cpu_ms`` + ``draft_pass_cpu_ms`` x
draft passes, simulator/cost/framework.py) to published SD measurements, jointly over sources and
frameworks.

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


def fit_frameworks(obs: list[dict]) -> dict:
    """{framework: (spec_round_ms, draft_pass_ms)} fitted together: a round cost per framework, one
    draft-pass cost for all. A draft pass's CPU side is the same work in every engine (a CUDA-graph
    replay of the draft plus its input preparation; fitted apart, vLLM's and SGLang's came out 0.425
    and 0.415 ms), while the round's (verification, rejection sampling, tree building) is each
    engine's own. Pooled, the pass is set by every source: a source left out no longer leaves its
    framework's pass to the one or two others. Both terms need rounds with different numbers of draft
    passes to be told apart; otherwise only the rounds are fitted. A framework with fewer than two
    setups is not fitted (no constant from a single case)."""
    setups: dict = {}
    for o in obs:
        setups.setdefault(o["framework"], set()).add(o["setup"])
    fws = sorted(f for f, s in setups.items() if len(s) >= 2)
    obs = [o for o in obs if o["framework"] in fws]
    if not obs:
        return {}
    col = {f: i for i, f in enumerate(fws)}
    which, passes = np.array([col[o["framework"]] for o in obs]), np.array([o["passes"] for o in obs], float)
    shared = len(set(passes)) >= 2

    def res(p):
        return residuals_at(p[which] + (p[-1] * passes if shared else 0.0), obs)

    lo, hi = BOUNDS_MS
    n = len(fws) + shared
    starts = ((0.5, 0.1), (3.0, 0.5), (0.1, 1.0)) if shared else ((1.0, None),)
    fits = [least_squares(res, [a] * len(fws) + ([b] if shared else []), bounds=([lo] * n, [hi] * n),
                          loss="soft_l1", f_scale=0.1) for a, b in starts]
    best = min(fits, key=lambda r: r.cost)
    return {f: (float(best.x[col[f]]), float(best.x[-1]) if shared else 0.0) for f in fws}


def residuals_at(x_ms: np.ndarray, obs: list[dict]) -> np.ndarray:
    """log(predicted / measured) of each observation at its own round cost ``x_ms``."""
    return np.array([np.log(predict(o, x) / o["measured"]) for o, x in zip(obs, x_ms)])


def leave_one_source_out(obs: list[dict]) -> dict:
    """{source: (its framework's params fitted without it, or None when the rest of its framework is
    fewer than two setups)}: every framework refitted together on the other sources."""
    out = {}
    for s in sorted({o["source"] for o in obs}):
        fw = next(o["framework"] for o in obs if o["source"] == s)
        out[s] = fit_frameworks([o for o in obs if o["source"] != s]).get(fw)
    return out
