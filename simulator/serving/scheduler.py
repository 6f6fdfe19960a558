"""The scheduler of one replica, as vLLM V1 schedules a step: KV blocks, the waiting queue, the
running batch, preemption and admission. It decides *what* a step computes, not when or how long.

Running requests first (decodes need ``1 + k`` query tokens when speculating, ``verify_tokens``
for an EAGLE tree; prefills take a chunk of the token budget), preempting the newest running
request by recompute when KV blocks run out; then waiting requests are admitted while
``max_num_seqs``, the token budget and free KV blocks allow.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from .memory import blocks_for
from .requests import EMPTY, Requests, total


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


class Scheduler:
    """Queues and KV blocks of one replica. ``run``: running request indices, oldest first."""

    # Take the leading running requests that fit in one array operation. False schedules every
    # request one by one: the reference the tests compare the fast path with.
    batch_schedule = True

    def __init__(self, cfg, R: Requests):
        self.cfg, self.R = cfg, R
        self.waiting: deque = deque()
        self.run = EMPTY
        self.free_blocks = cfg.num_blocks
        # prefix cache: conversation -> (tokens, blocks) of a finished turn's full KV blocks, oldest
        # first. Those blocks count as free (vLLM keeps them in its free queue, evictable); when
        # allocations eat into them the least recently finished conversations are evicted.
        self.cache: OrderedDict = OrderedDict()
        self.cached_blocks = 0
        self.held = 0       # blocks of handed-off requests whose KV is still being sent (disaggregated)

    def submit(self, i: int) -> None:
        self.waiting.append(i)

    def _hit(self, i: int):
        """At admission: take the cached history of request i's conversation (whole blocks, never the
        whole prompt: its last token is recomputed). Returns what to put back if admission fails."""
        R = self.R
        conv = int(R.conversation[i])
        entry = self.cache.pop(conv, None)
        if entry is None:
            return None
        tokens, blocks = entry
        self.cached_blocks -= blocks
        bs = self.cfg.block_size
        hit = min(tokens, int(R.prefix_len[i]), int(R.input_len[i]) - 1) // bs * bs
        R.computed[i] = R.cached_tokens[i] = hit
        R.blocks[i] = hit // bs
        self.free_blocks -= hit // bs
        return conv, entry

    def _unhit(self, i: int, taken) -> None:
        conv, (tokens, blocks) = taken
        R = self.R
        self.free_blocks += int(R.blocks[i])
        R.computed[i] = R.cached_tokens[i] = R.blocks[i] = 0
        self.cache[conv] = (tokens, blocks)
        self.cached_blocks += blocks

    def cache_finished(self, ids) -> None:
        """Keep the full KV blocks of finished turns whose conversation goes on (prefix caching)."""
        R, bs = self.R, self.cfg.block_size
        for i in ids:
            conv = int(R.conversation[i])
            if conv < 0 or i + 1 >= len(R) or int(R.conversation[i + 1]) != conv:    # no next turn
                continue
            blocks = int(R.computed[i]) // bs
            if blocks:
                self.cache[conv] = (blocks * bs, blocks)
                self.cached_blocks += blocks
        self.evict()

    def evict(self) -> None:
        while self.cached_blocks > self.free_blocks:
            _, (_, blocks) = self.cache.popitem(last=False)
            self.cached_blocks -= blocks

    def release(self, i: int) -> None:
        """Give back the KV blocks of request i (finished, failed or dropped)."""
        self.free_blocks += int(self.R.blocks[i])
        self.R.blocks[i] = 0

    def hold(self, i: int) -> int:
        """Request i leaves (its KV is being sent elsewhere); its blocks stay taken until
        :meth:`give_back`. Returns how many."""
        n = int(self.R.blocks[i])
        self.R.blocks[i] = 0
        self.held += n
        return n

    def give_back(self, n: int) -> None:
        self.held -= n
        self.free_blocks += n

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

    def _admit_prefilled(self) -> None:
        """Requests whose prompt KV arrived from a prefill worker (disaggregated serving) join the
        running batch as decodes, in order, while sequence slots and KV blocks allow."""
        R = self.R
        add = []
        while self.waiting and len(self.run) + len(add) < self.cfg.max_num_seqs:
            r = self.waiting[0]
            if not R.computed[r] or R.computed[r] < R.prefill_target[r] or not self._grow(r, int(R.computed[r]) + 1):
                break
            add.append(self.waiting.popleft())
        if add:
            self.run = np.concatenate([self.run, np.array(add, dtype=np.int64)])

    def _wants_one(self, i: int, budget: int, kn: int) -> tuple:
        """(tokens, k) request i asks for this step given the budget left; k = -1 for a prefill."""
        cfg, R = self.cfg, self.R
        c, t = int(R.computed[i]), int(R.prefill_target[i])
        if c < t:
            left = t - c
            return (min(left, budget) if cfg.enable_chunked_prefill else (left if left <= budget else 0)), -1
        left = int(R.output_len[i] - R.generated[i]) - 1
        k = kn if left >= kn else (left if left > 0 else 0)
        n = cfg.verify_tokens if self.tree and k == cfg.k and k > 0 else k + 1
        return (n if n <= budget else 0), k

    @property
    def tree(self) -> bool:
        """Tree verification (more query tokens than k + 1) at full k."""
        return self.cfg.k_policy is None and self.cfg.verify_tokens != self.cfg.k + 1

    def _admit(self, budget: int) -> list:
        """Waiting requests admitted, in order, while sequence slots, the token budget left and free KV
        blocks allow: (request, prompt tokens this step) pairs."""
        cfg, R = self.cfg, self.R
        adm = []
        slots = cfg.max_num_seqs - len(self.run)
        while self.waiting and len(adm) < slots and budget > 0:
            r = self.waiting[0]
            taken = self._hit(r) if self.cache and not R.computed[r] else None
            left = int(R.prefill_target[r] - R.computed[r])
            nn = min(left, budget) if cfg.enable_chunked_prefill else left
            if nn > budget or not self._grow(r, int(R.computed[r]) + nn):
                if taken is not None:
                    self._unhit(r, taken)
                break
            self.waiting.popleft()
            budget -= nn
            adm.append((r, nn))
        return adm

    def _prefill_step(self) -> Plan | None:
        """A prefill-only step, as SGLang runs one whenever it can form a prefill batch (without
        ``--enable-mixed-chunk``): the next chunks of prompts under way, then waiting prompts, up to the
        token budget; running decodes wait. None when no prefill batch can be formed."""
        R, ids = self.R, self.run
        mid = ids[R.computed[ids] < R.prefill_target[ids]]
        if not len(mid) and not self.waiting:
            return None
        budget = self.cfg.max_num_batched_tokens
        pre = []
        for r in mid.tolist():
            nn, _ = self._wants_one(r, budget, 0)
            if nn <= 0 or not self._grow(r, int(R.computed[r]) + nn):
                break
            budget -= nn
            pre.append((r, nn))
        adm = self._admit(budget)
        if not pre and not adm:
            return None
        if adm:
            self.run = np.concatenate([self.run, np.array([r for r, _ in adm], dtype=np.int64)])
        a = np.array(pre + adm, dtype=np.int64)
        if self.cached_blocks:
            self.evict()
        return Plan(EMPTY, EMPTY, EMPTY, EMPTY, a[:, 0], a[:, 1], R.computed[a[:, 0]])

    def schedule(self, kn: int) -> Plan:
        """Running requests first, in order, preempting from the back when KV blocks run out; then
        admit waiting requests. The leading running requests that fit the token budget and free
        blocks as they stand are taken in one array operation; the rest go one by one."""
        cfg, R = self.cfg, self.R
        if self.waiting and R.computed[self.waiting[0]] and R.computed[self.waiting[0]] >= R.prefill_target[self.waiting[0]]:
            self._admit_prefilled()
        elif not cfg.mixed_prefill and (plan := self._prefill_step()) is not None:
            return plan
        budget = cfg.max_num_batched_tokens
        bs = cfg.block_size
        ids = self.run
        comp, tgt = R.computed[ids], R.prefill_target[ids]
        k = np.minimum(np.maximum(R.output_len[ids] - R.generated[ids] - 1, 0), kn)
        n = k + 1
        if self.tree:
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
        elif total(n) <= budget and total(need) <= self.free_blocks:
            j = len(ids)
        else:
            fits = (np.cumsum(n) <= budget) & (np.cumsum(need) <= self.free_blocks)
            j = int(np.argmin(fits))
        if j:
            R.blocks[ids[:j]] = blocks[:j] + need[:j]
            self.free_blocks -= int(total(need[:j]))
            budget -= int(total(n[:j]))
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
        adm = self._admit(budget) if not preempted else []
        if any_pre:
            d = k >= 0
            plan = Plan(ids[d], n[d], k[d], comp[d], ids[~d], n[~d], comp[~d], preempted)
        else:
            plan = Plan(ids, n, k, comp, EMPTY, EMPTY, EMPTY, preempted)
        if adm:
            a = np.array(adm, dtype=np.int64)
            self.run = np.concatenate([self.run, a[:, 0]])
            plan.pre, plan.pre_n = np.concatenate([plan.pre, a[:, 0]]), np.concatenate([plan.pre_n, a[:, 1]])
            plan.pre_ctx = R.computed[plan.pre]
        if self.cached_blocks:
            self.evict()
        return plan
