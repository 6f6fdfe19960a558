"""Cost of one engine step (draft passes + target forward), broken down per operation.

Pure functions over the kernel cost model: the SimPy engine asks "how long does this batch take"
and gets a :class:`StepCost` whose parts add up to ``total_s``.

Conventions: the target scores ``q_len`` query tokens per decoding sequence (``k + 1`` when
verifying ``k`` draft tokens: the drafts plus the bonus position), so ``T_T(B, k)`` in the
theory module is a forward with ``q_len = k + 1``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .costmodel import CostModel
from ..config import precision
from ..config.model import ModelArch, Quantization
from . import launches, linear_attention, network, sparse_attention
from .routing import expected_count_vector


@dataclass(frozen=True)
class Parallel:
    """One worker's layout, in vLLM's terms. ``data_parallel_size`` > 1 on an MoE model is attention
    data parallel: that many ranks (each ``tensor_parallel_size`` GPUs) batch their own requests and
    share the MoE layers, which run over all ``tp x dp`` GPUs: expert parallel with
    ``enable_expert_parallel`` (mixed with ``moe_tensor_parallel_size`` > 1), tensor parallel without."""
    tensor_parallel_size: int = 1
    enable_expert_parallel: bool = False
    cuda_graphs: bool = True
    eager_launch_s: float = 4e-6          # per kernel launch without CUDA graphs
    kernels_per_layer: int = 14
    data_parallel_size: int = 1
    moe_tensor_parallel_size: int = 0     # 0: 1 under expert parallel, the whole group without
    moe_a2a: str = "none"                 # attention DP + EP: "deepep" dispatch/combine, else all-gather

    @property
    def moe_group(self) -> int:
        return self.tensor_parallel_size * self.data_parallel_size

    @property
    def dispatches(self) -> bool:
        """Attention DP + EP with an all-to-all backend (DeepEP): each token goes to its experts'
        ranks and back, and a rank's MoE kernel runs on the tokens dispatched to it. Otherwise the
        ranks all-gather the group's tokens, each runs its experts on all of them (the kernel
        passes over every token-slot, masking the experts it lacks) and the outputs are reduced."""
        return self.moe_a2a == "deepep" and self.data_parallel_size > 1 and self.moe_ep > 1

    @property
    def moe_tp(self) -> int:
        if self.moe_tensor_parallel_size:
            return self.moe_tensor_parallel_size
        return 1 if self.enable_expert_parallel else self.moe_group

    @property
    def moe_ep(self) -> int:
        return self.moe_group // self.moe_tp


class Batch(NamedTuple):
    """What one forward pass computes.

    ``decode_q``: query tokens per decoding sequence (1, or k+1 when verifying; the longest when
    they differ: the attention kernel's query tile);
    ``decode_ctx_mean``: mean context length of the decoding sequences (KV read per query);
    ``prefill``: (new tokens, tokens already cached) per prefill chunk;
    ``decode_tokens``: the decoding sequences' query tokens summed, when they differ (sequences near
    their end verify fewer drafts); 0 means ``num_decode * decode_q``.
    """

    num_decode: int = 0
    decode_q: int = 1
    decode_ctx_mean: float = 0.0
    prefill: tuple = ()
    decode_tokens: int = 0

    @property
    def decode_token_count(self) -> int:
        return self.decode_tokens or self.num_decode * self.decode_q

    @property
    def num_tokens(self) -> int:
        return self.decode_token_count + sum(c for c, _ in self.prefill)


@dataclass(slots=True)
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

    @property
    def total_s(self) -> float:
        return self.attention_s + self.gemm_s + self.moe_s + self.comm_s + self.overhead_s + self.draft_s


@functools.lru_cache(maxsize=1 << 16)
def _ctx_bucket(ctx: float) -> float:
    """Round contexts to 1/32 of an octave so cached attention costs stay few and accurate (<2%)."""
    if ctx <= 16:
        return float(max(1, round(ctx)))
    step = 2.0 ** math.floor(math.log2(ctx)) / 32
    return float(round(ctx / step) * step)


_CTX_GRID = 4 * 24   # decode-attention context grid: 2^(i/4) up to 16M tokens


class ForwardModel:
    """Forward-pass costs of one model on one GPU type with one parallel layout."""

    def __init__(self, model: ModelArch, cost: CostModel, par: Parallel, quant: Quantization | None = None,
                 kv_bytes_per_el: float = 2.0):
        self.m, self.cm, self.par = model, cost, par
        q = quant or model.quantization
        self.gemm_prec, self.moe_prec = q.precision("gemm"), q.precision("moe")
        self.kv_bytes = kv_bytes_per_el
        tp = par.tensor_parallel_size
        self.tp = tp
        self.heads = max(1, model.num_attention_heads // tp)
        self.kv_heads = max(1, model.num_key_value_heads // tp)
        self.attn_head_dim = model.head_dim_
        if model.mla is not None:
            # absorbed MLA decode: every local head attends over the one shared latent (+ rope key),
            # read once: an MQA of head size latent_dim whose "K+V" is that single vector
            self.attn_head_dim = model.mla.latent_dim
            self.kv_heads = 0.5
        elif model.kv_cache_dim_per_token:   # MLA latent cache: not split by TP
            self.kv_heads = model.kv_cache_dim_per_token / (2 * model.head_dim_)
        self.linear_layers = model.num_linear_attention_layers
        self.full_layers = model.num_full_attention_layers
        self._dense_cache: dict = {}
        self._tok_gemm_s: list = []
        self._eager_s = 0.0 if par.cuda_graphs else model.num_hidden_layers * par.kernels_per_layer * par.eager_launch_s
        # what a step launched kernel by kernel issues (steps with prompt tokens in SGLang, TRT-LLM)
        self.eager_kernels = launches.kernels_per_forward(model, self.gemm_prec, self.moe_prec, tp)

    # --- per-layer pieces ----------------------------------------------------------------

    def _dense_part(self, batch: Batch) -> StepCost:
        """Everything but the MoE experts, for the whole stack.

        Assembled from pieces cached separately, so steps that differ only in context length
        or prefill chunking reuse most of the work: token-count-dependent GEMMs and all-reduces,
        decode attention (interpolated in context between quarter-octave grid points, <1%),
        and prefill attention per bucketed (chunk, prefix) (<2%)."""
        prefill = tuple((int(_ctx_bucket(c)), int(_ctx_bucket(p)) if p else 0) for c, p in batch.prefill)
        N = batch.decode_token_count + sum(ch for ch, _ in prefill)
        c = StepCost(tokens=N)
        if N == 0:
            return c
        logits = batch.decode_token_count + len(prefill)
        gemm_s, comm_s, overhead_s = self._token_part(N, logits)
        c.gemm_s, c.comm_s, c.overhead_s = gemm_s, comm_s, overhead_s
        c.attention_s = self._attention_all_layers(batch.num_decode, batch.decode_q, batch.decode_ctx_mean, prefill)
        return c

    def _attention_all_layers(self, num_decode: int, q: int, ctx: float, prefill=()) -> float:
        """Attention of every layer: full layers over the whole context, sliding-window layers over
        at most the window (their KV beyond it is never read)."""
        full, sw, win = self.full_layers, self.m.num_sliding_window_layers, self.m.sliding_window or 0
        if self.linear_layers:
            return full * self._full_attention(num_decode, q, ctx, prefill) + \
                self.linear_layers * self._linear_attention(num_decode, q, prefill)
        if not sw:    # the general form below with sw = 0, summed in the order the figures were computed in
            return full * self._full_attention(num_decode, q, ctx, prefill)
        t = 0.0
        if num_decode:
            t += full * self._decode_attention(num_decode, q, ctx)
            t += sw * self._decode_attention(num_decode, q, min(ctx, win))
        for chunk, prefix in prefill:
            t += full * self._prefill_attention(chunk, prefix)
            t += sw * self._prefill_attention(chunk, int(_ctx_bucket(min(prefix, win))) if prefix else 0)
        return t

    def _full_attention(self, num_decode: int, q: int, ctx: float, prefill) -> float:
        if self.m.sparse_attention is not None:
            return self._sparse_attention(num_decode, q, ctx, prefill)
        t = self._decode_attention(num_decode, q, ctx) if num_decode else 0.0
        for chunk, prefix in prefill:
            t += self._prefill_attention(chunk, prefix)
        return t

    def _sparse_attention(self, num_decode: int, q: int, ctx: float, prefill) -> float:
        return sparse_attention.layer_time(self.cm, self.m.sparse_attention, self._decode_attention,
                                           self._prefill_attention, num_decode, q, ctx, prefill, self._dense_cache)

    def _linear_attention(self, num_decode: int, q: int, prefill) -> float:
        return linear_attention.layer_time(self.cm, self.m.linear_attention, self.tp, num_decode, q, prefill,
                                           self._dense_cache)

    def _decode_attention(self, b: int, q: int, ctx: float) -> float:
        """One layer's decode attention, linear in context between grid points 2^(i/4)."""
        x = 4.0 * math.log2(max(ctx, 1.0))
        i = math.floor(x)
        w = x - i
        lo = self._decode_attention_at(b, q, i)
        return lo if w < 1e-9 else lo + (self._decode_attention_at(b, q, i + 1) - lo) * (
            (max(ctx, 1.0) - 2 ** (i / 4)) / (2 ** ((i + 1) / 4) - 2 ** (i / 4)))

    def _decode_attention_at(self, b: int, q: int, i: int) -> float:
        """Decode attention at context 2^(i/4), tabulated per (batch, q) over the whole grid."""
        row = self._dense_cache.get(("dec", b, q))
        if row is None:
            grid = 2.0 ** (np.arange(_CTX_GRID) / 4)
            if self.m.mla is not None:
                lat = self.cm.mla_decode_latency_s(b, grid, self.heads, self.m.mla.latent_dim, q, self.kv_bytes)
            else:
                lat = self.cm.attention_decode_latency_s(b, grid, self.heads, self.kv_heads, self.attn_head_dim, q,
                                                         self.kv_bytes)
            row = self._dense_cache[("dec", b, q)] = lat.tolist()
        return row[i]

    def _prefill_attention(self, chunk: int, prefix: int) -> float:
        key = ("pre", chunk, prefix)
        hit = self._dense_cache.get(key)
        if hit is None:
            if self.m.mla is not None:   # MLA prefill runs as MHA over decompressed K/V (qk 192, v 128 on V3)
                a = self.m.mla
                hit = self.cm.attention_prefill(1, chunk, self.heads, self.heads, a.qk_nope_head_dim + a.qk_rope_head_dim,
                                                prefix).latency_s
            else:
                hit = self.cm.attention_prefill(1, chunk, self.heads, self.kv_heads, self.m.head_dim_, prefix).latency_s
            self._dense_cache[key] = hit
        return hit

    def _token_part(self, N: int, logits: int) -> tuple:
        """(GEMM s, communication s, eager launch s) of the whole stack for N tokens, ``logits`` of
        them through the LM head. Tabulated for every N up to a power of two, grown on demand."""
        if max(N, logits) >= len(self._tok_gemm_s):
            self._tabulate(max(N, logits) + 1)
        return self._tok_gemm_s[N] + self._head_gemm_s[max(1, logits)], self._tok_comm_s[N], self._eager_s

    def _tabulate(self, size: int) -> None:
        cap = 1 << max(10, (size - 1).bit_length())
        N = np.arange(1, cap)
        m, cm, tp = self.m, self.cm, self.tp
        h, d = m.hidden_size, m.head_dim_
        g = lambda n, k: cm.gemm_latency_s(N, n, k, self.gemm_prec)  # noqa: E731
        g16 = lambda n, k: cm.gemm_latency_s(N, n, k)  # noqa: E731   (router, LM head, MLA's absorbed BMMs)
        if m.mla is None:
            gate = self.heads * d if m.attn_output_gate else 0      # the output gate's q-sized projection
            qkv = g(self.heads * d + gate + 2 * max(1, m.num_key_value_heads // tp) * d, m.qkv_in_multiplier * h)
            o = g(h, self.heads * d)
        else:
            # absorbed MLA: q (through the q latent if any), kv_a to the shared latent, the per-head
            # W_UK / W_UV products (batched GEMMs of the same flops and weight bytes), o_proj
            a, H = m.mla, self.heads
            qk = a.qk_nope_head_dim + a.qk_rope_head_dim
            qkv = (g(a.q_lora_rank, h) + g(H * qk, a.q_lora_rank) if a.q_lora_rank else g(H * qk, h))
            qkv = qkv + g(a.latent_dim, h) + g16(H * a.kv_lora_rank, a.qk_nope_head_dim) + g16(H * a.v_head_dim, a.kv_lora_rank)
            if m.sparse_attention is not None:     # DSA's indexer: q from the q latent, one key, head weights
                sa = m.sparse_attention
                qkv = qkv + g16(sa.index_n_heads * sa.index_head_dim, a.q_lora_rank) + g16(sa.index_head_dim + sa.index_n_heads, h)
            o = g(h, H * a.v_head_dim)
        layers = m.num_hidden_layers
        mats = 3 if m.gated_ffn else 2
        gemm_s = (layers - self.linear_layers) * (qkv + o)
        if self.linear_layers:      # in_proj_qkvz, in_proj_ba and out_proj of the linear-attention layers
            hv, _, dv, conv = m.linear_attention.per_gpu(tp)
            gemm_s = gemm_s + self.linear_layers * (g(conv + hv * dv, h) + g16(2 * hv, h) + g(h, hv * dv))
        if layers > m.num_moe_layers:
            ffn = g((mats - 1) * m.intermediate_size // tp, h) + g(h, m.intermediate_size // tp)
            gemm_s += (layers - m.num_moe_layers) * ffn
        if m.moe:
            moe_dense = g16(m.moe.num_experts, h)                # router
            if m.moe.shared_expert_intermediate_size:
                si = m.moe.shared_expert_intermediate_size // tp
                moe_dense = moe_dense + g(2 * si, h) + g(h, si)
            gemm_s += m.num_moe_layers * moe_dense
        if m.fc_in_multiplier:
            gemm_s += g(h, m.fc_in_multiplier * h)
        comm_s = self._comm(N)
        zero = np.zeros(1)
        self._tok_gemm_s = np.concatenate([zero, gemm_s]).tolist()
        self._tok_comm_s = np.concatenate([zero, comm_s]).tolist()
        self._head_gemm_s = np.concatenate([zero, g16(max(1, m.vocab_size // tp), h)]).tolist()

    def _comm(self, N: np.ndarray) -> np.ndarray:
        """Collectives of the whole stack for N tokens on this rank. Without attention DP: two
        all-reduces per layer over the TP group (after attention and after the FFN/MoE), a third,
        of two floats a token, where q and k are normalised over all heads. With it:
        one after attention (TP group), one after a dense FFN; each MoE layer's tokens go to their
        experts and back, a dispatch + combine over the EP group (an all-gather + reduce-scatter,
        priced as one all-reduce of all ranks' tokens, unless the worker dispatches them: see
        ``Parallel.dispatches``)."""
        m, par, cm, tp = self.m, self.par, self.cm, self.tp
        h, layers, graphs = m.hidden_size, m.num_hidden_layers, par.cuda_graphs
        ar = lambda S, n: (cm.allreduce_latency_s(S, n, graphs) + network.inter_node_allreduce_s(cm.hw, S, n)  # noqa: E731
                           if n > 1 else 0.0 * S)
        # q and k norms over all heads: each token's two fp32 squared sums, summed over the TP group
        norm = layers * ar(N * 8.0, tp) if m.qk_norm_across_heads else 0.0 * N
        if par.data_parallel_size == 1 or not m.moe:
            return 2 * layers * ar(N * h * 2.0, tp) + norm
        moe_layers = m.num_moe_layers
        comm = (2 * layers - moe_layers) * ar(N * h * 2.0, tp)
        if par.dispatches:
            comm = comm + moe_layers * network.dispatch_combine_s(cm.hw, network.fit_for(cm.hw), N, m.moe.num_experts_per_tok,
                                                                  h, par.moe_ep)
            if par.moe_tp > 1:
                comm = comm + moe_layers * ar(N * h * 2.0, par.moe_tp)
        else:
            # every rank gathers the group's tokens, runs its experts on them, and the outputs are
            # reduce-scattered back (SGLang --moe-a2a-backend none, vLLM allgather_reducescatter)
            comm = comm + moe_layers * ar(N * par.data_parallel_size * h * 2.0, par.moe_group)
        return comm + norm

    def moe_loads(self, counts: np.ndarray) -> tuple:
        """(``CostModel._moe_loads`` of one layer's per-expert tokens, experts active on any rank)."""
        loads = self.cm._moe_loads(counts, self.m.moe.num_experts_per_tok, self.par.moe_ep)
        return loads, loads[1] if self.par.moe_ep <= 1 else int(np.count_nonzero(counts))

    def moe_part(self, counts: np.ndarray) -> tuple:
        """(expert time s, expert weight bytes read, distinct experts activated per layer) for all
        MoE layers, given one layer's expert loads."""
        return self.moe_part_from_loads(*self.moe_loads(counts))

    def moe_part_from_loads(self, loads: tuple, active: int) -> tuple:
        """``moe_part`` given ``CostModel._moe_loads`` of the counts and the experts active on any rank."""
        if not active:
            return 0.0, 0.0, 0
        m, par = self.m, self.par
        L = m.num_moe_layers
        prec = precision.served_moe(self.moe_prec, self.cm.framework, m.moe.gated, loads[0], par.tensor_parallel_size,
                                    par.data_parallel_size, self.cm.moe_fits)
        if par.dispatches:   # the kernel sees this rank's dispatched token-slots, not the group's
            loads = (max(1, round(loads[2] / m.moe.num_experts_per_tok)),) + tuple(loads[1:])
        moe_s = L * self.cm.moe_latency_from_loads(loads, m.hidden_size, m.moe.moe_intermediate_size, m.moe.num_experts,
                                                   m.moe.num_experts_per_tok, par.moe_tp, par.moe_ep, m.moe.gated, prec)
        mats = 3 if m.moe.gated else 2
        return (moe_s, L * active * mats * m.hidden_size * m.moe.moe_intermediate_size * self.moe_prec.weight_bytes,
                active)

    def dense_part(self, batch: Batch) -> StepCost:
        """Everything but the routed experts (an attention-DP rank's own share of a step)."""
        c = self._dense_part(batch)
        c.tokens = batch.num_tokens
        return c

    def group_forward(self, batch: Batch) -> StepCost:
        """A step of the whole attention-DP group with ``batch`` on every rank (expected routing):
        one rank's dense part, the MoE layers on all ranks' tokens. ``forward`` when DP is 1."""
        dp = self.par.data_parallel_size
        if dp == 1 or not self.m.moe:
            return self.forward(batch)
        c = self.dense_part(batch)
        if c.tokens:
            counts = expected_count_vector(c.tokens * dp, self.m.moe.num_experts, self.m.moe.num_experts_per_tok)
            c.moe_s, c.expert_weight_bytes, c.active_experts = self.moe_part(counts)
        return c

    def forward(self, batch: Batch, counts: np.ndarray | None = None) -> StepCost:
        """Target forward: dense part + MoE part (``counts`` = one layer's per-expert tokens)."""
        c = self._dense_part(batch)
        c.tokens = batch.num_tokens
        if self.m.moe and c.tokens:
            if counts is None:   # uniform routing in expectation
                counts = expected_count_vector(c.tokens, self.m.moe.num_experts, self.m.moe.num_experts_per_tok)
            c.moe_s, c.expert_weight_bytes, c.active_experts = self.moe_part(counts)
        return c

    def plain_decode(self, num_decode: int):
        """Pricer of plain decode steps of ``num_decode`` sequences (one query token each, no prefill):
        ``price(ctx_mean)`` equals ``dense_part(Batch(num_decode, 1, ctx_mean))``, the context-free part
        computed once (the caller adds the MoE layers: ``moe_part_from_loads``)."""
        gemm_s, comm_s, overhead_s = self._token_part(num_decode, num_decode)

        def price(ctx_mean: float) -> StepCost:
            return StepCost(attention_s=self._attention_all_layers(num_decode, 1, ctx_mean), gemm_s=gemm_s,
                            comm_s=comm_s, overhead_s=overhead_s, tokens=num_decode)
        return price
