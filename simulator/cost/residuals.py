"""Measured/roofline ratios, interpolated over neighbouring measured shapes.

The roofline captures physics; what it misses (kernel-config switches at token-count thresholds,
tile effects of one shape family) is stored as log(measured / roofline) per measured point and
carried to a query by inverse-distance weighting over shapes (in log2 space) and linear
interpolation along the op's size axis (log scale). A measured shape gets its own ratios back
(``path = "table"``); an unmeasured one gets its neighbours' (``"roofline+neighbours"``), or, for
a MoE kernel that picks its tiles by local experts and width, the measured shapes' that share those
(``"roofline+same-tiles"``, ``TILE_KEYED_MOE``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import functools
import warnings

import numpy as np
import pandas as pd

from ..common.paths import GPU_SPECS_DIR

# op -> (shape columns for the distance, exact-match key columns, size axis)
LAYOUT = {
    "gemm": (["n", "k"], [], "m"),
    "moe": (["hidden_size", "inter_size", "num_experts", "topk"], ["moe_tp_size", "moe_ep_size", "distribution"], "num_tokens"),
    "attention_generation": (["num_heads", "num_key_value_heads", "head_dim", "batch_size"], [], "step"),
    "attention_context": (["num_heads", "num_key_value_heads", "head_dim", "batch_size"], [], "isl"),
    "allreduce": (["num_gpus"], ["backend"], "message_size"),
    "mla_generation": (["num_heads", "batch_size"], ["kv_cache_dtype"], "step"),
}
# Inverse-distance weights 1 / (d^2 + eps)^power over log2 shape distance d: close shapes dominate
# (kernel-config effects are local in shape). Chosen by leave-one-shape-out error
# (benchmarks/kernel_accuracy.py): against 1 / (d^2 + 0.25) it cut GEMM LOSO median from 4.8% to
# 2.8% (H100), 8.4% to 5.2% (L40S), 5.5% to 3.5% (B200). For GEMM, distance along n counts twice
# distance along k (which kernel cuBLAS picks, and how it splits the work, follows the output
# width more than the reduction depth) with power 3 and eps 0.2: LOSO median / p90 went from
# 2.8/9.7% to 2.6/8.8% (H100), 4.9/16.4% to 4.6/15.7% (L40S), 3.4/11.1% to 2.9/10.1% (B200).
_EPS = {"gemm": 0.2}
_POWER = {"gemm": 3}
_AXIS_SCALE = {"gemm": (2.0, 1.0)}     # per shape column, multiplies its log2 distance
# An unmeasured MoE shape takes 3/4 of its neighbours' correction: their kernel-path effects are
# only partly shared (vLLM's fp8_block experts on H100 run DeepSeek's hidden 7168 up to 10x over the
# roofline at 16k tokens, 6144 on it). Chosen on the grid 0/0.25/0.5/0.75/1 by leave-one-shape-out
# over the 24 (GPU, framework, precision) MoE tables of H100, H200 and B200 (2026-12-04).
_NEIGHBOUR_SHRINK = {"moe": 0.75}
# ... and the neighbours' inverse-distance-weighted median, not their mean (2026-12-05): a few shapes
# run 3-5x over every roofline at some TP degrees (TensorRT-LLM's bf16 experts on H100: 4096/2048/E256
# at TP 8-32, 5120/8192/E16 at TP 2 and 16, 6144/16384/E8 at TP 16-32), and a mean carries such a
# neighbour's excess into shapes that lack it (Mixtral at TP 16: 0.08 ms measured, 0.09 by the
# roofline, 0.25 with the neighbours' mean). Leave one shape out over those 24 tables
# (benchmarks/precision_accuracy.py): medians within issue 16's 7% in 18 (mean: 14), p90s within 22%
# in 13 (12); mean of the medians 6.3% -> 5.8%, of the p90s 28.4% -> 28.9% (TensorRT-LLM's bf16/fp8
# tables lose 1-4 points of p90, vLLM's fp8_block gains 2-4). The median taken whole: 20 and 14 tables,
# but mean p90 29.6% and L40S's base MoE table (kernel_accuracy.py) over 22% (22.4%).
_NEIGHBOUR_MEDIAN = {"moe"}
# GEMM corrections are read with their isolated spikes taken out (2026-12-06): a cell over 1.5x off
# the mean of its shape's two adjacent measured token counts (which agree within 1.22x), in a way the
# other shapes do not share at that token count, is read as that mean plus the shared departure.
# Some collections time single calls with glitches: vLLM 0.24's FP8 GEMMs on B200 take 27-29 us at a
# few token counts where the next ones take 10-12 (N 64 x K 7168 at 49, 64, 128, 225, 256 tokens).
# An unmeasured shape took its nearest neighbour's glitch as is, and a measured one its own (Llama-
# 3.1-70B's at some batch sizes: 9 of its measured B200 FP8 serving runs 15.8% -> 6.4% TPOT). Leave
# one shape out over the 27 bf16/fp8/fp8_block GEMM tables of H100, H200 and B200, and the silicon
# file: README "Precisions, architectures, framework kernels". The stored cells stay as measured.
_DESPIKE = {"gemm": np.log(1.5)}
# Triton fused-MoE kernels read their tile configuration from a file per (experts on the rank, expert
# width on the rank, device, dtype) -- `E={E},N={N},device_name=...json`, N the width after TP (SGLang's
# fused_moe_triton/configs/README.md; vLLM's fused_moe/configs the same) -- and take a default where
# none was tuned. Shapes sharing that key run one configuration, whatever their hidden size, top-k or
# layout: SGLang's bf16 experts on H200 at >= 1,024 tokens run 0.49-0.58x the roofline at E 128 /
# N 768 in all three shapes that have it (Qwen3-30B-A3B at TP 1, Qwen3-235B at TP 2, 6144/3072 at TP 4),
# and Qwen3-30B-A3B 0.88-0.90x at E 64 and 32 / N 768 (EP 2 and 4). An unmeasured shape there takes the
# median correction of the measured series with its key (same routing) instead of its neighbours' at
# its own layout; with none, the neighbours'. Weighting those series by top-k/experts or hidden size,
# or keeping only series within 1-2 octaves of the query's tokens per expert, did worse over the 14
# affected tables. Leave one shape out: README "Precisions, architectures, framework kernels".
TILE_KEYED_MOE = frozenset({"sglang_fused_moe_triton", "sglang_fused_moe_triton_situ_as_silu", "vllm_fused_moe",
                            "vllm_unquantizedfusedmoe_triton_tritonexperts", "vllm_fp8moe_triton_tritonexperts",
                            "vllm_modeloptfp8moe_triton_tritonexperts"})


@dataclass
class _Group:
    sizes: np.ndarray          # sorted log2 sizes
    shapes: np.ndarray         # [S, dims] log2 shape vectors
    table: np.ndarray          # [n_sizes, S] log residuals (NaN where not measured)
    read: np.ndarray           # what lookups read of them: ``table`` less its isolated spikes (``_despiked``)
    tile_keyed: bool = False   # a MoE kernel in ``TILE_KEYED_MOE`` timed every row of it


@dataclass
class ResidualTable:
    op: str
    groups: dict = field(default_factory=dict)
    _row_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(cls, op: str, rows: pd.DataFrame) -> "ResidualTable":
        """``rows``: shape, key and size columns plus ``log_residual``."""
        shape_cols, key_cols, size_col = LAYOUT[op]
        out = cls(op)
        if rows.empty:
            return out
        rows = rows.dropna(subset=["log_residual"])
        grouped = rows.groupby(key_cols) if key_cols else [((), rows)]
        for key, g in grouped:
            key = key if isinstance(key, tuple) else (key,)
            # sizes x shapes, each sorted; the mean where a point was measured more than once
            sizes, si = np.unique(g[size_col].to_numpy(dtype=float), return_inverse=True)
            shapes, hi = np.unique(g[shape_cols].to_numpy(dtype=float), axis=0, return_inverse=True)
            vals = g["log_residual"].to_numpy()
            cell = si.reshape(-1) * len(shapes) + hi.reshape(-1)
            n = np.bincount(cell, minlength=len(sizes) * len(shapes))
            with np.errstate(invalid="ignore"):
                mean = np.bincount(cell, weights=vals, minlength=len(n)) / np.where(n, n, np.nan)
            table = mean.reshape(len(sizes), len(shapes))
            # other ops' rows share the stored file and read NaN there
            tiled = op == "moe" and "tile_keyed" in g and bool(g["tile_keyed"].fillna(False).astype(bool).all())
            out.groups[tuple(key)] = _Group(np.log2(sizes), np.log2(shapes), table, _despiked(table, _DESPIKE.get(op)),
                                            tiled)
        return out

    def to_frame(self) -> pd.DataFrame:
        shape_cols, key_cols, size_col = LAYOUT[self.op]
        frames = []
        for key, g in self.groups.items():
            sz, sh = np.meshgrid(np.arange(len(g.sizes)), np.arange(len(g.shapes)), indexing="ij")
            df = pd.DataFrame(np.round(2 ** g.shapes[sh.ravel()]).astype(np.int64), columns=shape_cols)
            for c, v in zip(key_cols, key):
                df[c] = v
            df[size_col] = np.round(2 ** g.sizes[sz.ravel()]).astype(np.int64)
            df["log_residual"] = g.table.ravel().astype(np.float32)
            if g.tile_keyed:
                df["tile_keyed"] = True
            frames.append(df.dropna(subset=["log_residual"]))
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if "tile_keyed" in frame:
            frame["tile_keyed"] = frame["tile_keyed"].fillna(False).astype(bool)
        return frame.assign(op=self.op) if not frame.empty else frame

    @classmethod
    def from_frame(cls, op: str, frame: pd.DataFrame) -> "ResidualTable":
        return cls.build(op, frame[frame["op"] == op] if "op" in frame else frame)

    def lookup(self, shape, key, size) -> tuple[float, str]:
        """(log correction, path) for one query."""
        vals, found, exact, same = self._corrections(shape, key, np.array([float(size)]))
        if not found[0]:
            return 0.0, "roofline"
        if exact:
            return float(vals[0]), "table"
        return float(vals[0]), ("roofline+same-tiles" if same[0] else "roofline+neighbours")

    def lookup_many(self, shape, key, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Log corrections of one shape at many sizes: (values, found per size, shape measured).

        Per size-axis row, the inverse-distance-weighted mean over measured neighbours; between
        rows, linear in log size (flat beyond the ends); 0 where neither bracketing row has data."""
        return self._corrections(shape, key, sizes)[:3]

    def _corrections(self, shape, key, sizes) -> tuple[np.ndarray, np.ndarray, bool, np.ndarray]:
        """``lookup_many``'s answer and, per size, whether series with the query's tile configuration
        (``_same_tiles``) gave it."""
        sizes = np.asarray(sizes, dtype=float)
        none = np.zeros(len(sizes), dtype=bool)
        g = self.groups.get(tuple(key))
        if g is None or len(g.sizes) == 0:
            return np.zeros(len(sizes)), none, False, none
        rows, exact = self._rows(g, tuple(key), tuple(shape))
        ls = np.log2(np.maximum(sizes, 1.0))
        val = _interpolated(g.sizes, rows, ls)
        found = ~np.isnan(val)
        shrink = 1.0 if exact else _NEIGHBOUR_SHRINK.get(self.op, 1.0)
        val = np.where(found, shrink * val, 0.0)
        tiles = [] if exact or not g.tile_keyed else self._same_tiles(tuple(key), tuple(shape))
        if not tiles:
            return val, found, exact, none
        same = _median_at(tiles, ls)        # the series that run the same tile configuration
        used = ~np.isnan(same)
        return np.where(used, same, val), found | used, exact, used

    def _same_tiles(self, key: tuple, shape: tuple) -> list:
        """(log2 sizes, residual column) of every measured MoE series, any layout, with the query's
        experts per rank and width per rank and its routing, in groups a ``TILE_KEYED_MOE`` kernel
        timed; cached per query."""
        hit = self._row_cache.get(("tiles", key, shape))
        if hit is None:
            tp, ep, dist = key
            experts = np.log2(float(shape[2])) - np.log2(float(ep))
            width = np.log2(float(shape[1])) - np.log2(float(tp))
            hit = []
            for (tp2, ep2, dist2), g in self.groups.items():
                if dist2 != dist or not g.tile_keyed:
                    continue
                same = (np.abs(g.shapes[:, 2] - np.log2(float(ep2)) - experts) < 1e-9) & \
                       (np.abs(g.shapes[:, 1] - np.log2(float(tp2)) - width) < 1e-9)
                hit += [(g.sizes, g.read[:, c]) for c in np.flatnonzero(same)]
            self._row_cache[("tiles", key, shape)] = hit
        return hit

    def _rows(self, g: _Group, key: tuple, shape: tuple) -> tuple[np.ndarray, bool]:
        """One shape's weighted residual at every size-axis row (NaN where no neighbour has data),
        and whether the shape itself was measured; cached per shape."""
        hit = self._row_cache.get((key, shape))
        if hit is None:
            q = np.log2(np.asarray(shape, dtype=float))
            d2 = (((g.shapes - q) * np.asarray(_AXIS_SCALE.get(self.op, 1.0))) ** 2).sum(axis=1)
            exact = d2 < 1e-9
            w = np.where(exact, 1.0, 0.0) if exact.any() else 1.0 / (d2 + _EPS.get(self.op, 0.05)) ** _POWER.get(self.op, 2)
            ok = ~np.isnan(g.read) & (w > 0)
            if self.op in _NEIGHBOUR_MEDIAN and not exact.any():
                rows = _weighted_median_rows(g.read, ok, w)
            else:
                den = (w * ok).sum(axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    rows = np.where(den > 0, np.where(ok, g.read, 0.0) @ w / den, np.nan)
            hit = self._row_cache[(key, shape)] = (rows, bool(exact.any()))
        return hit


def _interpolated(sizes: np.ndarray, rows: np.ndarray, ls: np.ndarray) -> np.ndarray:
    """``rows`` (one value per log2 size of ``sizes``, NaN where none) at log2 sizes ``ls``: linear
    between the bracketing rows, the nearer one where the other is NaN, flat beyond the ends."""
    n = len(sizes)
    j = np.clip(np.searchsorted(sizes, ls), 1, max(n - 1, 1))
    i = j - 1 if n > 1 else np.zeros_like(j)
    j = np.minimum(j, n - 1)
    a, b = rows[i], rows[j]
    span = sizes[j] - sizes[i]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.clip((ls - sizes[i]) / np.where(span > 0, span, 1.0), 0.0, 1.0)
    return np.where(np.isnan(a), b, np.where(np.isnan(b) | (span <= 0), a, (1 - t) * a + t * b))


def _median_at(series: list, ls: np.ndarray) -> np.ndarray:
    """Median over ``series`` [(log2 sizes, values)] of each interpolated at ``ls`` (NaN where none has data)."""
    vals = np.array([_interpolated(s, v, ls) for s, v in series])
    out = np.full(len(ls), np.nan)
    some = ~np.isnan(vals).all(axis=0)
    out[some] = np.nanmedian(vals[:, some], axis=0)
    return out


def _despiked(table: np.ndarray, thresh: float | None) -> np.ndarray:
    """``table`` [sizes, shapes] with each isolated spike (``_DESPIKE``) replaced by the mean of its
    shape's adjacent measured cells plus the departure all shapes share at that size; ``table``
    itself without a threshold."""
    if thresh is None:
        return table
    dep, between = np.full(table.shape, np.nan), np.full(table.shape, np.nan)
    agree = np.zeros(table.shape, dtype=bool)
    for j in range(table.shape[1]):
        idx = np.flatnonzero(~np.isnan(table[:, j]))
        if len(idx) < 3:
            continue
        a, b, c = table[idx[:-2], j], table[idx[1:-1], j], table[idx[2:], j]
        dep[idx[1:-1], j], between[idx[1:-1], j] = b - (a + c) / 2, (a + c) / 2
        agree[idx[1:-1], j] = np.abs(a - c) < thresh / 2
    with warnings.catch_warnings():         # a size no shape has inner cells at: NaN, no spike there
        warnings.simplefilter("ignore", RuntimeWarning)
        shared = np.nanmedian(dep, axis=1, keepdims=True)
    spike = agree & (np.abs(dep - shared) > thresh)
    return np.where(spike, between + shared, table)


def _weighted_median_rows(table: np.ndarray, ok: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per row of ``table`` [sizes, shapes], the ``w``-weighted median over the ``ok`` cells (NaN where none)."""
    out = np.full(table.shape[0], np.nan)
    for i in np.flatnonzero(ok.any(axis=1)):
        v, ww = table[i, ok[i]], w[ok[i]]
        order = np.argsort(v, kind="stable")
        cum = np.cumsum(ww[order])
        out[i] = v[order][np.searchsorted(cum, 0.5 * cum[-1])]
    return out


@functools.lru_cache(maxsize=None)
def residual_tables(gpu_name: str) -> dict:
    """The base calibration's tables of one GPU (its bf16 kernels), by op."""
    path = GPU_SPECS_DIR / "calibration" / f"{gpu_name}_residuals.parquet"
    if not path.exists():
        return {}
    frame = pd.read_parquet(path)
    return {op: ResidualTable.from_frame(op, frame) for op in frame["op"].unique()}


def precision_residuals_name(gpu_name: str, framework: str) -> str:
    """File of one framework's per-precision GEMM/MoE residual tables (``precision`` column)."""
    return f"{gpu_name}_{framework}_precision_residuals.parquet"


@functools.lru_cache(maxsize=None)
def precision_tables(gpu_name: str, framework: str) -> dict:
    path = GPU_SPECS_DIR / "calibration" / precision_residuals_name(gpu_name, framework)
    if not path.exists():
        return {}
    frame = pd.read_parquet(path)
    return {(op, prec): ResidualTable.from_frame(op, g) for (prec, op), g in frame.groupby(["precision", "op"])}
