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

    def rates(self, reached, accepted) -> list:
        """Conditional acceptance rate per draft position (``reached[j]``: times position j was drafted
        with all earlier drafts accepted; ``accepted[j]``: times it was accepted too), each shrunk
        toward the previous position's estimate, so unobserved deep positions inherit shallower ones."""
        reached, accepted = list(reached), list(accepted)
        out = []
        prev = self.prior_rate
        w = self.prior_weight
        for j in range(self.k_max):
            d = float(reached[j]) if j < len(reached) else 0.0
            a = float(accepted[j]) if j < len(accepted) else 0.0
            prev = (a + w * prev) / (d + w)
            out.append(prev)
        return out

    def _step_s(self, batch: int, ctx: float) -> list:
        """Step time for k = 0..k_max at this batch, on quarter-octave context buckets: attention
        time is smooth in context."""
        key = (batch, round(4 * math.log2(max(ctx, 1.0))))
        hit = self._by_ctx.get(key)
        if hit is None:
            st = self.times.with_context(2 ** (key[1] / 4))
            hit = self._by_ctx[key] = [st.step_s(batch, k) for k in range(self.k_max + 1)]
        return hit

    def choose(self, batch: int, ctx: float, reached: np.ndarray, accepted: np.ndarray) -> int:
        if batch <= 0:
            return self.k_max
        step_s = self._step_s(batch, ctx)
        best_k, best = 0, 1.0 / step_s[0]
        run = prod = 0.0
        for k, r in enumerate(self.rates(reached, accepted), start=1):
            prod = r if k == 1 else prod * r            # P(first k drafts all accepted)
            run += prod                                   # expected accepted drafts at k
            rate = (1.0 + run) / step_s[k]
            if rate > best:
                best_k, best = k, rate
        return best_k

    __call__ = choose
