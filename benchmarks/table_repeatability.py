"""How well one collection of a kernel table predicts another of the same kernel: how far the
tables themselves repeat.

For each table the simulator fits (``moesd calibrate --framework F``: the newest collection that
times the precision), the same framework's other collections on the same GPU are read, and the rows
they share with it (same shape, token count, and for MoE layout, routing and kernel) compared. A
perfect model of another collection, rescaled by the two collections' median ratio (a release that is
uniformly faster is not noise), predicts the fitted table with error ``|other x s / fitted - 1|``.
Collections whose median ratio is outside ``SAME_KERNEL`` timed another kernel and are not compared.
The collection whose prediction errs least is shown (usually the nearest release).

This is not a floor under leave-one-shape-out error (a fit shares its own table's day-to-day
effects), but it is one under how well any table, and so the simulator, predicts the kernel a
deployment runs: that kernel is another collection. Reads ../shared in place.

A second table compares frameworks where their collectors time the same kernel: every bf16 GEMM
table calls torch's linear (cuBLAS; kernel_source ``sglang_torch_linear``, ``torch_flow``,
``torch.nn.functional.linear``), so on one GPU the three fitted tables should agree cell by cell up to
their collectors' scatter. Shown per token range, since a collector's launch overhead differs most at
few tokens; the pair whose other two agree and the third does not names the scattered table.

    python benchmarks/table_repeatability.py [--gpus h100_sxm,h200_sxm,b200_sxm] [--frameworks vllm,sglang,trtllm]
"""

from __future__ import annotations

import argparse

import numpy as np

from simulator.common.paths import shared_traces_dir
from simulator.config import precision
from simulator.cost import calibration, traces
from simulator.cost.tablerows import host_bound, select_rows

KEYS = {"gemm": ["m", "n", "k"],
        "moe": ["num_tokens", "hidden_size", "inter_size", "num_experts", "topk", "moe_tp_size", "moe_ep_size",
                "distribution", "kernel_source"]}
MIN_SHARED = 500        # fewer shared rows than this say little about a table's tails
SAME_KERNEL = (0.8, 1.25)   # median ratio of two collections timing one kernel; outside it, another kernel
TOKEN_RANGES = ((1, 128), (129, 1024), (1025, 8192))     # few tokens (launch-bound) to compute-bound


def compare(fitted, other, op: str) -> tuple | None:
    """(shared rows, median ratio other/fitted, error of the rescaled other per shared row) or None."""
    keys = [k for k in KEYS[op] if k in fitted and k in other]
    a = fitted.groupby(keys, dropna=False).latency_ms.median()
    b = other.groupby(keys, dropna=False).latency_ms.median()
    a, b = a.align(b, join="inner")
    if len(a) < MIN_SHARED:
        return None
    log_ratio = np.log(b.values / a.values)
    shift = float(np.median(log_ratio))
    return len(a), float(np.exp(shift)), np.abs(np.exp(log_ratio - shift) - 1.0)


def by_tokens(fitted, other, ranges=TOKEN_RANGES) -> list:
    """``compare`` of two GEMM tables within each token range (m in [lo, hi]); None where they share
    fewer than MIN_SHARED cells there."""
    return [compare(fitted[fitted.m.between(lo, hi)], other[other.m.between(lo, hi)], "gemm") for lo, hi in ranges]


def across_frameworks(root, gpu: str, frameworks) -> None:
    """bf16 GEMM tables of different frameworks on one GPU (the same torch linear): median / p90 error
    of one rescaled to the other, per token range."""
    tables = {fw: calibration.precision_rows(root, gpu, "gemm", fw, precision.PRECISIONS["bf16"]) for fw in frameworks}
    tables = {fw: t for fw, t in tables.items() if t is not None}
    names = sorted(tables)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            cells = "  ".join("      -     " if got is None else f"{np.median(got[2]):>5.1%} / {np.percentile(got[2], 90):>5.1%}"
                              for got in by_tokens(tables[a], tables[b]))
            print(f"{gpu:<9} {a + ' / ' + b:<16} {cells}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", default="h100_sxm,h200_sxm,b200_sxm")
    ap.add_argument("--frameworks", default="vllm,sglang,trtllm")
    ap.add_argument("--precisions", default="bf16,fp8,fp8_block")
    args = ap.parse_args()
    root = shared_traces_dir()
    print(f"{'gpu':<9} {'framework':<8} {'precision':<10} {'op':<5} {'fitted':<11} {'other':<11} {'shared':>7} "
          f"{'ratio':>6} {'median':>7} {'p90':>6}")
    for gpu in args.gpus.split(","):
        for fw in args.frameworks.split(","):
            versions = traces.load_versions(root, gpu, "gemm", fw), traces.load_versions(root, gpu, "moe", fw)
            for name in args.precisions.split(","):
                prec = precision.PRECISIONS[name]
                for op, tables in zip(("gemm", "moe"), versions):
                    fitted = calibration.precision_rows(root, gpu, op, fw, prec)
                    if fitted is None:
                        continue
                    fitted_version = str(fitted.framework_version.iloc[0])
                    best = None
                    for t in tables:
                        version = str(t.framework_version.iloc[0])
                        if version == fitted_version:
                            continue
                        rows = select_rows(op, t, prec)
                        if len(rows) < MIN_SHARED or host_bound(op, rows):
                            continue
                        got = compare(fitted, rows, op)
                        if got and not SAME_KERNEL[0] <= got[1] <= SAME_KERNEL[1]:
                            continue
                        if got and (best is None or np.percentile(got[2], 90) < np.percentile(best[1][2], 90)):
                            best = (version, got)
                    if best is None:
                        print(f"{gpu:<9} {fw:<8} {name:<10} {op:<5} {fitted_version:<11} no other collection of "
                              f"the same kernel shares {MIN_SHARED} rows")
                        continue
                    version, (n, ratio, err) = best
                    print(f"{gpu:<9} {fw:<8} {name:<10} {op:<5} {fitted_version:<11} {version:<11} {n:>7} "
                          f"{ratio:>6.3f} {np.median(err):>7.1%} {np.percentile(err, 90):>6.1%}", flush=True)
    print("\nbf16 GEMMs, one framework's fitted table against another's on the same GPU (torch linear in all "
          "three), rescaled by their median ratio: median / p90 error at "
          + ", ".join(f"{lo}-{hi}" for lo, hi in TOKEN_RANGES) + " tokens")
    for gpu in args.gpus.split(","):
        across_frameworks(root, gpu, args.frameworks.split(","))


if __name__ == "__main__":
    main()
