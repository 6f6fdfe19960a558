"""Planner speed: the bundled 200-configuration chat plan on this machine's cores (target <= 2 min
on 2 cores), from a cold cache.

    python benchmarks/plan_speed.py [--plan workloads/plans/chat_200.yaml] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from simulator.analysis.plan import configurations
from simulator.config.plan import load_plan
from simulator.analysis.plan import plan


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", default="workloads/plans/chat_200.yaml")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args()
    spec = load_plan(args.plan)
    configs, pruned = configurations(spec)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        res = plan(spec, workers=args.workers, cache_dir=Path(cache), progress=False)
    wall = time.perf_counter() - t0
    sims = sum(len(r["history"]) for r in res["results"])
    print(f"{len(configs)} configurations (+{len(pruned)} pruned), {sims} simulations, {args.workers} workers: "
          f"{wall:.0f} s wall ({wall / len(configs):.2f} s per configuration)")
    print(f"answer: {res['answer']['best']['config']}; SD: {res['answer']['sd_recommendation']['summary']}")


if __name__ == "__main__":
    main()
