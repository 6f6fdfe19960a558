"""moesd plan: the answer equals an exhaustive search on a small space; infeasible configurations and
unreachable SLOs are explained; Ray gives the local pool's numbers."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from simulator.analysis import runner
from simulator.commands.cli import main as cli
from simulator.common.errors import ConfigError
from simulator.analysis.plan import capacity_estimate, configurations, config_label, evaluate, scenario_for
from simulator.config.plan import parse_plan
from simulator.analysis.plan import plan

SMALL = {
    "name": "small", "model": "Qwen1.5-MoE-A2.7B",
    "drafts": [{"method": "draft_model", "model": "Qwen2-0.5B", "acceptance": {"rate": 0.8}}],
    "workload": {"random_input_len": 256, "random_output_len": 128, "random_range_ratio": 0.5, "num_prompts": 60},
    "slo": {"ttft_ms": 1500, "tpot_ms": 12, "percentile": 90},
    "target_request_rate": 30,
    "bisection": {"rate_min": 1.0},
    "search": {"gpus": ["h100_sxm"], "total_gpus": [1, 2], "tensor_parallel_size": [1, 2], "max_num_seqs": [32],
               "num_speculative_tokens": [0, 3]},
}


@pytest.fixture(scope="module")
def small():
    spec = parse_plan(json.loads(json.dumps(SMALL)), "test")
    return spec, plan(spec, workers=2, progress=False)


def _exhaustive_max_rate(spec, cfg):
    """Down a 10%-spaced rate grid from the closed-form capacity ceiling: the first feasible rate."""
    cap = capacity_estimate(spec, cfg)
    rates = cap * 1.05 / 1.1 ** np.arange(0, 80)
    data = spec.model_dump(mode="json")
    for r in rates[rates >= spec.bisection.rate_min]:
        if evaluate(data, cfg, float(r))["meets_slo"]:
            return float(r)
    return 0.0


def test_planner_matches_exhaustive_search(small):
    spec, res = small
    t = res["table"].set_index("config")
    exhaustive = {}
    for cfg in configurations(spec)[0]:
        exhaustive[config_label(cfg)] = _exhaustive_max_rate(spec, cfg)
        got = t.loc[config_label(cfg), "request_rate"]
        # bisection stops within rel_tol; the grid has 10% steps
        assert got == pytest.approx(exhaustive[config_label(cfg)], rel=spec.bisection.rel_tol + 0.12)
    cost = {c: math.ceil(30 / r) * t.loc[c, "num_total_gpus"] if r else math.inf for c, r in exhaustive.items()}
    cheapest = min(cost.values())
    assert cost[res["answer"]["best"]["config"]] == cheapest


def test_outputs_and_aiconfigurator_columns(tmp_path):
    out = tmp_path / "p"
    plan_file = tmp_path / "plan.yaml"
    import yaml
    plan_file.write_text(yaml.safe_dump(SMALL))
    assert cli(["plan", str(plan_file), "--out", str(out), "--workers", "2", "--quiet",
                "--cache-dir", str(tmp_path / "cache")]) == 0
    top = pd.read_csv(out / "best_config_topn.csv")
    for col in ("model", "isl", "osl", "concurrency", "request_rate", "bs", "ttft", "tpot", "request_latency",
                "seq/s", "tokens/s", "tokens/s/gpu", "tokens/s/user", "num_total_gpus", "tp", "pp", "dp",
                "moe_tp", "moe_ep", "backend", "system"):
        assert col in top.columns
    assert len(pd.read_csv(out / "pareto.csv")) >= 1
    ans = json.loads((out / "plan.json").read_text())
    assert ans["sd_recommendation"]["summary"] and "report.html" in {p.name for p in out.iterdir()}
    # a repeated plan resumes from the cache: same answer, no new simulations needed
    assert cli(["plan", str(plan_file), "--out", str(tmp_path / "p2"), "--workers", "1", "--quiet",
                "--cache-dir", str(tmp_path / "cache")]) == 0
    assert json.loads((tmp_path / "p2" / "plan.json").read_text())["best"] == ans["best"]


def test_infeasible_configurations_are_explained():
    spec = parse_plan({"model": "Qwen2-57B-A14B", "slo": {"tpot_ms": 50},
                       "search": {"gpus": ["l40s", "h100_sxm"], "total_gpus": [1, 8], "tensor_parallel_size": [1, 8],
                                  "num_speculative_tokens": [0]}}, "test")
    cands, pruned = configurations(spec)
    reasons = {(p["gpu"], p["total_gpus"], p["tp"]): p["reason"] for p in pruned}
    assert "weights" in reasons[("l40s", 1, 1)] and "tensor_parallel_size" in reasons[("l40s", 1, 1)]
    assert reasons[("h100_sxm", 8, 8)] == "28 attention heads are not divisible by TP 8"
    assert reasons[("h100_sxm", 1, 8)] == "a worker of TP 8 x DP 1 = 8 GPUs does not divide total_gpus 1"
    only_bad = parse_plan({"model": "Qwen2-57B-A14B", "slo": {"tpot_ms": 50},
                           "search": {"gpus": ["l40s"], "total_gpus": [1], "tensor_parallel_size": [1],
                                      "num_speculative_tokens": [0]}}, "test")
    with pytest.raises(ConfigError, match="no configuration in the search space can run"):
        plan(only_bad, workers=1, progress=False)


def test_attention_dp_and_disaggregated_configurations_are_searched_and_pruned_with_reasons():
    spec = parse_plan({"model": "Qwen2-57B-A14B", "slo": {"tpot_ms": 50},
                       "search": {"gpus": ["h100_sxm"], "total_gpus": [4], "tensor_parallel_size": [1, 2],
                                  "enable_expert_parallel": [True], "data_parallel_size": [1, 2, 4],
                                  "mode": ["agg", "disagg"], "prefill_workers": [1, 2],
                                  "num_speculative_tokens": [0]}}, "test")
    cands, pruned = configurations(spec)
    labels = {config_label(c) for c in cands}
    assert "h100_sxm x4 TP1 DPattn4 EP DP1 seqs128 SD off" in labels          # one worker, 4 attention-DP ranks
    assert "h100_sxm x4 TP2 EP 1P1D seqs128 SD off" in labels                 # 1 prefill + 1 decode worker
    for c in cands:
        workers = c["dp"] + c["prefill_workers"]
        assert workers * c["tp"] * c["attn_dp"] == c["total_gpus"]
        sc = scenario_for(spec, c, 1.0)
        assert (sc.disaggregation is not None) == (c["mode"] == "disagg")
    reasons = [p["reason"] for p in pruned]
    assert "2 prefill workers leave no decode worker in 2" in reasons
    assert any("weights" in r for r in reasons)          # TP1 alone cannot hold Qwen2-57B's 114 GB


def test_unreachable_slo_is_a_clear_message_not_an_empty_file(tmp_path, capsys):
    out = tmp_path / "never"
    rc = cli(["plan", "--model", "Qwen1.5-MoE-A2.7B", "--system", "h100_sxm", "--total-gpus", "1", "--isl", "256",
              "--osl", "64", "--tpot", "0.5", "--num-prompts", "20", "--out", str(out), "--quiet",
              "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "no configuration meets the SLOs" in err and "TPOT p90" in err and "> 0.5 ms" in err
    assert not out.exists()


def test_bad_plan_field_is_one_line(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("model: Qwen2-57B-A14B\nslo: {tpot_ms: 50}\nsearch: {gpus: [h100_sxm], max_num_seq: [4]}\n")
    assert cli(["plan", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert "search.max_num_seq" in err and "unknown key" in err and "\n" not in err


def square(job):
    return {"v": job["n"] ** 2, "pid_free": True}


def test_ray_executor_gives_the_local_numbers():
    pytest.importorskip("ray", reason="Ray not installed (pip install -e '.[dev]' brings it)")
    jobs = [{"n": n} for n in range(5)]
    assert runner.run_many(square, jobs, executor="ray", progress=False) == \
        runner.run_many(square, jobs, workers=1, progress=False)


def test_sustainable_rate_does_not_depend_on_the_sample_size():
    """The run-length rule: 100 or 600 prompts give the same verdict within one bisection step,
    and two copies sustain twice one copy (not 3.6x, as short runs that never filled the batch did)."""
    from simulator.analysis.plan import STEADY_FILLS, max_rate, run_length
    rates = {}
    for n in (100, 600):
        spec = parse_plan({"name": "x", "model": "Qwen3-30B-A3B", "slo": {"tpot_ms": 40.0},
                           "workload": {"random_input_len": 512, "random_output_len": 256, "random_range_ratio": 0.5,
                                        "num_prompts": n},
                           "search": {"gpus": ["h100_sxm"], "total_gpus": [1, 2], "tensor_parallel_size": [1],
                                      "max_num_seqs": [256], "num_speculative_tokens": [0]}}, "x")
        for c in configurations(spec)[0]:
            assert run_length(spec, c) >= STEADY_FILLS * c["dp"] * c["max_num_seqs"] >= 2 * c["dp"] * 256
            r = max_rate({"spec": spec.model_dump(mode="json"), "cfg": c})
            assert 0 < r["max_rate"] <= 1.05 * r["capacity_estimate"] + 1e-9
            rates[n, c["dp"]] = r["max_rate"]
    step = 1 + spec.bisection.rel_tol
    assert 1 / step <= rates[100, 1] / rates[600, 1] <= step
    assert 1 / step <= rates[100, 2] / rates[600, 2] <= step
    for n in (100, 600):
        assert 2 / step <= rates[n, 2] / rates[n, 1] <= 2 * step


def test_a_plans_token_exchange_applies_to_its_attention_dp_expert_parallel_configurations():
    """engine.moe_a2a_backend: deepep in a plan prices its attention-DP + EP configurations with the
    dispatch and leaves the others searchable (a scenario alone with no such worker is an error)."""
    from simulator.serving.simulation import build
    data = json.loads(json.dumps(SMALL))
    data["engine"] = {"moe_a2a_backend": "deepep"}
    data["search"].update(total_gpus=[2], tensor_parallel_size=[1, 2], data_parallel_size=[1, 2],
                          enable_expert_parallel=[True], num_speculative_tokens=[0])
    spec = parse_plan(data, "test")
    seen = {}
    kept, pruned = configurations(spec)
    assert not [c for c in pruned if "moe_a2a_backend" in c["reason"]]
    for cfg in kept:
        setup = build(scenario_for(spec, cfg, 1.0), "plan")
        seen[(cfg["tp"], cfg.get("attn_dp", 1))] = setup.par.dispatches
    assert seen[(1, 2)] is True and seen[(2, 1)] is False


def test_the_plan_searches_the_token_exchange_of_attention_dp_expert_parallel_workers():
    """search.moe_a2a_backend [none, deepep]: each attention-DP + EP worker is tried with both exchanges
    (priced as such), a worker without that pair once; fixing it in engine too is a one-line error."""
    from simulator.serving.simulation import build
    data = json.loads(json.dumps(SMALL))
    data["search"].update(total_gpus=[2], tensor_parallel_size=[1, 2], data_parallel_size=[1, 2],
                          enable_expert_parallel=[True], num_speculative_tokens=[0], moe_a2a_backend=["none", "deepep"])
    spec = parse_plan(data, "test")
    kept, _ = configurations(spec)
    seen = {}
    for cfg in kept:
        setup = build(scenario_for(spec, cfg, 1.0), "plan")
        seen.setdefault((cfg["tp"], cfg["attn_dp"]), []).append((cfg["a2a"], setup.par.dispatches))
    assert sorted(seen[(1, 2)]) == [("deepep", True), ("none", False)]
    assert seen[(2, 1)] == [(None, False)]
    assert "DeepEP" in config_label([c for c in kept if c["a2a"] == "deepep"][0])
    data["engine"] = {"moe_a2a_backend": "deepep"}
    with pytest.raises(ConfigError, match="give one"):
        parse_plan(data, "test")


def test_the_sd_verdict_compares_sd_on_and_off_on_the_cheapest_configurations_own_layout():
    """recommend() pairs SD on/off on the cheapest configuration's GPUs, layout, serving mode and
    exchange: an aggregated DP-attention 16 worker with the same TP, copies and batch is other hardware."""
    from simulator.analysis.plan import recommend
    spec = parse_plan(json.loads(json.dumps(SMALL)), "test")
    base = {"gpu": "h200_sxm", "total_gpus": 16, "tp": 1, "dp": 1, "ep": True, "max_num_seqs": 32, "adaptive": False,
            "draft": {"method": "mtp", "model": None, "acceptance": {"rate": 0.85}}, "draft_index": 0}
    cfgs = [{**base, "attn_dp": 16, "mode": "agg", "prefill_workers": 0, "a2a": "deepep", "k": k} for k in (1, 0)]
    cfgs += [{**base, "attn_dp": 8, "mode": "disagg", "prefill_workers": 1, "a2a": a2a, "k": k}
             for a2a in ("none", "deepep") for k in (1, 0)]
    results = [{"cfg": c, "max_rate": 10.0 + i} for i, c in enumerate(cfgs)]
    cheapest = cfgs[4]                     # disaggregated, DeepEP, SD on
    seen = []

    def run(fn, jobs, desc):
        seen.extend(j["cfg"] for j in jobs)
        return [{"meets_slo": True, "tpot_ms": 10.0 + i % 2, "ttft_ms": 1.0, "slo_attainment": 1.0}
                for i in range(len(jobs))]
    out = recommend(spec, pd.DataFrame([{"config": config_label(cheapest)}]), results, [1.0, 2.0], run)
    assert seen and all(c["mode"] == "disagg" and c["a2a"] == "deepep" for c in seen)
    assert {c["k"] for c in seen} == {0, 1} and "DeepEP 1P1D" in out["hardware"]


def test_plan_flags_with_several_gpus_and_a_model_path_make_a_safe_plan_name():
    """--system takes a comma list and --model a catalog name or a file: the plan's folder name
    is built from them with anything unsafe turned into '-'."""
    import argparse
    from simulator.commands.plan import spec_from_args
    a = argparse.Namespace(plan=None, model="Qwen2.5-7B", system="h100_sxm,h200_sxm", ttft=None, tpot=50.0,
                           e2el=None, isl=512, osl=128, num_prompts=50, total_gpus=2, k=3, draft=None,
                           draft_method="eagle3", acceptance_rate=0.7, target_rate=None, set=[])
    assert spec_from_args(a).name == "plan_Qwen2.5-7B_h100_sxm-h200_sxm"
    a.model = "models/my-moe.yaml"
    assert spec_from_args(a).name == "plan_my-moe_h100_sxm-h200_sxm"


def test_a_plan_says_which_acceptance_its_sd_candidates_assume():
    """Without --acceptance-rate the draft runs the plan's default rate, and the answer says it is one;
    a stated rate is reported without that flag."""
    import argparse
    from simulator.commands.plan import sd_acceptance
    from simulator.commands.plan import spec_from_args
    a = argparse.Namespace(plan=None, model="Qwen3-30B-A3B", system="h100_sxm", ttft=None, tpot=50.0,
                           e2el=None, isl=512, osl=128, num_prompts=50, total_gpus=2, k=3,
                           draft="EAGLE3-Qwen3-30B-A3B", draft_method="eagle3", acceptance_rate=None,
                           target_rate=None, set=[])
    assert sd_acceptance(spec_from_args(a)) == {"EAGLE3-Qwen3-30B-A3B": (
        "rate 0.8 per draft token (length 2.95 at k 3); a default: the draft's acceptance (--acceptance-rate) is not set")}
    a.acceptance_rate = 0.5
    assert sd_acceptance(spec_from_args(a)) == {"EAGLE3-Qwen3-30B-A3B": "rate 0.5 per draft token (length 1.88 at k 3)"}
