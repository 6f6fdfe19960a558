"""Closed-form speculative-decoding model (MoESD, ../shared/docs/moesd-theory.md), pure functions.

Convention, used everywhere in the project: ``T_T(B, n)`` is one target engine step for B decoding
sequences with ``n`` query tokens each, fixed per-step overhead included; verifying ``k`` drafts
scores ``n = k + 1`` positions (the drafts plus the bonus position). So

    eta(B, k) = T_T(B, 1) / T_T(B, k + 1)
    S(B, k)   = tokens_per_round(k) * T_T(B, 1) / (k * T_D(B) + T_T(B, k + 1))

with rejection sampling inside the per-step overhead (T_reject = 0 in the paper's Eq. 4).
Step times come from the calibrated cost model under expected (uniform) routing.
"""

from __future__ import annotations

import numpy as np

from ..cost.forward import Batch, ForwardModel
from ..cost.framework import FrameworkStep
from ..cost.routing import expected_distinct_experts


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens emitted per SD round under i.i.d. acceptance: (1 - a^(k+1)) / (1 - a)."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def sigma(alpha: float, k: int) -> float:
    """The paper's sigma: expected tokens per round divided by k + 1."""
    return expected_tokens(alpha, k) / (k + 1)


def speedup(tokens_per_round: float, t_target_1: float, t_target_verify: float, t_draft: float, k: int,
            t_reject: float = 0.0) -> float:
    """Eq. 4: SD throughput over plain decoding at one batch size."""
    return tokens_per_round * t_target_1 / (k * t_draft + t_target_verify + t_reject)


def target_efficiency(t_target_1: float, t_target_verify: float) -> float:
    return t_target_1 / t_target_verify


def tokens_per_round(acceptance, k: int) -> float:
    """1 + expected accepted drafts, for any acceptance model (simulator.serving.acceptance)."""
    return 1.0 + (acceptance.expected_accepted(k) if k else 0.0)


class StepTimes:
    """T_T(B, n) and T_D(B) from the calibrated forward models at one mean context length; with
    attention data parallel, B is the batch of each rank (all ranks equal)."""

    def __init__(self, target: ForwardModel, draft: ForwardModel | None, step_model: FrameworkStep,
                 context_len: float, draft_tokens_per_pass: int = 1):
        self.t, self.d = target, draft
        self.step_model = step_model
        self.ctx = max(1.0, float(context_len))
        self.draft_q = draft_tokens_per_pass
        self._memo: dict = {}

    def with_context(self, context_len: float) -> "StepTimes":
        return StepTimes(self.t, self.d, self.step_model, context_len, self.draft_q)

    def target(self, batch: int, q_len: int) -> float:
        key = ("t", batch, q_len)
        if key not in self._memo:
            gpu_s = self.t.group_forward(Batch(batch, q_len, self.ctx)).total_s
            self._memo[key] = gpu_s + self.step_model.overhead_s(gpu_s, batch)
        return self._memo[key]

    def draft(self, batch: int) -> float:
        if self.d is None:
            return 0.0
        key = ("d", batch)
        if key not in self._memo:
            self._memo[key] = self.d.group_forward(Batch(batch, self.draft_q, self.ctx)).total_s
        return self._memo[key]

    def eta(self, batch: int, k: int) -> float:
        return target_efficiency(self.target(batch, 1), self.target(batch, k + 1))

    def speedup(self, batch: int, k: int, acceptance) -> float:
        if k == 0:
            return 1.0
        return speedup(tokens_per_round(acceptance, k), self.target(batch, 1), self.target(batch, k + 1),
                       self.draft(batch), k, self.spec_round_s(k))

    def step_s(self, batch: int, k: int) -> float:
        return k * self.draft(batch) + self.target(batch, k + 1) + (self.spec_round_s(k) if k else 0.0)

    def spec_round_s(self, k: int) -> float:
        """The framework's CPU time of a speculative round of k draft passes (none for n-gram)."""
        return self.step_model.spec_s(k if self.d is not None else 0)

    def best_k(self, batch: int, acceptance, k_max: int) -> int:
        """k in 0..k_max with the highest expected tokens per second (0 = SD off)."""
        rates = [tokens_per_round(acceptance, k) / self.step_s(batch, k) for k in range(k_max + 1)]
        return int(np.argmax(rates))

    def activated_experts(self, batch: int, k: int) -> float:
        moe = self.t.m.moe
        if moe is None:
            return 0.0
        return float(expected_distinct_experts(batch * (k + 1) * self.t.par.data_parallel_size, moe.num_experts,
                                               moe.num_experts_per_tok))


def step_times_for(cfg, target: ForwardModel, draft: ForwardModel | None, context_len: float) -> StepTimes:
    """StepTimes with an engine config's overheads (engine.EngineConfig)."""
    return StepTimes(target, draft, cfg.step_model, context_len, cfg.draft_tokens_per_pass)


def step_times(setup, context_len: float) -> StepTimes:
    """StepTimes of a resolved scenario (simulator.serving.simulation.Setup)."""
    return step_times_for(setup.cfg, setup.target_fm, setup.draft_fm, context_len)
