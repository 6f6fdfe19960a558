"""Simulator speed: the quickstart scenario with 10,000 requests at high load, one core.

    python benchmarks/sim_speed.py [--num-prompts 10000] [--rate 40]
"""

from __future__ import annotations

import argparse
import time

from simulator.scenario import load_scenario
from simulator.simulate_cmd import build, simulate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-prompts", type=int, default=10000)
    ap.add_argument("--rate", default="40")
    args = ap.parse_args()
    setup = build(load_scenario("quickstart", [f"workload.num_prompts={args.num_prompts}",
                                               f"workload.request_rate={args.rate}"]))
    t0 = time.perf_counter()
    summary, req, steps = simulate(setup)
    wall = time.perf_counter() - t0
    print(f"requests {summary['completed']} + failed {summary['failed']}, steps {len(steps)}, "
          f"simulated {summary['duration']:.1f} s, mean batch {summary['mean_batch_size']:.1f}")
    print(f"wall {wall:.2f} s -> {args.num_prompts / wall:,.0f} simulated requests per wall second "
          f"({len(steps) / wall:,.0f} steps/s)")


if __name__ == "__main__":
    main()
