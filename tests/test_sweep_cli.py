"""moesd sweep end to end, and the runner's cache."""

import json

import pandas as pd

from simulator.analysis import runner
from simulator.commands.cli import main as cli


def test_sweep_writes_csv_and_report(tmp_path, capsys):
    out = tmp_path / "sw"
    rc = cli(["sweep", "quickstart", "--batch-sizes", "1,32", "--num-speculative-tokens", "2..3", "--quiet",
              "--out", str(out), "--workers", "1", "--topk-sweep", "4,8"])
    assert rc == 0
    # the acceptance every k keeps, as the scenario states it (quickstart: rate 0.8), printed and reported
    assert "note: acceptance assumed: rate 0.8 per draft token (length" in capsys.readouterr().out
    t = pd.read_csv(out / "sweep.csv")
    assert set(t.family) == {"moe", "dense"}
    moe = t[t.family == "moe"]
    assert set(moe.k) == {-1, 0, 2, 3}                    # baseline, fixed k, adaptive (-1)
    assert moe.speedup_sim.notna().all() and (moe[moe.k == 0].speedup_sim == 1).all()
    assert set(pd.read_csv(out / "sparsity.csv").topk) == {4, 8}
    html = (out / "report.html").read_text()
    assert "go/no-go" in html and "Target efficiency" in html and "acceptance assumed: rate 0.8" in html


def test_sweep_rejects_bad_batch_list(tmp_path, capsys):
    out = tmp_path / "bad"
    assert cli(["sweep", "quickstart", "--batch-sizes", "1,x", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moesd: error:") and "1,x" in err and "\n" not in err
    assert not out.exists()


def count_calls(job):
    with open(job["log"], "a") as f:
        f.write("x")
    return {"square": job["n"] ** 2}


def test_runner_cache_resumes_instead_of_recomputing(tmp_path):
    log = tmp_path / "calls"
    jobs = [{"n": n, "log": str(log)} for n in range(4)]
    first = runner.run_many(count_calls, jobs, workers=1, cache_dir=tmp_path / "cache", progress=False)
    again = runner.run_many(count_calls, jobs + [{"n": 9, "log": str(log)}], workers=1,
                            cache_dir=tmp_path / "cache", progress=False)
    assert [r["square"] for r in again] == [0, 1, 4, 9, 81] and again[:4] == first
    assert log.read_text() == "x" * 5                      # the 4 cached jobs ran once
    assert all(json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json"))


def test_sweep_runs_on_an_eagle_tree_and_says_adaptive_k_is_skipped(tmp_path):
    """An EAGLE tree (more verified tokens than k + 1) has no adaptive-k pass; the sweep says so."""
    s = tmp_path / "tree.yaml"
    s.write_text("name: tree\nmodel: Qwen3-30B-A3B\nhardware: {gpu: h100_sxm}\n"
                 "speculative_config: {method: eagle3, model: EAGLE3-Qwen3-30B-A3B, num_speculative_tokens: 3,\n"
                 "  speculative_eagle_topk: 4, speculative_num_draft_tokens: 8, acceptance: {mean_acceptance_length: 3.0}}\n"
                 "workload: {random_input_len: 128, random_output_len: 16}\n")
    out = tmp_path / "out"
    assert cli(["sweep", str(s), "--batch-sizes", "1,2", "--num-speculative-tokens", "3", "--dense-scenario", "",
                "--topk-sweep", "2", "--out", str(out), "--quiet", "--workers", "1"]) == 0
    t = pd.read_csv(out / "sweep.csv")
    assert not t.adaptive.any() and t.speedup_sim.notna().any()
    assert "adaptive k skipped" in (out / "report.html").read_text()


def test_damaged_or_edited_cache_entries_are_recomputed(tmp_path, capsys):
    log = tmp_path / "calls"
    jobs = [{"n": n, "log": str(log)} for n in range(3)]
    runner.run_many(count_calls, jobs, workers=1, cache_dir=tmp_path / "cache", progress=False)
    files = sorted((tmp_path / "cache").glob("*.json"))
    files[0].write_text("{not json")                                        # damaged
    entry = json.loads(files[1].read_text())
    entry["result"]["square"] = 500                                         # hand-edited: checksum no longer fits
    files[1].write_text(json.dumps(entry))
    capsys.readouterr()
    again = runner.run_many(count_calls, jobs, workers=1, cache_dir=tmp_path / "cache", progress=False)
    assert [r["square"] for r in again] == [0, 1, 4]
    assert log.read_text() == "x" * 5                                      # the two bad entries ran again
    err = capsys.readouterr().err
    assert str(files[0]) in err and str(files[1]) in err and "computing it again" in err


def sleepy(job: dict) -> dict:
    import os
    import time
    with open(job["pids"], "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(30)
    return {}


def test_pool_workers_die_with_their_parent(tmp_path):
    """kill -9 of a planner/sweep process must not orphan its pool workers."""
    import os
    import signal
    import subprocess
    import sys
    import time
    pids = tmp_path / "pids"
    code = ("import sys; sys.path.insert(0, 'tests'); from test_sweep_cli import sleepy; "
            "from simulator.analysis import runner; "
            f"runner.run_many(sleepy, [{{'pids': {str(pids)!r}, 'i': i}} for i in range(2)], workers=2, progress=False)")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(__file__)))
    deadline = time.time() + 60
    while time.time() < deadline and (not pids.exists() or len(pids.read_text().split()) < 2):
        time.sleep(0.2)
    workers = [int(p) for p in pids.read_text().split()]
    assert len(workers) == 2
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    time.sleep(2)

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        with open(f"/proc/{pid}/stat") as f:           # a zombie awaiting its reaper is gone too
            return f.read().split()[2] != "Z"
    assert not any(alive(p) for p in workers)


def test_a_stated_acceptance_length_holds_at_its_own_k_when_a_sweep_varies_k():
    """qwen3_eagle3 states a mean acceptance length of 1.86 at its k = 3. A sweep keeps that
    per-token rate at every k: the engine's acceptance at k = 1 and 3 matches the closed form's
    tokens per round (1.86 at k = 3, less at k = 1), rather than every k reaching 1.86."""
    from simulator.analysis.sweep import sweep
    t = sweep("qwen3_eagle3", [], [4], [1, 3], adaptive=False, workers=1, progress=False)
    t = t[t.k > 0].set_index("k")
    assert abs(t.loc[3, "tokens_per_round"] - 1.86) < 1e-3
    assert t.loc[1, "tokens_per_round"] < 1.6
    for k in (1, 3):
        assert abs(t.loc[k, "acceptance_length"] - t.loc[k, "tokens_per_round"]) < 0.06


def test_measured_at_k_sets_the_rate_and_needs_a_mean_length():
    import pytest
    from simulator.common.errors import ConfigError
    from simulator.config.plan import parse_plan
    from simulator.config.speculative import Acceptance
    from simulator.serving import acceptance
    acc = Acceptance(mean_acceptance_length=2.5, measured_at_k=3)
    for k in (1, 3, 6):
        model = acceptance.build(acc, k)
        assert model.rate == pytest.approx(acceptance.build(acc, 3).rate)
    assert 1 + acceptance.build(acc, 3).expected_accepted(3) == pytest.approx(2.5)
    assert acceptance.pinned(Acceptance(mean_acceptance_length=2.5), 4) == {"mean_acceptance_length": 2.5, "measured_at_k": 4}
    assert acceptance.pinned(Acceptance(rate=0.7), 4) == {"rate": 0.7}
    with pytest.raises(Exception, match="measured_at_k goes with mean_acceptance_length"):
        Acceptance(rate=0.7, measured_at_k=3)
    plan = {"model": "Qwen3-30B-A3B", "slo": {"tpot_ms": 30},
            "drafts": [{"method": "eagle3", "model": "EAGLE3-Qwen3-30B-A3B", "acceptance": {"mean_acceptance_length": 2.5}}],
            "search": {"num_speculative_tokens": [0, 1, 3]}}
    with pytest.raises(ConfigError, match=r"drafts\[0\]\.acceptance: mean_acceptance_length needs measured_at_k"):
        parse_plan(json.loads(json.dumps(plan)), "p.yaml")
    plan["drafts"][0]["acceptance"]["measured_at_k"] = 3
    assert parse_plan(plan, "p.yaml").drafts[0].acceptance["measured_at_k"] == 3


def test_sweep_turns_a_closed_loop_sharegpt_scenario_into_its_offline_batch():
    """A scenario written for a closed loop of users on ShareGPT lengths sweeps as an offline batch at
    the dataset's mean lengths (its closed-loop keys would otherwise clash with the batch's client)."""
    from simulator.analysis.sweep import offline_overrides, sweep
    from simulator.config.datasets import all_datasets
    from simulator.config.scenario import load_scenario
    sets = ["workload.dataset_name=sharegpt", "workload.concurrency=8", "workload.request_rate=inf",
            "workload.measurement=steady"]
    sc = load_scenario("quickstart", sets)
    e = all_datasets()["sharegpt"]
    batch = load_scenario("quickstart", sets + offline_overrides(sc)).workload
    assert batch.concurrency is None and batch.dataset_name == "fixed"
    assert (batch.random_input_len, batch.random_output_len) == (int(e["input_len"]), int(e["output_len"]))
    t = sweep("quickstart", sets, [1, 8], [2], adaptive=False, workers=1, progress=False)
    assert t.speedup_sim.notna().all() and len(t) == 4
