"""The speculative round's framework cost, its joint fit, and ``moesd validate --sd-table``."""

import json
import subprocess
import sys

import numpy as np
import pytest

from simulator.analysis import sdfit, sdtable
from simulator.analysis.sdvalidate import validate_sd_table
from simulator.common.errors import ConfigError
from simulator.config.scenario import load_scenario
from simulator.cost.framework import FrameworkStep
from simulator.serving.simulation import build, simulate
from tests.conftest import shared_or_skip

COLUMNS = sdtable.REQUIRED + ["num_gpus", "acceptance_rate"]


def write_table(path, rows):
    """An SD table in sd_training.csv's schema (with its leading comment line)."""
    lines = ["# my own measurements", ",".join(COLUMNS)]
    for r in rows:
        lines.append(",".join(str(r.get(c, "")) for c in COLUMNS))
    path.write_text("\n".join(lines) + "\n")
    return path


BASE = {"source": "mine", "framework": "vllm", "framework_version": "0.11.0", "gpu": "H100 SXM", "tp": 1,
        "target_model": "meta-llama/Llama-3.1-8B-Instruct", "draft_method": "EAGLE3", "k": 3,
        "batch_or_concurrency": 1, "input_len": 128, "output_len": 128, "acceptance_length": 2.5}


# --- the step model's speculative terms -------------------------------------------------------

def test_spec_round_terms_closed_forms():
    serial = FrameworkStep(1e-3, 0.0, 2e-3, False, 1e-4, draft_pass_cpu_s=5e-4)
    assert serial.overhead_s(5e-3, 4, spec_round=True, draft_passes=3) == pytest.approx(1e-3 + 1e-4 + 2e-3 + 1.5e-3)
    assert serial.overhead_s(5e-3, 4) == pytest.approx(1.1e-3)           # a plain step pays no round
    ov = FrameworkStep(1e-3, 0.0, 2e-3, True, 1e-4, draft_pass_cpu_s=5e-4)
    # GPU-bound: the step CPU hides behind the GPU, the round's own CPU never does
    assert ov.overhead_s(5e-3, 4, True, 3) == pytest.approx(1e-4 + 3.5e-3)
    # CPU-bound: the step CPU shows beyond the GPU time
    assert ov.overhead_s(2e-4, 4, True, 3) == pytest.approx(1e-3 - 2e-4 + 1e-4 + 3.5e-3)


def test_round_cost_adds_to_every_speculative_step_in_the_engine():
    """Batch 1, fixed lengths: the same steps run, each SD step longer by exactly round + k x pass."""
    sets = ["workload.num_prompts=6", "workload.max_concurrency=1", "workload.request_rate=inf",
            "workload.dataset_name=fixed", "workload.random_input_len=64", "workload.random_output_len=40",
            "engine.spec_round_overhead_ms=0", "engine.draft_pass_overhead_ms=0"]
    runs = []
    for extra in ([], ["engine.spec_round_overhead_ms=2.0", "engine.draft_pass_overhead_ms=0.5"]):
        summary, req, log = simulate(build(load_scenario("quickstart", sets + extra)))
        f = log.frame()
        runs.append((summary, f))
    (s0, f0), (s1, f1) = runs
    assert len(f0) == len(f1) and s0["spec_decode_num_drafts"] == s1["spec_decode_num_drafts"]
    spec_steps = int((f0.num_decode > 0).sum())
    assert spec_steps > 0
    added = (f1.duration_s.sum() - f0.duration_s.sum()) * 1e3
    assert added == pytest.approx(spec_steps * (2.0 + 3 * 0.5), rel=1e-6)


# --- the fit ---------------------------------------------------------------------------------

def synthetic_obs(true, rng, sources=("a", "b", "c"), framework="f"):
    obs = []
    for i in range(30):
        passes = int(rng.integers(1, 8))
        metric = ["throughput_tok_s", "tpot_ms"][i % 2]
        v0 = float(rng.uniform(50, 500) if metric == "throughput_tok_s" else rng.uniform(2, 20))
        v1 = v0 * (0.8 if metric == "throughput_tok_s" else 1.25)
        o = {"source": sources[i % len(sources)], "framework": framework, "setup": f"{framework}{i}",
             "passes": passes, "probe_ms": 2.0, "metric": metric, "v0": v0, "v1": v1}
        o["measured"] = float(sdfit.predict(o, sdfit.round_ms(true, o)))
        obs.append(o)
    return obs


def test_fit_recovers_known_round_and_pass_costs():
    rng = np.random.default_rng(3)
    true = (1.7, 0.45)
    obs = synthetic_obs(true, rng)
    a, b = sdfit.fit_frameworks(obs)["f"]
    assert a == pytest.approx(true[0], rel=0.02) and b == pytest.approx(true[1], rel=0.02)
    folds = sdfit.leave_one_source_out(obs)
    assert all(p is not None and p[0] == pytest.approx(true[0], rel=0.05) for p in folds.values())
    # one number of draft passes cannot tell the two terms apart: only the round is fitted
    same = [{**o, "passes": 3} for o in obs]
    for o in same:
        o["measured"] = float(sdfit.predict(o, sdfit.round_ms(true, o)))
    a1, b1 = sdfit.fit_frameworks(same)["f"]
    assert b1 == 0.0 and a1 == pytest.approx(true[0] + 3 * true[1], rel=0.02)


def test_frameworks_share_the_draft_pass_and_keep_their_own_round():
    rng = np.random.default_rng(5)
    obs = (synthetic_obs((2.0, 0.4), rng, ("a", "b"), "sglang")
           + synthetic_obs((0.3, 0.4), rng, ("c", "d"), "vllm"))
    fits = sdfit.fit_frameworks(obs)
    assert fits["sglang"] == pytest.approx((2.0, 0.4), rel=0.02)
    assert fits["vllm"] == pytest.approx((0.3, 0.4), rel=0.05)
    # a framework whose draft passes never vary still gets its round: the pass comes from the other
    fixed = [{**o, "passes": 3} if o["framework"] == "vllm" else o for o in obs]
    for o in fixed:
        o["measured"] = float(sdfit.predict(o, sdfit.round_ms((2.0, 0.4) if o["framework"] == "sglang"
                                                               else (0.3, 0.4), o)))
    fits = sdfit.fit_frameworks(fixed)
    assert fits["vllm"] == pytest.approx((0.3, 0.4), rel=0.05)
    # held out, a source is predicted with its own framework's round and the pooled pass
    folds = sdfit.leave_one_source_out(obs)
    assert folds["c"] == pytest.approx((0.3, 0.4), rel=0.05) and folds["a"] == pytest.approx((2.0, 0.4), rel=0.05)


def test_no_fold_is_fitted_on_a_single_setup():
    obs = synthetic_obs((1.0, 0.2), np.random.default_rng(4), sources=("a",))
    lone = {**obs[0], "source": "b"}
    folds = sdfit.leave_one_source_out(obs + [lone])
    assert folds["a"] is None and folds["b"] is not None
    # nor a framework: one setup of another framework is left out of the joint fit
    other = {**obs[0], "source": "c", "framework": "g", "setup": "g0"}
    fits = sdfit.fit_frameworks(obs + [other])
    assert set(fits) == {"f"}
    assert sdfit.leave_one_source_out(obs + [other])["c"] is None


# --- reading and classifying rows ---------------------------------------------------------------

def test_bad_tables_are_one_line_errors(tmp_path):
    (tmp_path / "b.csv").write_text("source,metric\nx,tpot_ms\n")
    with pytest.raises(ConfigError, match="missing columns"):
        sdtable.read_table(tmp_path / "b.csv")
    with pytest.raises(ConfigError, match="metric 'tokens'.*allowed"):
        sdtable.read_table(write_table(tmp_path / "c.csv", [{**BASE, "metric": "tokens", "sd_value": 1}]))
    with pytest.raises(ConfigError, match="no such file"):
        sdtable.read_table(tmp_path / "missing.csv")


def test_rows_are_blocked_with_their_reason_or_carry_the_assumption(tmp_path):
    rows = [
        {**BASE, "gpu": "", "metric": "tpot_ms", "sd_value": 3},
        {**BASE, "gpu": "RTX 4090", "metric": "tpot_ms", "sd_value": 3},
        {**BASE, "target_model": "Qwen/Qwen3.5-9B (BF16)", "metric": "tpot_ms", "sd_value": 3},
        {**BASE, "k": "", "metric": "tpot_ms", "sd_value": 3},
        {**BASE, "k": 0, "metric": "tpot_ms", "sd_value": 3},
        {**BASE, "target_model": "Qwen/Qwen3-30B-A3B", "draft_method": "EAGLE", "metric": "tpot_ms", "sd_value": 3},
        {**BASE, "k": "three", "metric": "tpot_ms", "sd_value": 3},
        {**BASE, "k": 2.5, "metric": "tpot_ms", "sd_value": 3},
        {**BASE, "batch_or_concurrency": "many", "metric": "tpot_ms", "sd_value": 3},
    ]
    blocked = [sdtable.describe([sdtable.read_table(write_table(tmp_path / f"{i}.csv", [r])).to_dict("records")[0]])[1]
               for i, r in enumerate(rows)]
    assert blocked == ["GPU not stated", "no GPU spec for RTX 4090", "hybrid linear attention (Gated DeltaNet layers)",
                       "k (draft length) not stated", "k = 0: no draft tokens in the SD run",
                       "no eagle head EAGLE-Qwen3-30B-A3B in the catalog",
                       # a typed cell that is no count says so (never read as unstated, nor truncated)
                       "k 'three' is not a number", "k '2.5' is not a whole number",
                       "batch_or_concurrency 'many' is not a number"]
    # no acceptance length, but ITL and TPOT with SD: their ratio, said so
    pair = [{**BASE, "acceptance_length": "", "metric": m, "sd_value": v} for m, v in (("tpot_ms", 4.0), ("itl_ms", 10.0))]
    recs = sdtable.read_table(write_table(tmp_path / "p.csv", pair)).to_dict("records")
    sc, why, note = sdtable.describe(recs)
    assert not why and sc["speculative_config"]["acceptance"]["mean_acceptance_length"] == 2.5 and "ITL / TPOT" in note
    # an --assume entry fills only empty cells of its source
    (tmp_path / "assume.yaml").write_text('- {source: "mi", set: {gpu: H200, tp: "2"}, why: "stated elsewhere"}\n'
                                          '- {source: "mi", where: {k: "3.0"}, set: {acceptance_length: "2.2", '
                                          'dataset: x}, why: "same k elsewhere"}\n')
    got, applied = sdtable.load(write_table(tmp_path / "q.csv", [{**rows[0], "acceptance_length": ""},
                                                                  {**rows[0], "gpu": "B200", "k": 4}]),
                                tmp_path / "assume.yaml")
    assert [r["gpu"] for r in got] == ["H200", "B200"] and [r["tp"] for r in got] == ["1", "1"]
    assert [r["acceptance_length"] for r in got] == ["2.2", "2.5"]          # where: only the k = 3 row
    assert applied == {1: "gpu=H200 (stated elsewhere); acceptance_length=2.2, dataset=x (same k elsewhere)"}


def test_validate_sd_table_cli_json(tmp_path):
    rows = [{**BASE, "metric": "tpot_ms", "baseline_value": 7.0, "sd_value": 4.0},
            {**BASE, "metric": "throughput_tok_s", "baseline_value": 140, "sd_value": 240},
            {**BASE, "k": 5, "metric": "speedup", "sd_value": 1.6},
            {**BASE, "gpu": "", "metric": "tpot_ms", "baseline_value": 7.0, "sd_value": 4.0}]
    path = write_table(tmp_path / "mine.csv", rows)
    r = subprocess.run([sys.executable, "-m", "simulator", "validate", "--sd-table", str(path), "--json",
                        "--workers", "1", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["rows"] == 4 and s["expressible"] == 3 and s["blocked"] == {"GPU not stated": 1}
    assert {"speedup_median_abs_error", "throughput_median_abs_error", "sign_right", "per_row"} <= set(s)
    assert len(s["per_row"]) == 4 and s["per_row"][3]["blocked_by"] == "GPU not stated"
    tp, thr, sp = s["per_row"][:3]
    # SD pays at batch 1 with 2.5 tokens per round; every speedup is base/SD of the same simulated pair
    assert tp["sim_sd"] < tp["sim_base"] and tp["sim_speedup"] == pytest.approx(tp["sim_base"] / tp["sim_sd"])
    assert thr["sim_speedup"] == pytest.approx(thr["sim_sd"] / thr["sim_base"]) and sp["sim_speedup"] > 1
    assert s["sign_right"] == 1.0 and (tmp_path / "out" / "sd_table.csv").is_file()
    bad = subprocess.run([sys.executable, "-m", "simulator", "validate", "--sd-table", str(path), "--source", "nobody",
                          "--out", str(tmp_path / "o2")], capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "--source" in bad.stderr
    assert not (tmp_path / "o2").exists()


def test_training_table_signs_and_coverage():
    shared = shared_or_skip()
    from simulator.common.paths import REPO_ROOT
    t, s = validate_sd_table(shared / "e2e" / "published" / "sd_training.csv",
                             REPO_ROOT / "traces" / "e2e" / "sd_training_assumptions.yaml", workers=2, progress=False)
    assert s["rows"] == 238 and s["expressible"] >= 45 and len(t) == 238
    assert (t.expressible | (t.blocked_by != "")).all()          # every row expressible or given a reason
    assert s["sign_rows"] >= 30 and s["sign_right"] >= 0.95
    assert s["speedup_median_abs_error"] <= 0.10
