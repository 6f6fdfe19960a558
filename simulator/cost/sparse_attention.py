"""DeepSeek sparse attention (DSA): the lightning indexer's time, and how many keys the sparse MLA
attention reads.

Each query's indexer scores every cached token (``index_n_heads`` dot products of ``index_head_dim``
in FP8 against the cached FP8 keys), and the attention then reads the ``index_topk`` best
(DeepSeek-V3.2-Exp report, "DeepSeek Sparse Attention"). No collected kernel table times the indexer,
so it is priced by its bytes and flops at the same GPU and framework's decode- and prefill-attention
efficiencies; a run says so (``sparse_attention`` in its summary). The attention itself is priced on
the framework's MLA tables at the keys it reads.
"""

from __future__ import annotations

from .kernels import smooth_max

PRICING = ("MLA tables at the top-k keys read; the indexer by roofline at this GPU and framework's "
           "attention fits (no kernel table times it)")


def keys_per_query(topk: int, chunk: int, prefix: int) -> float:
    """Mean keys a causal query of a ``chunk`` after ``prefix`` cached tokens reads: its own
    position's, at most ``topk``."""
    below = max(0, min(chunk, topk - prefix))         # queries that still see fewer than topk keys
    total = below * prefix + below * (below + 1) / 2.0 + (chunk - below) * topk
    return total / chunk


def _fp8_roofline_s(hw, p, flops, bytes_) -> float:
    """Overhead plus the smooth max of FP8 compute and HBM traffic at the fit ``p``'s efficiencies."""
    memory = bytes_ / (hw.hbm_bytes_per_s * p["eff_memory"])
    compute = flops / ((hw.fp8_flops_per_s or hw.bf16_flops_per_s) * p["eff_compute"])
    return float(p["overhead_s"] + smooth_max(compute, memory, p["q"]))


def indexer_decode(hw, p, sa, num_seqs: int, q_len: int, ctx: float) -> float:
    """One layer's indexer for a decode step (``p``: the decode-attention fit): every query against
    every cached key."""
    bytes_ = num_seqs * ctx * sa.key_bytes_per_token + num_seqs * q_len * sa.index_n_heads * sa.index_head_dim
    flops = 2.0 * num_seqs * q_len * sa.index_n_heads * sa.index_head_dim * ctx
    return _fp8_roofline_s(hw, p, flops, bytes_)


def indexer_prefill(hw, p, sa, chunk: int, prefix: int) -> float:
    """One layer's indexer for a prompt chunk (``p``: the prefill-attention fit), causal."""
    flops = 2.0 * sa.index_n_heads * sa.index_head_dim * chunk * (prefix + chunk / 2.0)
    bytes_ = (prefix + chunk) * sa.key_bytes_per_token + chunk * sa.index_n_heads * sa.index_head_dim
    return _fp8_roofline_s(hw, p, flops, bytes_)


def layer_time(cm, sa, decode_attention, prefill_attention, num_decode: int, q: int, ctx: float, prefill,
               cache: dict) -> float:
    """One DSA layer of a step: MLA over the top-k keys (decode at the batch's mean context, capped;
    ``decode_attention(b, q, ctx)`` and ``prefill_attention(chunk, prefix)`` price dense MLA), the
    indexer over every cached key; a prompt chunk's attention scaled to the keys it reads."""
    t = 0.0
    if num_decode:
        t += decode_attention(num_decode, q, min(ctx, sa.index_topk))
        t += indexer_decode(cm.hw, cm.fit_params("attention_generation"), sa, num_decode, q, ctx)
    for chunk, prefix in prefill:
        if ("dsa_pre", chunk, prefix) not in cache:
            dense = prefix + chunk / 2.0
            cache[("dsa_pre", chunk, prefix)] = (
                prefill_attention(chunk, prefix) * keys_per_query(sa.index_topk, chunk, prefix) / dense
                + indexer_prefill(cm.hw, cm.fit_params("attention_context"), sa, chunk, prefix))
        t += cache[("dsa_pre", chunk, prefix)]
    return t
