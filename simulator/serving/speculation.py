"""The speculative round of one replica: k per step (fixed or adaptive), the draft passes' cost,
and acceptance (sampled per sequence, counted per draft position, KV of rejected drafts rolled
back by the caller). No SimPy: the replica calls it while it prices and applies a step.
"""

from __future__ import annotations

import math

import numpy as np

from ..cost.forward import Batch, ForwardModel
from .requests import Requests, total


# Adaptive k learns acceptance only from the drafts it runs: after an unlucky start it would choose
# k = 0 and never see another draft. So after this many decoding steps at k = 0 it drafts one token
# once, which keeps its estimate current (a probe costs about one step in this many where SD does not pay).
PROBE_EVERY = 32


class Speculation:
    def __init__(self, cfg, draft: ForwardModel | None, acceptance):
        self.cfg, self.draft, self.acc = cfg, draft, acceptance
        self._idle = 0          # adaptive k: decoding steps at k = 0 since the last draft
        # acceptance counters: how many decodes drafted k and accepted a, as a (k+1) x (k+1) histogram
        self.k_by_a = np.zeros((cfg.k + 1) ** 2, dtype=np.int64)
        self._pos_masks = None
        self._draft_memo: dict = {}

    def positions(self) -> tuple:
        """Per draft position j: times drafted, accepted, and reached (drafted with all earlier
        drafts accepted), from the (k, accepted) histogram."""
        K = self.cfg.k
        if self._pos_masks is None:
            j, k, a = np.arange(K)[:, None, None], np.arange(K + 1)[None, :, None], np.arange(K + 1)[None, None, :]
            masks = (k > j) & (a >= 0), (a > j) & (k >= 0), (k > j) & (a >= j)
            self._pos_masks = np.concatenate([m.reshape(K, -1) for m in masks]).astype(float)
        # float counts (exact below 2^53): a float matrix product is far cheaper than an int one
        drafted, accepted, reached = np.split(self._pos_masks @ self.k_by_a.astype(float), 3)
        return drafted, accepted, reached

    def choose_k(self, R: Requests, run: np.ndarray) -> int:
        """This step's k: the configured one, or the adaptive policy's at the decoding batch."""
        cfg = self.cfg
        if cfg.k_policy is None:
            return cfg.k
        comp = R.computed[run]
        ctx = comp[comp >= R.prefill_target[run]]
        _, accepted, reached = self.positions()
        k = cfg.k_policy(len(ctx), float(ctx.mean()) if len(ctx) else 1.0, reached, accepted)
        if k or not len(ctx):
            self._idle = 0
            return k
        self._idle += 1
        if self._idle >= PROBE_EVERY:
            self._idle = 0
            return 1
        return 0

    def draft_s(self, plan, spec: np.ndarray, n_spec: int, ctx_sum: float, prefill: tuple, k_now: int) -> float | None:
        """Seconds of draft work in a step: k passes over the ``n_spec`` speculating sequences (mask
        ``spec`` over the decodes), plus the draft model's own prefill of new prompt chunks; None
        when the step has none."""
        if self.draft is None or not (n_spec or prefill):
            return None
        draft_s = 0.0
        if n_spec:
            nd = len(plan.dec)
            ctx_d = ctx_sum / nd if n_spec == nd else float(total(plan.dec_ctx[spec])) / n_spec
            # the draft's step cost barely moves with context: cache it on a 1/64-octave grid
            key = (n_spec, round(64 * math.log2(max(ctx_d, 1.0))))
            one_s = self._draft_memo.get(key)
            if one_s is None:
                # group_forward: with attention DP an MTP layer's MoE runs on every rank's tokens
                one_s = self._draft_memo[key] = self.draft.group_forward(
                    Batch(n_spec, self.cfg.draft_tokens_per_pass, 2 ** (key[1] / 64))).total_s
            draft_s += k_now * one_s
        if prefill:
            draft_s += self.draft.forward(Batch(0, 1, 0.0, prefill)).total_s
        return draft_s

    def accept(self, plan, k_now: int, rng, R: Requests) -> tuple:
        """Sample each decoding sequence's accepted drafts; (tokens kept per sequence incl. the
        bonus token, drafted total, accepted total)."""
        ks, dec = plan.dec_k, plan.dec
        acc = np.minimum(self.acc.sample(k_now, len(dec), rng), ks)
        self.k_by_a += np.bincount(ks * (self.cfg.k + 1) + acc, minlength=len(self.k_by_a))
        R.add_spec(dec, ks, acc)
        return acc + 1, int(total(ks)), int(total(acc))
