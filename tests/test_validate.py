"""Simulated vs hardware-measured throughput and latency (traces/e2e/cases.csv).

The bounds are the errors that hold today (README, "Validation"), so a regression fails. Cases are
typed-in figures derived from ../shared; the derivation is checked when ../shared is present.
"""

import pandas as pd
import pytest

from simulator.analysis import validate as validate_cmd
from simulator.common.errors import ConfigError
from simulator.common.paths import shared_traces_dir


@pytest.fixture(scope="module")
def result():
    return validate_cmd.validate(workers=2, progress=False)


def test_every_case_runs_and_nothing_fails(result):
    t, s = result
    assert len(t) == len(validate_cmd.load_cases()) and (t.failed == 0).all()
    assert t.sim_throughput_tok_s.gt(0).all()


def test_sd_sign_right_on_most_cases(result):
    """SD loses on these SGLang runs (0.72-0.93x). The round cost is fitted jointly on three sources
    (benchmarks/fit_sd_step.py), not on one of these cases: five of eight come out below 1.0, the
    other three, the batch-1 runs with 3-step drafts, at break-even (1.01-1.09x). It was six of eight (at most
    1.07x) until the TP ranks' synchronisation came in (2026-12-04, rank_skew, fitted on 185 H100
    serving rows of 7 models): a per-step cost, so it favours SD, and these runs' batch-1 SD-off
    baseline was already 18% slow from the 1.5 ms step CPU that SGLang's overlap scheduler hides
    (README, "Framework step model"). Their SD-off rows at batch >= 8 moved the other way, closer."""
    t, s = result
    sd = t[t.family == "moe_sd"]
    assert len(sd) == 8 and (sd.measured_speedup < 1).all()
    assert sd.sd_sign_right.astype(bool).sum() >= 5
    assert (sd[sd.batch_size > 1].sim_speedup < 1).all()     # batch 4: SD loses, as measured
    assert (sd.sim_speedup < 1.10).all()


def test_error_bounds_that_hold_today(result):
    t, s = result
    assert s["dense_decode"]["throughput_median_abs_err"] <= 0.06
    assert s["dense_decode"]["latency_median_abs_err"] <= 0.06
    assert s["moe_sd"]["throughput_median_abs_err"] <= 0.11
    assert s["scenario:mixtral_4xa100_vllm"]["throughput_median_abs_err"] <= 0.16
    assert s["scenario:qwen3_eagle3_2xh100_sglang"]["throughput_median_abs_err"] <= 0.14
    # LLM-Inference-Bench's TensorRT-LLM batches are one prompt copied (workload.identical_prompts): 34-40% without
    assert s["scenario:mixtral_4xh100_trtllm"]["throughput_median_abs_err"] <= 0.20
    assert s["scenario:mixtral_4xa100_trtllm"]["throughput_median_abs_err"] <= 0.20
    assert s["overall"]["throughput_median_abs_err"] <= 0.09       # issue 13's bound


def test_acceptance_length_is_reproduced_as_given(result):
    t, _ = result
    sd = t[t.family == "moe_sd"]
    assert (sd.sim_acceptance_length / sd.acceptance_length - 1).abs().max() < 0.05


def test_cases_match_their_derivation_from_shared(tmp_path, monkeypatch):
    shared = shared_traces_dir() / "e2e"
    if not shared.exists():
        pytest.skip(f"shared e2e traces not found at {shared}")
    import importlib.util
    spec = importlib.util.spec_from_file_location("derive", validate_cmd.CASES_FILE.parent / "derive_cases.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fresh = pd.DataFrame(mod.lib_cases(shared) + mod.sglang_cases(shared))
    committed = validate_cmd.load_cases()
    assert list(fresh.case) == list(committed.case)
    assert (fresh.measured_throughput_tok_s.values / committed.measured_throughput_tok_s.values - 1).__abs__().max() < 1e-5


def test_unknown_case_is_a_one_line_error():
    with pytest.raises(ConfigError, match="unknown case 'nope'"):
        validate_cmd.select(validate_cmd.load_cases(), "nope")
