"""moesd sweep end to end, and the runner's cache."""

import json

import pandas as pd

from simulator.analysis import runner
from simulator.commands.cli import main as cli


def test_sweep_writes_csv_and_report(tmp_path):
    out = tmp_path / "sw"
    rc = cli(["sweep", "quickstart", "--batch-sizes", "1,32", "--num-speculative-tokens", "2..3", "--quiet",
              "--out", str(out), "--workers", "1", "--topk-sweep", "4,8"])
    assert rc == 0
    t = pd.read_csv(out / "sweep.csv")
    assert set(t.family) == {"moe", "dense"}
    moe = t[t.family == "moe"]
    assert set(moe.k) == {-1, 0, 2, 3}                    # baseline, fixed k, adaptive (-1)
    assert moe.speedup_sim.notna().all() and (moe[moe.k == 0].speedup_sim == 1).all()
    assert set(pd.read_csv(out / "sparsity.csv").topk) == {4, 8}
    html = (out / "report.html").read_text()
    assert "go/no-go" in html and "Target efficiency" in html


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
