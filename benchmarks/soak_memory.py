"""Peak memory of long simulated runs: the quickstart at 4 req/s for 1, 6 and 24 simulated hours.

Each run is ``moesd simulate`` end to end (summary, requests.csv, steps.csv, report.html) in a
fresh process; the script prints its peak resident memory, the step count and the wall time. The
target: 24 simulated hours under 1 GB, and peak memory nearly flat from 6 to 24 hours (the step log
is spilled to disk, inter-token gaps are kept as a histogram).

    python benchmarks/soak_memory.py [--hours 1,6,24] [--rate 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(argv: list[str]) -> None:
    from simulator.commands.cli import main
    rc = main(argv)
    print(json.dumps({"rc": rc, "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", default="1,6,24")
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--scenario", default="quickstart")
    ap.add_argument("--child", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child)
        return 0
    print(f"{'hours':>5} {'requests':>9} {'steps':>9} {'peak RSS':>9} {'wall':>7}")
    for h in [float(x) for x in args.hours.split(",")]:
        n = int(h * 3600 * args.rate)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--child", "simulate", args.scenario, "--quiet",
                                   "--out", str(out), "--set", f"workload.num_prompts={n}",
                                   "--set", f"workload.request_rate={args.rate}"],
                                  cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            summary = json.loads((out / "summary.json").read_text())
        print(f"{h:>5g} {n:>9,} {summary['num_steps']:>9,} {res['max_rss_kb'] / 1024:>7.0f} MB {wall:>6.0f} s",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
