"""The scheduler and the speculative round, each driven alone (no SimPy, no cost model)."""

import numpy as np
import pytest

from simulator.cost.framework import FrameworkStep
from simulator.serving.acceptance import IID
from simulator.serving.engine import EngineConfig
from simulator.serving.memory import blocks_for
from simulator.serving.requests import Requests
from simulator.serving.scheduler import Scheduler
from simulator.serving.speculation import Speculation
from simulator.serving.workload import RequestSpec


def _cfg(**kw):
    base = dict(max_num_seqs=8, max_num_batched_tokens=512, enable_chunked_prefill=True, block_size=16,
                num_blocks=64, max_model_len=4096, step_model=FrameworkStep(step_cpu_s=0.0))
    return EngineConfig(**{**base, **kw})


def _requests(lengths):
    return Requests([RequestSpec(i, 0.0, a, b) for i, (a, b) in enumerate(lengths)])


def _apply(sched, R, plan, want=1):
    """What the replica does after a step (no SD): prefill progress, one token per decode."""
    R.computed[plan.pre] = plan.pre_ctx + plan.pre_n
    R.computed[plan.dec] = plan.dec_ctx + want
    R.generated[plan.dec] += want


@pytest.mark.parametrize("batch", [True, False])
def test_budget_blocks_and_order(batch, monkeypatch):
    monkeypatch.setattr(Scheduler, "batch_schedule", batch)
    cfg = _cfg()
    R = _requests([(300, 50)] * 5)
    s = Scheduler(cfg, R)
    for i in range(5):
        s.submit(i)
    seen_tokens = []
    for _ in range(40):
        plan = s.schedule(0)
        n = int(plan.dec_n.sum() + plan.pre_n.sum())
        seen_tokens.append(n)
        assert n <= cfg.max_num_batched_tokens
        held = int(R.blocks.sum())
        assert s.free_blocks + held == cfg.num_blocks and s.free_blocks >= 0        # blocks conserved
        ids, toks = np.concatenate([plan.dec, plan.pre]), np.concatenate([plan.dec_n, plan.pre_n])
        assert (R.blocks[ids] * cfg.block_size >= R.computed[ids] + toks).all()    # KV covers the step
        assert len(s.run) <= cfg.max_num_seqs
        _apply(s, R, plan)
    # the first step admits prompts in arrival order, chunked to the budget
    assert seen_tokens[0] == 512


def test_preempts_newest_when_blocks_run_out():
    cfg = _cfg(num_blocks=blocks_for(310, 16) * 2 + 1)     # two sequences' worth, then a bit
    R = _requests([(300, 200)] * 3)
    s = Scheduler(cfg, R)
    for i in range(3):
        s.submit(i)
    preempted = 0
    for _ in range(60):
        plan = s.schedule(0)
        preempted += plan.preempted
        assert s.free_blocks + int(R.blocks.sum()) == cfg.num_blocks
        _apply(s, R, plan)
    assert preempted >= 1
    assert R.preemptions.sum() == preempted
    # recompute preemption: the victim must prefill prompt + what it had generated
    v = int(np.argmax(R.preemptions))
    assert R.prefill_target[v] >= R.input_len[v]


def test_chunked_prefill_off_takes_whole_prompts():
    cfg = _cfg(enable_chunked_prefill=False, max_num_batched_tokens=700)
    R = _requests([(400, 10)] * 3)
    s = Scheduler(cfg, R)
    for i in range(3):
        s.submit(i)
    plan = s.schedule(0)
    assert plan.pre_n.tolist() == [400]          # the second prompt does not fit what is left


def test_prefill_first_steps_pause_decodes():
    """Without mixed chunks (SGLang's default) a step with prefill work carries only prefill: the
    chunked prompt's next chunk first, then waiting prompts, up to the budget; decodes run only in
    steps with no prefill to do. Blocks stay conserved throughout."""
    cfg = _cfg(mixed_prefill=False)
    R = _requests([(100, 20), (700, 20), (200, 20)])
    s = Scheduler(cfg, R)
    s.submit(0)
    plan = s.schedule(0)
    assert plan.pre.tolist() == [0] and len(plan.dec) == 0
    _apply(s, R, plan)
    R.generated[0] = 1                       # its first token
    plan = s.schedule(0)
    assert plan.dec.tolist() == [0] and len(plan.pre) == 0        # nothing to prefill: a decode step
    _apply(s, R, plan)
    s.submit(1)
    s.submit(2)
    plan = s.schedule(0)
    assert len(plan.dec) == 0 and plan.pre.tolist() == [1] and plan.pre_n.tolist() == [512]
    _apply(s, R, plan)
    plan = s.schedule(0)                    # the rest of prompt 1, then prompt 2; request 0 waits
    assert len(plan.dec) == 0 and plan.pre.tolist() == [1, 2] and plan.pre_n.tolist() == [188, 200]
    assert s.free_blocks + int(R.blocks.sum()) == cfg.num_blocks
    _apply(s, R, plan)
    plan = s.schedule(0)
    assert sorted(plan.dec.tolist()) == [0, 1, 2] and len(plan.pre) == 0


def test_speculation_counts_are_conserved():
    cfg = _cfg(k=3, verify_tokens=4)
    R = _requests([(100, 100)] * 50)
    sp = Speculation(cfg, None, IID(0.6))
    rng = np.random.default_rng(0)
    from simulator.serving.scheduler import Plan
    ids = np.arange(50)
    ks = np.where(ids % 5 == 0, 1, 3)           # some sequences near their end draft fewer
    plan = Plan(ids, ks + 1, ks, np.full(50, 100), ids[:0], ids[:0], ids[:0])
    want, drafted, accepted = sp.accept(plan, 3, rng, R)
    assert drafted == ks.sum() and 0 <= accepted <= drafted
    assert ((want - 1) <= ks).all() and (want >= 1).all() and want.sum() - 50 == accepted
    d, a, reached = sp.positions()
    assert d.sum() == drafted and a.sum() == accepted
    assert (a <= reached).all() and (reached <= d).all()
    # position 0 is reached by every drafting sequence
    assert reached[0] == d[0] == 50
    assert sp.choose_k(R, ids) == 3              # no adaptive policy: the configured k
    assert sp.draft_s(plan, plan.dec_n > 1, 50, 5000.0, (), 3) is None     # n-gram style: no draft model
