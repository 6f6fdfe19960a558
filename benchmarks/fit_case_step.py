"""Fit a framework entry's step terms (step_cpu_ms, per_seq_cpu_ms) jointly on the validation cases
that run it (traces/e2e/cases.csv), leave-one-scenario-out (one model on one GPU held out at a time).

    python benchmarks/fit_case_step.py [--framework vllm] [--version 0.6.0]

Every case of the framework's scenarios is simulated three times: no step CPU, 1 ms a step, and
0.1 ms a scheduled sequence. A case's duration is linear in both terms (the same steps, each
longer), so a fit needs no further simulation. Printed: per held-out scenario the fold's terms and
throughput errors, then the terms fitted on all cases; they go into workloads/frameworks.yaml by
hand with this output as their source (benchmarks/results/fit_case_step.txt).
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.optimize import least_squares
from simulator.analysis import validate
from simulator.analysis.runner import run_many

PROBES = {"zero": (0.0, 0.0), "step": (1.0, 0.0), "seq": (0.0, 0.1)}


def arm(job: dict) -> dict:
    c, (step, seq) = job["case"], PROBES[job["probe"]]
    o = validate.case_overrides(c) + [f"engine.step_overhead_ms={step}", f"engine.per_seq_overhead_ms={seq}"]
    path = validate.SCENARIO_DIR / f"{c['scenario']}.yaml"
    summary, req, _ = validate.simulate(validate.build(validate.load_scenario(path, o), str(path)))
    total = float(req.input_len.sum() + req.output_len.sum())
    return {"duration": float(summary["duration"]), "out": float(summary["output_throughput"]) * float(summary["duration"]),
            "total": total}


def predict(c: dict, p) -> float:
    """Throughput of case ``c`` under step CPU p[0] ms and per-sequence CPU p[1] ms."""
    d = c["d0"] + (c["d_step"] - c["d0"]) * p[0] + (c["d_seq"] - c["d0"]) * p[1] / 0.1
    return c["tokens"] / d


def fit(cases: list[dict]) -> np.ndarray:
    res = lambda p: [np.log(predict(c, p) / c["measured"]) for c in cases]  # noqa: E731
    r = least_squares(res, [1.0, 0.02], bounds=([0.0, 0.0], [20.0, 2.0]), loss="soft_l1", f_scale=0.1)
    return r.x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--framework", default="vllm")
    ap.add_argument("--version", default="0.6.0")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    cases = validate.load_cases()
    scen = {s: validate.load_scenario(validate.SCENARIO_DIR / f"{s}.yaml") for s in sorted(set(cases.scenario))}
    pick = [s for s, sc in scen.items() if sc.engine.framework == args.framework
            and (sc.engine.framework_version or "") == args.version and sc.speculative_config is None]
    sel = cases[cases.scenario.isin(pick)].to_dict("records")
    jobs = [{"case": c, "probe": p} for c in sel for p in PROBES]
    res = run_many(arm, jobs, args.workers, desc="cases", progress=False)
    by = {(j["case"]["case"], j["probe"]): r for j, r in zip(jobs, res)}
    obs = []
    for c in sel:
        z = by[(c["case"], "zero")]
        obs.append({"case": c["case"], "scenario": c["scenario"], "measured": float(c["measured_throughput_tok_s"]),
                    "tokens": z["out"] if c["throughput_kind"] == "output" else z["total"], "d0": z["duration"],
                    "d_step": by[(c["case"], "step")]["duration"], "d_seq": by[(c["case"], "seq")]["duration"]})
    print(f"{args.framework} {args.version}: {len(obs)} cases in {len(pick)} scenarios {pick}\n")
    print(f"{'held-out scenario':<24} {'cases':>5}  {'step ms':>7} {'per-seq ms':>10}  {'thr median':>10} {'p90':>6}")
    held = []
    for s in pick:
        train = [o for o in obs if o["scenario"] != s]
        test = [o for o in obs if o["scenario"] == s]
        p = fit(train)
        e = np.array([abs(predict(o, p) / o["measured"] - 1) for o in test])
        held += list(e)
        print(f"{s:<24} {len(test):>5}  {p[0]:>7.3f} {p[1]:>10.4f}  {np.median(e):>10.1%} {np.percentile(e, 90):>6.1%}")
    p = fit(obs)
    ins = np.array([abs(predict(o, p) / o["measured"] - 1) for o in obs])
    print(f"\nall held out: median {np.median(held):.1%}, p90 {np.percentile(held, 90):.1%}")
    print(f"fitted on all {len(obs)} cases: step_cpu_ms {p[0]:.3f}, per_seq_cpu_ms {p[1]:.4f} "
          f"(in-sample median {np.median(ins):.1%})")


if __name__ == "__main__":
    main()
