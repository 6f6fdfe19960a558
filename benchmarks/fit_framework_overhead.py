"""Fit one framework CPU-overhead constant on ONE held-in validation case, by bisection.

The value goes into that framework's scenarios (traces/e2e/scenarios/) with a comment; every other
case of the framework is then held out. Kernel calibration stays per GPU and untouched.

    python benchmarks/fit_framework_overhead.py CASE KNOB        e.g.
    python benchmarks/fit_framework_overhead.py llama3_8b_h100_vllm_L512_B64 engine.per_seq_overhead_ms
    python benchmarks/fit_framework_overhead.py qwen3_eagle3_2xh100_sglang_B1_s3t1d4 engine.spec_round_overhead_ms
"""

from __future__ import annotations

import argparse

from simulator.analysis import validate as v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("knob")
    ap.add_argument("--hi", type=float, default=20.0)
    args = ap.parse_args()
    cases = v.load_cases()
    c = cases[cases.case == args.case].iloc[0].to_dict()
    target = c["measured_throughput_tok_s"]
    kind = "sim_output_tok_s" if c["throughput_kind"] == "output" else "sim_total_tok_s"
    base_over = v.case_overrides

    def thr(x: float) -> float:
        v.case_overrides = lambda cc: base_over(cc) + [f"{args.knob}={x}"]
        try:
            return v.run_case({"case": c})[kind]
        finally:
            v.case_overrides = base_over

    lo, hi = 0.0, args.hi
    if thr(lo) < target:
        print(f"already slower than measured at {args.knob}=0 ({thr(lo):.1f} < {target:.1f}): nothing to fit")
        return
    for _ in range(18):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if thr(mid) > target else (lo, mid)
    print(f"{args.case}: measured {target:.1f} tok/s -> {args.knob} = {(lo + hi) / 2:.3f}")


if __name__ == "__main__":
    main()
