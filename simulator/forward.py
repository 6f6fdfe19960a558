"""Cost of one engine step (draft passes + target forward), broken down per operation.

Pure functions over the kernel cost model: the SimPy engine asks "how long does this batch take"
and gets a :class:`StepCost` whose parts add up to ``total_s``.

Conventions: the target scores ``q_len`` query tokens per decoding sequence (``k + 1`` when
verifying ``k`` draft tokens: the drafts plus the bonus position), so ``T_T(B, k)`` in the
theory module is a forward with ``q_len = k + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .costmodel import CostModel
from .model import ModelArch
from .routing import expected_count_vector


@dataclass(frozen=True)
class Parallel:
    tensor_parallel_size: int = 1
    enable_expert_parallel: bool = False
    cuda_graphs: bool = True
    step_overhead_s: float = 0.0015       # scheduler + sampling + launch on the CPU, per engine step
    eager_launch_s: float = 4e-6          # per kernel launch without CUDA graphs
    kernels_per_layer: int = 14

    @property
    def moe_tp(self) -> int:
        return 1 if self.enable_expert_parallel else self.tensor_parallel_size

    @property
    def moe_ep(self) -> int:
        return self.tensor_parallel_size if self.enable_expert_parallel else 1


@dataclass(frozen=True)
class Batch:
    """What one forward pass computes.

    ``decode_q``: query tokens per decoding sequence (1, or k+1 when verifying);
    ``decode_ctx_mean``: mean context length of the decoding sequences (KV read per query);
    ``prefill``: (new tokens, tokens already cached) per prefill chunk.
    """

    num_decode: int = 0
    decode_q: int = 1
    decode_ctx_mean: float = 0.0
    prefill: tuple = ()

    @property
    def num_tokens(self) -> int:
        return self.num_decode * self.decode_q + sum(c for c, _ in self.prefill)


@dataclass
class StepCost:
    attention_s: float = 0.0
    gemm_s: float = 0.0
    moe_s: float = 0.0
    comm_s: float = 0.0
    overhead_s: float = 0.0
    draft_s: float = 0.0
    expert_weight_bytes: float = 0.0     # expert weights read from HBM in this step, all GPUs, all layers
    active_experts: float = 0.0          # distinct experts activated per MoE layer (busiest EP rank if EP)
    tokens: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return self.attention_s + self.gemm_s + self.moe_s + self.comm_s + self.overhead_s + self.draft_s

    def add(self, other: "StepCost", scale: float = 1.0) -> None:
        for f in ("attention_s", "gemm_s", "moe_s", "comm_s", "overhead_s", "draft_s", "expert_weight_bytes"):
            setattr(self, f, getattr(self, f) + scale * getattr(other, f))


def _ctx_bucket(ctx: float) -> float:
    """Round contexts to 1/32 of an octave so cached attention costs stay few and accurate (<2%)."""
    if ctx <= 16:
        return float(max(1, round(ctx)))
    e = np.floor(np.log2(ctx))
    step = 2 ** e / 32
    return float(round(ctx / step) * step)


class ForwardModel:
    """Forward-pass costs of one model on one GPU type with one parallel layout."""

    def __init__(self, model: ModelArch, cost: CostModel, par: Parallel):
        self.m, self.cm, self.par = model, cost, par
        tp = par.tensor_parallel_size
        self.tp = tp
        self.heads = max(1, model.num_attention_heads // tp)
        self.kv_heads = max(1, model.num_key_value_heads // tp)
        if model.kv_cache_dim_per_token:   # MLA latent cache: not split by TP
            self.kv_heads = model.kv_cache_dim_per_token / (2 * model.head_dim_)
        self._dense_cache: dict = {}

    # --- per-layer pieces ----------------------------------------------------------------

    def _dense_part(self, batch: Batch) -> StepCost:
        """Everything but the MoE experts, for the whole stack.

        Assembled from pieces cached separately, so steps that differ only in context length
        or prefill chunking reuse most of the work: token-count-dependent GEMMs and all-reduces,
        decode attention (interpolated in context between quarter-octave grid points, <1%),
        and prefill attention per bucketed (chunk, prefix) (<2%)."""
        prefill = tuple((int(_ctx_bucket(c)), int(_ctx_bucket(p)) if p else 0) for c, p in batch.prefill)
        N = batch.num_decode * batch.decode_q + sum(ch for ch, _ in prefill)
        c = StepCost(tokens=N)
        if N == 0:
            return c
        logits = batch.num_decode * batch.decode_q + len(prefill)
        gemm_s, comm_s, overhead_s = self._token_part(N, logits)
        attn = 0.0
        if batch.num_decode:
            attn += self._decode_attention(batch.num_decode, batch.decode_q, batch.decode_ctx_mean)
        for chunk, prefix in prefill:
            attn += self._prefill_attention(chunk, prefix)
        c.gemm_s, c.comm_s, c.overhead_s = gemm_s, comm_s, overhead_s
        c.attention_s = self.m.num_hidden_layers * attn
        return c

    def _decode_attention(self, b: int, q: int, ctx: float) -> float:
        """One layer's decode attention, linear in context between grid points 2^(i/4)."""
        x = 4.0 * np.log2(max(ctx, 1.0))
        i = int(np.floor(x))
        w = x - i
        lo = self._decode_attention_at(b, q, i)
        return lo if w < 1e-9 else lo + (self._decode_attention_at(b, q, i + 1) - lo) * (
            (max(ctx, 1.0) - 2 ** (i / 4)) / (2 ** ((i + 1) / 4) - 2 ** (i / 4)))

    def _decode_attention_at(self, b: int, q: int, i: int) -> float:
        key = ("dec", b, q, i)
        hit = self._dense_cache.get(key)
        if hit is None:
            hit = self._dense_cache[key] = self.cm.attention_decode(
                b, 2 ** (i / 4), self.heads, self.kv_heads, self.m.head_dim_, q).latency_s
        return hit

    def _prefill_attention(self, chunk: int, prefix: int) -> float:
        key = ("pre", chunk, prefix)
        hit = self._dense_cache.get(key)
        if hit is None:
            hit = self._dense_cache[key] = self.cm.attention_prefill(
                1, chunk, self.heads, self.kv_heads, self.m.head_dim_, prefix).latency_s
        return hit

    def _token_part(self, N: int, logits: int) -> tuple:
        """(GEMM s, communication s, eager launch s) of the whole stack for N tokens."""
        key = ("tok", N, logits)
        hit = self._dense_cache.get(key)
        if hit is not None:
            return hit
        m, cm, tp = self.m, self.cm, self.tp
        h, d = m.hidden_size, m.head_dim_
        qkv = cm.gemm(N, (self.heads * d + 2 * max(1, m.num_key_value_heads // tp) * d), h)
        o = cm.gemm(N, h, self.heads * d)
        ar = cm.allreduce(N * h * 2, tp, self.par.cuda_graphs).latency_s if tp > 1 else 0.0
        layers = m.num_hidden_layers
        dense_layers = layers - m.num_moe_layers
        mats = 3 if m.gated_ffn else 2
        ffn = cm.gemm(N, (mats - 1) * m.intermediate_size // tp, h).latency_s + cm.gemm(N, h, m.intermediate_size // tp).latency_s
        gemm_s = layers * (qkv.latency_s + o.latency_s) + dense_layers * ffn
        if m.moe:
            router = cm.gemm(N, m.moe.num_experts, h).latency_s
            shared = 0.0
            if m.moe.shared_expert_intermediate_size:
                si = m.moe.shared_expert_intermediate_size // tp
                shared = cm.gemm(N, 2 * si, h).latency_s + cm.gemm(N, h, si).latency_s
            gemm_s += m.num_moe_layers * (router + shared)
        if m.fc_in_multiplier:
            gemm_s += cm.gemm(N, h, m.fc_in_multiplier * h).latency_s
        gemm_s += cm.gemm(max(1, logits), max(1, m.vocab_size // tp), h).latency_s
        comm_s = 2 * layers * ar            # two all-reduces per layer (after attention and after the FFN/MoE)
        overhead_s = 0.0 if self.par.cuda_graphs else layers * self.par.kernels_per_layer * self.par.eager_launch_s
        hit = self._dense_cache[key] = (gemm_s, comm_s, overhead_s)
        return hit

    def moe_part(self, counts: np.ndarray) -> StepCost:
        """Expert time and weight traffic for all MoE layers, given one layer's expert loads."""
        m = self.m
        c = StepCost()
        if not m.moe or counts.sum() == 0:
            return c
        k = self.cm.moe_from_counts(counts, m.hidden_size, m.moe.moe_intermediate_size, m.moe.num_experts_per_tok,
                                    self.par.moe_tp, self.par.moe_ep, m.moe.gated)
        L = m.num_moe_layers
        c.moe_s = L * k.latency_s
        active_all = int((counts > 0).sum())
        mats = 3 if m.moe.gated else 2
        c.expert_weight_bytes = L * active_all * mats * m.hidden_size * m.moe.moe_intermediate_size * 2.0
        c.active_experts = active_all
        return c

    def forward(self, batch: Batch, counts: np.ndarray | None = None) -> StepCost:
        """Target forward: dense part + MoE part (``counts`` = one layer's per-expert tokens)."""
        c = StepCost(tokens=batch.num_tokens)
        c.add(self._dense_part(batch))
        if self.m.moe and batch.num_tokens:
            if counts is None:   # uniform routing in expectation
                counts = expected_count_vector(batch.num_tokens, self.m.moe.num_experts, self.m.moe.num_experts_per_tok)
            mc = self.moe_part(counts)
            c.add(mc)
            c.active_experts = mc.active_experts
        return c
