"""Invariants over random valid scenarios (Hypothesis): whatever the knobs, every request finishes or
fails for a reason that matches its cause, tokens, drafts and KV blocks are conserved, a step never
schedules more tokens than max_num_batched_tokens, and the clock never runs back."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from simulator.config.scenario import parse
from simulator.serving.memory import blocks_for
from simulator.serving.simulation import build, simulate

MOE_MODELS = ("Qwen1.5-MoE-A2.7B", "Mixtral-8x7B-v0.1")
scenarios = st.fixed_dictionaries({
    "model": st.sampled_from(["Qwen2-7B", "Qwen1.5-MoE-A2.7B", "Mixtral-8x7B-v0.1"]),
    "sd": st.sampled_from([None, ("ngram", 2), ("ngram", 4), ("draft_model", 3)]),
    "adaptive": st.booleans(),
    "tp": st.sampled_from([1, 2, 4]),
    "dp": st.sampled_from([1, 2]),          # on an MoE model: attention data parallel ranks
    "ep": st.booleans(),
    "seqs": st.sampled_from([1, 4, 32]),
    "budget": st.sampled_from([64, 300, 2048]),
    "chunked": st.booleans(),
    "blocks": st.sampled_from([None, 24, 200]),
    "max_len": st.sampled_from([None, 400]),
    "rate": st.sampled_from([2.0, 20.0, "inf"]),
    "isl": st.integers(8, 500), "osl": st.integers(1, 60), "ratio": st.sampled_from([0.0, 0.5]),
    "routing": st.sampled_from(["uniform", "power_law", "locality"]),
    "seed": st.integers(0, 2**16),
    # closed loop: (users, turns per conversation, prefix caching)
    "closed": st.sampled_from([None, (4, 1, False), (4, 3, False), (3, 4, True)]),
})


def _scenario(p):
    if p["model"].startswith("Mixtral") and p["tp"] == 1:       # 87 GiB of weights: needs two GPUs
        p = {**p, "tp": 2}
    data = {"name": "prop", "model": p["model"], "seed": p["seed"],
            "hardware": {"gpu": "h100_sxm", "tensor_parallel_size": p["tp"], "data_parallel_size": p["dp"],
                         # Qwen1.5-MoE's 60 experts do not split 8 ways (refused: tested elsewhere)
                         "enable_expert_parallel": p["ep"] and not (p["model"].startswith("Qwen1.5")
                                                                    and p["tp"] * p["dp"] == 8)},
            "engine": {"max_num_seqs": p["seqs"], "max_num_batched_tokens": p["budget"],
                       "enable_chunked_prefill": p["chunked"], "max_model_len": p["max_len"]},
            "routing": {"distribution": p["routing"], **({"locality": 0.5} if p["routing"] == "locality" else {})},
            "workload": {"num_prompts": 24, "random_input_len": p["isl"], "random_output_len": p["osl"],
                         "random_range_ratio": p["ratio"], "request_rate": p["rate"], "seed": p["seed"]}}
    if p["closed"]:
        users, turns, caching = p["closed"]
        data["workload"].update(request_rate="inf", concurrency=users, conversation_turns=turns)
        data["engine"]["enable_prefix_caching"] = caching
    if p["sd"]:
        method, k = p["sd"]
        data["speculative_config"] = {"method": method, "num_speculative_tokens": k,
                                      "adaptive": p["adaptive"] and method != "ngram",
                                      **({"model": "Qwen2-0.5B"} if method == "draft_model" else {})}
        if method == "draft_model" and (p["model"] != "Qwen2-7B" or p["tp"] > 2):    # its 14 heads: TP <= 2
            data["speculative_config"] = {"method": "ngram", "num_speculative_tokens": k}
    return parse(data, "property")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios)
def test_invariants_hold_for_random_valid_scenarios(p):
    setup = build(_scenario(p))
    if p["blocks"]:
        setup.cfg.num_blocks = p["blocks"]
    cfg = setup.cfg
    summary, req, log = simulate(setup)
    steps = log.frame()
    # every request finishes or fails, and the counts add up
    assert summary["completed"] + summary["failed"] == len(req) == 24
    done, failed = req[req.completed], req[~req.completed]
    assert (done.generated == done.output_len).all()
    # failure reasons match their cause
    for r in failed.itertuples():
        if r.fail_reason.startswith("input+output exceeds max_model_len"):
            assert r.input_len + r.output_len > cfg.max_model_len
        elif r.fail_reason.startswith("prompt of"):
            assert not cfg.enable_chunked_prefill and r.input_len > cfg.max_num_batched_tokens
        elif r.fail_reason.startswith("request needs more KV blocks"):
            assert blocks_for(r.input_len + r.output_len + cfg.k, cfg.block_size) > cfg.num_blocks
        else:
            assert r.fail_reason in ("kv cache too small for this request",) or r.fail_reason.startswith("prefill of")
    # tokens, drafts and accepted drafts are conserved between requests and steps
    assert steps.emitted_tokens.sum() == req.generated.sum()
    assert steps.drafted_tokens.sum() == req.draft_tokens.sum() >= req.accepted_tokens.sum()
    assert steps.accepted_tokens.sum() == req.accepted_tokens.sum()
    assert (req.accepted_tokens <= req.draft_tokens).all()
    # a step never schedules more than the token budget, nor holds more KV blocks than exist (each
    # attention-DP rank has its own budget and cache; a step row adds up the worker's ranks)
    ranks = setup.pools[-1].dp_ranks
    assert ranks == (p["dp"] if p["model"] in MOE_MODELS else 1)
    assert (steps.num_tokens <= ranks * cfg.max_num_batched_tokens).all()
    assert (steps.kv_blocks_used <= ranks * cfg.num_blocks).all() and (steps.kv_blocks_used >= 0).all()
    assert (steps.num_decode <= ranks * cfg.max_num_seqs).all()
    assert req.dp_rank.between(0, ranks - 1).all()
    # the clock never runs back, and a replica's steps do not overlap
    for _, g in steps.groupby("replica"):
        s, d = g.start_s.values, g.duration_s.values
        assert (d > 0).all() and (np.diff(s) >= 0).all()
        assert (s[1:] >= s[:-1] + d[:-1] - 1e-9).all()
    ok = done.first_token_time_s.notna()
    assert (done.first_token_time_s[ok] >= done.start_s[ok]).all()
    assert (done.finish_time_s >= done.first_token_time_s).all()
    # a prefix-cache hit is whole blocks of the conversation's history, and never the whole prompt
    assert (req.cached_tokens <= req.prefix_tokens).all() and (req.cached_tokens % cfg.block_size == 0).all()
    assert (req.cached_tokens < req.input_len).all()
    if p["closed"]:
        assert req.user.between(0, p["closed"][0] - 1).all()
