"""Fit each framework's disaggregated handoff (``disagg_handoff_ms`` in workloads/frameworks.yaml) on
AIConfigurator's measured disaggregated runs, and score it leaving one (model, GPU) group out.

The handoff is what a request pays between prefill and decode beyond its KV bytes: transfer setup,
the decode side noticing the KV and admitting the request, the first token's trip. It is read off
the runs where queueing cannot hide it: client concurrency <= MAX_CONCURRENCY. Each expressible row
is simulated once with no handoff; a framework's handoff is the median of (measured - simulated)
TTFT over its rows (at least 0), and each group's rows are predicted by a fit that never saw them.

    python benchmarks/fit_disagg_handoff.py [--silicon FILE] [--workers N]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from simulator.analysis import silicon                  # noqa: E402
from simulator.analysis.runner import run_many          # noqa: E402
from fit_kernel_scale import silicon_args               # noqa: E402

MAX_CONCURRENCY = 16


def main() -> int:
    got = silicon_args(None, sampled=False)
    if got is None:
        return 1
    args, df = got
    rows = [r for r in df.to_dict("records") if str(r["mode"]) == "disagg"]
    kept, left = [], {}
    for r in rows:
        why = silicon.classify(r) or ("" if silicon.concurrency(r) <= MAX_CONCURRENCY
                                      else f"concurrency above {MAX_CONCURRENCY} (queueing)")
        if why:
            left[why] = left.get(why, 0) + 1
        else:
            kept.append(r)
    print(f"{len(rows)} disaggregated rows; {len(kept)} used; left out:")
    for why, n in sorted(left.items(), key=lambda x: -x[1]):
        print(f"  {n:>4}  {why}")
    jobs = []
    for r in kept:
        sc = silicon.scenario(r)
        sc["disaggregation"]["handoff_ms"] = 0.0
        jobs.append({"id": str(r["id"]), "scenario": sc, "warm_up": silicon.warmed_up(r)})
    res = run_many(silicon.simulate_row, jobs, args.workers, "local", None, None, "disagg rows", False)
    t = pd.DataFrame([{"backend": r["backend"], "group": f"{r['model_path']} {r['system']}",
                       "meas": r["silicon_ttft_ms"], "sim": x.get("sim_ttft_ms")} for r, x in zip(kept, res)])
    t = t.dropna()
    print(f"\n{'framework':<9} {'rows':>5} {'groups':>6} {'handoff ms':>10}   held-out TTFT median abs error: "
          f"fit / no handoff")
    for fw, g in t.groupby("backend"):
        groups = sorted(g.group.unique())
        fit = max(0.0, float(np.median(g.meas - g.sim)))
        if len(groups) < 2:
            print(f"{fw:<9} {len(g):>5} {len(groups):>6} {'-':>10}   one group only: not fitted (no constant on one case)")
            continue
        errs, base = [], []
        for held in groups:
            train, test = g[g.group != held], g[g.group == held]
            h = max(0.0, float(np.median(train.meas - train.sim)))
            errs.extend(np.abs((test.sim + h) / test.meas - 1))
            base.extend(np.abs(test.sim / test.meas - 1))
        print(f"{fw:<9} {len(g):>5} {len(groups):>6} {fit:>10.0f}   {np.median(errs) * 100:5.1f}% / "
              f"{np.median(base) * 100:5.1f}%   groups: {', '.join(groups)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
