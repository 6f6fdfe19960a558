"""Fit the speculative round's framework cost per framework on published SD measurements, and score
it leave-one-source-out (simulator/analysis/sdfit.py).

    python benchmarks/fit_sd_step.py [--file sd_training.csv] [--assume traces/e2e/sd_training_assumptions.yaml]

1. Every expressible setup of the SD table that runs SD is simulated twice with SD (no round cost,
   and PROBE ms per round) and once without.
2. spec_round_cpu_ms per framework and one draft_pass_cpu_ms for every framework are fitted together
   on every measured SD value and stated speedup (robust loss on log(predicted / measured),
   sdfit.fit_frameworks); each source is then predicted by a fit that never saw it. A framework whose
   other sources hold fewer than two setups has no held-out fit for that source (n/a): no constant
   is fitted on a single case.
3. Printed per source: the rows, the fold's parameters, the SD speedup and SD-value errors held out,
   in-sample, and with no round cost at all. The values go into workloads/frameworks.yaml by hand,
   with this output as their source (benchmarks/results/fit_sd_step.txt).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
from simulator.analysis import sdfit, sdtable
from simulator.analysis import validate
from simulator.analysis.runner import run_many
from simulator.analysis.sdvalidate import measured_speedup, sim_value, simulate_setup
from simulator.common.paths import REPO_ROOT, shared_traces_dir

PROBE_MS = 2.0


def arms(job: dict) -> dict:
    out = {}
    for name, x in (("x0", 0.0), ("x1", PROBE_MS)):
        j = copy.deepcopy(job)
        j["scenario"]["engine"].update(spec_round_overhead_ms=x, draft_pass_overhead_ms=0.0)
        j["need_base"] = j["need_base"] and name == "x0"
        out[name] = simulate_setup(j)
    return out


def case_arm(job: dict) -> dict:
    """One validation case (traces/e2e/cases.csv) at a given round cost: its output throughput."""
    c, x = job["case"], job["x"]
    o = validate.case_overrides(c)
    if int(c["num_speculative_tokens"]):
        o += [f"engine.spec_round_overhead_ms={x}", "engine.draft_pass_overhead_ms=0"]
    path = validate.SCENARIO_DIR / f"{c['scenario']}.yaml"
    summary, _, _ = validate.simulate(validate.build(validate.load_scenario(path, o), str(path)))
    return {"throughput_tok_s": float(summary["output_throughput"])}


def case_observations(workers: int) -> tuple[list[dict], list[dict]]:
    """The SD validation cases measured with a framework that has a step-model entry (SGLang EAGLE3 on
    2x H100, ../shared/traces/e2e/published/sglang_eagle3_*) as observations of their source."""
    cases = validate.load_cases()
    sd = cases[(cases.num_speculative_tokens > 0) & (cases.throughput_kind == "output")]
    framework = {c: validate.load_scenario(validate.SCENARIO_DIR / f"{c}.yaml").engine.framework
                 for c in set(sd.scenario)}
    sd = sd[[framework[c] != "trtllm" for c in sd.scenario]]
    recs = {r["case"]: r for r in cases.to_dict("records")}
    jobs = [{"case": recs[c], "x": x} for c in sd.case for x in (0.0, PROBE_MS)]
    base = sorted({b for b in sd.baseline if b})
    jobs += [{"case": recs[b], "x": 0.0} for b in base]
    res = run_many(case_arm, jobs, workers, desc="cases", progress=False)
    by = {(j["case"]["case"], j["x"]): r["throughput_tok_s"] for j, r in zip(jobs, res)}
    obs, sp = [], []
    for c in sd.to_dict("records"):
        common = {"source": c["source"], "framework": framework[c["scenario"]], "setup": c["case"],
                  "passes": int(c["num_speculative_tokens"]), "probe_ms": PROBE_MS, "row": c["case"],
                  "metric": "throughput_tok_s", "v0": by[(c["case"], 0.0)], "v1": by[(c["case"], PROBE_MS)]}
        obs.append({**common, "measured": float(c["measured_throughput_tok_s"])})
        if c["baseline"]:
            b = recs[c["baseline"]]
            sp.append({**common, "kind": "value", "sim_base": by[(b["case"], 0.0)],
                       "measured": float(c["measured_throughput_tok_s"]) / float(b["measured_throughput_tok_s"])})
    return obs, sp


def observations(groups, sims) -> tuple[list[dict], list[dict]]:
    """(fit observations, rows with a measured speedup: how to predict their simulated speedup)."""
    obs, sp = [], []
    for key, (rows, (sc, _, _)) in groups.items():
        res = sims.get(key)
        if res is None or "sd" not in res["x0"]:
            continue
        k = sc["speculative_config"]["num_speculative_tokens"]
        passes = 0 if sc["speculative_config"]["method"] == "ngram" else k
        base = res["x0"].get("base")
        for r in rows:
            m, unit = r["metric"], r["unit"].lower()
            if r["notes"].startswith("PATHOLOGICAL"):
                print(f"row {r['row']} left out of the fit: the source marks it pathological ({r['notes'][13:90]}...)")
                continue
            # a setup is what the simulator is given: rows differing only in their notes are one case
            common = {"source": r["source"], "framework": sc["engine"]["framework"],
                      "setup": json.dumps(sc, sort_keys=True), "passes": passes,
                      "probe_ms": PROBE_MS, "row": r["row"], "metric": m}
            if m in sdtable.SPEEDUP_METRICS:
                if base is None:
                    continue
                v = [res[x]["sd"]["throughput_tok_s"] / base["throughput_tok_s"] for x in ("x0", "x1")]
                meas = measured_speedup(m, None, sdtable.number(r["sd_value"]))
                o = {**common, "metric": "speedup", "v0": v[0], "v1": v[1], "measured": meas}
                obs.append(o)
                sp.append({**o, "kind": "stated"})
                continue
            sd = sdtable.number(r["sd_value"])
            v = [sim_value(res[x]["sd"], m, unit) for x in ("x0", "x1")]
            if sd and all(v):
                obs.append({**common, "v0": v[0], "v1": v[1], "measured": sd})
                ms = measured_speedup(m, sdtable.number(r["baseline_value"]), sd)
                if ms is not None and base is not None:
                    sp.append({**common, "v0": v[0], "v1": v[1], "measured": ms, "kind": "value",
                               "sim_base": sim_value(base, m, unit)})
    return obs, sp


def sim_speedup(o: dict, p) -> float:
    v = sdfit.predict(o, sdfit.round_ms(p, o))
    if o["kind"] == "stated":
        return v
    return v / o["sim_base"] if o["metric"] in sdfit.RATE_METRICS else o["sim_base"] / v


def errors(items, p) -> np.ndarray:
    return np.array([abs(sim_speedup(o, p) / o["measured"] - 1) for o in items])


def value_errors(items, p) -> np.ndarray:
    return np.array([abs(sdfit.predict(o, sdfit.round_ms(p, o)) / o["measured"] - 1) for o in items
                     if o["metric"] != "speedup"])


def sign(items, p) -> list[bool]:
    return [(o["measured"] > 1) == (sim_speedup(o, p) > 1) for o in items if abs(o["measured"] - 1) > 0.03]


def fmt(a) -> str:
    return f"{np.median(a):6.1%}" if len(a) else "     -"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", default=str(shared_traces_dir() / "e2e" / "published" / "sd_training.csv"))
    ap.add_argument("--assume", default=str(REPO_ROOT / "traces" / "e2e" / "sd_training_assumptions.yaml"))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rows, _ = sdtable.load(Path(args.file), Path(args.assume) if args.assume else None)
    groups = sdtable.setups(rows)
    keys = [k for k, (_, (sc, _, _)) in groups.items() if sc is not None]
    jobs = [{"id": groups[k][0][0]["row"], "scenario": groups[k][1][0], "need_base": sdtable.needs_base(groups[k][0])}
            for k in keys]
    sims = dict(zip(keys, run_many(arms, jobs, args.workers, desc="setups", progress=False)))
    obs, sp = observations(groups, sims)
    co, cs = case_observations(args.workers)
    obs, sp = obs + co, sp + cs
    print(f"{len(rows)} rows, {len(keys)} expressible setups, {len(obs)} SD observations, "
          f"{len(sp)} with a measured speedup\n")
    print(f"{'framework':<9} {'source':<44} {'obs':>4} {'setups':>6}  {'fold round ms':>13} {'pass ms':>7}  "
          f"{'LOSO speedup':>12} {'value':>6}  {'in-sample':>9}  {'no cost':>7}  sign")
    tot = {"loso": [], "ins": [], "zero": [], "val": [], "sign": [], "rows": []}
    p_all = sdfit.fit_frameworks(obs)
    folds = sdfit.leave_one_source_out(obs)
    for fw in sorted({o["framework"] for o in obs}):
        fo = [o for o in obs if o["framework"] == fw]
        for s in sorted({o["source"] for o in fo}):
            p = folds[s]
            so, ss = [o for o in fo if o["source"] == s], [o for o in sp if o["source"] == s]
            ins = errors(ss, p_all[fw]) if fw in p_all else np.array([])
            zero = errors(ss, (0.0, 0.0))
            loso = errors(ss, p) if p else np.array([])
            val = value_errors(so, p) if p else np.array([])
            sg = sign(ss, p) if p else []
            tot["loso"] += list(loso); tot["ins"] += list(ins); tot["zero"] += list(zero); tot["val"] += list(val)
            tot["sign"] += sg
            if p:
                tot["rows"] += [(abs(sim_speedup(o, p) / o["measured"] - 1), o["source"][7:40], o["row"], o["metric"],
                                 o["measured"], sim_speedup(o, p)) for o in ss]
            fold = f"{p[0]:>13.2f} {p[1]:>7.3f}" if p else f"{'n/a':>13} {'':>7}"
            print(f"{fw:<9} {s[7:51]:<44} {len(so):>4} {len({o['setup'] for o in so}):>6}  {fold}  {fmt(loso):>12} "
                  f"{fmt(val):>6}  {fmt(ins):>9}  {fmt(zero):>7}  {sum(sg)}/{len(sg)}")
        if fw in p_all:
            print(f"  -> {fw}: spec_round_cpu_ms {p_all[fw][0]:.2f} from {len({o['source'] for o in fo})} sources, "
                  f"{len({o['setup'] for o in fo})} setups")
        else:
            print(f"  -> {fw}: not fitted (one setup)")
    if p_all:
        fitted = [o for o in obs if o["framework"] in p_all]
        print(f"  -> every framework: draft_pass_cpu_ms {next(iter(p_all.values()))[1]:.3f} from "
              f"{len({o['source'] for o in fitted})} sources, {len({o['setup'] for o in fitted})} setups")
    lo = np.array(tot["loso"])
    print(f"\nall held-out speedups: {len(lo)} rows, median {fmt(lo)}, p90 "
          f"{np.percentile(lo, 90) if len(lo) else float('nan'):.1%}; SD-value median {fmt(np.array(tot['val']))}; "
          f"sign right {sum(tot['sign'])}/{len(tot['sign'])}")
    print(f"in-sample speedup median {fmt(np.array(tot['ins']))}; with no round cost {fmt(np.array(tot['zero']))}")
    print("\nlargest held-out speedup errors (source, row, metric, measured, simulated):")
    for e, src, row, m, meas, sim in sorted(tot["rows"], key=lambda x: -x[0])[:6]:
        print(f"  {e:6.1%}  {src:<34} {str(row):<40} {m:<17} {meas:5.2f}  {sim:5.2f}")


if __name__ == "__main__":
    main()
