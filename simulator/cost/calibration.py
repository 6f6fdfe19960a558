"""Fit each op's roofline parameters to kernel traces, and measure how well they predict.

``fit(op, hw, rows)`` is a bounded least-squares fit of log(predicted/measured) (robust loss, so a
few kernel-config outliers do not drag the curve). ``calibrate_gpu`` fits every op of one GPU and
builds the residual tables; ``cross_validate`` leaves one shape out at a time.
"""

from __future__ import annotations

import datetime as _dt
import functools

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from ..common.errors import ConfigError
from . import kernels, routing, rowcache, traces
from ..config import precision
from ..config.precision import Precision
from .kernels import BF16
from .residuals import LAYOUT, TILE_KEYED_MOE, ResidualTable
from .tablerows import BORROWED_ROWS, MIN_ROWS, MLA_STANDINS, precision_rows, select_rows, without_inversions


@functools.lru_cache(maxsize=None)
def _collector_features(T, E, K, ep, dist):
    """Mean (active experts, slots, 16-padded slots) on the timed rank over the collector's five
    routings (it times five power-law draws back to back and reports the mean), and the distinct
    experts those five touch together (what must stay in L2 for the loop to run from L2)."""
    draws = 1 if dist == "balanced" else 5
    feats, touched = [], 0
    for s in range(draws):
        c = routing.collector_counts(T, E, K, ep, dist, np.random.default_rng(s))
        touched = touched | (c > 0)
        c = c[c > 0]
        feats.append((len(c), c.sum(), precision.padded(c, 16.0).sum()))
    return tuple(np.mean(feats, axis=0)) + (float(np.count_nonzero(touched)),)


def moe_features(df: pd.DataFrame) -> np.ndarray:
    """(active experts, slots, 16-padded slots, experts touched by the timed loop) per row;
    parameter-free, so kept on the frame once computed (a fit evaluates the roofline hundreds of
    times on the same rows)."""
    cols = ("num_tokens", "num_experts", "topk", "moe_ep_size", "distribution")
    cached = rowcache.cached(df, "_moe_features", cols)
    if cached is not None:
        return cached
    keys = list(zip(df.num_tokens.to_numpy().tolist(), df.num_experts.to_numpy().tolist(),
                    df.topk.to_numpy().tolist(), df.moe_ep_size.to_numpy().tolist(),
                    df.distribution.astype(str).tolist()))
    uniq = {k: _collector_features(int(k[0]), int(k[1]), int(k[2]), int(k[3]), k[4]) for k in set(keys)}
    f = np.array([uniq[k] for k in keys])
    df.attrs["_moe_features"] = rowcache.RowCache(df, cols, f)
    return f


def gemm_weight_copies(df: pd.DataFrame) -> np.ndarray:
    """Weight matrices each timed GEMM loop cycled through: AIConfigurator's vLLM collector runs six
    layers of the shape back to back on one input (one for fp8_block/nvfp4), so six copies of the
    weights compete for L2 (collector/vllm/collect_gemm.py); the project's profiler times one."""
    if "framework" not in df:
        return np.ones(len(df))
    six = (df.framework.astype(str).str.lower() == "vllm").to_numpy() & df.dtype.isin(["bfloat16", "fp8"]).to_numpy()
    return np.where(six, 6.0, 1.0)


def moe_gated(df: pd.DataFrame) -> np.ndarray:
    """Per row: whether the timed experts were gated (three weight matrices), by shape and collection."""
    cols = tuple(c for c in ("hidden_size", "inter_size", "num_experts", "topk", "framework", "framework_version")
                 if c in df)
    cached = rowcache.cached(df, "_moe_gated", cols)
    if cached is not None:
        return cached
    n = len(df)
    fw = df.framework.astype(str).tolist() if "framework" in df else [""] * n
    ver = df.framework_version.astype(str).tolist() if "framework_version" in df else [""] * n
    keys = zip(df.hidden_size, df.inter_size, df.num_experts, df.topk, fw, ver)
    g = np.array([traces.timed_gated((int(a), int(b), int(c), int(d)), f, v) for a, b, c, d, f, v in keys], dtype=bool)
    df.attrs["_moe_gated"] = rowcache.RowCache(df, cols, g)
    return g


def predict_rows(op: str, hw, params: dict, df: pd.DataFrame, l2_warm: bool = True, prec: Precision = BF16) -> np.ndarray:
    """Roofline latency (s) of each trace row, under the collector's conditions."""
    if op == "gemm":
        return kernels.gemm(hw, params, df.m.values, df.n.values, df.k.values, prec, l2_warm=l2_warm,
                            l2_weight_copies=gemm_weight_copies(df))["latency_s"]
    if op == "moe":
        f = moe_features(df)
        return kernels.moe(hw, params, f[:, 0], f[:, 1], f[:, 2], df.num_tokens.values, df.topk.values,
                           df.hidden_size.values, df.inter_size.values / df.moe_tp_size.values,
                           gated=moe_gated(df), ep_size=df.moe_ep_size.values, prec=prec, l2_warm=l2_warm,
                           l2_experts=f[:, 3], pad=expert_padding(df, prec, hw))["latency_s"]
    if op == "attention_generation":
        return kernels.attention_generation(hw, params, df.batch_size.values, df.step.values, df.num_heads.values,
                                            df.num_key_value_heads.values, df.head_dim.values,
                                            l2_warm=l2_warm)["latency_s"]
    if op == "mla_generation":
        kv = np.where(df.kv_cache_dtype.astype(str).values == "fp8", 1.0, 2.0)
        return kernels.mla_generation(hw, params, df.batch_size.values, df.step.values, df.num_heads.values,
                                      kv_bytes_per_el=kv, l2_warm=l2_warm)["latency_s"]
    if op == "attention_context":
        return kernels.attention_context(hw, params, df.batch_size.values, df.isl.values, df.num_heads.values,
                                         df.num_key_value_heads.values, df.head_dim.values)["latency_s"]
    if op == "allreduce":
        return kernels.allreduce(hw, params, df.message_size.values, df.num_gpus.values)["latency_s"]
    raise ValueError(op)


def expert_padding(df: pd.DataFrame, prec: Precision, hw) -> np.ndarray:
    """Per row: the (intermediate, hidden) multiples its collector's framework pads the experts to,
    shape (2, rows). Factorised on the framework column: a fit prices the same rows hundreds of
    times, and one lookup per framework keeps this at about a millisecond."""
    if "framework" not in df:
        return np.ones((2, len(df)))
    codes, fws = pd.factorize(df.framework)
    by = np.array([precision.expert_padding(prec.base, str(f), hw.architecture) for f in fws], dtype=float)
    return by.reshape(-1, 2)[codes].T


def fit(op: str, hw, df: pd.DataFrame, prec: Precision = BF16) -> dict:
    """Fitted parameters of ``op`` (dict) on rows of one precision."""
    spec = kernels.PARAMS[op]
    structure = kernel_structure(op, df)
    fixed = {**unidentified(op, df, expert_padding(df, prec, hw) if op == "moe" else None), **structure}
    names = [n for n in spec if n not in fixed]
    x0 = np.log([spec[n][0] for n in names])
    lo = np.log([spec[n][1] for n in names])
    hi = np.log([spec[n][2] for n in names])
    y = df.latency_ms.values / 1e3
    if op == "moe":
        predict_rows(op, hw, {**dict(zip(names, np.exp(x0))), **fixed}, df, prec=prec)  # warm the feature cache once

    def resid(x):
        pred = predict_rows(op, hw, {**dict(zip(names, np.exp(x))), **fixed}, df, prec=prec)
        return np.log(pred / y)

    res = least_squares(resid, x0, bounds=(lo, hi), loss="soft_l1", f_scale=0.05, max_nfev=400)
    params = {**dict(zip(names, np.exp(res.x))), **fixed}
    return {**{n: float(params[n]) for n in spec}, **structure}


def kernel_structure(op: str, df: pd.DataFrame) -> dict:
    """Switches of the op's formula that the timed kernel decides, not the fit: ``local_slots`` where
    every MoE row's kernel is in ``kernels.LOCAL_SLOT_MOE`` (its elementwise passes cover the rank's
    own token-slots only). Empty otherwise, so fits without it read as before."""
    if op != "moe" or "kernel_source" not in df or not len(df):
        return {}
    return {"local_slots": 1.0} if df["kernel_source"].isin(kernels.LOCAL_SLOT_MOE).all() else {}


def unidentified(op: str, df: pd.DataFrame, pad: tuple | None = None) -> dict:
    """Parameters no row of ``df`` informs, held neutral: the MoE penalty for an expert width per rank
    that is not a multiple of 16 where no row has one (it had drifted to 4.96 on tables without
    such rows, e.g. vLLM's and TensorRT-LLM's MXFP4 x MXFP8 experts on B200, and multiplied
    gpt-oss-120b's experts at TP 8, 360 wide, by it). ``pad``: the rows' ``expert_padding``, the
    widths their kernels ran."""
    if op != "moe":
        return {}
    width = df.inter_size.values / df.moe_tp_size.values
    if pad is not None:
        width = precision.padded(width, pad[0])
    if not (np.mod(width, 16.0) != 0).any():
        return {"misaligned_factor": 1.0}
    return {}


def fit_op(op: str, hw, df: pd.DataFrame, prec: Precision = BF16) -> dict:
    """All-reduce fits one curve per (GPU count, backend); the others one curve per GPU."""
    if op != "allreduce":
        return fit(op, hw, df, prec)
    return {f"{n}:{b}": fit(op, hw, g) for (n, b), g in df.groupby(["num_gpus", "backend"])}


def op_params(op: str, params: dict, num_gpus=None, backend=None) -> dict:
    if op != "allreduce":
        return params
    return params[f"{int(num_gpus)}:{backend}"]


def predict_op(op: str, hw, params: dict, df: pd.DataFrame, prec: Precision = BF16) -> np.ndarray:
    if op != "allreduce":
        return predict_rows(op, hw, params, df, prec=prec)
    out = np.empty(len(df))
    for (n, b), idx in df.groupby(["num_gpus", "backend"]).groups.items():
        sub = df.loc[idx]
        out[df.index.get_indexer(idx)] = predict_rows(op, hw, op_params(op, params, n, b), sub)
    return out


def residual_rows(op: str, df: pd.DataFrame, pred_s: np.ndarray) -> pd.DataFrame:
    shape_cols, key_cols, size_col = LAYOUT[op]
    out = df[shape_cols + key_cols + [size_col]].copy()
    out["log_residual"] = np.log(df.latency_ms.values / 1e3 / pred_s)
    if op == "moe" and "kernel_source" in df:
        out["tile_keyed"] = df["kernel_source"].isin(TILE_KEYED_MOE).values
    return out


def corrected(op: str, table: ResidualTable, df: pd.DataFrame, pred_s: np.ndarray) -> np.ndarray:
    shape_cols, key_cols, size_col = LAYOUT[op]
    corr = np.array([table.lookup(s, k, z)[0] for s, k, z in
                     zip(df[shape_cols].values, df[key_cols].values if key_cols else [()] * len(df),
                         df[size_col].values)])
    return pred_s * np.exp(corr)


def in_sample_corrected(op: str, rows: pd.DataFrame, pred_s: np.ndarray) -> np.ndarray:
    """What the residual table gives back for the rows it was built from: the mean log residual of
    each exactly measured (shape, key, size) point (the same as ``corrected``, without the lookups)."""
    shape_cols, key_cols, size_col = LAYOUT[op]
    mean = rows.groupby(shape_cols + key_cols + [size_col], dropna=False)["log_residual"].transform("mean")
    return pred_s * np.exp(mean.values)


def errors(pred_s, df) -> np.ndarray:
    return np.abs(pred_s / (df.latency_ms.values / 1e3) - 1.0)


def summarize(err: np.ndarray) -> dict:
    return {"rows": int(len(err)), "median_abs_err": float(np.median(err)),
            "p90_abs_err": float(np.percentile(err, 90))}


BASE_OPS = ("gemm", "moe", "attention_generation", "attention_context", "allreduce")


def calibrate_gpu(traces_dir, hw, ops=BASE_OPS, progress=None):
    """Fit every op of one GPU: returns (calibration dict, residual frame, per-row report frame).

    An op without traces (all-reduce on a one-GPU box) keeps the parameters of the GPU's current
    calibration, or of the GPU it transfers from, and the calibration lists it under ``kept``."""
    params, fits, res_frames, reports, kept = {}, {}, [], [], []
    framework = ""
    for op in ops:
        try:
            df, inverted = without_inversions(op, select_rows(op, traces.load(traces_dir, hw.name, op),
                                                              keep_inversions=True))
            df = df.reset_index(drop=True)
        except traces.NoTraces:          # a damaged file is an error, not a reason to keep old values
            df, inverted = pd.DataFrame(), pd.DataFrame()
        if 0 < len(df) < MIN_ROWS:
            raise ConfigError(f"{len(df)} usable bf16 {op} rows for {hw.name}; a fit needs at least {MIN_ROWS}",
                              source=str(traces_dir))
        if df.empty:
            prev = _previous_params(hw, op)
            if prev is None:
                raise ConfigError(f"no bf16 {op} traces for {hw.name} and no earlier calibration to keep",
                                  source=str(traces_dir))
            params[op] = prev
            kept.append(op)
            continue
        framework = framework or f"{df.framework.iloc[0]} {df.framework_version.iloc[0]}"
        params[op] = fit_op(op, hw, df)
        pred = predict_op(op, hw, params[op], df)
        rows = residual_rows(op, df, pred)
        table = ResidualTable.build(op, rows)
        res_frames.append(table.to_frame())
        final = in_sample_corrected(op, rows, pred)
        fits[op] = {"roofline": summarize(errors(pred, df)), "with_table": summarize(errors(final, df)),
                    **({"split_inversions": len(inverted)} if len(inverted) else {})}
        rep = df.copy()
        rep["predicted_ms"] = pred * 1e3
        rep["predicted_table_ms"] = final * 1e3
        reports.append(rep)
        if progress:
            progress(op)
    if not fits:
        raise ConfigError(f"no usable bf16 traces for {hw.name} (ops {list(ops)})", source=str(traces_dir))
    calib = {"params": params, "fit": fits, "traces": str(traces_dir), "framework": framework,
             "date": _dt.date.today().isoformat()}
    if kept:
        calib["kept"] = kept
    return calib, pd.concat(res_frames, ignore_index=True), pd.concat(reports, ignore_index=True)


PRECISION_OPS = ("gemm", "moe")
def calibrate_precisions(traces_dir, hw, precisions, framework: str = "vllm", progress=None,
                         version: str | None = None) -> tuple:
    """Fit GEMM and MoE of each weight precision on its own rows of ``framework``'s tables:
    ({precision: {op: params}}, {precision: {op: in-sample fit summary}}, residual frame with a
    ``precision`` column). A precision or op the tables do not measure is simply absent (the cost
    model then refuses it, naming what exists)."""
    params, fits, frames = {}, {}, []
    # and MLA decode attention of this framework's kernels (bf16 weights; fp8 and bf16 KV)
    # (a batch-size kernel variant is a MoE kernel only)
    jobs = [(prec, op) for prec in precisions for op in PRECISION_OPS if op == "moe" or not prec.kernel_source]
    jobs += [(BF16, "mla_generation")]
    for prec, op in jobs:
        skipped, aside = [], []
        df = precision_rows(traces_dir, hw.name, op, framework, prec, version, skipped, aside)
        if progress and skipped:
            progress(f"{prec.name} {op}: passed over {framework} {', '.join(dict.fromkeys(skipped))} (host-bound timings)")
        standin = None
        # no table of the framework's own times the MLA decode kernel (every one host-bound, or, with
        # no version asked for, only whole-module tables collected): another framework's that does
        if df is None and (skipped or version is None) and op == "mla_generation":
            for standin in (o for o in MLA_STANDINS if o != framework):
                df = precision_rows(traces_dir, hw.name, op, standin, prec)
                if df is not None:
                    break
            else:
                standin = None
            if progress and standin:
                progress(f"{prec.name} {op} on {standin}'s table: " + (f"every {framework} one is host-bound" if skipped
                         else f"no {framework} table times the kernel"))
        if df is None:
            continue
        p = fit(op, hw, df, prec)
        pred = predict_rows(op, hw, p, df, prec=prec)
        params.setdefault(prec.name, {})[op] = p
        # layouts priced on another collector's rows (tablerows.BORROWED_ROWS)
        lent = df.iloc[:0] if standin else df[df.framework.isin(set(BORROWED_ROWS.values()) - {framework})]
        own = df.drop(lent.index)
        fits.setdefault(prec.name, {})[op] = {**summarize(errors(pred, df)), "version": str(own.framework_version.iloc[0]),
                                              **({"framework": standin} if standin else {}),
                                              **({"borrowed": f"{lent.framework.iloc[0]} {lent.framework_version.iloc[0]}"}
                                                 if len(lent) else {}),
                                              **({"split_inversions": len(aside[0])} if aside and len(aside[0]) else {})}
        frames.append(ResidualTable.build(op, residual_rows(op, df, pred)).to_frame().assign(precision=prec.name))
        if progress:
            progress(f"{prec.name} {op}")
    return params, fits, (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())


def fitted_version(fits: dict) -> str:
    """The table version a framework's calibration names: its bf16 MoE fit's, else GEMM's, else any."""
    got = [f for ops in fits.values() for f in ops.values()]
    bf16 = fits.get("bf16", {})
    return (bf16.get("moe") or bf16.get("gemm") or (got[0] if got else {})).get("version", "")


def _previous_params(hw, op: str):
    from ..config.gpu import load
    for cal in (hw.calibration, load(hw.transfer_from).calibration if hw.transfer_from else None):
        if cal is not None and op in cal.params:
            return dict(cal.params[op])
    return None


def shape_groups(op: str, df: pd.DataFrame) -> pd.Series:
    """Label of each row's model shape (what leave-one-shape-out leaves out)."""
    shape_cols = {"gemm": ["n", "k"], "moe": ["hidden_size", "inter_size", "num_experts", "topk"],
                  "attention_generation": ["num_heads", "num_key_value_heads", "head_dim"],
                  "attention_context": ["num_heads", "num_key_value_heads", "head_dim"],
                  "allreduce": ["message_size"], "mla_generation": ["num_heads"]}[op]   # fitted per (GPU count, backend): leave a size out
    return df[shape_cols].astype(str).agg("/".join, axis=1)


def cross_validate(op: str, hw, df: pd.DataFrame, max_folds: int | None = None, seed: int = 0,
                   prec: Precision = BF16, with_table: bool | None = None,
                   fit_mask: np.ndarray | None = None) -> np.ndarray:
    """Leave-one-shape-out errors, one per row of ``df`` in its order: refit without a shape
    (roofline and residual table), predict it. ``with_table=False`` scores the roofline alone;
    ``fit_mask`` keeps rows out of every fit and residual table while still scoring them (MoE rows
    ``tablerows.split_inversions`` leaves out of a calibration).

    With many shapes (GEMM has hundreds of (n, k) pairs) the roofline is refitted on at most
    ``max_folds`` shape folds while the residual table still leaves out exactly one shape.
    """
    labels = shape_groups(op, df)
    uniq = np.array(sorted(labels.unique()))
    folds = np.arange(len(uniq))
    if max_folds and len(uniq) > max_folds:
        folds = np.random.default_rng(seed).permutation(len(uniq)) % max_folds
    usable = np.ones(len(df), bool) if fit_mask is None else np.asarray(fit_mask, bool)
    errs = np.full(len(df), np.nan)
    for f in np.unique(folds):
        held = set(uniq[folds == f])
        train = df[~labels.isin(held).values & usable]
        params = fit_op(op, hw, train, prec)
        pred_all = predict_op(op, hw, params, df, prec)
        for shape in held:
            test = labels.values == shape
            if with_table is False:
                errs[test] = errors(pred_all[test], df[test])
                continue
            tr = ~test & usable
            table = ResidualTable.build(op, residual_rows(op, df[tr], pred_all[tr]))
            final = corrected(op, table, df[test], pred_all[test])
            errs[test] = errors(final, df[test])
    return errs
