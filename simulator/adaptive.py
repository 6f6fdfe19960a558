"""Adaptive speculation length: per engine step, the k in 0..k_max with the most expected tokens/s.

expected tokens/s(k) = B * tokens_per_round(k) / (k * T_D(B) + T_T(B, k + 1)), with step times from
the calibrated cost model (theory.StepTimes, at the batch's mean context) and tokens_per_round from
a running estimate of the per-position acceptance rates the engine has observed so far. k = 0 turns
SD off for that step. A serving engine can run the same rule: it knows its batch size, its
acceptance counters and (from a profile) its step times.
"""

from __future__ import annotations

import math

import numpy as np

from .theory import StepTimes


class AdaptiveK:
    def __init__(self, times: StepTimes, k_max: int, prior_rate: float = 0.7, prior_weight: float = 10.0):
        self.times, self.k_max = times, int(k_max)
        self.prior_rate, self.prior_weight = prior_rate, prior_weight
        self._by_ctx: dict = {}

    def rates(self, reached: np.ndarray, accepted: np.ndarray) -> np.ndarray:
        """Conditional acceptance rate per draft position (``reached[j]``: times position j was drafted
        with all earlier drafts accepted; ``accepted[j]``: times it was accepted too), each shrunk
        toward the previous position's estimate, so unobserved deep positions inherit shallower ones."""
        out = np.empty(self.k_max)
        prev = self.prior_rate
        w = self.prior_weight
        for j in range(self.k_max):
            d = reached[j] if j < len(reached) else 0
            a = accepted[j] if j < len(accepted) else 0
            prev = out[j] = (a + w * prev) / (d + w)
        return out

    def _times(self, ctx: float) -> StepTimes:
        # quarter-octave context buckets: attention time is smooth in context, and a bucket's
        # StepTimes memoises every (B, k) it is asked for
        b = round(4 * math.log2(max(ctx, 1.0)))
        st = self._by_ctx.get(b)
        if st is None:
            st = self._by_ctx[b] = self.times.with_context(2 ** (b / 4))
        return st

    def choose(self, batch: int, ctx: float, reached: np.ndarray, accepted: np.ndarray) -> int:
        if batch <= 0:
            return self.k_max
        tokens = 1.0 + np.concatenate([[0.0], np.cumsum(np.cumprod(self.rates(reached, accepted)))])
        st = self._times(ctx)
        rate = [tokens[k] / st.step_s(batch, k) for k in range(self.k_max + 1)]
        return int(np.argmax(rate))

    __call__ = choose
