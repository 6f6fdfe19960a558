"""Attention data parallel + expert parallel, multi-node collectives and disaggregated prefill/decode:
closed forms, conservation, and the one-line errors for impossible shapes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from simulator.common.errors import ConfigError
from simulator.config.gpu import load as load_gpu
from simulator.config.scenario import load_scenario
from simulator.cost import network
from simulator.cost.forward import Batch
from simulator.cost.routing import expected_count_vector
from simulator.serving import memory
from simulator.serving.dp_worker import DPWorker
from simulator.serving.simulation import build, simulate

H200 = load_gpu("h200_sxm")


def small(sets=()):
    base = ["speculative_config=null", "workload.num_prompts=40", "workload.request_rate=inf",
            "workload.random_range_ratio=0", "workload.random_input_len=256", "workload.random_output_len=32",
            "routing.mode=expected"]
    return build(load_scenario("quickstart", base + list(sets)))


DP_EP = ["hardware.tensor_parallel_size=1", "hardware.data_parallel_size=4", "hardware.enable_expert_parallel=true"]


def test_alltoall_bytes_and_closed_form_inside_and_across_nodes():
    fit = network.fit_for(H200)
    T, K, h = 64, 8, 7168
    payload = 3.0 * T * K * h
    for ep in (2, 8, 16, 32):
        nv, ib = network.split_bytes(H200, payload, ep)
        assert nv + ib == pytest.approx(payload * (ep - 1) / ep)    # every slot but the local ones leaves the GPU
        assert (ib == 0) == (ep <= H200.domain_gpus)
        f = fit["ll"]
        want = f["latency_s"] + max(nv / (H200.link_bytes_per_s * f["eff_link"]),
                                    ib / (H200.inter_node_bytes_per_s * fit["eff_inter"]))
        want += H200.inter_node_latency_s if ep > H200.domain_gpus else 0.0
        assert network.dispatch_combine_s(H200, fit, [T], K, h, ep)[0] == pytest.approx(want)
    # beyond the low-latency buffer the normal mode prices it; no peer, no traffic
    assert network.dispatch_combine_s(H200, fit, [1024], K, h, 8)[0] == network.dispatch_combine_s(H200, fit, [1024], K, h, 8, "normal")[0]
    assert network.dispatch_combine_s(H200, fit, [128], K, h, 8)[0] == network.dispatch_combine_s(H200, fit, [128], K, h, 8, "ll")[0]
    assert network.dispatch_combine_s(H200, fit, [64], K, h, 1)[0] == 0.0
    # leaving the node costs more than staying inside it
    assert network.dispatch_combine_s(H200, fit, [T], K, h, 16)[0] > network.dispatch_combine_s(H200, fit, [T], K, h, 8)[0]


def test_inter_node_allreduce_is_zero_inside_the_domain_and_a_ring_across():
    S = 1 << 20
    assert network.inter_node_allreduce_s(H200, S, 8) == 0.0
    got = network.inter_node_allreduce_s(H200, S, 16)
    assert got == pytest.approx(2 * (2 - 1) / 2 * (S / 8) / H200.inter_node_bytes_per_s + 2 * H200.inter_node_latency_s)
    gb200 = load_gpu("gb200")
    assert network.inter_node_allreduce_s(gb200, S, 64) == 0.0     # one NVL72 rack


@pytest.mark.parametrize("a2a", ["none", "deepep"])
def test_balanced_dp_ep_step_is_one_ranks_dense_part_plus_the_shared_moe(a2a):
    """Equal requests, as many per rank: every rank's dense part is the same. Exchanging tokens by
    all-gather (none, the frameworks' default), each rank's MoE kernel passes over every rank's
    tokens and the exchange is one all-reduce of them over the group; by DeepEP dispatch/combine,
    the kernel runs on the token-slots dispatched to it and the exchange is priced on one rank's
    tokens."""
    setup = small(DP_EP + ["workload.concurrency=8", "workload.request_rate=inf", f"engine.moe_a2a_backend={a2a}"])
    assert setup.pools[0].dp_ranks == 4 and setup.par.moe_ep == 4 and setup.par.moe_tp == 1
    assert setup.par.dispatches == (a2a == "deepep") and setup.files["moe_a2a_backend"] == a2a
    summary, req, log = simulate(setup)
    steps = log.frame()
    fm = setup.target_fm
    dec = steps[(steps.num_prefill == 0) & (steps.num_decode == 8)]
    assert len(dec) > 10
    per_rank = Batch(2, 1, 300.0)
    ref = fm.dense_part(per_rank)
    E, K, h = fm.m.moe.num_experts, fm.m.moe.num_experts_per_tok, fm.m.hidden_size
    counts = expected_count_vector(8, E, K)
    moe_s = fm.moe_part(counts)[0]
    assert np.allclose(dec.gemm_s, ref.gemm_s) and np.allclose(dec.comm_s, ref.comm_s)
    assert np.allclose(dec.moe_s, moe_s)
    loads = fm.cm._moe_loads(counts, K, 4)                          # (group tokens, active, slots, padded)
    if a2a == "deepep":
        a2a_s = fm.m.num_moe_layers * network.dispatch_combine_s(setup.hw, network.fit_for(setup.hw), [2], K, h, 4)[0]
        kernel_t = max(1, round(loads[2] / K))                       # this rank's dispatched token-slots
    else:
        a2a_s = fm.m.num_moe_layers * fm.cm.allreduce_latency_s(np.array([8 * h * 2.0]), 4)[0]
        kernel_t = loads[0]                                          # every rank's tokens
    assert ref.comm_s == pytest.approx(a2a_s)                        # TP 1: the only collective is the exchange
    want = fm.m.num_moe_layers * fm.cm.moe_latency_from_loads((kernel_t,) + tuple(loads[1:]), h, fm.m.moe.moe_intermediate_size,
                                                                E, K, 1, 4, fm.m.moe.gated, fm.moe_prec)
    assert moe_s == pytest.approx(want)
    assert (req.completed).all() and set(req.dp_rank) == {0, 1, 2, 3}


def test_deepep_needs_an_attention_dp_expert_parallel_worker():
    with pytest.raises(ConfigError, match="engine.moe_a2a_backend: deepep_low_latency dispatches tokens between "
                                          "attention-DP ranks"):
        small(["hardware.tensor_parallel_size=2", "engine.moe_a2a_backend=deepep_low_latency"])
    # vLLM's names read as SGLang's
    assert small(DP_EP + ["engine.moe_a2a_backend=deepep_high_throughput"]).par.dispatches
    assert not small(DP_EP + ["engine.moe_a2a_backend=allgather_reducescatter"]).par.dispatches


def test_dp_ranks_never_share_a_request(monkeypatch):
    seen = []
    orig = DPWorker.step_cost_dp

    def spy(self, plans):
        ids = [set(np.concatenate([p.dec, p.pre]).tolist()) for p in plans]
        runs = [set(s.run.tolist()) | set(s.waiting) for s in self.ranks]
        for a in range(len(runs)):
            for b in range(a + 1, len(runs)):
                assert not runs[a] & runs[b] and not ids[a] & ids[b]
        for r, s in enumerate(self.ranks):
            assert all(self.R.dp_rank[i] == r for i in s.run.tolist())
        seen.append(1)
        return orig(self, plans)
    monkeypatch.setattr(DPWorker, "step_cost_dp", spy)
    summary, req, _ = simulate(small(DP_EP + ["workload.request_rate=20", "workload.random_range_ratio=0.5"]))
    assert seen and summary["completed"] == 40


@pytest.mark.parametrize("framework,method,in_turn", [("sglang", None, True), ("vllm", None, False),
                                                      ("vllm", "round_robin", True), ("sglang", "shortest_queue", False)])
def test_dp_placement_in_turn_or_to_the_fewest_requests(framework, method, in_turn):
    """SGLang's data-parallel controller sends request n to rank n mod dp whatever the ranks' loads
    (round_robin, its default); vLLM's DP coordinator to the rank with the fewest requests, which
    with arrivals over time and uneven lengths breaks the turn. engine.load_balance_method overrides."""
    sets = DP_EP + ["workload.request_rate=20", "workload.random_range_ratio=0.9", f"engine.framework={framework}"]
    summary, req, _ = simulate(small(sets + ([f"engine.load_balance_method={method}"] if method else [])))
    assert summary["completed"] == 40
    assert summary["dp_dispatch"] == ("round_robin" if in_turn else "fewest_requests")
    ranks = req.sort_values(["arrival_s", "request_id"]).dp_rank.to_numpy()
    assert (ranks == np.arange(40) % 4).all() == in_turn


def _disagg(sets=()):
    return small(["disaggregation.prefill.tensor_parallel_size=2", "disaggregation.decode.tensor_parallel_size=2",
                  "workload.concurrency=1"] + list(sets))


def test_sglang_disaggregated_workers_place_requests_at_random_and_the_same_seed_places_them_alike():
    """SGLang's disaggregated workers send a request to attention-DP rank bootstrap_room % dp, the room
    drawn at random per request: ranks fill unevenly and out of turn, reproducibly; vLLM's (and
    TRT-LLM's) balance them."""
    dp = ["disaggregation.prefill.tensor_parallel_size=1", "disaggregation.prefill.data_parallel_size=4",
          "disaggregation.prefill.enable_expert_parallel=true", "disaggregation.decode.tensor_parallel_size=1",
          "disaggregation.decode.data_parallel_size=4", "disaggregation.decode.enable_expert_parallel=true",
          "workload.num_prompts=200", "workload.concurrency=16"]
    runs = [simulate(_disagg(dp + [f"engine.framework={fw}"])) for fw in ("sglang", "sglang", "vllm")]
    (s1, r1, _), (_, r2, _), (s3, r3, _) = runs
    assert s1["completed"] == s3["completed"] == 200
    assert (r1.dp_rank.to_numpy() == r2.dp_rank.to_numpy()).all()            # the same seed, the same ranks
    counts = np.bincount(r1.dp_rank, minlength=4)
    assert counts.min() > 20 and counts.max() - counts.min() > 4              # every rank used, unevenly
    assert not (r1.sort_values(["arrival_s", "request_id"]).dp_rank.to_numpy() == np.arange(200) % 4).all()
    assert np.bincount(r3.dp_rank, minlength=4).max() - np.bincount(r3.dp_rank, minlength=4).min() <= 4


def test_disagg_conserves_requests_and_kv_bytes(monkeypatch):
    from simulator.serving.scheduler import Scheduler
    held, back = [], []
    hold, give_back = Scheduler.hold, Scheduler.give_back
    monkeypatch.setattr(Scheduler, "hold", lambda self, i: held.append(hold(self, i)) or held[-1])
    monkeypatch.setattr(Scheduler, "give_back", lambda self, n: back.append(n) or give_back(self, n))
    setup = _disagg(["workload.concurrency=6", "workload.random_range_ratio=0.5",
                     "disaggregation.decode.max_num_seqs=4"])
    summary, req, log = simulate(setup)
    # the prefill worker keeps a request's blocks until its KV is across, then has every one back
    assert len(held) == summary["kv_transfers"] and sum(held) == sum(back) > 0
    steps = log.frame()
    assert summary["completed"] == len(req) == 40
    pre, dec = setup.pools
    assert pre.role == "prefill" and dec.role == "decode" and dec.cfg.k == pre.cfg.k == 0
    # prefill steps never decode; every request ends on the decode worker
    assert (steps[steps.replica == 0].num_decode == 0).all()
    moved = req[req.output_len > 1]
    assert (moved.replica == 1).all()
    per_tok = memory.kv_bytes_per_token(setup.target, 1, pre.target_fm.kv_bytes)
    assert summary["kv_transfer_bytes"] == pytest.approx(per_tok * moved.input_len.sum())
    assert summary["kv_transfers"] == len(moved)
    assert steps[steps.replica == 1].kv_blocks_used.iloc[-1] == 0         # the decode side freed all
    assert (req.first_token_time_s > req.start_s).all()


def test_disagg_without_transfer_cost_decodes_like_the_aggregated_run(monkeypatch):
    """One request at a time: the decode worker's steps are the agg run's decode steps, one for one."""
    monkeypatch.setattr(network, "kv_transfer_s", lambda *a, **k: 0.0)
    agg = small(["hardware.tensor_parallel_size=2", "workload.concurrency=1"])
    dis = _disagg()
    _, req_a, log_a = simulate(agg)
    _, req_d, log_d = simulate(dis)
    a = log_a.frame()
    d = log_d.frame()
    a_dec = a[a.num_prefill == 0].duration_s.values
    d_dec = d[(d.replica == 1)].duration_s.values
    assert len(a_dec) == len(d_dec) > 0
    assert np.allclose(a_dec, d_dec, rtol=1e-12)
    assert np.allclose(req_a.tpot_s, req_d.tpot_s, rtol=1e-9)


@pytest.mark.parametrize("sets, field, words", [
    (["hardware.tensor_parallel_size=1", "hardware.data_parallel_size=3", "hardware.enable_expert_parallel=true"],
     "hardware.enable_expert_parallel", "64 experts, not divisible by the expert-parallel size 3"),
    (["hardware.moe_tensor_parallel_size=2"], "hardware.moe_tensor_parallel_size", "needs enable_expert_parallel"),
    (["hardware.enable_expert_parallel=true", "hardware.moe_tensor_parallel_size=3"],
     "hardware.moe_tensor_parallel_size", "does not divide"),
    (["hardware.data_parallel_size=8", "hardware.num_nodes=1"], "hardware.num_nodes", "need 16"),
    (["disaggregation.prefill.tensor_parallel_size=4", "disaggregation.decode.tensor_parallel_size=2",
      "disaggregation.decode.data_parallel_size=4", "hardware.num_nodes=1"], "hardware.num_nodes", "prefill 4 + decode 8"),
    (["disaggregation.prefill.tensor_parallel_size=3", "disaggregation.decode.tensor_parallel_size=2"],
     "disaggregation.prefill.tensor_parallel_size", "not divisible by tensor_parallel_size 3"),
])
def test_impossible_shapes_are_one_line_errors(sets, field, words):
    with pytest.raises(ConfigError) as exc:
        small(sets)
    assert exc.value.field == field and words in exc.value.message


def test_impossible_shape_from_the_command_line_exits_2_without_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "simulator", "simulate", "quickstart", "--out", str(tmp_path / "o"),
                        "--set", "hardware.data_parallel_size=8", "--set", "hardware.num_nodes=1"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "hardware.num_nodes" in r.stderr
    assert not (tmp_path / "o").exists()


def test_sweep_batches_are_per_dp_rank_and_engine_agrees_with_the_closed_form():
    from simulator.analysis.sweep import sweep
    t = sweep("quickstart", DP_EP + ["workload.random_input_len=256", "workload.random_output_len=64", "routing.mode=expected"],
              [2, 16], [2],
              adaptive=False, workers=1, progress=False)
    sd = t[t.k == 2].set_index("batch_size")
    assert (sd.effective_batch == sd.index).all()            # B sequences on each of the 4 ranks
    # the group's MoE layers see all ranks' tokens: 4 x B x (k+1) of them
    assert sd.activated_experts_closed[16] > sd.activated_experts_closed[2]
    assert np.allclose(sd.speedup_sim, sd.speedup_closed, rtol=0.1)


SILICON_COLS = ("id,model_path,backend,backend_version,system,precision,mode,isl,osl,gemm_quant_mode,moe_quant_mode,"
                "batch_size,tp_size,pp_size,attention_dp_size,moe_tp_size,moe_ep_size,"
                "prefill_batch_size,prefill_num_workers,prefill_tp_size,prefill_pp_size,prefill_attention_dp_size,"
                "prefill_moe_tp_size,prefill_moe_ep_size,decode_batch_size,decode_num_workers,decode_tp_size,"
                "decode_pp_size,decode_attention_dp_size,decode_moe_tp_size,decode_moe_ep_size,"
                "silicon_ttft_ms,silicon_tpot_ms\n")


def test_validate_silicon_runs_attention_dp_and_disaggregated_rows(tmp_path):
    import json
    f = tmp_path / "rows.csv"
    f.write_text(SILICON_COLS
                 # attention DP 4 + EP 4 (one worker), and the same model disaggregated 1P1D
                 + "dp,deepseek-ai/DeepSeek-V3,sglang,0.5.9,b200_sxm,fp4,agg,256,16,nvfp4,nvfp4,8,1,1,4,1,4,"
                 + ",,,,,,,,,,,,,,200,10\n"
                 + "pd,deepseek-ai/DeepSeek-V3,sglang,0.5.9,b200_sxm,fp4,disagg,256,16,nvfp4,nvfp4,,,,,,,"
                 + "1,1,4,1,1,1,4,2,1,1,1,4,1,4,300,10\n"
                 # worker counts not stated: blocked with the reason, never guessed
                 + "nw,deepseek-ai/DeepSeek-V3,sglang,0.5.9,b200_sxm,fp4,disagg,256,16,nvfp4,nvfp4,,,,,,,"
                 + ",,4,1,1,1,4,,,1,1,4,1,4,300,10\n")
    r = subprocess.run([sys.executable, "-m", "simulator", "validate", "--silicon", str(f), "--out", str(tmp_path / "o"),
                        "--json", "--workers", "1"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    by = {row["id"]: row for row in json.loads(r.stdout)["per_row"]}
    assert by["dp"]["expressible"] and by["dp"]["sim_tpot_ms"] > 0
    assert by["pd"]["expressible"] and by["pd"]["sim_ttft_ms"] > 0 and by["pd"]["concurrency"] == 8
    assert by["nw"]["blocked_by"] == "ambiguous layout: disagg row states no worker counts"


def test_a_disaggregated_rows_decode_rank_may_hold_every_user_of_its_worker(tmp_path):
    """Ranks picked at random (SGLang) fill unevenly: a rank's batch limit is its worker's users, not an
    even share of them, so no user waits for a decode slot that the stated batch did not promise."""
    from simulator.analysis import silicon
    f = tmp_path / "rows.csv"
    f.write_text(SILICON_COLS + "pd,deepseek-ai/DeepSeek-V3,sglang,0.5.9,b200_sxm,fp4,disagg,256,16,nvfp4,nvfp4,,,,,,,"
                 + "1,1,4,1,1,1,4,1,1,1,1,4,1,4,300,10\n")
    row = silicon.load_rows(f).iloc[0].to_dict()
    dec = silicon.scenario(row)["disaggregation"]["decode"]
    assert dec["data_parallel_size"] == 4 and dec["num_workers"] == 1
    assert dec["max_num_seqs"] == silicon.concurrency(row) == 4   # all 4 users on one worker, not 4 / 4 a rank


def test_mtp_layer_runs_on_the_target_ep_group_with_every_ranks_tokens():
    """DeepSeek's MTP layer is one more MoE layer of the target: under attention DP + EP its experts
    are spread like the target's and each draft pass routes every rank's tokens (a group step)."""
    from simulator.config.scenario import load_scenario
    from simulator.cost.forward import Batch
    from simulator.serving.simulation import build as build_setup
    p = build_setup(load_scenario("deepseek_v3_mtp_2node_dp16_ep16", ["workload.num_prompts=8"])).pools[-1]
    assert p.draft_fm.par == p.par and p.par.moe_ep == 16 and p.par.data_parallel_size == 16
    b = Batch(4, 1, 1024.0)
    group, rank = p.draft_fm.group_forward(b), p.draft_fm.forward(b)
    assert group.active_experts > rank.active_experts and group.moe_s > rank.moe_s
    assert group.attention_s == pytest.approx(rank.attention_s)     # attention stays on the rank's own batch


def test_qk_norm_over_all_heads_adds_one_small_all_reduce_a_layer():
    """MiniMax-M2 normalises q and k over all heads: under TP each rank sums its heads' squares and
    the group all-reduces two floats a token, once a layer (nothing at TP 1)."""
    from simulator.config import gpu, model
    from simulator.cost.costmodel import CostModel
    from simulator.cost.forward import Batch, ForwardModel, Parallel
    mm = model.load("MiniMax-M2")
    assert mm.qk_norm_across_heads
    plain = mm.model_copy(update={"qk_norm_across_heads": False})
    cm = CostModel(gpu.load("b200_sxm"))
    b = Batch(16, 1, 2048.0)
    for tp in (1, 4):
        par = Parallel(tensor_parallel_size=tp)
        extra = ForwardModel(mm, cm, par).forward(b).comm_s - ForwardModel(plain, cm, par).forward(b).comm_s
        want = 0.0 if tp == 1 else mm.num_hidden_layers * float(cm.allreduce_latency_s(np.array([16 * 8.0]), tp)[0])
        assert extra == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert want > 0


def test_sources_that_record_dp_sizes_squared_are_read_as_the_run_on_x_gpus():
    """db-dump and the 2026-04-06 file record a vLLM run on 2 GPUs (TP 2, EP 2) as tp 2 x attention DP 2,
    EP 4 (their TTFT and TPOT equal the 2026-03-25 file's tp2_ep2 runs): read as TP 2, EP 2, said so.
    The same sizes from any other source are a real DP 2 x TP 2 worker with EP 4 on 4 GPUs."""
    from simulator.analysis.silicon_layout import layout
    row = {"id": "minimaxm2_5_b200_vllm_fp8_agg_1024x1024_c32_cfg690", "tp_size": 2, "attention_dp_size": 2,
           "moe_tp_size": 1, "moe_ep_size": 4}
    lay, note = layout({**row, "silicon_data_source": "db-dump/2026-04-27; config_id=690"})
    assert lay == {"tensor_parallel_size": 2, "data_parallel_size": 1, "enable_expert_parallel": True}
    assert "read as tp 2 x dp 1, EP 2" in note
    lay, note = layout({**row, "silicon_data_source": "my own runs"})
    assert lay == {"tensor_parallel_size": 2, "data_parallel_size": 2, "enable_expert_parallel": True} and note == ""


def test_a_recorded_expert_split_the_framework_refuses_is_read_as_expert_parallel(tmp_path):
    """SGLang refuses DeepSeek's FP8 block-scaled experts split 32 ways (64 wide per rank, not whole
    128-wide scale blocks), so a decode pool recorded as attention DP 32 with MoE TP 32 ran expert
    parallel over its 32 GPUs (the layout the same source records for its other runs of that shape):
    read so, and said so. The same split of NVFP4 experts (no 128-wide blocks) is taken as recorded."""
    from simulator.analysis import silicon
    f = tmp_path / "rows.csv"
    pool = "1,1,1,1,32,32,1"     # prefill (batch, workers, tp, pp, dp, moe_tp, moe_ep), then decode
    f.write_text(SILICON_COLS
                 + "fp8,deepseek-ai/DeepSeek-V3,sglang,0.5.9,gb200,fp8,disagg,1024,16,fp8,fp8_block,,,,,,,"
                 + f"{pool},4,1,1,1,32,32,1,300,10\n"
                 + "fp4,deepseek-ai/DeepSeek-V3,sglang,0.5.9,gb200,fp4,disagg,1024,16,nvfp4,nvfp4,,,,,,,"
                 + f"{pool},4,1,1,1,32,32,1,300,10\n")
    rows = {r["id"]: r for r in silicon.load_rows(f).to_dict("records")}
    dec = silicon.scenario(rows["fp8"])["disaggregation"]["decode"]
    assert dec["enable_expert_parallel"] and "moe_tensor_parallel_size" not in dec and dec["data_parallel_size"] == 32
    note = silicon.assumption(rows["fp8"])
    assert "moe_tp 32 x moe_ep 1 read as tp 1 x dp 32, EP 32" in note and "sglang refuses to load them" in note
    assert "enable_expert_parallel" not in silicon.scenario(rows["fp4"])["disaggregation"]["decode"]  # MoE TP 32
    assert silicon.assumption(rows["fp4"]) == ""
