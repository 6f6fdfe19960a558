"""An attention-data-parallel worker: ``dp`` ranks, each batching its own requests with its own
scheduler and KV cache, stepping together because they share the MoE layers (vLLM's
``--data-parallel-size`` with an MoE model, SGLang's ``--enable-dp-attention``).

A step is one forward of every rank at once: each rank's attention and dense layers on its own
batch, the MoE layers on all ranks' tokens over the EP group. The group waits for its slowest rank
(uneven DP batches), and the busiest EP rank sets the MoE time (routing imbalance). A rank with
nothing to do still joins the collectives (an idle batch), so its time is never below the MoE part.
"""

from __future__ import annotations

import numpy as np

from .coast import coast, coastable
from .replica import Replica, _cat, plan_batch
from .requests import EMPTY
from .scheduler import Plan, Scheduler


class DPWorker(Replica):
    def __init__(self, *args, dp: int = 2, **kwargs):
        self.dp = dp
        super().__init__(*args, **kwargs)
        self.ranks = [self.sched] + [Scheduler(self.cfg, self.R) for _ in range(dp - 1)]
        self.turn = 0
        # its own stream, drawn only where dispatch is random: the routing draws of other runs stay as they were
        self.pick = np.random.default_rng(int(self.rng.integers(2 ** 63))) if self.cfg.dp_dispatch == "random" else None

    def submit(self, i: int) -> None:
        """To the rank with the fewest requests (running + queued), the lowest on a tie (vLLM's DP
        coordinator balances on queue lengths the same way), or, under round_robin, to the next
        rank in turn whatever its load (SGLang's data-parallel controller by default), or, under random,
        to any rank alike (SGLang's disaggregated workers: bootstrap_room % dp, the room random)."""
        if self.cfg.dp_dispatch == "round_robin":
            r, self.turn = self.turn, (self.turn + 1) % self.dp
        elif self.pick is not None:
            r = int(self.pick.integers(self.dp))
        else:
            r = min(range(self.dp), key=lambda j: (len(self.ranks[j].run) + len(self.ranks[j].waiting), j))
        self.R.dp_rank[i] = r
        super().submit(i, self.ranks[r])

    def step_cost_dp(self, plans: list) -> tuple:
        """(StepCost, merged Batch): the slowest rank's dense part and draft passes, the MoE layers
        on every rank's tokens, the framework's CPU side for the largest rank batch."""
        fm = self.target
        dense, drafts, seqs, spec_any = [], [], [], False
        for p in plans:
            if p.empty:
                continue
            b, ctx_sum = plan_batch(p)
            spec = p.dec_n > 1
            n_spec = int(np.count_nonzero(spec))
            d = self.spec.draft_s(p, spec, n_spec, ctx_sum, b.prefill, self.k_now)
            dense.append(fm.dense_part(b))
            drafts.append(d or 0.0)
            seqs.append(b.num_decode + len(b.prefill))
            spec_any = spec_any or n_spec > 0
        j = max(range(len(dense)), key=lambda x: dense[x].total_s + drafts[x])
        cost = dense[j]
        merged = _merge(plans)
        batch = plan_batch(merged)[0]
        cost.tokens = batch.num_tokens
        cost.moe_s, cost.expert_weight_bytes, cost.active_experts = fm.moe_part(self.route_counts(batch.num_tokens, merged))
        cost.draft_s = drafts[j]
        cost.overhead_s += self.cfg.step_model.overhead_s(cost.total_s, max(seqs), spec_any, self.draft_passes(),
                                                          self.launches(batch.prefill))
        return cost, batch, merged

    def loop(self):
        env, cfg, R = self.env, self.cfg, self.R
        while True:
            if not any(len(s.run) or s.waiting for s in self.ranks):
                yield from self._sleep()
                continue
            # adaptive k prices a step by its per-rank batch: the fullest rank's
            self.k_now = self.spec.choose_k(R, max((s.run for s in self.ranks), key=len))
            plans = []
            for s in self.ranks:
                plan = s.schedule(self.k_now)
                if plan.empty and (len(s.run) or s.waiting) and not s.held:
                    self._fail_head(s)
                plans.append(plan)
            waiting = sum(len(s.waiting) for s in self.ranks)
            if cfg.stop_waiting is not None and waiting > cfg.stop_waiting and not self.stop.triggered:
                self.stop.succeed()
            if all(p.empty for p in plans):     # a rank's head request failed: schedule again
                if any(s.held for s in self.ranks):     # or blocks come back when a KV transfer ends
                    yield from self._sleep()
                continue
            if self.coast and coastable(self, plans):
                yield from coast(self, plans, _merge(plans))
                continue
            cost, batch, merged = self.step_cost_dp(plans)
            start = env.now
            yield env.timeout(cost.total_s)
            emitted = drafted = accepted = 0
            for s, p in zip(self.ranks, plans):
                if not p.empty:
                    e, d, a = self._advance(p, env.now, s)
                    emitted, drafted, accepted = emitted + e, drafted + d, accepted + a
            used = sum(cfg.num_blocks - s.free_blocks for s in self.ranks)
            self.steps.append(self.idx, self._row(start, cost, batch, len(merged.dec), len(merged.pre), emitted, drafted,
                                                  accepted, used, sum(len(s.waiting) for s in self.ranks),
                                                  merged.preempted))


def _merge(plans: list) -> Plan:
    """All ranks' work as one plan (for routing and the step log)."""
    live = [p for p in plans if not p.empty] or [Plan(EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY)]
    cat = lambda f: _cat([getattr(p, f) for p in live])  # noqa: E731
    return Plan(cat("dec"), cat("dec_n"), cat("dec_k"), cat("dec_ctx"), cat("pre"), cat("pre_n"), cat("pre_ctx"),
                sum(p.preempted for p in live))
