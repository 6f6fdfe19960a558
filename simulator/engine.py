"""The SimPy serving engine: arrivals, a router, and per replica a vLLM-style step loop.

The processes here only decide *when* things happen and *what* each step computes; how long a
step takes comes from :mod:`simulator.forward` (pure cost model).

Per step, like vLLM V1's scheduler: running requests first (decodes need ``1 + k`` query
tokens when speculating, prefills take a chunk of the token budget), preempting the newest
running request by recompute when KV blocks run out; then waiting requests are admitted while
``max_num_seqs``, the token budget and free KV blocks allow. A decode step = ``k`` draft passes
+ one target verification of ``k + 1`` tokens per sequence; each sequence keeps its accepted
drafts plus one bonus token, and the KV of rejected drafts is rolled back.

Request state lives in columns (:class:`Requests`, numpy arrays indexed by request) and a
replica's running batch is an array of request indices, so a step costs a few dozen array
operations whatever the batch size: the simulator models steps, not tokens.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import simpy

from .forward import Batch, ForwardModel
from .memory import blocks_for
from .routing import expected_count_vector

STEP_FIELDS = ("replica", "start_s", "duration_s", "num_decode", "num_prefill", "num_tokens", "query_len",
               "draft_s", "attention_s", "gemm_s", "moe_s", "comm_s", "overhead_s", "active_experts",
               "expert_weight_bytes", "emitted_tokens", "drafted_tokens", "accepted_tokens", "kv_blocks_used",
               "num_waiting", "preemptions")

_EMPTY = np.zeros(0, dtype=np.int64)
_ONES = np.ones(1 << 14, dtype=np.int64)      # one token per request, sliced (read-only)
_ONES.flags.writeable = False


def _ones(n: int) -> np.ndarray:
    return _ONES[:n] if n <= len(_ONES) else np.ones(n, dtype=np.int64)


class _Columns:
    """Rows appended per step to a few growing numpy columns (amortised doubling): joining
    thousands of small per-step arrays at the end cost more than the appends."""

    def __init__(self, dtypes):
        self.cols = [np.empty(1024, dtype=d) for d in dtypes]
        self.size = 0

    def append(self, *arrays) -> None:
        n = len(arrays[0])
        end = self.size + n
        if end > len(self.cols[0]):
            cap = max(2 * len(self.cols[0]), end)
            self.cols = [np.concatenate([c[:self.size], np.empty(cap - self.size, dtype=c.dtype)]) for c in self.cols]
        for c, a in zip(self.cols, arrays):
            c[self.size:end] = a
        self.size = end

    def arrays(self) -> list:
        return [c[:self.size] for c in self.cols]


class Requests:
    """Per-request state as columns. ``computed``: tokens whose KV is held; ``prefill_target``:
    tokens to prefill before decoding (the prompt, or prompt + output after a preemption).
    Per-step logs (inter-token gaps; drafted and accepted tokens) are reduced to per-request
    totals by :meth:`close` when the run ends."""

    def __init__(self, specs):
        n = len(specs)
        col = lambda a: np.array([getattr(s, a) for s in specs], dtype=float if a == "arrival_s" else np.int64)  # noqa: E731
        self.id, self.arrival_s = col("request_id"), col("arrival_s")
        self.input_len, self.output_len = col("input_len"), col("output_len")
        self.prefill_target = self.input_len.copy()
        z = lambda: np.zeros(n, dtype=np.int64)  # noqa: E731
        self.computed, self.generated, self.blocks, self.preemptions = z(), z(), z(), z()
        self.drafted, self.accepted, self.num_drafts, self.chunks = z(), z(), z(), z()
        self.replica = np.full(n, -1, dtype=np.int64)
        nan = lambda: np.full(n, np.nan)  # noqa: E731
        self.send_s, self.first_token_s, self.last_token_s, self.finish_s = nan(), nan(), nan(), nan()
        self.finished = np.zeros(n, dtype=bool)
        self.failed = np.zeros(n, dtype=bool)
        self.fail_reason = [""] * n
        self.itl_log = _Columns((np.int64, float))            # request, gap since its last token (s)
        self.spec_log = _Columns((np.int64, np.int64, np.int64))   # request, drafted, accepted per step
        self._itl_ids, self._itl_gaps = np.zeros(0, dtype=np.int64), np.zeros(0)

    def __len__(self) -> int:
        return len(self.id)

    def fail(self, i: int, reason: str, now: float) -> None:
        self.failed[i], self.finished[i], self.fail_reason[i], self.finish_s[i] = True, True, reason, now

    def close(self) -> None:
        """Reduce the per-step logs to per-request totals."""
        n = len(self)
        self._itl_ids, self._itl_gaps = self.itl_log.arrays()
        self.chunks = np.bincount(self._itl_ids, minlength=n)
        ids, k, a = self.spec_log.arrays()
        self.num_drafts = np.bincount(ids, weights=k > 0, minlength=n).astype(np.int64)
        self.drafted = np.bincount(ids, weights=k, minlength=n).astype(np.int64)
        self.accepted = np.bincount(ids, weights=a, minlength=n).astype(np.int64)

    def itls(self) -> np.ndarray:
        """Inter-token (chunk) gaps of the requests that did not fail, in seconds."""
        return self._itl_gaps[~self.failed[self._itl_ids]]


class _CoastLoads:
    """MoE loads of a coast's steps, routed many steps per call.

    When a step's routing draws only ``B x E`` uniform keys (RoutingModel.keys_only), the keys of
    the next n steps are one draw and their loads one vectorised pass. The coast may stop before
    using them all (an arrival); ``close`` then rewinds the generator to just after the keys of
    the steps used, so every later draw is the one the step-by-step path makes."""

    def __init__(self, replica: "Replica", B: int):
        self.r, self.B = replica, B
        m = replica.target.m.moe
        self.E, self.K = m.num_experts, m.num_experts_per_tok
        self.expected = replica.routing.mode == "expected"
        model = replica.routing.model
        self.batched = self.expected or (
            not replica._multinomial(B) and model.keys_only(B, self.E, self.K)
            and hasattr(replica.rng.bit_generator, "advance"))
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


@dataclass
class EngineConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_chunked_prefill: bool
    block_size: int
    num_blocks: int
    max_model_len: int
    step_overhead_s: float
    per_seq_overhead_s: float = 0.0
    spec_round_overhead_s: float = 0.0
    k: int = 0                         # speculative tokens (0 = no SD)
    verify_tokens: int = 1             # query tokens per sequence when verifying (k+1, or a tree)
    draft_kind: str = "none"           # none | model | head | ngram
    draft_tokens_per_pass: int = 1     # EAGLE tree top-k: tokens drafted per pass per sequence
    k_policy: object = None            # adaptive k: (batch, mean ctx, reached, accepted per position) -> k
    stop_waiting: int | None = None    # end the run once a replica queues more requests than this


@dataclass
class Outcome:
    requests: Requests
    steps: list
    num_replicas: int
    end_s: float
    extra: dict = field(default_factory=dict)


@dataclass
class Plan:
    """One step's work: decoding requests (query tokens scored, drafts verified, context held)
    and prefill chunks (tokens, context already held)."""
    dec: np.ndarray
    dec_n: np.ndarray
    dec_k: np.ndarray
    dec_ctx: np.ndarray
    pre: np.ndarray
    pre_n: np.ndarray
    pre_ctx: np.ndarray
    preempted: int = 0

    @property
    def empty(self) -> bool:
        return len(self.dec) == 0 and len(self.pre) == 0


_sum = np.add.reduce


def _cat(parts: list) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class Replica:
    # Take the leading running requests that fit in one array operation. False schedules every
    # request one by one: the reference the tests compare the fast path with.
    batch_schedule = True
    # Run consecutive plain-decode steps without rescheduling while nothing can change the batch
    # (see _coast). False takes every step through the scheduler: the reference for the tests.
    coast = True

    def __init__(self, env, idx, cfg: EngineConfig, R: Requests, target: ForwardModel, draft: ForwardModel | None,
                 acceptance, routing, rng, steps: list, on_finish, stop, next_arrival=None):
        self.env, self.idx, self.cfg, self.R = env, idx, cfg, R
        self.target, self.draft, self.acc, self.routing, self.rng = target, draft, acceptance, routing, rng
        self.waiting: deque = deque()
        self.run = _EMPTY                  # running request indices, oldest first
        self.free_blocks = cfg.num_blocks
        self.steps, self.on_finish = steps, on_finish
        self.stop = stop
        self.next_arrival = next_arrival   # time of the next request that may reach this replica; None: unknown
        self.wake = None
        self.outstanding = 0
        self.k_now = cfg.k
        # acceptance counters: how many decodes drafted k and accepted a, as a (k+1) x (k+1) histogram
        self.k_by_a = np.zeros((cfg.k + 1) ** 2, dtype=np.int64)
        self._pos_masks = None
        self._draft_memo: dict = {}
        self._popularity = None
        if target.m.moe and routing.mode != "expected" and routing.model.kind != "locality":
            E, K = target.m.moe.num_experts, target.m.moe.num_experts_per_tok
            p = routing.model.expected_counts(1.0, E, K) / K
            self._popularity = p / p.sum()
        env.process(self.loop())

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

    # --- admission ---------------------------------------------------------------------

    def submit(self, i: int) -> None:
        self.R.replica[i] = self.idx
        self.outstanding += 1
        self.waiting.append(i)
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    def _grow(self, i: int, tokens: int) -> bool:
        R = self.R
        need = blocks_for(tokens, self.cfg.block_size) - int(R.blocks[i])
        if need <= 0:
            return True
        if need > self.free_blocks:
            return False
        self.free_blocks -= need
        R.blocks[i] += need
        return True

    def _preempt(self, run: list) -> int:
        """Recompute preemption of the newest running request: drop its KV, requeue it first;
        prompt + output are prefilled again."""
        R = self.R
        i = run.pop()
        self.free_blocks += int(R.blocks[i])
        R.blocks[i] = R.computed[i] = 0
        R.prefill_target[i] = R.input_len[i] + R.generated[i]
        R.preemptions[i] += 1
        self.waiting.appendleft(i)
        return i

    def _choose_k(self) -> int:
        cfg = self.cfg
        if cfg.k_policy is None:
            return cfg.k
        comp = self.R.computed[self.run]
        ctx = comp[comp >= self.R.prefill_target[self.run]]
        _, accepted, reached = self.positions()
        return cfg.k_policy(len(ctx), float(ctx.mean()) if len(ctx) else 1.0, reached, accepted)

    # --- one step ------------------------------------------------------------------------

    def _wants_one(self, i: int, budget: int, kn: int) -> tuple:
        """(tokens, k) request i asks for this step given the budget left; k = -1 for a prefill."""
        cfg, R = self.cfg, self.R
        c, t = int(R.computed[i]), int(R.prefill_target[i])
        if c < t:
            left = t - c
            return (min(left, budget) if cfg.enable_chunked_prefill else (left if left <= budget else 0)), -1
        left = int(R.output_len[i] - R.generated[i]) - 1
        k = kn if left >= kn else (left if left > 0 else 0)
        n = cfg.verify_tokens if self._tree and k == cfg.k and k > 0 else k + 1
        return (n if n <= budget else 0), k

    @property
    def _tree(self) -> bool:
        """Tree verification (more query tokens than k + 1) at full k."""
        return self.cfg.k_policy is None and self.cfg.verify_tokens != self.cfg.k + 1

    def schedule(self) -> Plan:
        """Running requests first, in order, preempting from the back when KV blocks run out; then
        admit waiting requests. The leading running requests that fit the token budget and free
        blocks as they stand are taken in one array operation; the rest go one by one."""
        cfg, R = self.cfg, self.R
        budget = cfg.max_num_batched_tokens
        bs = cfg.block_size
        kn = self.k_now = self._choose_k()
        ids = self.run
        comp, tgt = R.computed[ids], R.prefill_target[ids]
        k = np.minimum(np.maximum(R.output_len[ids] - R.generated[ids] - 1, 0), kn)
        n = k + 1
        if self._tree:
            n = np.where((k == cfg.k) & (k > 0), cfg.verify_tokens, n)
        pre = comp < tgt
        any_pre = pre.any()
        if any_pre:
            n = np.where(pre, tgt - comp, n)
            k = np.where(pre, -1, k)
        blocks = R.blocks[ids]
        need = np.maximum((comp + n + bs - 1) // bs - blocks, 0)
        if not self.batch_schedule:
            j = 0
        elif _sum(n) <= budget and _sum(need) <= self.free_blocks:
            j = len(ids)
        else:
            fits = (np.cumsum(n) <= budget) & (np.cumsum(need) <= self.free_blocks)
            j = int(np.argmin(fits))
        if j:
            R.blocks[ids[:j]] = blocks[:j] + need[:j]
            self.free_blocks -= int(_sum(need[:j]))
            budget -= int(_sum(n[:j]))
        preempted = 0
        if j < len(ids):
            run = ids.tolist()
            tail = []
            i = j
            while i < len(run):
                r = run[i]
                nn, kk = self._wants_one(r, budget, kn)
                if nn <= 0:
                    i += 1
                    continue
                lost = False
                while not self._grow(r, int(R.computed[r]) + nn):
                    preempted += 1
                    if self._preempt(run) == r:
                        lost = True
                        break
                if lost:
                    break
                budget -= nn
                tail.append((r, nn, kk))
                i += 1
            self.run = np.array(run, dtype=np.int64)
            t = np.array(tail, dtype=np.int64).reshape(-1, 3)
            ids, n, k = np.concatenate([ids[:j], t[:, 0]]), np.concatenate([n[:j], t[:, 1]]), np.concatenate([k[:j], t[:, 2]])
            comp = R.computed[ids]
            any_pre = True
        adm = []
        if self.waiting:
            slots = cfg.max_num_seqs - len(self.run)
            while self.waiting and len(adm) < slots and budget > 0 and not preempted:
                r = self.waiting[0]
                left = int(R.prefill_target[r] - R.computed[r])
                nn = min(left, budget) if cfg.enable_chunked_prefill else left
                if nn > budget or not self._grow(r, int(R.computed[r]) + nn):
                    break
                self.waiting.popleft()
                budget -= nn
                adm.append((r, nn))
        if any_pre:
            d = k >= 0
            plan = Plan(ids[d], n[d], k[d], comp[d], ids[~d], n[~d], comp[~d], preempted)
        else:
            plan = Plan(ids, n, k, comp, _EMPTY, _EMPTY, _EMPTY, preempted)
        if adm:
            a = np.array(adm, dtype=np.int64)
            self.run = np.concatenate([self.run, a[:, 0]])
            plan.pre, plan.pre_n = np.concatenate([plan.pre, a[:, 0]]), np.concatenate([plan.pre_n, a[:, 1]])
            plan.pre_ctx = R.computed[plan.pre]
        return plan

    def _counts(self, total: int, plan: Plan):
        m = self.target.m
        E, K = m.moe.num_experts, m.moe.num_experts_per_tok
        if self.routing.mode == "expected":
            return expected_count_vector(total, E, K)
        if self._multinomial(total):
            return self.rng.multinomial(total * K, self._popularity)
        seq_tokens = np.concatenate([plan.dec_n, plan.pre_n]) if len(plan.pre) else plan.dec_n
        return self.routing.model.sample_counts(seq_tokens, E, K, self.rng)

    def _multinomial(self, total: int) -> bool:
        """Whether a step of ``total`` tokens draws its loads as one multinomial (large steps)."""
        return total > 256 and self._popularity is not None

    def step_cost(self, plan: Plan) -> tuple:
        cfg = self.cfg
        nd = len(plan.dec)
        ctx_sum = float(_sum(plan.dec_ctx)) if nd else 0.0
        prefill = tuple(zip(plan.pre_n.tolist(), plan.pre_ctx.tolist())) if len(plan.pre) else ()
        batch = Batch(nd, int(np.maximum.reduce(plan.dec_n)) if nd else 1, ctx_sum / nd if nd else 0.0, prefill)
        counts = None
        if self.target.m.moe:
            counts = self._counts(int(_sum(plan.dec_n)) + int(_sum(plan.pre_n)), plan)
        cost = self.target.forward(batch, counts)
        spec = plan.dec_n > 1
        n_spec = int(np.count_nonzero(spec))
        if self.draft is not None and (n_spec or prefill):
            draft_s = 0.0
            if n_spec:
                ctx_d = ctx_sum / nd if n_spec == nd else float(_sum(plan.dec_ctx[spec])) / n_spec
                # the draft's step cost barely moves with context: cache it on a 1/64-octave grid
                key = (n_spec, round(64 * math.log2(max(ctx_d, 1.0))))
                one_s = self._draft_memo.get(key)
                if one_s is None:
                    one_s = self._draft_memo[key] = self.draft.forward(
                        Batch(n_spec, cfg.draft_tokens_per_pass, 2 ** (key[1] / 64))).total_s
                draft_s += self.k_now * one_s
            if prefill:
                draft_s += self.draft.forward(Batch(0, 1, 0.0, prefill)).total_s
            cost.draft_s = draft_s
        cost.overhead_s += cfg.step_overhead_s + cfg.per_seq_overhead_s * (nd + len(prefill))
        if n_spec:
            cost.overhead_s += cfg.spec_round_overhead_s
        return cost, batch, counts

    def loop(self):
        env, cfg, R = self.env, self.cfg, self.R
        while True:
            if not len(self.run) and not self.waiting:
                self.wake = env.event()
                yield self.wake
                self.wake = None
                continue
            plan = self.schedule()
            if cfg.stop_waiting is not None and len(self.waiting) > cfg.stop_waiting and not self.stop.triggered:
                self.stop.succeed()
            if plan.empty:
                # Nothing fits even alone: the head request can never run on this replica.
                if self.waiting:
                    i = self.waiting.popleft()
                else:
                    i, self.run = int(self.run[-1]), self.run[:-1]
                self.free_blocks += int(R.blocks[i])
                R.blocks[i] = 0
                self._fail(i, "kv cache too small for this request")
                continue
            if self.coast and self._coastable(plan):
                yield from self._coast(plan)
                continue
            cost, batch, counts = self.step_cost(plan)
            start = env.now
            yield env.timeout(cost.total_s)
            emitted, drafted, accepted = self._advance(plan, env.now)
            self.steps.append(self._row(start, cost, batch, len(plan.dec), len(plan.pre), emitted, drafted, accepted,
                                        cfg.num_blocks - self.free_blocks, len(self.waiting), plan.preempted))

    def _row(self, start, cost, batch, num_decode, num_prefill, emitted, drafted, accepted, kv_used, waiting,
             preempted) -> tuple:
        """One row of the step table, in STEP_FIELDS order."""
        return (self.idx, start, cost.total_s, num_decode, num_prefill, batch.num_tokens, batch.decode_q,
                cost.draft_s, cost.attention_s, cost.gemm_s, cost.moe_s, cost.comm_s, cost.overhead_s,
                cost.active_experts, cost.expert_weight_bytes, emitted, drafted, accepted, kv_used, waiting, preempted)

    def _coastable(self, plan: Plan) -> bool:
        """A plain decode step (no SD, no prefill, nobody waiting) whose requests all need more
        than one more token: the steps after it stay the same until something arrives."""
        return (self.next_arrival is not None and self.cfg.k == 0 and not len(plan.pre) and not self.waiting
                and not plan.preempted and len(plan.dec) > 0
                and int(np.minimum.reduce(self.R.output_len[plan.dec] - self.R.generated[plan.dec])) > 2)

    def _coast(self, plan: Plan):
        """Run the scheduled plain-decode step and the identical ones after it in one go.

        Without SD each step emits exactly one token per request, so until a request finishes,
        a request arrives or KV blocks run short, the scheduler would pick the same batch with
        every context one token longer. Each step is priced as step_cost prices it (routing
        drawn in the same order) and timed by its own SimPy timeout, so the run is the one the
        scheduler would have produced, byte for byte (tests compare); scheduling and per-request
        bookkeeping are skipped and applied once at the end."""
        env, cfg, R = self.env, self.cfg, self.R
        ids, c0 = plan.dec, plan.dec_ctx
        bs, B = cfg.block_size, len(ids)
        blocks0 = int(_sum(R.blocks[ids]))
        held = lambda m: int(_sum((c0 + m + bs - 1) // bs))  # noqa: E731  (blocks held after m steps)
        # a request with L tokens to go finishes on its L-th step; KV growth must fit (step 0's
        # blocks are already allocated, so at least one step does)
        m_max = int(np.minimum.reduce(R.output_len[ids] - R.generated[ids])) - 1
        if held(m_max) - blocks0 > self.free_blocks:
            lo, hi = 1, m_max
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if held(mid) - blocks0 <= self.free_blocks else (lo, mid)
            m_max = lo
        t_next = self.next_arrival()
        used = cfg.num_blocks - self.free_blocks
        # a request's block count grows on the step after its context reaches a multiple of bs
        phase = np.bincount(c0 % bs, minlength=bs).tolist()
        ctx_sum0 = int(_sum(c0))
        overhead_s = cfg.step_overhead_s + cfg.per_seq_overhead_s * B
        moe = self.target.m.moe
        loads = _CoastLoads(self, B) if moe else None
        price = self.target.plain_decode(B)
        starts, ends, priced = [], [], []
        start = env.now
        while len(starts) < m_max and (not starts or start < t_next):   # stop before a step an arrival precedes
            m = len(starts)
            batch = Batch(B, 1, float(ctx_sum0 + m * B) / B, ())
            if loads is None:
                cost = price(batch.decode_ctx_mean, None, 0)
            elif loads.batched:
                cost = price(batch.decode_ctx_mean, *loads.next(m_max - m, t_next - start, priced))
            else:
                cost = price(batch.decode_ctx_mean, *self.target.moe_loads(self._counts(B, plan)))
            cost.overhead_s += overhead_s
            end = start + cost.total_s            # the sum SimPy forms for a timeout from `start`
            if m:
                used += phase[(-m) % bs]
            priced.append((cost, batch, used))
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
            self.steps.append(self._row(a, cost, batch, B, 0, B, 0, 0, kv_used, len(self.waiting) if j == m - 1 else 0, 0))
        R.itl_log.append(ids, ends[0] - R.last_token_s[ids])
        if m > 1:    # later steps: every request's gap is the step's length (one append, same order)
            R.itl_log.append(np.tile(ids, m - 1), np.repeat(np.subtract(ends[1:], starts[1:]), B))
        final = (c0 + m + bs - 1) // bs
        self.free_blocks -= int(_sum(final)) - blocks0
        R.blocks[ids] = final
        R.computed[ids] = c0 + m
        R.generated[ids] += m
        R.last_token_s[ids] = ends[-1]

    def _advance(self, plan: Plan, now: float) -> tuple:
        """Apply a finished step: prefill progress, acceptance, KV rollback, token emission."""
        cfg, R = self.cfg, self.R
        drafted = accepted = 0
        emit_ids, emit_n = [], []
        if len(plan.pre):
            c = plan.pre_ctx + plan.pre_n
            R.computed[plan.pre] = c
            first = plan.pre[c >= R.prefill_target[plan.pre]]     # prefill done: it samples a token
            if len(first):
                emit_ids.append(first)
                emit_n.append(_ones(len(first)))
        dec = plan.dec
        if len(dec):
            if self.k_now:
                ks = plan.dec_k
                acc = np.minimum(self.acc.sample(self.k_now, len(dec), self.rng), ks)
                self.k_by_a += np.bincount(ks * (cfg.k + 1) + acc, minlength=len(self.k_by_a))
                R.spec_log.append(dec, ks, acc)
                drafted, accepted = int(_sum(ks)), int(_sum(acc))
                want = acc + 1
            else:
                want = _ones(len(dec))
            c = plan.dec_ctx + want                   # last token + accepted drafts now hold KV
            R.computed[dec] = c
            blocks = R.blocks[dec]                     # roll back the rejected drafts' KV
            keep = np.minimum(blocks, (c + cfg.block_size - 1) // cfg.block_size)
            self.free_blocks += int(_sum(blocks)) - int(_sum(keep))
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
            self.free_blocks += int(_sum(R.blocks[done]))
            R.blocks[done] = 0
            self.run = self.run[~R.finished[self.run]]
            self.outstanding -= len(done)
            for i in done.tolist():
                self.on_finish(i)
        return emitted, drafted, accepted

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
        return int(_sum(m)), ids[gen >= out]

    def _fail(self, i: int, reason: str) -> None:
        self.R.fail(i, reason, self.env.now)
        self.outstanding -= 1
        self.on_finish(i)


def run(specs, cfg: EngineConfig, replicas: int, target: ForwardModel, draft: ForwardModel | None, acceptance,
        routing, seed: int, router: str = "round_robin", max_concurrency: int | None = None,
        progress=None) -> Outcome:
    env = simpy.Environment()
    streams = np.random.SeedSequence(seed).spawn(replicas)
    steps: list = []
    R = Requests(specs)
    sem = simpy.Resource(env, capacity=max_concurrency) if max_concurrency else None
    done_events: dict = {}
    # The run ends when every request has finished or failed, or early when a replica's queue
    # passes cfg.stop_waiting (the planner's "not sustainable" verdict is then already certain).
    all_done, stop = env.event(), env.event()
    left = [len(specs)]

    def finished(i):
        ev = done_events.pop(i, None)
        if ev is not None:
            ev.succeed()
        if progress is not None:
            progress(1)
        left[0] -= 1
        if not left[0]:
            all_done.succeed()

    nxt = [0]      # index of the next request the arrivals process will release
    next_arrival = lambda: specs[nxt[0]].arrival_s if nxt[0] < len(specs) else math.inf  # noqa: E731
    # With a concurrency cap a finish (here or elsewhere) sends the next request: then arrivals
    # are not known ahead and no replica runs ahead (see Replica._coast).
    known = None if max_concurrency else next_arrival
    reps = [Replica(env, j, cfg, R, target, draft, acceptance, routing, np.random.default_rng(streams[j]), steps,
                    finished, stop, known) for j in range(replicas)]
    rr = [0]

    def send(i, spec):
        R.send_s[i] = env.now
        if spec.input_len + spec.output_len > cfg.max_model_len:
            R.fail(i, f"input+output exceeds max_model_len {cfg.max_model_len}", env.now)
            finished(i)
            return
        if blocks_for(spec.input_len + spec.output_len + cfg.k, cfg.block_size) > cfg.num_blocks:
            R.fail(i, "request needs more KV blocks than a replica has", env.now)
            finished(i)
            return
        if router == "least_outstanding":
            rep = min(reps, key=lambda x: (x.outstanding, x.idx))
        else:
            rep = reps[rr[0] % replicas]
            rr[0] += 1
        rep.submit(i)

    def client(i, spec):
        with sem.request() as slot:
            yield slot
            ev = done_events[i] = env.event()
            send(i, spec)
            if not ev.triggered:
                yield ev

    def arrivals():
        for i, spec in enumerate(specs):
            if spec.arrival_s > env.now:
                yield env.timeout(spec.arrival_s - env.now)
            nxt[0] = i + 1
            if sem is None:
                send(i, spec)
            else:
                env.process(client(i, spec))

    env.process(arrivals())
    if specs:
        env.run(until=env.any_of([all_done, stop]))
    stopped = not all_done.triggered
    if stopped:
        for i in np.flatnonzero(~R.finished).tolist():
            R.fail(i, f"not finished: run stopped once a queue passed {cfg.stop_waiting} waiting requests", env.now)
    per_pos = None
    if cfg.k:
        pos = [r.positions() for r in reps]
        pos_d, pos_a = sum(p[0] for p in pos), sum(p[1] for p in pos)
        per_pos = [float(a / d) if d else None for a, d in zip(pos_a, pos_d)]
    R.close()
    extra = {"per_position": per_pos}
    if stopped:
        extra["stopped_early"] = True
    return Outcome(R, steps, replicas, env.now, extra)
