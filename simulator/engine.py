"""The SimPy serving engine: arrivals, a router, and per replica a vLLM-style step loop.

The processes here only decide *when* things happen and *what* each step computes; how long a
step takes comes from :mod:`simulator.forward` (pure cost model).

Per step, like vLLM V1's scheduler: running requests first (decodes need ``1 + k`` query
tokens when speculating, prefills take a chunk of the token budget), preempting the newest
running request by recompute when KV blocks run out; then waiting requests are admitted while
``max_num_seqs``, the token budget and free KV blocks allow. A decode step = ``k`` draft passes
+ one target verification of ``k + 1`` tokens per sequence; each sequence keeps its accepted
drafts plus one bonus token, and the KV of rejected drafts is rolled back.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import simpy

from .forward import Batch, ForwardModel, StepCost
from .memory import blocks_for
from .routing import expected_count_vector

STEP_FIELDS = ("replica", "start_s", "duration_s", "num_decode", "num_prefill", "num_tokens", "query_len",
               "draft_s", "attention_s", "gemm_s", "moe_s", "comm_s", "overhead_s", "active_experts",
               "expert_weight_bytes", "emitted_tokens", "drafted_tokens", "accepted_tokens", "kv_blocks_used",
               "num_waiting", "preemptions")


class Request:
    __slots__ = ("id", "arrival_s", "send_s", "input_len", "output_len", "computed", "generated", "blocks",
                 "first_token_s", "last_token_s", "itls", "finish_s", "failed", "fail_reason", "preemptions",
                 "drafted", "accepted", "num_drafts", "prefill_target", "replica", "done")

    def __init__(self, spec):
        self.id, self.arrival_s = spec.request_id, spec.arrival_s
        self.input_len, self.output_len = spec.input_len, spec.output_len
        self.send_s = None
        self.computed = self.generated = self.blocks = 0
        self.first_token_s = self.last_token_s = self.finish_s = None
        self.itls = []
        self.failed, self.fail_reason = False, ""
        self.preemptions = self.drafted = self.accepted = self.num_drafts = 0
        self.prefill_target = spec.input_len
        self.replica = -1
        self.done = None

    @property
    def in_prefill(self) -> bool:
        return self.computed < self.prefill_target


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


@dataclass
class Outcome:
    requests: list
    steps: list
    num_replicas: int
    end_s: float
    extra: dict = field(default_factory=dict)


class Replica:
    def __init__(self, env, idx, cfg: EngineConfig, target: ForwardModel, draft: ForwardModel | None,
                 acceptance, routing, rng, steps: list, on_finish):
        self.env, self.idx, self.cfg = env, idx, cfg
        self.target, self.draft, self.acc, self.routing, self.rng = target, draft, acceptance, routing, rng
        self.waiting: deque = deque()
        self.running: list = []
        self.free_blocks = cfg.num_blocks
        self.steps, self.on_finish = steps, on_finish
        self.wake = None
        self.outstanding = 0
        self.pos_drafted = np.zeros(max(cfg.k, 1), dtype=np.int64)
        self.pos_accepted = np.zeros(max(cfg.k, 1), dtype=np.int64)
        self.pos_reached = np.zeros(max(cfg.k, 1), dtype=np.int64)   # drafted with all earlier accepted
        self.k_now = cfg.k
        self._draft_memo: dict = {}
        env.process(self.loop())

    # --- admission ---------------------------------------------------------------------

    def submit(self, r: Request) -> None:
        r.replica = self.idx
        self.outstanding += 1
        self.waiting.append(r)
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    def _grow(self, r: Request, tokens: int) -> bool:
        need = blocks_for(tokens, self.cfg.block_size) - r.blocks
        if need <= 0:
            return True
        if need > self.free_blocks:
            return False
        self.free_blocks -= need
        r.blocks += need
        return True

    def _shrink(self, r: Request) -> None:
        keep = blocks_for(r.computed, self.cfg.block_size)
        if r.blocks > keep:
            self.free_blocks += r.blocks - keep
            r.blocks = keep

    def _preempt(self, r: Request) -> None:
        """Recompute preemption: drop its KV, requeue it first; prompt + output are prefilled again."""
        self.running.remove(r)
        self.free_blocks += r.blocks
        r.blocks = r.computed = 0
        r.prefill_target = r.input_len + r.generated
        r.preemptions += 1
        self.waiting.appendleft(r)

    def _choose_k(self) -> int:
        cfg = self.cfg
        if cfg.k_policy is None:
            return cfg.k
        ctx = [r.computed for r in self.running if not r.in_prefill]
        return cfg.k_policy(len(ctx), sum(ctx) / len(ctx) if ctx else 1.0, self.pos_reached, self.pos_accepted)

    # --- one step ------------------------------------------------------------------------

    def schedule(self):
        """Pick this step's work: running requests first (decode k+1 tokens, or a prefill chunk),
        preempting from the back when KV blocks run out, then admit waiting requests.
        Returns ([(request, tokens, k)] decodes, [(request, tokens)] prefills, preemptions)."""
        cfg = self.cfg
        budget = cfg.max_num_batched_tokens
        bs = cfg.block_size
        decodes, prefills, preempted = [], [], 0
        kn = self.k_now = self._choose_k()
        tree = cfg.k_policy is None and cfg.verify_tokens != cfg.k + 1
        running = self.running
        i = 0
        while i < len(running):
            r = running[i]
            if r.computed < r.prefill_target:
                left = r.prefill_target - r.computed
                n = min(left, budget) if cfg.enable_chunked_prefill else (left if left <= budget else 0)
                k = -1
            else:
                left = r.output_len - r.generated - 1        # k, capped by the tokens still to generate
                k = kn if left >= kn else (left if left > 0 else 0)
                n = cfg.verify_tokens if tree and k == cfg.k and k > 0 else k + 1
                if n > budget:
                    n = 0
            if n <= 0:
                i += 1
                continue
            need = (r.computed + n + bs - 1) // bs - r.blocks
            if need > 0:
                if need <= self.free_blocks:
                    self.free_blocks -= need
                    r.blocks += need
                else:
                    lost = False
                    while not self._grow(r, r.computed + n):
                        victim = running[-1]
                        self._preempt(victim)
                        preempted += 1
                        if victim is r:
                            lost = True
                            break
                    if lost:
                        break
            budget -= n
            if k < 0:
                prefills.append((r, n))
            else:
                decodes.append((r, n, k))
            i += 1
        while self.waiting and len(running) < cfg.max_num_seqs and budget > 0 and not preempted:
            r = self.waiting[0]
            left = r.prefill_target - r.computed
            n = min(left, budget) if cfg.enable_chunked_prefill else left
            if n > budget or not self._grow(r, r.computed + n):
                break
            self.waiting.popleft()
            running.append(r)
            budget -= n
            prefills.append((r, n))
        return decodes, prefills, preempted

    def _counts(self, seq_tokens):
        m = self.target.m
        E, K = m.moe.num_experts, m.moe.num_experts_per_tok
        total = int(sum(seq_tokens))
        if self.routing.mode == "expected":
            return expected_count_vector(total, E, K)
        if total > 256 and self.routing.model.kind != "locality":
            p = self.routing.model.expected_counts(1.0, E, K) / K
            return self.rng.multinomial(total * K, p / p.sum())
        return self.routing.model.sample_counts(seq_tokens, E, K, self.rng)

    def step_cost(self, decodes, prefills) -> StepCost:
        cfg = self.cfg
        nd = len(decodes)
        q = max((d[1] for d in decodes), default=1)
        ctx = sum(d[0].computed for d in decodes) / nd if nd else 0.0
        batch = Batch(nd, q, ctx, tuple((n, r.computed) for r, n in prefills))
        counts = None
        if self.target.m.moe:
            counts = self._counts([d[1] for d in decodes] + [n for _, n in prefills])
        cost = self.target.forward(batch, counts)
        spec = [d[0] for d in decodes if d[1] > 1]
        if self.draft is not None and (spec or prefills):
            ctx_d = sum(r.computed for r in spec) / len(spec) if spec else 0.0
            passes = self.k_now
            draft_s = 0.0
            if spec:
                # the draft's step cost barely moves with context: cache it on a 1/64-octave grid
                key = (len(spec), round(64 * math.log2(max(ctx_d, 1.0))))
                one_s = self._draft_memo.get(key)
                if one_s is None:
                    one_s = self._draft_memo[key] = self.draft.forward(
                        Batch(len(spec), cfg.draft_tokens_per_pass, 2 ** (key[1] / 64))).total_s
                draft_s += passes * one_s
            if prefills:
                draft_s += self.draft.forward(Batch(0, 1, 0.0, batch.prefill)).total_s
            cost.draft_s = draft_s
        cost.overhead_s += cfg.step_overhead_s + cfg.per_seq_overhead_s * (nd + len(prefills))
        if spec:
            cost.overhead_s += cfg.spec_round_overhead_s
        return cost, batch, counts

    def loop(self):
        env, cfg = self.env, self.cfg
        while True:
            if not self.running and not self.waiting:
                self.wake = env.event()
                yield self.wake
                self.wake = None
                continue
            decodes, prefills, preempted = self.schedule()
            if not decodes and not prefills:
                # Nothing fits even alone: the head request can never run on this replica.
                r = self.waiting.popleft() if self.waiting else self.running.pop()
                self.free_blocks += r.blocks
                r.blocks = 0
                self._fail(r, "kv cache too small for this request")
                continue
            cost, batch, counts = self.step_cost(decodes, prefills)
            start = env.now
            yield env.timeout(cost.total_s)
            now = env.now
            emitted = drafted = accepted = 0
            for r, n in prefills:
                r.computed += n
                if not r.in_prefill:
                    emitted += self._emit(r, 1, now)
            if decodes:
                acc = (self.acc.sample(self.k_now, len(decodes), self.rng) if self.k_now
                       else np.zeros(len(decodes), int))
                if self.k_now:
                    ks = np.array([d[2] for d in decodes])
                    acc = np.minimum(acc, ks)
                    pos = np.arange(cfg.k)
                    drafted_mask = ks[:, None] > pos
                    self.pos_drafted += drafted_mask.sum(axis=0)
                    self.pos_accepted += (acc[:, None] > pos).sum(axis=0)
                    self.pos_reached += (drafted_mask & (acc[:, None] >= pos)).sum(axis=0)
                bs = cfg.block_size
                for (r, n, k), a in zip(decodes, acc.tolist()):
                    if k:
                        r.num_drafts += 1
                        r.drafted += k
                        r.accepted += a
                        drafted += k
                        accepted += a
                    r.computed += 1 + a            # last token + accepted drafts now hold KV
                    keep = (r.computed + bs - 1) // bs   # roll back the rejected drafts' KV (inline _shrink)
                    if r.blocks > keep:
                        self.free_blocks += r.blocks - keep
                        r.blocks = keep
                    m = r.output_len - r.generated       # inline _emit for a request past its first token
                    m = m if m < 1 + a else 1 + a
                    if r.last_token_s is not None and r.generated and m < r.output_len - r.generated:
                        r.itls.append(now - r.last_token_s)
                        r.last_token_s = now
                        r.generated += m
                        emitted += m
                    else:
                        emitted += self._emit(r, 1 + a, now)
            self.steps.append((self.idx, start, cost.total_s, len(decodes), len(prefills), batch.num_tokens,
                               batch.decode_q, cost.draft_s, cost.attention_s, cost.gemm_s, cost.moe_s, cost.comm_s,
                               cost.overhead_s, cost.active_experts, cost.expert_weight_bytes, emitted, drafted,
                               accepted, cfg.num_blocks - self.free_blocks, len(self.waiting), preempted))

    def _emit(self, r: Request, n: int, now: float) -> int:
        n = min(n, r.output_len - r.generated)
        if r.generated == 0 and r.first_token_s is None:
            r.first_token_s = now
        elif r.last_token_s is not None:
            r.itls.append(now - r.last_token_s)
        r.last_token_s = now
        r.generated += n
        if r.generated >= r.output_len:
            self.running.remove(r)
            self.free_blocks += r.blocks
            r.blocks = 0
            r.finish_s = now
            self.outstanding -= 1
            self.on_finish(r)
        return n

    def _fail(self, r: Request, reason: str) -> None:
        r.failed, r.fail_reason = True, reason
        r.finish_s = self.env.now
        self.outstanding -= 1
        self.on_finish(r)


def run(specs, cfg: EngineConfig, replicas: int, target: ForwardModel, draft: ForwardModel | None, acceptance,
        routing, seed: int, router: str = "round_robin", max_concurrency: int | None = None,
        progress=None) -> Outcome:
    env = simpy.Environment()
    streams = np.random.SeedSequence(seed).spawn(replicas)
    steps: list = []
    reqs = [Request(s) for s in specs]
    sem = simpy.Resource(env, capacity=max_concurrency) if max_concurrency else None

    def finished(r):
        if r.done is not None:
            r.done.succeed()
        if progress is not None:
            progress(1)

    reps = [Replica(env, i, cfg, target, draft, acceptance, routing, np.random.default_rng(streams[i]), steps,
                    finished) for i in range(replicas)]
    rr = [0]

    def send(r):
        r.send_s = env.now
        if r.input_len + r.output_len > cfg.max_model_len:
            r.failed, r.fail_reason, r.finish_s = True, f"input+output exceeds max_model_len {cfg.max_model_len}", env.now
            finished(r)
            return
        if blocks_for(r.input_len + r.output_len + cfg.k, cfg.block_size) > cfg.num_blocks:
            r.failed, r.fail_reason, r.finish_s = True, "request needs more KV blocks than a replica has", env.now
            finished(r)
            return
        if router == "least_outstanding":
            rep = min(reps, key=lambda x: (x.outstanding, x.idx))
        else:
            rep = reps[rr[0] % replicas]
            rr[0] += 1
        rep.submit(r)

    def client(r):
        with sem.request() as slot:
            yield slot
            r.done = env.event()
            send(r)
            if not r.done.triggered:
                yield r.done

    def arrivals():
        for r in reqs:
            if r.arrival_s > env.now:
                yield env.timeout(r.arrival_s - env.now)
            if sem is None:
                send(r)
            else:
                env.process(client(r))

    env.process(arrivals())
    env.run()
    pos_d = sum(r.pos_drafted for r in reps)
    pos_a = sum(r.pos_accepted for r in reps)
    per_pos = [float(a / d) if d else None for a, d in zip(pos_a, pos_d)] if cfg.k else None
    return Outcome(reqs, steps, replicas, env.now, {"per_position": per_pos})
