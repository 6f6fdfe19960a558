"""One model replica as a SimPy process: schedule a step, price it, wait its duration, apply it.

The process decides *when*; what a step computes comes from :class:`~.scheduler.Scheduler` (and
:func:`~.coast.coast` for runs of identical plain-decode steps), k and acceptance from
:class:`~.speculation.Speculation`, and how long it takes from the pure cost model
(:class:`~simulator.cost.forward.ForwardModel`).
"""

from __future__ import annotations

import numpy as np

from ..cost.forward import Batch, ForwardModel
from ..cost.routing import expected_count_vector
from .coast import coast, coastable
from .requests import Requests, ones, total
from .scheduler import Plan, Scheduler
from .speculation import Speculation


def _cat(parts: list) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def plan_batch(plan: Plan) -> tuple:
    """(the Batch a plan's forward computes, the decodes' summed context)."""
    nd = len(plan.dec)
    ctx_sum = float(total(plan.dec_ctx)) if nd else 0.0
    prefill = tuple(zip(plan.pre_n.tolist(), plan.pre_ctx.tolist())) if len(plan.pre) else ()
    return Batch(nd, int(np.maximum.reduce(plan.dec_n)) if nd else 1, ctx_sum / nd if nd else 0.0, prefill,
                 int(total(plan.dec_n)) if nd else 0), ctx_sum


class Replica:
    # Run consecutive plain-decode steps without rescheduling while nothing can change the batch
    # (see coast). False takes every step through the scheduler: the reference for the tests.
    coast = True

    def __init__(self, env, idx, cfg, R: Requests, target: ForwardModel, draft: ForwardModel | None,
                 acceptance, routing, rng, steps, on_finish, stop, next_arrival=None):
        self.env, self.idx, self.cfg, self.R = env, idx, cfg, R
        self.target, self.routing, self.rng = target, routing, rng
        self.sched = Scheduler(cfg, R)
        self.ranks = [self.sched]          # attention-DP ranks (DPWorker); one here
        self.spec = Speculation(cfg, draft, acceptance)
        self.steps, self.on_finish = steps, on_finish
        self.stop = stop
        self.next_arrival = next_arrival   # time of the next request that may reach this replica; None: unknown
        self.wake = None
        self.outstanding = 0
        self.k_now = cfg.k
        self._popularity = None
        self.handoff = None    # prefill worker of a disaggregated pool: called with each prefilled request
        if target.m.moe and routing.mode != "expected" and routing.model.kind != "locality":
            E, K = target.m.moe.num_experts, target.m.moe.num_experts_per_tok
            p = routing.model.expected_counts(1.0, E, K) / K
            self._popularity = p / p.sum()
        env.process(self.loop())

    def submit(self, i: int, sched: Scheduler | None = None) -> None:
        """Queue request i here (on ``sched``, default this replica's scheduler) and wake the loop."""
        self.R.replica[i] = self.idx
        self.outstanding += 1
        (sched or self.sched).submit(i)
        self._wake()

    def _wake(self) -> None:
        """Rouse the loop if it sleeps (new work, or KV blocks back)."""
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    def _sleep(self):
        """Sleep until :meth:`_wake`."""
        self.wake = self.env.event()
        yield self.wake
        self.wake = None

    # --- pricing -------------------------------------------------------------------------

    def route_counts(self, tokens: int, plan: Plan):
        """Tokens per expert (one MoE layer) for a step of ``tokens`` tokens."""
        m = self.target.m
        E, K = m.moe.num_experts, m.moe.num_experts_per_tok
        if self.routing.identical:
            return self._identical_counts(plan, E, K)
        if self.routing.mode == "expected":
            return expected_count_vector(tokens, E, K)
        if self.multinomial(tokens):
            return self.rng.multinomial(tokens * K, self._popularity)
        seq_tokens = np.concatenate([plan.dec_n, plan.pre_n]) if len(plan.pre) else plan.dec_n
        return self.routing.model.sample_counts(seq_tokens, E, K, self.rng)

    def _identical_counts(self, plan: Plan, E: int, K: int) -> np.ndarray:
        """Identical prompts decoded greedily: the sequences of a step that stand at the same position
        and run the same tokens carry the same tokens, so each such group routes as one sequence
        and its loads count once per member (expert weights are read once, tokens per expert
        scale with the group)."""
        if len(plan.pre):
            n, pos = np.concatenate([plan.dec_n, plan.pre_n]), np.concatenate([plan.dec_ctx, plan.pre_ctx])
        else:
            n, pos = plan.dec_n, plan.dec_ctx
        groups, members = np.unique(np.stack([np.asarray(pos), np.asarray(n)]), axis=1, return_counts=True)
        counts = np.zeros(E, dtype=np.int64)
        for t, m in zip(groups[1].tolist(), members.tolist()):
            one = (expected_count_vector(t, E, K) if self.routing.mode == "expected"
                   else self.routing.model.sample_counts([t], E, K, self.rng))
            counts += m * one
        return counts

    def multinomial(self, tokens: int) -> bool:
        """Whether a step of ``tokens`` tokens draws its loads as one multinomial (large steps)."""
        return tokens > 256 and self._popularity is not None

    def step_cost(self, plan: Plan) -> tuple:
        batch, ctx_sum = plan_batch(plan)
        nd, prefill = batch.num_decode, batch.prefill
        counts = None
        if self.target.m.moe:
            counts = self.route_counts(batch.num_tokens, plan)
        cost = self.target.forward(batch, counts)
        spec = plan.dec_n > 1
        n_spec = int(np.count_nonzero(spec))
        draft_s = self.spec.draft_s(plan, spec, n_spec, ctx_sum, prefill, self.k_now)
        if draft_s is not None:
            cost.draft_s = draft_s
        cost.overhead_s += self.cfg.step_model.overhead_s(cost.total_s, nd + len(prefill), n_spec > 0,
                                                          self.draft_passes(), self.launches(prefill))
        return cost, batch, counts

    def launches(self, prefill) -> int:
        """Kernels the step launches one by one: a step with prompt tokens runs outside the CUDA graphs."""
        return self.target.eager_kernels if prefill else 0

    def draft_passes(self) -> int:
        """Draft forward passes in a speculative round (n-gram lookup runs none)."""
        return self.k_now if self.cfg.draft_kind in ("model", "head") else 0

    # --- the process ---------------------------------------------------------------------

    def loop(self):
        env, cfg, R, sched = self.env, self.cfg, self.R, self.sched
        while True:
            if not len(sched.run) and not sched.waiting:
                yield from self._sleep()
                continue
            self.k_now = self.spec.choose_k(R, sched.run)
            plan = sched.schedule(self.k_now)
            if cfg.stop_waiting is not None and len(sched.waiting) > cfg.stop_waiting and not self.stop.triggered:
                self.stop.succeed()
            if plan.empty:
                if sched.held:          # blocks come back when a KV transfer ends: wait for it
                    yield from self._sleep()
                else:
                    self._fail_head(sched)
                continue
            if self.coast and coastable(self, [plan]):
                yield from coast(self, [plan], plan)
                continue
            cost, batch, counts = self.step_cost(plan)
            start = env.now
            yield env.timeout(cost.total_s)
            emitted, drafted, accepted = self._advance(plan, env.now)
            self.steps.append(self.idx, self._row(start, cost, batch, len(plan.dec), len(plan.pre), emitted, drafted,
                                                  accepted, cfg.num_blocks - sched.free_blocks, len(sched.waiting),
                                                  plan.preempted))

    def _fail_head(self, sched: Scheduler) -> None:
        """Nothing fits even alone: the head request can never run here; report it failed."""
        cfg, R = self.cfg, self.R
        if sched.waiting:
            i = sched.waiting.popleft()
        else:
            i, sched.run = int(sched.run[-1]), sched.run[:-1]
        sched.release(i)
        left = int(R.prefill_target[i] - R.computed[i])
        if not cfg.enable_chunked_prefill and left > cfg.max_num_batched_tokens:
            reason = (f"prefill of {left} tokens exceeds max_num_batched_tokens "
                      f"{cfg.max_num_batched_tokens} with chunked prefill off")
        else:
            reason = "kv cache too small for this request"
        self._fail(i, reason)

    def _row(self, start, cost, batch, num_decode, num_prefill, emitted, drafted, accepted, kv_used, waiting,
             preempted) -> tuple:
        """One row of the step table, in STEP_FIELDS order."""
        return (self.idx, start, cost.total_s, num_decode, num_prefill, batch.num_tokens, batch.decode_q,
                cost.draft_s, cost.attention_s, cost.gemm_s, cost.moe_s, cost.comm_s, cost.overhead_s,
                cost.active_experts, cost.expert_weight_bytes, emitted, drafted, accepted, kv_used, waiting, preempted)

    # --- applying a step -----------------------------------------------------------------

    def _advance(self, plan: Plan, now: float, sched: Scheduler | None = None) -> tuple:
        """Apply a finished step (of ``sched``, default this replica's): prefill progress,
        acceptance, KV rollback, token emission."""
        cfg, R = self.cfg, self.R
        sched = sched or self.sched
        drafted = accepted = 0
        emit_ids, emit_n = [], []
        first = None
        if len(plan.pre):
            c = plan.pre_ctx + plan.pre_n
            R.computed[plan.pre] = c
            first = plan.pre[c >= R.prefill_target[plan.pre]]     # prefill done: it samples a token
            if len(first):
                emit_ids.append(first)
                emit_n.append(ones(len(first)))
        dec = plan.dec
        if len(dec):
            if self.k_now:
                want, drafted, accepted = self.spec.accept(plan, self.k_now, self.rng, R)
            else:
                want = ones(len(dec))
            c = plan.dec_ctx + want                   # last token + accepted drafts now hold KV
            R.computed[dec] = c
            blocks = R.blocks[dec]                     # roll back the rejected drafts' KV
            keep = np.minimum(blocks, (c + cfg.block_size - 1) // cfg.block_size)
            sched.free_blocks += int(total(blocks)) - int(total(keep))
            R.blocks[dec] = keep
            emit_ids.append(dec)
            emit_n.append(want)
        if not emit_ids:
            return 0, drafted, accepted
        # prefill completers (first in the list) may be emitting their first token
        emitted, done = self._emit(_cat(emit_ids), _cat(emit_n), now, first_possible=emit_ids[0] is not dec)
        if len(done):
            R.finished[done] = True
            R.finish_s[done] = now
            sched.free_blocks += int(total(R.blocks[done]))
            if cfg.prefix_caching:
                sched.cache_finished(done.tolist())
            R.blocks[done] = 0
            sched.run = sched.run[~R.finished[sched.run]]
            self.outstanding -= len(done)
            for i in done.tolist():
                self.on_finish(i)
        if self.handoff is not None and first is not None and len(first):
            self._hand_off(first[~R.finished[first]], sched)
        return emitted, drafted, accepted

    def _hand_off(self, ids: np.ndarray, sched: Scheduler) -> None:
        """Prefilled requests leave for the decode pool; their KV blocks here stay taken until the
        transfer has sent them (``handoff`` calls back when it has)."""
        if not len(ids):
            return
        sched.run = sched.run[~np.isin(sched.run, ids)]
        for i in ids.tolist():
            n = sched.hold(i)
            self.outstanding -= 1
            self.handoff(i, lambda n=n: self._sent(sched, n))

    def _sent(self, sched: Scheduler, n: int) -> None:
        sched.give_back(n)
        self._wake()

    def _emit(self, ids: np.ndarray, want: np.ndarray, now: float, first_possible: bool) -> tuple:
        """Emit up to ``want`` tokens per request (capped at its output length); record TTFT or
        the inter-token gap. Returns (tokens emitted, requests now finished)."""
        R = self.R
        gen = R.generated[ids]
        out = R.output_len[ids]
        m = np.minimum(want, out - gen)
        last = R.last_token_s[ids]
        if not first_possible or (gap := ~np.isnan(last)).all():   # no previous token: the first (TTFT)
            R.itl_log.append(ids, now - last)
        else:
            R.first_token_s[ids[~gap]] = now
            R.itl_log.append(ids[gap], now - last[gap])
        R.last_token_s[ids] = now
        gen = gen + m
        R.generated[ids] = gen
        return int(total(m)), ids[gen >= out]

    def _fail(self, i: int, reason: str) -> None:
        self.R.fail(i, reason, self.env.now)
        self.outstanding -= 1
        self.on_finish(i)
