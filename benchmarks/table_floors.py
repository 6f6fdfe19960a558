"""The floor of every collected GEMM and MLA decode table: what ``tablerows.host_bound`` reads.

For each (GPU, framework, version, precision) table: the 10th percentile of latency over its
smallest cases (GEMM: <= 16 tokens; MLA decode: <= 4 sequences and <= 128 tokens of context), in
microseconds, and whether that floor is over ``HOST_BOUND_FLOOR_MS`` (a table that timed host-side
work around each call, which the calibration passes over). Reads ../shared in place.

    python benchmarks/table_floors.py [--ops gemm,mla_generation]
"""

from __future__ import annotations

import argparse

from simulator.common.paths import shared_traces_dir
from simulator.cost import traces
from simulator.cost.tablerows import HOST_BOUND_FLOOR_MS, host_bound, smallest_cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", default="gemm,mla_generation")
    args = ap.parse_args()
    root = shared_traces_dir()
    gpus = sorted(p.name for p in (root / "kernels" / "aiconfigurator").iterdir() if p.is_dir())
    print(f"floor: 10th percentile of latency over a table's smallest cases; host-bound above "
          f"{HOST_BOUND_FLOOR_MS * 1e3:.0f} us")
    print(f"{'op':<15} {'gpu':<9} {'framework':<8} {'version':<12} {'precision':<17} {'floor us':>8}  host-bound")
    for op in args.ops.split(","):
        seen, kept, passed = set(), [], []
        for gpu in gpus:
            for fw in ("vllm", "sglang", "trtllm"):
                for t in traces.load_versions(root, gpu, op, fw):
                    version = str(t.framework_version.iloc[0])
                    for dtype, rows in t.groupby("dtype"):
                        small = smallest_cases(op, rows)
                        if len(small) < 10 or (gpu, fw, version, dtype) in seen:   # a reused table once
                            continue
                        seen.add((gpu, fw, version, dtype))
                        floor_us = small.latency_ms.quantile(0.1) * 1e3
                        bound = host_bound(op, rows)
                        (passed if bound else kept).append((floor_us, f"{gpu} {fw} {version} {dtype}"))
                        print(f"{op:<15} {gpu:<9} {fw:<8} {version:<12} {dtype:<17} {floor_us:>8.1f}  "
                              f"{'YES' if bound else ''}")
        print(f"{op}: {len(kept)} tables time kernels (highest floor {max(kept)[0]:.1f} us, {max(kept)[1]}); "
              f"{len(passed)} host-bound" + (f" (lowest floor {min(passed)[0]:.1f} us, {min(passed)[1]})" if passed else ""))


if __name__ == "__main__":
    main()
