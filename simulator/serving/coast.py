"""Coasting: a replica's run of identical plain-decode steps taken in one go (every rank's at once
on an attention-DP worker).

Without SD each decode step emits exactly one token per request, so until a request finishes, a
request arrives or KV blocks run short, the scheduler would pick the same batch with every context
one token longer. :func:`coast` prices each of those steps as the replica would (routing drawn in the
same order) and times each by its own SimPy timeout, so the run is the one step-by-step scheduling
produces, byte for byte (tests compare); scheduling and per-request bookkeeping are applied once
at the end.
"""

from __future__ import annotations

import math

import numpy as np

from ..cost.forward import Batch
from ..cost.routing import expected_count_vector
from .requests import total
from .scheduler import Plan


class CoastLoads:
    """MoE loads of a coast's steps, routed many steps per call.

    When a step's routing draws only ``B x E`` uniform keys (RoutingModel.keys_only), the keys of
    the next n steps are one draw and their loads one vectorised pass. The coast may stop before
    using them all (an arrival); ``close`` then rewinds the generator to just after the keys of
    the steps used, so every later draw is the one the step-by-step path makes."""

    def __init__(self, replica, B: int):
        self.r, self.B = replica, B
        m = replica.target.m.moe
        self.E, self.K = m.num_experts, m.num_experts_per_tok
        self.expected = replica.routing.mode == "expected"
        model = replica.routing.model
        # identical prompts route per group of sequences, one step at a time (Replica.route_counts)
        self.batched = not replica.routing.identical and (self.expected or (
            not replica.multinomial(B) and model.keys_only(B, self.E, self.K)
            and hasattr(replica.rng.bit_generator, "advance")))
        self.rows: list = []
        self.used = 0
        self.state = None

    def next(self, left: int, until_s: float, priced: list) -> tuple:
        if self.expected:        # no draws: every step has the same loads
            if not self.rows:
                counts = expected_count_vector(self.B, self.E, self.K)[None, :]
                self.rows = self.r.target.cm.moe_loads_many(counts, self.K, self.r.target.par.moe_ep)
            return self.rows[0]
        if not self.rows:
            self._fill(left, until_s, priced)
        self.used += 1
        return self.rows.pop()

    def _fill(self, left: int, until_s: float, priced: list) -> None:
        r, B, E, K = self.r, self.B, self.E, self.K
        # steps likely to run before the next arrival, from the last step's time (a guess: keys
        # drawn for steps that do not run are handed back by `close`)
        step_s = priced[-1][0].total_s if priced else 0.0
        n = min(left, 512, 8 if step_s <= 0 else (int(until_s / step_s) + 2 if until_s < math.inf else 512))
        self.state, self.used = r.rng.bit_generator.state, 0
        counts = r.routing.model.counts_from_keys(r.rng.random((n * B, E)), n, K)
        self.rows = r.target.cm.moe_loads_many(counts, K, r.target.par.moe_ep)
        self.rows.reverse()

    def close(self) -> None:
        """Rewind the generator to just after the keys of the steps that ran."""
        if not self.expected and self.state is not None and self.rows:
            bg = self.r.rng.bit_generator
            bg.state = self.state
            bg.advance(self.used * self.B * self.E)
        self.state, self.rows = None, []



def coastable(rep, plans: list) -> bool:
    """Plain decode steps on every rank of the replica (no SD, no prefill, nobody waiting or
    preempted, an idle rank idle for good) whose requests all need more than one more token: the
    steps after them stay the same until something arrives."""
    if rep.next_arrival is None or rep.cfg.k:
        return False
    live = False
    for s, p in zip(rep.ranks, plans):
        if s.waiting or p.preempted or len(p.pre):
            return False
        if len(p.dec):
            if int(np.minimum.reduce(rep.R.output_len[p.dec] - rep.R.generated[p.dec])) <= 2:
                return False
            live = True
        elif len(s.run):
            return False
    return live


def coast(rep, plans: list, merged: Plan):
    """Run the scheduled plain-decode step and the identical ones after it in one go.

    Without SD each step emits exactly one token per request, so until a request finishes,
    a request arrives or KV blocks run short, the scheduler would pick the same batch with
    every context one token longer. Each step is priced as the replica prices it (the slowest
    rank's dense part, the MoE layers on all ranks' tokens, routing drawn in the same order)
    and timed by its own SimPy timeout, so the run is the one the scheduler would have produced,
    byte for byte (tests compare); scheduling and per-request bookkeeping are skipped and applied
    once at the end. ``merged``: all ranks' plans as one (the step's routing)."""
    env, cfg, R = rep.env, rep.cfg, rep.R
    bs = cfg.block_size
    parts = [(s, p.dec, p.dec_ctx) for s, p in zip(rep.ranks, plans) if len(p.dec)]
    ids, c0 = merged.dec, merged.dec_ctx
    B = len(ids)
    sizes = [len(d) for _, d, _ in parts]
    blocks0 = [int(total(R.blocks[d])) for _, d, _ in parts]
    # a request with L tokens to go finishes on its L-th step; each rank's KV growth must fit (step
    # 0's blocks are already allocated, so at least one step does)
    m_max = int(np.minimum.reduce(R.output_len[ids] - R.generated[ids])) - 1
    for (s, _, c), b0 in zip(parts, blocks0):
        held = lambda m, c=c: int(total((c + m + bs - 1) // bs))  # noqa: E731  (blocks held after m steps)
        if held(m_max) - b0 > s.free_blocks:
            lo, hi = 1, m_max
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if held(mid) - b0 <= s.free_blocks else (lo, mid)
            m_max = lo
    t_next = rep.next_arrival()
    used = sum(cfg.num_blocks - s.free_blocks for s in rep.ranks)
    # a request's block count grows on the step after its context reaches a multiple of bs
    phase = np.bincount(c0 % bs, minlength=bs).tolist()
    ctx_sum0 = int(total(c0))
    rank_ctx0 = [int(total(c)) for _, _, c in parts]
    step_model = cfg.step_model
    fm = rep.target
    loads = CoastLoads(rep, B) if fm.m.moe else None
    prices = [fm.plain_decode(n) for n in sizes]
    seqs = max(sizes)
    starts, ends, priced = [], [], []
    start = env.now
    while len(starts) < m_max and (not starts or start < t_next):   # stop before a step an arrival precedes
        m = len(starts)
        ctx = float(ctx_sum0 + m * B) / B
        if len(prices) == 1:
            cost = prices[0](ctx)
        else:      # the slowest rank's dense part (the first on a tie, as the DP worker picks)
            cost = max((price(float(c + m * n) / n) for price, c, n in zip(prices, rank_ctx0, sizes)),
                       key=lambda x: x.total_s)
        if loads is not None:
            lt = (loads.next(m_max - m, t_next - start, priced) if loads.batched
                  else fm.moe_loads(rep.route_counts(B, merged)))
            cost.moe_s, cost.expert_weight_bytes, cost.active_experts = fm.moe_part_from_loads(*lt)
        cost.tokens = B
        cost.overhead_s += step_model.overhead_s(cost.total_s, seqs)
        end = start + cost.total_s            # the sum SimPy forms for a timeout from `start`
        if m:
            used += phase[(-m) % bs]
        priced.append((cost, Batch(B, 1, ctx, ()), used))
        starts.append(start)
        ends.append(end)
        start = end
    if loads is not None:
        loads.close()
    # Advance the clock to the end of the last step. One timeout lands exactly there when
    # now + (end - now) == end in floating point; otherwise one per step, as the scheduler's.
    if env.now + (ends[-1] - env.now) == ends[-1]:
        yield env.timeout(ends[-1] - env.now)
    else:
        for a, b in zip(starts, ends):
            yield env.timeout(b - a)
    m = len(starts)
    for j, (a, (cost, batch, kv_used)) in enumerate(zip(starts, priced)):
        # only the last step can end after an arrival, which then waits
        waiting = sum(len(s.waiting) for s in rep.ranks) if j == m - 1 else 0
        rep.steps.append(rep.idx, rep._row(a, cost, batch, B, 0, B, 0, 0, kv_used, waiting, 0))
    R.itl_log.append(ids, ends[0] - R.last_token_s[ids])
    if m > 1:    # later steps: every request's gap is the step's length (one append, same order)
        R.itl_log.append(np.tile(ids, m - 1), np.repeat(np.subtract(ends[1:], starts[1:]), B))
    for (s, d, c), b0 in zip(parts, blocks0):
        final = (c + m + bs - 1) // bs
        s.free_blocks -= int(total(final)) - b0
        R.blocks[d] = final
    R.computed[ids] = c0 + m
    R.generated[ids] += m
    R.last_token_s[ids] = ends[-1]
