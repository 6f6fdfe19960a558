"""GEMM and MoE kernel accuracy per (GPU, framework, weight precision): leave-one-shape-out.

For each table the simulator prices from (``moesd calibrate --framework F``), its rows (at most
``tablerows.MAX_PRECISION_ROWS``) are
drawn as the calibration draws them; the model shapes are split into 8 folds, each fold's shapes are
left out of the fit and of the residual table (built per framework and precision, as the
simulator prices a run), then predicted.

    python benchmarks/precision_accuracy.py [--gpus h100_sxm,h200_sxm,b200_sxm] [--frameworks vllm,sglang,trtllm]
        [--ops gemm,moe,mla_generation] [--precisions mxfp4,mxfp4_mxfp8,nvfp4@min_latency]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from simulator.common.paths import shared_traces_dir
from simulator.config import precision
from simulator.config.gpu import load
from simulator.cost import calibration

TARGETS = {"moe": (0.07, 0.22), "gemm": (0.05, 0.16), "mla_generation": (0.08, None)}     # issue 16, bf16 and fp8/fp8_block on H100/H200/B200


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", default="h100_sxm,h200_sxm,b200_sxm")
    ap.add_argument("--frameworks", default="vllm,sglang,trtllm")
    ap.add_argument("--folds", type=int, default=8)
    ap.add_argument("--ops", default=None, help="comma-separated subset of gemm,moe,mla_generation")
    ap.add_argument("--precisions", default=None, help="comma-separated subset of the weight precisions")
    args = ap.parse_args()
    ops = args.ops.split(",") if args.ops else None
    wanted = args.precisions.split(",") if args.precisions else None
    known = {*precision.PRECISIONS, *(v.name for v, _ in precision.SMALL_BATCH_MOE.values())}
    if wanted and set(wanted) - known:
        ap.error(f"--precisions: unknown {', '.join(sorted(set(wanted) - known))}; allowed: {', '.join(sorted(known))}")
    print(f"{'gpu':<9} {'framework':<8} {'precision':<10} {'op':<5} {'rows':>5} {'in-sample med':>13} "
          f"{'LOSO med':>9} {'p90':>6}  target")
    for g in args.gpus.split(","):
        hw = load(g)
        for fw in args.frameworks.split(","):
            # each weight precision, then the framework's batch-size MoE kernels (precision.SMALL_BATCH_MOE)
            for prec in [*precision.PRECISIONS.values(), *precision.moe_kernel_variants(fw)]:
                if wanted and prec.name not in wanted:
                    continue
                for op in calibration.PRECISION_OPS + (("mla_generation",) if prec.name == "bf16" else ()):
                    if (ops and op not in ops) or (prec.kernel_source and op != "moe"):
                        continue
                    t0 = time.time()
                    skipped, aside = [], []
                    df = calibration.precision_rows(shared_traces_dir(), g, op, fw, prec, skipped=skipped, set_aside=aside)
                    if df is None:
                        if skipped:     # every table of it host-bound (tablerows.host_bound): said, not scored
                            print(f"{g:<9} {fw:<8} {prec.name:<10} {op:<5} host-bound tables only "
                                  f"({', '.join(dict.fromkeys(skipped))}): priced on another's (moesd calibrate says whose)")
                        elif op == "mla_generation":    # whole-module tables only (tablerows.MLA_STANDINS)
                            print(f"{g:<9} {fw:<8} {prec.name:<10} {op:<5} no kernel-level table: priced on another's "
                                  f"(moesd calibrate says whose)")
                        continue
                    df, keep = with_inversions(df, aside)
                    params = calibration.fit(op, hw, df[keep], prec)
                    ins = calibration.errors(calibration.predict_rows(op, hw, params, df, prec=prec), df)
                    if calibration.shape_groups(op, df).nunique() < 2:
                        print(f"{g:<9} {fw:<8} {prec.name:<10} {op:<5} {len(df):>5}  one model shape: nothing to leave out")
                        continue
                    cv = calibration.cross_validate(op, hw, df, max_folds=args.folds, prec=prec, fit_mask=keep)
                    mark = ""
                    if prec.name in ("bf16", "fp8", "fp8_block"):
                        med, p90 = TARGETS[op]
                        p90 = 1.0 if p90 is None else p90
                        ok = np.median(cv) <= med and np.percentile(cv, 90) <= p90
                        mark = f"{'met' if ok else 'MISSED'} ({med:.0%}" + (f" / {p90:.0%})" if p90 < 1 else ")")
                    aside = ""
                    if not keep.all():
                        aside = (f"  ({(~keep).sum()} rows timed over 2x their half-split layout, not fitted; "
                                 f"the others {np.median(cv[keep]):.1%} / {np.percentile(cv[keep], 90):.1%})")
                    print(f"{g:<9} {fw:<8} {prec.name:<10} {op:<5} {len(df):>5} {np.median(ins):>13.1%} "
                          f"{np.median(cv):>9.1%} {np.percentile(cv, 90):>6.1%}  {mark}  [{time.time() - t0:.0f}s]"
                          + aside, flush=True)


def with_inversions(df, aside):
    """The fitted rows plus the MoE rows ``tablerows.split_inversions`` left out of them (``aside``
    from ``precision_rows``), and a mask of the fitted ones: those rows are scored, not fitted.
    Tables with another collector's rows (``borrowed``) as fitted."""
    keep = np.ones(len(df), bool)
    if not aside or aside[0].empty or df.framework.nunique() > 1:
        return df, keep
    return pd.concat([df, aside[0]], ignore_index=True), np.r_[keep, np.zeros(len(aside[0]), bool)]


if __name__ == "__main__":
    main()
