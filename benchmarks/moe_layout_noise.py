"""How much of a MoE table is one shape at one layout: what neither the shape nor the layout explains.

At each token count and routing, a table's log(measured / roofline) over (shape, layout) is split by
median polish into the shape's level (which a held-out shape does not lend), the layout's effect that
every shape shares, and what is left: the shape x layout interaction. The fit is in sample and knows
the shape's own level, so its interaction is what an unmeasured shape's prediction must get from
somewhere else -- its neighbours (``residuals``), or, for a kernel that picks tiles by local width and
experts, the shapes with the same ones (``TILE_KEYED_MOE``).

Then whether the interaction belongs to the kernel at that (shape, layout): the same cells in another
collection of the same framework, on the same GPU (another version) and on the sister GPU of the same
architecture (same version). An interaction a kernel's tactic choice makes recurs where the same
software picks tactics on the same architecture; a collector's spell does not recur anywhere.

    python benchmarks/moe_layout_noise.py [--gpus h100_sxm,h200_sxm,b200_sxm] [--frameworks vllm,sglang,trtllm]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from simulator.common.paths import shared_traces_dir
from simulator.config import precision
from simulator.config.gpu import load
from simulator.cost import calibration, traces

SHAPE = ["hidden_size", "inter_size", "num_experts", "topk"]
LAYOUT = ["moe_tp_size", "moe_ep_size"]
BIG = np.log(1.25)          # an interaction this large either way
SISTER = {"h100_sxm": "h200_sxm", "h200_sxm": "h100_sxm", "b200_sxm": "gb200"}
MIN_SHARED = 500


def polished(cells: pd.DataFrame, iterations: int = 10) -> pd.DataFrame:
    """``cells`` [shape, layout] less its row and column medians, alternately, until they settle:
    the interaction left by an additive shape + layout model (Tukey's median polish)."""
    m = cells.values.copy()
    for _ in range(iterations):
        m -= np.nanmedian(m, axis=1, keepdims=True)
        m -= np.nanmedian(m, axis=0, keepdims=True)
    return pd.DataFrame(m, index=cells.index, columns=cells.columns)


def interactions(df: pd.DataFrame, log_ratio: np.ndarray) -> pd.Series:
    """Log interaction per (shape, layout, token count, routing) cell of ``df`` (one table's rows)."""
    df = df.assign(lr=log_ratio)
    out = []
    for (tokens, dist), rows in df.groupby(["num_tokens", "distribution"]):
        cells = rows.groupby(SHAPE + LAYOUT).lr.median().unstack(LAYOUT)
        if len(cells) < 3:      # two shapes split any departure evenly between them
            continue
        e = polished(cells).stack(LAYOUT, future_stack=True).dropna()
        out.append(pd.concat({(tokens, dist): e}, names=["num_tokens", "distribution"]))
    return pd.concat(out) if out else pd.Series(dtype=float)


def table_interactions(root, gpu: str, fw: str, prec, version: str | None = None) -> tuple | None:
    """(version, interactions) of the table ``moesd calibrate`` fits (or ``version``'s), each against
    a roofline fitted to that table alone; None where there is none."""
    df = calibration.precision_rows(root, gpu, "moe", fw, prec, version=version)
    if df is None:
        return None
    hw = load(gpu)
    roof_s = calibration.predict_op("moe", hw, calibration.fit_op("moe", hw, df, prec), df, prec)
    rows = calibration.residual_rows("moe", df, roof_s)
    return str(df.framework_version.iloc[0]), interactions(rows, rows.log_residual.values)


def recurrence(a: pd.Series, b: pd.Series) -> str:
    """How ``a``'s interactions recur in ``b``'s at the same cells."""
    x, y = a.align(b, join="inner")
    if len(x) < MIN_SHARED:
        return "-"
    big = np.abs(x.values) > BIG
    again = big & (np.abs(y.values) > BIG) & (np.sign(x.values) == np.sign(y.values))
    return f"r {np.corrcoef(x, y)[0, 1]:.2f}, {again.sum()} of {big.sum()}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", default="h100_sxm,h200_sxm,b200_sxm")
    ap.add_argument("--frameworks", default="vllm,sglang,trtllm")
    ap.add_argument("--precisions", default="bf16,fp8,fp8_block")
    args = ap.parse_args()
    root = shared_traces_dir()
    print(f"{'gpu':<9} {'framework':<8} {'precision':<10} {'fitted':<11} {'cells':>6} {'med':>6} {'p90':>6}  "
          f"interactions > 1.25x recurring (correlation, how many): other version on this GPU / same version on {'/'.join(sorted(set(SISTER.values())))}")
    for gpu in args.gpus.split(","):
        for fw in args.frameworks.split(","):
            versions = [str(t.framework_version.iloc[0]) for t in traces.load_versions(root, gpu, "moe", fw)]
            for name in args.precisions.split(","):
                prec = precision.PRECISIONS[name]
                fitted = table_interactions(root, gpu, fw, prec)
                if fitted is None or len(fitted[1]) == 0:
                    continue
                version, e = fitted
                err = np.abs(np.expm1(e.values))
                line = (f"{gpu:<9} {fw:<8} {name:<10} {version:<11} {len(e):>6} {np.median(err):>6.1%} "
                        f"{np.percentile(err, 90):>6.1%}  ")
                older = next((v for v in versions[versions.index(version) + 1:] if v != version), None) \
                    if version in versions else None
                other = table_interactions(root, gpu, fw, prec, older) if older else None
                line += f"{older}: {recurrence(e, other[1])}" if other else "no older version"
                sister = SISTER.get(gpu)
                same = table_interactions(root, sister, fw, prec, version) if sister else None
                line += f" / {sister} {version}: {recurrence(e, same[1])}" if same else f" / no {sister} {version}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
