"""The SimPy serving engine: arrivals, clients, a router, and the replicas' step loops.

The processes here only decide *when* things happen; what a step computes is the scheduler's
(:mod:`.scheduler`), its speculative round is :mod:`.speculation`'s, and how long it takes comes from
:mod:`simulator.cost.forward` (pure cost model). Per replica the loop is vLLM V1's
(:mod:`.replica`): a decode step = ``k`` draft passes + one target verification of ``k + 1`` tokens
per sequence; each sequence keeps its accepted drafts plus one bonus token, and the KV of
rejected drafts is rolled back.

Request state lives in columns (:class:`~.requests.Requests`, numpy arrays indexed by request) and
a replica's running batch is an array of request indices, so a step costs a few dozen array
operations whatever the batch size: the simulator models steps, not tokens.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
import simpy

from ..cost.forward import ForwardModel
from .memory import blocks_for
from ..cost.framework import FrameworkStep
from .dp_worker import DPWorker
from .replica import Replica
from .requests import Requests
from .steplog import StepLog

@dataclass
class EngineConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    enable_chunked_prefill: bool
    block_size: int
    num_blocks: int
    max_model_len: int
    step_model: FrameworkStep          # the framework's CPU side of a step (simulator/cost/framework.py)
    k: int = 0                         # speculative tokens (0 = no SD)
    verify_tokens: int = 1             # query tokens per sequence when verifying (k+1, or a tree)
    draft_kind: str = "none"           # none | model | head | ngram
    draft_tokens_per_pass: int = 1     # EAGLE tree top-k: tokens drafted per pass per sequence
    k_policy: object = None            # adaptive k: (batch, mean ctx, reached, accepted per position) -> k
    stop_waiting: int | None = None    # end the run once a replica queues more requests than this
    prefix_caching: bool = False       # keep a finished turn's full KV blocks for its conversation's next turn
    mixed_prefill: bool = True         # prefill chunks share a step with decodes (else SGLang's prefill-only steps)
    dp_dispatch: str = "fewest_requests"   # attention DP: a new request's rank (or round_robin, in turn)


@dataclass
class Outcome:
    requests: Requests
    steps: StepLog
    num_replicas: int
    end_s: float
    extra: dict = field(default_factory=dict)


@dataclass
class PoolRun:
    """Workers of one pool as the engine runs them: ``role`` agg (prefill and decode), prefill
    (hands each prefilled request on) or decode (admits requests whose KV has arrived)."""
    role: str
    workers: int
    dp_ranks: int
    cfg: EngineConfig
    target: ForwardModel
    draft: ForwardModel | None
    kv_bytes_per_token: float = 0.0    # prefill pool: KV bytes a prompt token sends
    kv_transfer_s: object = None       # prefill pool: KV bytes -> seconds to send them
    handoff_s: float = 0.0             # prefill pool: the request's fixed cost after its KV has arrived


def run(specs, pools: list, acceptance, routing, seed: int, router: str = "round_robin",
        max_concurrency: int | None = None, progress=None, spill_dir=None, users: int | None = None) -> Outcome:
    """Run the workload; with ``spill_dir`` the step log goes to disk chunk by chunk (flat memory).

    Clients: open loop (each request sent at its arrival time); ``max_concurrency`` caps requests in
    flight as ``vllm bench serve --max-concurrency`` does (a request waits for a free slot); ``users``
    is a closed loop as ``aiperf``/``genai-perf --concurrency`` run it: that many users, each sending
    its next request (in request order) the moment its previous one finishes.

    ``pools`` (PoolRun list): one agg pool, or a prefill and a decode pool (disaggregated), whose
    workers are numbered in that order."""
    cfg = pools[0].cfg
    replicas = sum(p.workers for p in pools)
    env = simpy.Environment()
    streams = np.random.SeedSequence(seed).spawn(replicas)
    steps = StepLog(replicas, spill_dir)
    R = Requests(specs)
    sem = simpy.Resource(env, capacity=max_concurrency) if max_concurrency else None
    done_events: dict = {}
    # The run ends when every request has finished or failed, or early when a replica's queue
    # passes cfg.stop_waiting (the planner's "not sustainable" verdict is then already certain).
    all_done, stop = env.event(), env.event()
    left = [len(specs)]
    last_finish = [-1.0]

    def finished(i):
        last_finish[0] = env.now
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
    # With a client cap a finish sends the next request: arrivals are not known ahead and no replica
    # runs ahead (see simulator.serving.coast). Except a closed loop on one replica (of any number of
    # DP ranks): a coast ends before its first finish, so the only sends it can miss are those of a
    # finish at its start (the user process runs after the replica's).
    single = len(pools) == 1 and pools[0].workers == 1
    if not (max_concurrency or users):
        known = next_arrival
    elif users and single:
        known = lambda: env.now if last_finish[0] == env.now else math.inf  # noqa: E731
    elif single:
        # a client cap sends at an arrival with a free slot, or at a finish (its slot passes on)
        known = lambda: env.now if last_finish[0] == env.now else next_arrival()  # noqa: E731
    else:
        known = None
    reps, by_role = [], {}
    for pool in pools:
        for _ in range(pool.workers):
            j = len(reps)
            args = (env, j, pool.cfg, R, pool.target, pool.draft, acceptance, routing, np.random.default_rng(streams[j]),
                    steps, finished, stop, known if pool.role != "decode" else None)
            rep = DPWorker(*args, dp=pool.dp_ranks) if pool.dp_ranks > 1 else Replica(*args)
            reps.append(rep)
            by_role.setdefault(pool.role, []).append(rep)
    entry = by_role.get("agg") or by_role["prefill"]
    moved = [0, 0.0]      # KV transfers, bytes sent
    if "decode" in by_role:
        decode, pre = by_role["decode"], pools[0]
        due = []            # heap: when the transfers under way reach the decode pool
        fastest_s = pre.kv_transfer_s(0.0)

        def decode_known():
            # a transfer not started yet starts no sooner than now and takes no less than an empty one
            soonest = env.now + fastest_s
            if pre.handoff_s:
                soonest += pre.handoff_s
            return min(due[0], soonest) if due else soonest

        for rep in decode:        # a decode worker's requests come only from transfers
            rep.next_arrival = decode_known

        def transfer(i, sent):
            kv_bytes = pre.kv_bytes_per_token * float(R.computed[i])
            moved[0] += 1
            moved[1] += kv_bytes
            dt = pre.kv_transfer_s(kv_bytes)
            at = env.now + dt                  # the sums SimPy forms for the two timeouts
            if pre.handoff_s:
                at += pre.handoff_s
            heapq.heappush(due, at)
            yield env.timeout(dt)
            sent()      # the bytes are across: the prefill worker's blocks are free again
            if pre.handoff_s:
                yield env.timeout(pre.handoff_s)
            heapq.heappop(due)                 # this one's (no transfer under way is due earlier)
            # the client's first token comes with the KV to the decode worker (TTFT includes the transfer)
            R.first_token_s[i] = R.last_token_s[i] = env.now
            min(decode, key=lambda x: (x.outstanding, x.idx)).submit(i)

        for rep in entry:
            rep.handoff = lambda i, sent: env.process(transfer(i, sent))
    rr = [0]
    conv_replica: dict = {}

    def send(i, spec):
        R.send_s[i] = env.now
        if not cfg.enable_chunked_prefill and spec.input_len > cfg.max_num_batched_tokens:
            R.fail(i, f"prompt of {spec.input_len} tokens exceeds max_num_batched_tokens {cfg.max_num_batched_tokens} "
                      "with chunked prefill off", env.now)
            finished(i)
            return
        if spec.input_len + spec.output_len > cfg.max_model_len:
            R.fail(i, f"input+output exceeds max_model_len {cfg.max_model_len}", env.now)
            finished(i)
            return
        if any(blocks_for(spec.input_len + spec.output_len + p.cfg.k, p.cfg.block_size) > p.cfg.num_blocks
               for p in pools):
            R.fail(i, "request needs more KV blocks than a replica has", env.now)
            finished(i)
            return
        conv = int(R.conversation[i])
        if conv >= 0 and conv in conv_replica:        # a conversation stays on its replica (its KV is there)
            rep = conv_replica[conv]
        elif router == "least_outstanding":
            rep = min(entry, key=lambda x: (x.outstanding, x.idx))
        else:
            rep = entry[rr[0] % len(entry)]
            rr[0] += 1
        if conv >= 0:
            conv_replica[conv] = rep
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

    def user(u):
        # a user takes whole conversations: turn n+1 leaves when turn n has finished
        while nxt[0] < len(specs):
            first = last = nxt[0]
            conv = specs[first].conversation
            while conv >= 0 and last + 1 < len(specs) and specs[last + 1].conversation == conv:
                last += 1
            nxt[0] = last + 1                          # the whole conversation is this user's
            for i in range(first, last + 1):
                R.user[i] = u
                ev = done_events[i] = env.event()
                send(i, specs[i])
                if not ev.triggered:
                    yield ev

    if users:
        for u in range(users):
            env.process(user(u))
    else:
        env.process(arrivals())
    if specs:
        env.run(until=env.any_of([all_done, stop]))
    stopped = not all_done.triggered
    if stopped:
        for i in np.flatnonzero(~R.finished).tolist():
            R.fail(i, f"not finished: run stopped once a queue passed {cfg.stop_waiting} waiting requests", env.now)
    per_pos = None
    if any(p.cfg.k for p in pools):
        pos = [r.spec.positions() for r in reps if r.cfg.k]
        pos_d, pos_a = sum(p[0] for p in pos), sum(p[1] for p in pos)
        per_pos = [float(a / d) if d else None for a, d in zip(pos_a, pos_d)]
    R.close()
    steps.close()
    extra = {"per_position": per_pos}
    if "decode" in by_role:
        extra["kv_transfers"], extra["kv_transfer_bytes"] = moved
    if stopped:
        extra["stopped_early"] = True
    return Outcome(R, steps, replicas, env.now, extra)
