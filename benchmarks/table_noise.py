"""How much of a GEMM table's scatter no model of shapes can predict: its cells' own noise.

At 16 tokens or fewer a GEMM reads its weights and little else, so a shape's latency there is flat in
the token count. Each such cell is compared with what knows more than leave-one-shape-out does: its
own shape's median over those token counts (the shape's level, which a held-out shape does not lend),
times the departure every shape shares at that token count (a kernel switch, or a slow spell of the
collector). What is left is the cell's own scatter: a floor under the held-out error of those cells.

Then whether that scatter is the kernel's or the collection's: a spike (a cell over 1.25x its shape's
level) is looked up in another collection of the same kernel (same framework and GPU, median ratio
within ``SAME_KERNEL``). Spikes that a kernel's heuristics cause recur there; a collector's do not
(recurring no more often than two independent draws would).

With ``--loso``, the leave-one-shape-out error of the same cells as benchmarks/precision_accuracy.py
scores them (8 shape folds; a minute or two per table), for comparison.

    python benchmarks/table_noise.py [--gpus h100_sxm,h200_sxm,b200_sxm] [--frameworks vllm,sglang,trtllm] [--loso]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from simulator.common.paths import shared_traces_dir
from simulator.config import precision
from simulator.config.gpu import load
from simulator.cost import calibration, traces
from simulator.cost.tablerows import host_bound, select_rows

FLAT_TOKENS = 16        # at or below: weight-bound, flat in the token count
SPIKE = 1.25            # a cell this far over its shape's level
SAME_KERNEL = (0.8, 1.25)   # as benchmarks/table_repeatability.py


def levels(df: pd.DataFrame) -> pd.Series:
    """Each flat-region cell (n, k, m) over its shape's median level there."""
    cells = df[df.m <= FLAT_TOKENS].groupby(["n", "k", "m"]).latency_ms.median()
    return cells / cells.groupby(level=["n", "k"]).transform("median")


def own_scatter(rel: pd.Series) -> np.ndarray:
    """|error| of predicting each cell by its shape's level times the departure shared at its m."""
    shared = rel.groupby(level="m").median()
    pred = shared.reindex(rel.index.get_level_values("m")).values
    return np.abs(pred / rel.values - 1.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", default="h100_sxm,h200_sxm,b200_sxm")
    ap.add_argument("--frameworks", default="vllm,sglang,trtllm")
    ap.add_argument("--precisions", default="bf16,fp8,fp8_block")
    ap.add_argument("--loso", action="store_true", help="also score the flat-region cells held out")
    args = ap.parse_args()
    root = shared_traces_dir()
    print(f"{'gpu':<9} {'framework':<8} {'precision':<10} {'fitted':<11} {'cells':>6} {'own med':>8} {'p90':>6}  "
          + (f"{'LOSO med':>8} {'p90':>6}  " if args.loso else "") + f"spikes (> {SPIKE}x the shape's level): fitted / other collection / in both (if independent)")
    for gpu in args.gpus.split(","):
        for fw in args.frameworks.split(","):
            tables = traces.load_versions(root, gpu, "gemm", fw)
            for name in args.precisions.split(","):
                prec = precision.PRECISIONS[name]
                fitted = calibration.precision_rows(root, gpu, "gemm", fw, prec)
                if fitted is None:
                    continue
                version = str(fitted.framework_version.iloc[0])
                rel = levels(fitted)
                err = own_scatter(rel)
                line = (f"{gpu:<9} {fw:<8} {name:<10} {version:<11} {len(err):>6} {np.median(err):>8.1%} "
                        f"{np.percentile(err, 90):>6.1%}  ")
                if args.loso:
                    cv = calibration.cross_validate("gemm", load(gpu), fitted, max_folds=8, prec=prec)
                    cv = cv[fitted.m.values <= FLAT_TOKENS]
                    line += f"{np.median(cv):>8.1%} {np.percentile(cv, 90):>6.1%}  "
                fitted_cells = fitted.groupby(["n", "k", "m"]).latency_ms.median()
                best = None
                for t in tables:
                    other_version = str(t.framework_version.iloc[0])
                    rows = select_rows("gemm", t, prec)
                    if other_version == version or len(rows) == 0 or host_bound("gemm", rows):
                        continue
                    a, b = rel.align(levels(rows), join="inner")
                    ratio = np.exp(np.median(np.log(rows.groupby(["n", "k", "m"]).latency_ms.median()
                                                    .reindex(a.index).values / fitted_cells.reindex(a.index).values)))
                    if len(a) < 500 or not SAME_KERNEL[0] <= ratio <= SAME_KERNEL[1]:
                        continue
                    if best is None or len(a) > len(best[1]):
                        best = (other_version, a, b)
                if best is None:
                    print(line + "no other collection of the same kernel shares 500 flat-region cells", flush=True)
                    continue
                other_version, a, b = best
                sa, sb = a.values > SPIKE, b.values > SPIKE
                print(line + f"{sa.sum()} / {sb.sum()} ({other_version}) / {(sa & sb).sum()} "
                      f"({sa.mean() * sb.mean() * len(a):.0f})", flush=True)


if __name__ == "__main__":
    main()
