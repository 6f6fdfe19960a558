"""Request streams: vllm-bench random datasets and the four public trace formats."""

import json

import numpy as np
import pytest

from simulator.common.errors import ConfigError
from simulator.config.scenario import load_scenario
from simulator.serving.simulation import build, simulate
from simulator.serving.workload import read_trace


def _check(specs, arrivals, ins, outs):
    assert [s.arrival_s for s in specs] == pytest.approx(arrivals)
    assert [s.input_len for s in specs] == ins and [s.output_len for s in specs] == outs


def test_azure_iso_timestamps(tmp_path):
    f = tmp_path / "azure.csv"
    f.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n"
                 "2023-11-16 18:15:45.0000000,879,0\n")
    # unsorted input is sorted by time; a zero-length output is kept as one token
    _check(read_trace(f, "azure", None), [0.0, 1.68059, 5.995169], [879, 374, 396], [1, 44, 109])


def test_burstgpt_drops_failed_responses(tmp_path):
    f = tmp_path / "burst.csv"
    f.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                 "5,ChatGPT,472,18,490,Conversation log\n6,ChatGPT,1087,0,1087,Conversation log\n"
                 "9.5,GPT-4,300,250,550,API log\n")
    _check(read_trace(f, "burstgpt", None), [0.0, 4.5], [472, 300], [18, 250])


def test_mooncake_jsonl_milliseconds(tmp_path):
    f = tmp_path / "mooncake.jsonl"
    rows = [{"timestamp": 0, "input_length": 6955, "output_length": 52, "hash_ids": [0, 1]},
            {"timestamp": 27482, "input_length": 6472, "output_length": 26, "hash_ids": [2]}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    _check(read_trace(f, "mooncake", None, time_scale=0.5), [0.0, 13.741], [6955, 6472], [52, 26])


def test_vidur_and_num_prompts(tmp_path):
    f = tmp_path / "vidur.csv"
    f.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,100,10\n0.5,200,20\n1.25,300,30\n")
    _check(read_trace(f, "vidur", 2), [0.0, 0.5], [100, 200], [10, 20])


def test_missing_column_is_one_line_error(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("arrived_at,num_prefill_tokens\n0.0,100\n")
    with pytest.raises(ConfigError) as e:
        read_trace(f, "vidur", None)
    assert "num_decode_tokens" in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)


def test_trace_scenario_runs_end_to_end(tmp_path):
    f = tmp_path / "vidur.csv"
    n = 40
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.exponential(0.25, n))
    f.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" +
                 "".join(f"{a:.4f},{rng.integers(50, 400)},{rng.integers(5, 60)}\n" for a in t))
    sc = load_scenario("quickstart", ["workload.dataset_name=trace", f"workload.trace_file={f}",
                                      "workload.trace_format=vidur"])
    summary, req, _ = simulate(build(sc))
    assert summary["completed"] == n and summary["failed"] == 0
    assert req.start_s.tolist() == pytest.approx(sorted(t - t[0]), abs=1e-3)


def test_a_relative_trace_file_is_read_from_the_scenario_folder(tmp_path, monkeypatch):
    """As a scenario's model and GPU paths: trace.csv beside my.yaml is found from any folder, and a
    missing one is reported with the path tried."""
    d = tmp_path / "runs"
    d.mkdir()
    (d / "trace.csv").write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,128,8\n0.5,256,4\n")
    (d / "my.yaml").write_text("name: my\nmodel: Qwen3-30B-A3B\nhardware: {gpu: h100_sxm}\n"
                               "workload: {dataset_name: trace, trace_file: trace.csv, trace_format: vidur}\n")
    monkeypatch.chdir(tmp_path)
    summary, _, _ = simulate(build(load_scenario(d / "my.yaml"), str(d / "my.yaml")))
    assert summary["completed"] == 2
    (d / "my.yaml").write_text((d / "my.yaml").read_text().replace("trace.csv", "gone.csv"))
    with pytest.raises(ConfigError, match=f"{d / 'gone.csv'}: workload.trace_file: trace file not found"):
        simulate(build(load_scenario(d / "my.yaml"), str(d / "my.yaml")))


def test_random_dataset_matches_vllm_semantics():
    sc = load_scenario("quickstart", ["workload.num_prompts=4000", "workload.request_rate=8",
                                      "workload.random_range_ratio=0.5"])
    from simulator.serving.workload import build as wl_build
    specs = wl_build(sc.workload, np.random.default_rng(0))
    ins = np.array([s.input_len for s in specs])
    assert ins.min() >= 256 and ins.max() <= 768                      # uniform in [L(1-r), L(1+r)]
    gaps = np.diff([s.arrival_s for s in specs])
    assert gaps.mean() == pytest.approx(1 / 8, rel=0.05)               # Poisson at the rate (burstiness 1)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.08)


def _closed(sets=()):
    sc = load_scenario("quickstart", ["speculative_config=null", "workload.request_rate=inf", "workload.num_prompts=120",
                                      "workload.concurrency=8", "workload.random_output_len=32", *sets])
    return simulate(build(sc))


def test_closed_loop_users_are_sequential_and_never_exceed_the_concurrency():
    summary, req, _ = _closed()
    assert summary["completed"] == 120 and set(req.user) == set(range(8))
    for _, g in req.sort_values("start_s").groupby("user"):
        # a user's next request leaves the moment its previous one finishes, never before
        assert (g.start_s.values[1:] == g.finish_time_s.values[:-1]).all()
    ev = sorted([(s, 1) for s in req.start_s] + [(f, -1) for f in req.finish_time_s])
    in_flight = np.cumsum([d for _, d in ev])
    assert in_flight.max() == 8 and in_flight.min() >= 0


def test_steady_measurement_leaves_out_the_synchronised_start():
    s_all, req, _ = _closed()
    s_steady, req2, _ = _closed(["workload.measurement=steady"])
    assert req.equals(req2.drop(columns="measured").assign(measured=req.measured))   # the same run
    m = req2[req2.measured]
    first = req2.sort_values("start_s").groupby("user").head(1)
    assert not m.index.isin(first.index).any()
    assert (m.start_s < req2.groupby("user").finish_time_s.max().min()).all()
    assert s_steady["measured_requests"] == len(m) < 120 and s_steady["num_prompts"] == 120
    # all 8 users prefilling at t=0 inflates TTFT; the steady window does not see it
    assert s_steady["mean_ttft_ms"] < s_all["mean_ttft_ms"]


@pytest.mark.parametrize("sets,field", [
    (["workload.request_rate=5"], "workload"),
    (["workload.max_concurrency=4"], "workload"),
    (["workload.concurrency=null", "workload.measurement=steady"], "workload"),
    (["workload.warmup_requests=120"], "workload"),
])
def test_closed_loop_keys_are_checked(sets, field):
    with pytest.raises(ConfigError, match=field):
        load_scenario("quickstart", ["workload.request_rate=inf", "workload.num_prompts=120", "workload.concurrency=8",
                                     *sets])


def _multi_turn(sets=(), blocks=None):
    sc = load_scenario("quickstart", ["speculative_config=null", "model=Qwen2-7B", "hardware.tensor_parallel_size=1",
                                      "workload.request_rate=inf", "workload.num_prompts=120", "workload.concurrency=6",
                                      "workload.conversation_turns=4", "workload.random_output_len=24", *sets])
    setup = build(sc)
    if blocks:
        setup.cfg.num_blocks = blocks
    return simulate(setup)


def test_multi_turn_conversations_resend_the_history_in_order():
    summary, req, _ = _multi_turn()
    assert summary["completed"] == 120 and set(req.conversation) == set(range(30))
    for _, g in req.groupby("conversation"):
        g = g.sort_values("request_id")
        assert g.user.nunique() == 1                                   # one user runs the conversation
        assert (g.start_s.values[1:] == g.finish_time_s.values[:-1]).all()   # turn n+1 leaves when n is done
        # each turn re-sends every earlier prompt and answer in front of its new prompt
        hist = (g.input_len + g.output_len).values
        assert (g.prefix_tokens.values == np.r_[0, hist[:-1]]).all()
        assert (g.input_len.values[1:] > g.prefix_tokens.values[1:]).all()
    assert (req.cached_tokens == 0).all()                              # prefix caching off


def test_prefix_caching_reuses_the_history_and_evicts_under_pressure():
    off, req_off, _ = _multi_turn()
    on, req_on, log = _multi_turn(["engine.enable_prefix_caching=true"])
    assert on["completed"] == off["completed"] == 120
    assert (req_on.cached_tokens <= req_on.prefix_tokens).all() and (req_on.cached_tokens % 16 == 0).all()
    assert (req_on[req_on.prefix_tokens == 0].cached_tokens == 0).all()  # first turns have nothing cached
    assert on["prefix_cache_hit_rate"] > 0.4
    assert on["mean_ttft_ms"] < off["mean_ttft_ms"]                  # the history is not prefilled again
    # a small KV cache evicts histories: fewer hits, blocks still conserved, every request still served
    tight, req_tight, log_t = _multi_turn(["engine.enable_prefix_caching=true"], blocks=400)
    assert tight["completed"] == 120 and 0 < tight["prefix_cache_hit_rate"] < on["prefix_cache_hit_rate"] / 2
    assert (log_t.frame().kv_blocks_used <= 400).all()
    # caching must never cost a request: a cache far too small for any history serves what caching off serves
    tiny, req_tiny, _ = _multi_turn(["engine.enable_prefix_caching=true"], blocks=160)
    base, req_base, _ = _multi_turn([], blocks=160)
    assert tiny["completed"] == base["completed"] and set(req_tiny.fail_reason) == set(req_base.fail_reason)


def test_sharegpt_dataset_draws_its_table_lengths():
    from simulator.config.datasets import all_datasets
    from simulator.serving.workload import build as build_requests
    e = all_datasets()["sharegpt"]
    sc = load_scenario("quickstart", ["workload.dataset_name=sharegpt", "workload.num_prompts=4000"])
    a = build_requests(sc.workload, np.random.default_rng(0))
    b = build_requests(sc.workload, np.random.default_rng(0))
    assert a == b
    ins, outs = np.array([r.input_len for r in a]), np.array([r.output_len for r in a])
    assert ins.mean() == pytest.approx(e["input_len"], rel=0.06) and outs.mean() == pytest.approx(e["output_len"], rel=0.06)
    assert ins.std() > 0.5 * ins.mean()       # spread, not one length


def _batch(sets=()):
    """8 requests of one fixed length sent at once, all prefilled in one step (offline batch)."""
    sc = load_scenario("quickstart", ["speculative_config=null", "workload.request_rate=inf", "workload.num_prompts=8",
                                      "workload.dataset_name=fixed", "workload.random_input_len=256",
                                      "workload.random_output_len=40", *sets])
    return simulate(build(sc))


@pytest.mark.parametrize("mode", ["sample", "expected"])
def test_identical_prompts_route_a_lockstep_batch_as_one_sequence(mode):
    """Qwen2-57B-A14B routes each token to 8 of 64 experts. Identical prompts decoded greedily are one
    sequence 8 times over: every decode step activates exactly 8 experts and prices the same
    weight bytes as batch 1; different prompts activate more (expected: 64 (1 - (7/8)^8) = 42.2)."""
    same = _batch(["workload.identical_prompts=true", f"routing.mode={mode}"])[2].frame()
    diff = _batch([f"routing.mode={mode}"])[2].frame()
    one = simulate(build(load_scenario("quickstart", [
        "speculative_config=null", "workload.request_rate=inf", "workload.num_prompts=1", "workload.dataset_name=fixed",
        "workload.random_input_len=256", "workload.random_output_len=40", f"routing.mode={mode}"])))[2].frame()
    dec = same[(same.num_prefill == 0) & (same.num_decode == 8)]
    assert len(dec) == 39 and (dec.active_experts == 8).all()
    assert (dec.expert_weight_bytes == one[one.num_prefill == 0].expert_weight_bytes.iloc[0]).all()
    dd = diff[(diff.num_prefill == 0) & (diff.num_decode == 8)]
    assert (dd.active_experts > 8).all() and dd.moe_s.mean() > 2 * dec.moe_s.mean()


@pytest.mark.parametrize("sets,msg", [
    (["workload.random_range_ratio=0.5"], "identical_prompts needs every request the same lengths"),
    (["workload.dataset_name=sharegpt"], "identical_prompts needs every request the same lengths"),
    (["workload.dataset_name=fixed", "engine.enable_prefix_caching=true", "speculative_config=null"], "prefix-cache hit"),
    (["workload.dataset_name=fixed"], "accept the same drafts"),       # quickstart speculates
])
def test_identical_prompts_refuses_what_it_cannot_mean(sets, msg):
    with pytest.raises(ConfigError, match=msg):
        load_scenario("quickstart", ["workload.identical_prompts=true", *sets])


def test_identical_prompts_accepts_fixed_distributions_at_any_range_ratio():
    """Fixed length distributions ignore random_range_ratio: every request the same lengths, so one
    prompt copied is expressible; a lognormal one at ratio 0 still varies (sigma at least 0.5)."""
    sets = ["speculative_config=null", "workload.dataset_name=random", "workload.random_range_ratio=0.5",
            "workload.input_len_distribution=fixed", "workload.output_len_distribution=fixed",
            "workload.num_prompts=6", "workload.identical_prompts=true"]
    _, req, _ = simulate(build(load_scenario("quickstart", sets)))
    assert req.input_len.nunique() == 1 and req.output_len.nunique() == 1
    with pytest.raises(ConfigError, match="identical_prompts needs every request the same lengths"):
        load_scenario("quickstart", [*sets[:-3], "workload.random_range_ratio=0",
                                     "workload.input_len_distribution=lognormal", *sets[-2:]])
