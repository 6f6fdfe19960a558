"""Fit each framework's CPU cost per kernel of a step with prompt tokens (``prefill_kernel_launch_us``
in workloads/frameworks.yaml) on AIConfigurator's measured aggregated runs, and score it leaving one
architecture out.

SGLang and TensorRT-LLM replay CUDA graphs for decode batches only; a step with prompt tokens is
launched kernel by kernel, and lasts at least those launches (simulator/cost/launches.py counts
them per model). It shows where one prefill step is most of a row's TTFT: client concurrency
<= MAX_CONCURRENCY (``--max-concurrency``). Every such expressible row is simulated at each candidate
value; a framework's value is the candidate with the least median |log(simulated / measured TTFT)|
over its rows, and each architecture's rows are predicted by the value fitted on the other
architectures (DeepSeek-V3 and R1, one architecture under two names, are held out together). A value goes into
workloads/frameworks.yaml by hand, with this output as its source (benchmarks/results/
fit_prefill_launch.txt), only where it predicts held-out architectures better and the rest of the
measured runs agree: so far none (README, "Framework step model": SGLang's value is set by DeepSeek's
rows alone; TensorRT-LLM's gains on held-out architectures, but its disaggregated rows, refitted with
it by benchmarks/fit_disagg_handoff.py, get worse).

    python benchmarks/fit_prefill_launch.py [--silicon FILE] [--workers N] [--max-concurrency N]
"""

from __future__ import annotations

import argparse
import copy
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
FRAMEWORKS = ("sglang", "trtllm")
CANDIDATES_US = (0.0, 30.0, 45.0, 60.0, 75.0, 90.0, 100.0, 125.0)


def _loss(g: pd.DataFrame) -> float:
    return float(np.median(np.abs(np.log(g.sim / g.meas))))


def best(g: pd.DataFrame) -> float:
    """The candidate whose rows' median |log error| is least (the smaller value on a tie)."""
    return min(CANDIDATES_US, key=lambda x: (_loss(g[g.us == x]), x))


def _shape(name: str) -> str:
    return str(silicon._arch(name).model_dump(exclude={"name", "source", "notes", "quantization"}))


def architecture(model_path: str) -> str:
    """The catalog name standing for every model of the same architecture (a checkpoint's name and
    precision aside): DeepSeek-V3 and R1 are one."""
    names = {}
    for m in silicon.MODELS.values():
        names.setdefault(_shape(m), m)
    return names[_shape(silicon.MODELS[model_path])]


def main() -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--max-concurrency", type=int, default=MAX_CONCURRENCY)
    mine, rest = own.parse_known_args()
    sys.argv = sys.argv[:1] + rest
    got = silicon_args(None, sampled=False)
    if got is None:
        return 1
    args, df = got
    cmax = mine.max_concurrency
    rows = [r for r in df.to_dict("records") if str(r["mode"]) == "agg" and r["backend"] in FRAMEWORKS
            and silicon.concurrency(r) <= cmax and not silicon.classify(r)]
    print(f"{len(rows)} expressible aggregated {'/'.join(FRAMEWORKS)} rows at concurrency <= {cmax}")
    jobs, keys = [], []
    for r in rows:
        base = silicon.scenario(r)
        for x in CANDIDATES_US:
            sc = copy.deepcopy(base)
            sc["engine"]["prefill_kernel_launch_us"] = x
            jobs.append({"id": str(r["id"]), "scenario": sc, "warm_up": silicon.warmed_up(r)})
            keys.append((r, x))
    res = run_many(silicon.simulate_row, jobs, args.workers, "local", None, None, "rows x candidates", False)
    arch = {m: architecture(m) for m in {r["model_path"] for r in rows}}
    t = pd.DataFrame([{"backend": r["backend"], "model": arch[r["model_path"]], "id": r["id"], "us": x,
                       "meas": r["silicon_ttft_ms"], "sim": o.get("sim_ttft_ms")} for (r, x), o in zip(keys, res)])
    t = t.dropna()
    print(f"\n{'framework':<9} {'architecture':<34} {'rows':>5} {'fold us':>7}  held-out TTFT median abs error: fit / none")
    for fw, g in t.groupby("backend"):
        models = sorted(g.model.unique())
        if len(models) < 2:
            print(f"{fw:<9} one architecture only: not fitted (no constant on one case)")
            continue
        errs, base = [], []
        for held in models:
            train, test = g[g.model != held], g[g.model == held]
            x = best(train)
            e = np.abs(test[test.us == x].sim / test[test.us == x].meas - 1)
            b = np.abs(test[test.us == 0.0].sim / test[test.us == 0.0].meas - 1)
            errs.extend(e)
            base.extend(b)
            print(f"{fw:<9} {held[:34]:<34} {len(e):>5} {x:>7.0f}  {np.median(e):6.1%} / {np.median(b):6.1%}")
        print(f"  -> {fw}: prefill_kernel_launch_us {best(g):.0f} from {len(models)} architectures, "
              f"{g.id.nunique()} rows; held out {np.median(errs):.1%} (none {np.median(base):.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
