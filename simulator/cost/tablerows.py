"""Which measured rows a kernel fit uses: the op's rows of one weight precision, one kernel per
layout, the newest collection that times the kernel (not host-side work), capped in number."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import traces
from ..common.paths import GPU_SPECS_DIR
from ..config.gpu import load
from ..config.precision import SMALL_BATCH_MOE, Precision
from .kernels import BF16

MAX_FIT_TOKENS = 16384
SMALL_BATCH_MOE_TOKENS = {v.name: most for v, most in SMALL_BATCH_MOE.values()}
VARIANT_KERNELS = {v.kernel_source for v, _ in SMALL_BATCH_MOE.values()}
# MoE rows labelled with a weight precision but timed on a kernel no serving run of it uses: left out
# of every fit, so a version whose only rows they are is priced on the nearest collection that times
# the served kernel. AIConfigurator's vLLM >= 0.17 collector times int4_wo experts by calling vLLM's
# fused_experts with int4_w4a16_moe_quant_config (collector/vllm/collect_moe_v2.py), the Triton WNA16
# kernel, and logs it as "vllm_marlin_int4_moe". vLLM serves W4A16 experts (compressed-tensors, GPTQ,
# AWQ) with Marlin wherever check_moe_marlin_supports_layer holds (compressed_tensors_moe.py: "Prefer
# to use the MarlinMoE kernel when it is supported"), the kernel its 0.14.0 and 0.24.0 collections
# time (vllm_marlin_moe; vllm_compressedtensorswna16marlinmoe_marlin_marlinexperts). At Kimi-K2's
# shape (TP 8, 64-256 tokens) the Triton rows run 2.5-5x those on every GPU.
UNSERVED_MOE_KERNELS = frozenset({"vllm_marlin_int4_moe"})


def select_rows(op: str, df: pd.DataFrame, prec: Precision = BF16, keep_inversions: bool = False) -> pd.DataFrame:
    """The rows a serving model of this weight precision is fitted on (GEMM and MoE per precision;
    attention and all-reduce on bf16 rows); ``keep_inversions`` keeps MoE rows ``split_inversions``
    would leave out (to count them)."""
    if op == "gemm":
        # m >= 1: TensorRT-LLM 1.2.0rc5's H100 table also times 882 GEMMs of no tokens (0.5 us, a launch)
        df = df[(df.dtype == prec.table_dtype) & (df.m >= 1) & (df.m <= MAX_FIT_TOKENS)]
    elif op == "moe":
        if prec.kernel_source:      # a batch-size variant: its kernel's rows, at the batches it runs
            df = df[(df.dtype == prec.table_dtype) & (df.num_tokens <= SMALL_BATCH_MOE_TOKENS[prec.name])]
            df = df[df.kernel_source == prec.kernel_source] if "kernel_source" in df else df.iloc[:0]
        else:
            # B200: FlashInfer's TRT-LLM experts for most shapes, its CUTLASS experts for two; never a
            # variant's kernel (priced on its own fit)
            df = df[(df.dtype == prec.table_dtype) & (df.num_tokens <= MAX_FIT_TOKENS)]
            if "kernel_source" in df:
                df = df[~df.kernel_source.isin(VARIANT_KERNELS | UNSERVED_MOE_KERNELS)]
            df = _dominant_kernel(df)
        if not keep_inversions:
            df = df[~split_inversions(df)]
    elif op in ("attention_generation", "attention_context"):
        df = df[(df.kv_cache_dtype == "bfloat16") & (df.window_size == 0) & (df.dtype == "bfloat16")]
    elif op == "allreduce":
        df = df[df.dtype == "bfloat16"]
    elif op == "mla_generation":      # bf16 MLA weights; both KV dtypes (their bytes are modelled)
        # vLLM 0.14 timed FlashMLA and FlashAttention-MLA
        df = _dominant_kernel(df[(df.dtype == "bfloat16") & (df.step <= 65536)])
    return df.reset_index(drop=True)


def _dominant_kernel(df: pd.DataFrame) -> pd.DataFrame:
    """One roofline per kernel: where the collector timed several kernels of an op, the rows of
    the one it timed most. Where it timed one kernel for tensor-parallel experts and another for
    expert parallel (no kernel timing both), the framework picks the kernel by layout: each layout
    keeps its own (vLLM 0.24 FP8 block-scaled experts on Hopper: Triton under TP, FlashInfer's
    CUTLASS under EP; taking only the CUTLASS rows priced DeepSeek-V3's TP-8 experts at about twice
    their Triton time)."""
    if "kernel_source" not in df or df.kernel_source.nunique() < 2:
        return df
    if "moe_ep_size" in df:
        ep = df.moe_ep_size.values > 1
        if ep.any() and (~ep).any() and set(df.kernel_source[ep]).isdisjoint(df.kernel_source[~ep]):
            return pd.concat([_dominant_kernel(df[~ep]), _dominant_kernel(df[ep])]).sort_index()
    return df[df.kernel_source == df.kernel_source.value_counts().idxmax()]


# Doubling moe_tp or moe_ep gives each rank at most the work of the layout before it (half the
# columns, or a subset of its experts), so the same call cannot take much longer there. A row timed
# over SPLIT_INVERSION times its half-split layout (same shape, tokens, routing and kernel) is a
# collection artifact, left out of fit and residuals: TensorRT-LLM 1.3.0rc20's bf16/fp8 experts on
# H100/H200, 4-8% of rows (e.g. 4096/1024/E512/top-10 at 128 tokens: 4.29 ms at EP1, 2.16 at EP2,
# 5.01 at EP4, 0.55 at EP8, where 1.3.0rc10 timed EP4 at 1.11 ms); every other table <= 0.3%.
SPLIT_INVERSION = 2.0


def split_inversions(df: pd.DataFrame) -> np.ndarray:
    """Mask of MoE rows timed over ``SPLIT_INVERSION`` x the same call on half as many ranks."""
    if df.empty or "moe_tp_size" not in df:
        return np.zeros(len(df), bool)
    key = [c for c in ("dtype", "kernel_source", "hidden_size", "inter_size", "num_experts", "topk",
                       "distribution", "num_tokens") if c in df]
    rows = df[key + ["moe_tp_size", "moe_ep_size", "latency_ms"]].reset_index(drop=True)
    rows["row"] = np.arange(len(rows))
    half = np.full(len(rows), np.inf)
    for col in ("moe_tp_size", "moe_ep_size"):
        parent = rows[key + ["moe_tp_size", "moe_ep_size", "latency_ms"]].rename(columns={"latency_ms": "parent_ms"})
        parent[col] = parent[col] * 2        # the parent's layout doubled is the child's
        m = rows.merge(parent, on=key + ["moe_tp_size", "moe_ep_size"], how="inner")
        if len(m):
            best = m.groupby("row").parent_ms.min()
            half[best.index.values] = np.minimum(half[best.index.values], best.values)
    return rows.latency_ms.values > SPLIT_INVERSION * half


def without_inversions(op: str, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the rows a fit keeps, the MoE rows ``split_inversions`` leaves out); other ops keep every row."""
    if op != "moe":
        return df, df.iloc[:0]
    inverted = split_inversions(df)
    return df[~inverted], df[inverted]


MIN_ROWS = 10      # fewer measured rows than this cannot pin an op's handful of parameters


# Rows per (op, precision) fit. Every collected table (at most ~40,000 rows) is fitted whole: the
# residual table of an unmeasured shape reads its neighbours at the same token count, and a sample
# leaves most of those cells empty (6,000-row samples: SGLang bf16 GEMM on H200, leave-one-shape-out
# 6.8% / 21.7% median / p90; all 35,259 rows: 5.4% / 16.7%). The cap only bounds a user's own table.
MAX_PRECISION_ROWS = 60_000


def sample_rows(df: pd.DataFrame, n: int | None = None, seed: int = 0) -> pd.DataFrame:
    """At most ``n`` rows (``MAX_PRECISION_ROWS`` by default), drawn reproducibly."""
    n = MAX_PRECISION_ROWS if n is None else n
    if len(df) <= n:
        return df
    return df.iloc[np.sort(np.random.default_rng(seed).choice(len(df), n, replace=False))].reset_index(drop=True)


# A GEMM table whose smallest GEMMs take tens of microseconds timed host-side work around each call,
# not the kernel a CUDA-graph step replays: the 10th percentile of latency at <= 16 tokens is 2-25 us
# in every AIConfigurator GEMM table (any GPU, framework, version, precision) except vLLM's FP8
# block-scaled ones from 0.18 on (51-65 us on H100/H200, 156-298 us on B200/GB200/L40S; 0.19.0's:
# 10-14 us), which run flat at that floor up to 8,192 tokens (H200, N 3072 x K 1536: 87 us at 32
# tokens where SGLang's DeepGEMM table says 6 us and vLLM 0.19.0's 13 us).
# MLA decode likewise: 8-23 us at <= 4 sequences and <= 128 tokens of context in every SGLang and
# TensorRT-LLM table, 100-312 us in vLLM's (0.14.0, the only kernel-level vLLM MLA table: later ones
# time the whole attention module), flat to 8k tokens (H200, 16 heads, 16 sequences: 150-165 us, SGLang
# 12-54 us).
HOST_BOUND_FLOOR_MS = 0.040
# Whose MLA decode table prices a framework none of whose own times the kernel (all host-bound, or only
# whole attention modules collected), in order: the kernel a CUDA-graph decode step replays is what
# SGLang's times (FlashMLA / FlashAttention-3 MLA on Hopper; on Blackwell FlashInfer's trtllm-gen MLA,
# SGLang's "trtllm_mla" rows and vLLM's default decode backend since vllm-project/vllm#32339, 2026-01).
MLA_STANDINS = ("sglang", "trtllm")


def smallest_cases(op: str, df: pd.DataFrame) -> pd.DataFrame:
    """The rows whose floor ``host_bound`` reads: GEMMs of <= 16 tokens, MLA decode of <= 4 sequences
    and <= 128 tokens of context; none for other ops."""
    if op == "gemm":
        return df[df.m <= 16]
    if op == "mla_generation":
        return df[(df.batch_size <= 4) & (df.step <= 128)]
    return df.iloc[:0]


def host_bound(op: str, df: pd.DataFrame) -> bool:
    """Whether a GEMM or MLA decode table's smallest cases sit at a host-side floor (``HOST_BOUND_FLOOR_MS``)."""
    small = smallest_cases(op, df)
    return len(small) >= MIN_ROWS and float(small.latency_ms.quantile(0.1)) > HOST_BOUND_FLOOR_MS


def precision_rows(traces_dir, gpu: str, op: str, framework: str, prec: Precision = BF16,
                   version: str | None = None, skipped: list | None = None,
                   set_aside: list | None = None) -> pd.DataFrame | None:
    """The fitted rows of one (op, framework, precision): the newest collected version that times
    the precision (or ``version``'s table alone), capped by ``sample_rows``; None when none has enough.
    A host-bound GEMM or MLA decode table is passed over for the next older one (its version
    appended to ``skipped``). Layouts whose kernel another framework's collector timed take its rows
    (``BORROWED_ROWS``; their ``framework`` column says whose). The count of rows left out as
    ``split_inversions`` (a frame) is appended to ``set_aside``."""
    for t in traces.load_versions(traces_dir, gpu, op, framework, version):
        t, inverted = without_inversions(op, select_rows(op, t, prec, keep_inversions=True))
        t = t.reset_index(drop=True)
        if len(t) < MIN_ROWS:
            continue
        if host_bound(op, t):
            if skipped is not None:
                skipped.append(str(t.framework_version.iloc[0]))
            continue
        if set_aside is not None:
            set_aside.append(inverted)
        return sample_rows(borrow_rows(traces_dir, gpu, op, framework, prec, t))
    return None


# A kernel a framework serves that its own collector did not time, but another framework's did:
# (framework, weight precision, op, GPU architecture) -> the collector whose rows price the layouts
# with expert parallel off. SGLang serves GPT-OSS's MXFP4 experts on Hopper with OpenAI's
# triton_kernels when expert parallel is off (server_args: moe_runner_backend "auto" becomes
# "triton_kernel" if ep_size == 1; sgl-project/sglang#12696), the kernel vLLM's collector times
# (vllm_gptossmxfp4moe_triton_oaitritonmxfp4experts). SGLang's collector timed its generic Triton
# fused MoE for every layout, 2-4x slower at GPT-OSS's shape (H100, 32 tokens, TP 1: 2.2 ms against
# 0.69 ms; TensorRT-LLM's 0.61 ms on H200). Under expert parallel SGLang's own rows stay.
BORROWED_ROWS = {("sglang", "mxfp4", "moe", "hopper"): "vllm"}


def borrow_rows(traces_dir, gpu: str, op: str, framework: str, prec: Precision, own: pd.DataFrame) -> pd.DataFrame:
    """``own`` with its expert-parallel-off rows replaced by those of the collector ``BORROWED_ROWS``
    names for this (framework, precision, op) on this GPU's architecture; ``own`` when none applies."""
    if (not any(k[:3] == (framework, prec.name, op) for k in BORROWED_ROWS)
            or not (GPU_SPECS_DIR / f"{gpu}.yaml").is_file()):
        return own
    lender = BORROWED_ROWS.get((framework, prec.name, op, load(gpu).architecture))
    for t in traces.load_versions(traces_dir, gpu, op, lender) if lender else ():
        lent = select_rows(op, t, prec)
        lent = lent[lent.moe_ep_size == 1]
        if len(lent) >= MIN_ROWS:      # the lender's newest collection that times it
            return pd.concat([lent, own[own.moe_ep_size > 1]], ignore_index=True)
    return own
