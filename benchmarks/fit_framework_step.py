"""Fit the framework step model (simulator/cost/framework.py) per framework on AIConfigurator's
measured serving runs, and score it leave-one-model-out.

1. Every expressible agg row of the silicon file (or a reproducible sample) is simulated once with
   no framework overhead; the run's decode steps per batch size and their GPU time are kept.
2. A row's TPOT under step-model parameters p is its zero-overhead TPOT scaled by
   sum_steps(gpu + overhead_p(gpu, batch)) / sum_steps(gpu) (the same steps, each longer).
3. Per framework, (step CPU, per-sequence CPU, sync) are fitted with and without CPU/GPU overlap
   (robust loss on log(predicted / measured TPOT)); each model's rows are predicted by a fit that
   never saw that model. The overlap choice with the lower held-out error is kept.

    python benchmarks/fit_framework_step.py [--sample 600] [--workers 2]

Prints the parameters (fitted on all rows, with the models and row counts that determine them) and
the held-out error per framework. The values go into workloads/frameworks.yaml by hand, with this
output as their source.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import pandas as pd
from simulator.analysis import silicon, stepfit
from simulator.analysis.runner import run_many
from simulator.common.paths import shared_traces_dir
from simulator.config.scenario import parse
from simulator.serving.simulation import build, simulate

ZERO = {"step_overhead_ms": 0.0, "per_seq_overhead_ms": 0.0, "spec_round_overhead_ms": 0.0, "cpu_overlap": False,
        "sync_ms": 0.0}


def gpu_only(job: dict) -> dict:
    sc = copy.deepcopy(job["scenario"])
    sc["engine"].update(ZERO)
    summary, _, steps = simulate(build(parse(sc, "fit")))
    by = steps.stats.by_batch       # batch -> [steps, sums of draft, attention, gemm, moe, comm, overhead]
    rows = [(b, v[0], (v[1] + v[2] + v[3] + v[4] + v[5] + v[6]) / max(v[0], 1)) for b, v in by.items() if b > 0]
    return {"tpot0": summary.get("median_tpot_ms"), "by_batch": rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", default=str(shared_traces_dir() / "e2e" / "aiconfigurator" / "silicon_sample_train.csv"))
    ap.add_argument("--sample", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    df = silicon.load_rows(args.file)
    recs = df.to_dict("records")
    ok = [r for r in recs if not silicon.classify(r) and r["silicon_tpot_ms"] > 0]
    rng = np.random.default_rng(0)
    if args.sample and len(ok) > args.sample:
        ok = [ok[i] for i in sorted(rng.choice(len(ok), args.sample, replace=False))]
    jobs = [{"id": str(r["id"]), "scenario": silicon.scenario(r)} for r in ok]
    res = run_many(gpu_only, jobs, args.workers, cache_dir=args.cache_dir, desc="zero-overhead runs", progress=False)
    rows = [{**r, **x, "measured_tpot": r["silicon_tpot_ms"]} for r, x in zip(ok, res)
            if x["tpot0"] and x["by_batch"]]
    t = pd.DataFrame(rows)
    print(f"{len(t)} rows simulated ({len(recs)} in the file)\n")
    print(f"{'framework':<8} {'overlap':<7} {'rows':>5} {'models':>6}  {'step CPU ms':>11} {'per-seq us':>10} "
          f"{'sync ms':>8}  {'LOMO TPOT med':>13} {'p90':>6}  {'in-sample med':>13}  {'no model med':>12}")
    for fw, g in t.groupby("backend"):
        gr = g.to_dict("records")
        models = sorted(g.model_path.unique())
        best = None
        for overlap in (False, True):
            errs = stepfit.leave_one_group_out(gr, "model_path", overlap)
            p_all = stepfit.fit(gr, overlap)
            ins = [abs(stepfit.predict_tpot(p_all, r["tpot0"], r["by_batch"]) / r["measured_tpot"] - 1) for r in gr]
            zero = [abs(r["tpot0"] / r["measured_tpot"] - 1) for r in gr]
            line = (f"{fw:<8} {str(overlap):<7} {len(gr):>5} {len(models):>6}  {p_all.step_cpu_s * 1e3:>11.3f} "
                    f"{p_all.per_seq_cpu_s * 1e6:>10.2f} {p_all.sync_s * 1e3:>8.3f}  {np.median(errs):>13.1%} "
                    f"{np.percentile(errs, 90):>6.1%}  {np.median(ins):>13.1%}  {np.median(zero):>12.1%}")
            print(line)
            if best is None or np.median(errs) < best[0]:
                best = (np.median(errs), overlap)
        print(f"  -> {fw}: keep cpu_overlap={best[1]}; versions {sorted(g.backend_version.fillna('unstated').astype(str).unique())}; "
              f"models {models}")


if __name__ == "__main__":
    main()
