import json

import numpy as np
import pytest

from simulator.config.scenario import load_scenario
from simulator.commands.simulate import write_outputs
from simulator.serving.simulation import build, simulate


DP_EP = ["hardware.tensor_parallel_size=1", "hardware.data_parallel_size=4", "hardware.enable_expert_parallel=true"]
DISAGG = ["disaggregation.prefill.tensor_parallel_size=2", "disaggregation.decode.tensor_parallel_size=2"]


def small(overrides=(), base="quickstart"):
    sets = ["workload.num_prompts=60", "workload.request_rate=8"] + list(overrides)
    return build(load_scenario(base, sets))


def run(setup):
    """(summary, requests, the step table)."""
    summary, req, log = simulate(setup)
    return summary, req, log.frame()


def test_same_seed_same_bytes(tmp_path):
    for d in ("a", "b"):
        s = small()
        summary, req, log = simulate(s, spill_dir=tmp_path) if d == "b" else simulate(s)   # spilled or kept
        write_outputs(tmp_path / d, s.scenario, summary, req, log, report=False)
    a = (tmp_path / "a" / "summary.json").read_bytes()
    assert a == (tmp_path / "b" / "summary.json").read_bytes()
    assert (tmp_path / "a" / "steps.csv").read_bytes() == (tmp_path / "b" / "steps.csv").read_bytes()
    assert json.loads(a)["completed"] == 60


def test_conservation_and_monotone_clock():
    s = small(["engine.max_num_seqs=8", "workload.request_rate=inf"])
    summary, req, steps = run(s)
    assert summary["completed"] + summary["failed"] == 60
    done = req[req.completed]
    assert (done.generated == done.output_len).all()
    # output tokens = prefill first tokens + decode emissions; accepted drafts add up
    assert steps.emitted_tokens.sum() == done.generated.sum()
    assert steps.accepted_tokens.sum() == done.accepted_tokens.sum() <= steps.drafted_tokens.sum()
    assert summary["spec_decode_accepted_tokens"] == steps.accepted_tokens.sum()
    # per replica the clock never runs back and steps do not overlap
    for _, g in steps.groupby("replica"):
        ends = (g.start_s + g.duration_s).values
        assert np.all(np.diff(g.start_s.values) >= 0) and np.all(g.start_s.values[1:] >= ends[:-1] - 1e-12)
    assert (done.first_token_time_s >= done.start_s).all() and (done.finish_time_s >= done.first_token_time_s).all()
    assert steps.num_decode.max() <= 8


def test_kv_blocks_are_freed_and_preemption_recomputes():
    s = small(["workload.request_rate=inf", "workload.random_output_len=400"])
    s.cfg.num_blocks = 200        # tight KV: force preemptions
    summary, req, steps = run(s)
    assert summary["num_preemptions"] > 0
    assert summary["completed"] + summary["failed"] == 60
    assert steps.kv_blocks_used.max() <= 200
    done = req[req.completed]
    assert (done.generated == done.output_len).all()


def test_zero_acceptance_gives_no_gain_only_draft_overhead():
    off = run(small(["speculative_config.num_speculative_tokens=0"]))[0]
    zero = run(small(["speculative_config.acceptance.rate=0.0"]))[0]
    assert zero["spec_decode_acceptance_length"] == pytest.approx(1.0)
    assert zero["mean_tpot_ms"] > off["mean_tpot_ms"]
    assert off["spec_decode_num_drafts"] == 0


def test_full_acceptance_emits_k_plus_one_per_step():
    summary, req, steps = run(small(["speculative_config.acceptance.rate=1.0"]))
    dec = steps[(steps.num_prefill == 0) & (steps.drafted_tokens > 0)]
    full = dec[dec.drafted_tokens == dec.num_decode * 3]
    assert len(full) > 0
    assert (full.emitted_tokens == full.num_decode * 4).all()
    assert summary["spec_decode_acceptance_rate"] == pytest.approx(100.0)


def test_md1_queue_against_theory():
    """max_num_seqs=1, 1-token outputs, fixed prompts: each request is one fixed-length step, an M/D/1 queue."""
    sets = ["speculative_config=null", "engine.max_num_seqs=1", "workload.random_output_len=1",
            "workload.random_input_len=64", "workload.random_range_ratio=0", "workload.num_prompts=4000",
            "routing.mode=expected"]
    s = build(load_scenario("quickstart", sets + ["workload.request_rate=1"]))
    _, _, steps = run(s)
    D = float(steps.duration_s.median())
    assert np.allclose(steps.duration_s, D)
    rho = 0.6
    s = build(load_scenario("quickstart", sets + [f"workload.request_rate={rho / D}"]))
    summary, req, _ = simulate(s)
    wait = (req.ttft_s - D).mean()
    assert wait == pytest.approx(rho * D / (2 * (1 - rho)), rel=0.1)


def test_uniform_routing_activates_expected_experts_per_step():
    from simulator.cost.routing import expected_distinct_experts
    summary, req, steps = run(small(["speculative_config=null", "workload.request_rate=inf",
                                     "engine.max_num_seqs=4"]))
    dec = steps[(steps.num_prefill == 0) & (steps.num_tokens == 4)]
    assert dec.active_experts.mean() == pytest.approx(expected_distinct_experts(4, 64, 8), rel=0.05)


def test_replicas_and_least_outstanding_router():
    summary, req, steps = run(small(["hardware.num_replicas=3", "engine.router=least_outstanding"]))
    assert set(req.replica) == {0, 1, 2}
    assert summary["completed"] == 60


def test_requests_too_long_are_reported_failed():
    summary, req, _ = run(small(["engine.max_model_len=600"]))
    assert summary["failed"] > 0 and summary["completed"] + summary["failed"] == 60
    assert (req[~req.completed].fail_reason.str.contains("max_model_len")).all()


def test_max_concurrency_caps_in_flight_requests():
    summary, _, _ = run(small(["workload.max_concurrency=5", "workload.request_rate=inf"]))
    assert summary["max_concurrent_requests"] <= 5


@pytest.mark.parametrize("sets, num_blocks", [
    (["workload.request_rate=inf", "workload.random_output_len=400"], 200),              # KV-bound: preemptions
    (["engine.max_num_batched_tokens=300", "workload.request_rate=20"], None),             # budget-bound chunks
    (["engine.enable_chunked_prefill=false", "engine.max_num_batched_tokens=900"], None),  # whole prompts or nothing
])
def test_array_scheduler_matches_one_by_one_reference(sets, num_blocks, monkeypatch):
    """The scheduler takes the leading requests that fit in one array operation; scheduling every
    request one by one (vLLM's loop) must give the same run, byte for byte."""
    from simulator.serving.scheduler import Scheduler

    def go(batch):
        monkeypatch.setattr(Scheduler, "batch_schedule", batch)
        s = small(sets)
        if num_blocks:
            s.cfg.num_blocks = num_blocks
        return run(s)

    fast, ref = go(True), go(False)
    assert json.dumps(fast[0], sort_keys=True, default=str) == json.dumps(ref[0], sort_keys=True, default=str)
    assert fast[1].equals(ref[1]) and fast[2].equals(ref[2])
    assert fast[0]["completed"] + fast[0]["failed"] == 60
    if num_blocks:
        assert fast[0]["num_preemptions"] > 0


def test_per_request_counters_add_up_to_the_step_log():
    """Per-request drafted/accepted/chunk counts (reduced from per-step logs at the end) agree with
    the per-step table, and every emitted token after the first is one inter-token gap or part of one."""
    summary, req, steps = run(small())
    assert req.draft_tokens.sum() == steps.drafted_tokens.sum()
    assert req.accepted_tokens.sum() == steps.accepted_tokens.sum()
    done = req[req.completed]
    assert (done.num_chunks <= done.generated - 1).all() and (done.num_chunks >= 1).all()
    assert (done.accepted_tokens <= done.draft_tokens).all()


@pytest.mark.parametrize("sets", [
    ["speculative_config=null", "workload.request_rate=2"],
    ["speculative_config=null", "workload.request_rate=3", "hardware.num_replicas=2",
     "engine.router=least_outstanding"],
    ["speculative_config=null", "workload.request_rate=inf", "workload.random_output_len=400"],   # KV-bound
    ["speculative_config=null", "workload.request_rate=1", "routing.mode=expected"],
    # power-law keys, experts split over 2 EP ranks; locality routing (not drawn many steps at once)
    ["speculative_config=null", "workload.request_rate=2", "routing.distribution=power_law",
     "routing.exponent=1.2", "hardware.enable_expert_parallel=true"],
    ["speculative_config=null", "workload.request_rate=2", "routing.distribution=locality", "routing.locality=0.5"],
    # a closed loop of users on one replica
    ["speculative_config=null", "workload.concurrency=8", "workload.request_rate=inf", "workload.dataset_name=fixed"],
    ["speculative_config=null", "workload.concurrency=5", "workload.request_rate=inf"],
    # identical prompts: each step routed per group of same-position sequences, sampled or expected
    ["speculative_config=null", "workload.concurrency=8", "workload.request_rate=inf", "workload.dataset_name=fixed",
     "workload.identical_prompts=true"],
    ["speculative_config=null", "workload.request_rate=2", "workload.dataset_name=fixed",
     "workload.identical_prompts=true", "routing.mode=expected"],
    # SGLang's prefill-only steps (decodes paused), open and closed loop
    ["speculative_config=null", "workload.request_rate=3", "engine.enable_mixed_chunk=false"],
    ["speculative_config=null", "workload.concurrency=6", "workload.request_rate=inf", "engine.enable_mixed_chunk=false"],
    ["speculative_config=null", "workload.concurrency=4", "workload.request_rate=inf", "workload.conversation_turns=3",
     "engine.enable_prefix_caching=true"],
    # a client cap (vllm bench serve --max-concurrency) on one replica
    ["speculative_config=null", "workload.max_concurrency=6", "workload.request_rate=5"],
    ["speculative_config=null", "workload.max_concurrency=4", "workload.request_rate=inf"],
    # attention DP: every rank's plain decode at once, open and closed loop
    ["speculative_config=null", "workload.request_rate=3"] + DP_EP,
    ["speculative_config=null", "workload.concurrency=7", "workload.request_rate=inf"] + DP_EP,
    # disaggregated: decode workers (one, two, or DP ranks) coast until a KV transfer can land
    ["speculative_config=null", "workload.concurrency=6", "workload.request_rate=inf"] + DISAGG,
    ["speculative_config=null", "workload.request_rate=4", "disaggregation.decode.num_workers=2",
     "hardware.num_nodes=2"] + DISAGG,
    ["speculative_config=null", "workload.concurrency=9", "workload.request_rate=inf",
     "disaggregation.decode.data_parallel_size=2",
     "disaggregation.decode.tensor_parallel_size=1", "disaggregation.decode.enable_expert_parallel=true"] + DISAGG[:1],
])
def test_coasting_through_plain_decode_steps_matches_the_scheduler(sets, monkeypatch):
    """Without SD, runs of identical decode steps skip the scheduler (simulator.serving.coast); taking
    every step through it must give the same run, byte for byte."""
    from simulator.serving import coast as coast_mod
    from simulator.serving.replica import Replica
    coasted = []
    real = coast_mod.coast

    def counted(rep, plans, merged):
        coasted.append(len(plans))
        yield from real(rep, plans, merged)

    def go(coast):
        monkeypatch.setattr(Replica, "coast", coast)
        s = small(sets)
        if "workload.random_output_len=400" in sets:
            s.cfg.num_blocks = 200
        return run(s)

    for mod in ("replica", "dp_worker"):
        monkeypatch.setattr(f"simulator.serving.{mod}.coast", counted)
    fast, ref = go(True), go(False)
    assert coasted        # the case does coast
    assert json.dumps(fast[0], sort_keys=True, default=str) == json.dumps(ref[0], sort_keys=True, default=str)
    assert fast[1].equals(ref[1]) and fast[2].equals(ref[2])
    assert fast[0]["completed"] == 60


def test_a_prompt_over_the_token_budget_fails_for_that_reason():
    """Chunked prefill off and a prompt longer than max_num_batched_tokens: that is the reason given
    (not 'kv cache too small'), and requests that fit still run."""
    summary, req, _ = run(small(["engine.enable_chunked_prefill=false", "engine.max_num_batched_tokens=600",
                                 "workload.random_input_len=512", "workload.random_range_ratio=0.5"]))
    failed = req[~req.completed]
    assert len(failed) and (failed.input_len > 600).all()
    assert failed.fail_reason.str.startswith("prompt of").all()
    assert failed.fail_reason.str.contains("max_num_batched_tokens 600 with chunked prefill off").all()
    assert (req[req.completed].input_len <= 600).all() and summary["completed"] > 0


def test_prefill_first_keeps_a_closed_loop_in_step():
    """SGLang runs every prefill batch alone, decodes paused: a cohort of users sent together starts
    decoding at one step, finishes at one step and comes back together, so every request of a round
    has the same TPOT and the rounds repeat. Mixing prefill chunks into decode steps (vLLM) staggers
    the cohort instead: the first prompts start decoding while later ones still prefill."""
    sets = ["speculative_config=null", "workload.concurrency=8", "workload.request_rate=inf",
            "workload.dataset_name=fixed", "workload.random_input_len=1000", "workload.random_output_len=40",
            "workload.num_prompts=24", "engine.max_num_batched_tokens=2048"]
    _, first, _ = run(small(sets + ["engine.enable_mixed_chunk=false"]))
    _, mixed, _ = run(small(sets + ["engine.enable_mixed_chunk=true"]))
    assert first.completed.all() and mixed.completed.all()
    for rnd in range(3):
        ids = first[first.request_id // 8 == rnd]
        assert ids.finish_time_s.nunique() == 1          # one cohort: one finishing step
        # two prompts a 2048-token step: first tokens at 4 distinct prefill-only steps
        assert ids.first_token_time_s.nunique() == 4
    # the steady rounds repeat one pattern
    r1, r2 = (first[first.request_id // 8 == k].ttft_s.values for k in (1, 2))
    assert np.allclose(np.sort(r1), np.sort(r2), rtol=0.01)      # (up to sampled expert loads)
    assert mixed[mixed.request_id < 8].finish_time_s.nunique() > 1


def test_prompts_per_prefill_counts_a_closed_loops_cohorts():
    """A closed loop with identical lengths whose users' prompts fit one step: the cohort prefills in
    one step, finishes on one step and sends together again, every round (4 prompts a step). With a
    budget of one prompt a step each prefills alone (1). SD's per-user acceptance ends the users'
    requests on different steps, so after the first round the cohort breaks up."""
    sets = ["workload.concurrency=4", "workload.request_rate=inf", "workload.dataset_name=fixed",
            "workload.random_input_len=500", "workload.random_output_len=30", "workload.num_prompts=12"]
    together, req, _ = run(small(sets + ["speculative_config=null", "engine.max_num_batched_tokens=4096"]))
    assert req.completed.all() and together["mean_prompts_per_prefill"] == 4.0
    alone, _, _ = run(small(sets + ["speculative_config=null", "engine.max_num_batched_tokens=600",
                                    "engine.enable_chunked_prefill=false"]))
    assert alone["mean_prompts_per_prefill"] == 1.0
    sd, req, _ = run(small(sets + ["engine.max_num_batched_tokens=4096"]))
    assert req.num_drafts.sum() > 0 and 1.0 <= sd["mean_prompts_per_prefill"] < 4.0


def test_adaptive_k_probes_with_one_draft_so_an_unlucky_start_cannot_switch_sd_off_for_good():
    """An adaptive policy that chose k = 0 would never see another draft. Every PROBE_EVERY decoding
    steps at k = 0 it drafts one token; a real choice of k > 0, or a step with nobody decoding, resets
    the count. End to end: a sequence whose first drafts were all rejected still ends up speculating."""
    from simulator.serving.speculation import PROBE_EVERY, Speculation
    s = small(["speculative_config.adaptive=true", "workload.num_prompts=4"])
    choices = iter([0] * (2 * PROBE_EVERY) + [3] + [0] * PROBE_EVERY)
    s.cfg.k_policy = lambda *a: next(choices)
    spec = Speculation(s.cfg, None, s.acceptance)

    class R:
        computed = np.array([10])
        prefill_target = np.array([5])
    ks = [spec.choose_k(R, np.array([0])) for _ in range(3 * PROBE_EVERY + 1)]
    probes = [i for i, k in enumerate(ks) if k == 1]
    assert probes == [PROBE_EVERY - 1, 2 * PROBE_EVERY - 1, 3 * PROBE_EVERY]
    assert ks[2 * PROBE_EVERY] == 3


def test_adaptive_k_recovers_from_rejected_first_drafts():
    """gpt-oss-120b + EAGLE3 on SGLang at batch 1: the first drafts are rejected, the estimate falls
    below break-even and the policy picks k = 0; the probes bring it back to speculating."""
    sets = ["model=gpt-oss-120b", "speculative_config.method=eagle3", "speculative_config.model=EAGLE3-gpt-oss-120b",
            "speculative_config.acceptance={rate: 0.7}", "speculative_config.adaptive=true",
            "hardware.gpu=h200_sxm", "engine.framework=sglang", "workload.request_rate=inf", "workload.num_prompts=64",
            "workload.max_concurrency=1", "engine.max_num_seqs=1", "workload.dataset_name=fixed",
            "workload.random_input_len=233", "workload.random_output_len=221", "workload.random_range_ratio=0"]
    _, _, steps = run(build(load_scenario("quickstart", sets)))
    dec = steps[steps.num_decode > 0]
    assert dec.drafted_tokens.sum() / len(dec) > 2     # speculating at k = 3 most of the run
