"""Gated DeltaNet (linear attention) layers: roofline time of one layer, on one GPU.

No collected kernel table times these kernels (AIConfigurator's tables have none), so they are
priced by their bytes and flops at the efficiencies fitted for the same GPU and framework's attention
kernels: decode at the decode-attention fit (a bandwidth-bound pass over per-sequence state, as
decode attention is over the KV cache), prefill at the prefill-attention fit (chunked, tensor-core
bound like flash attention). A run says so (``linear_attention`` in its summary).

Decode reads and writes each sequence's recurrent state (``linear_num_value_heads`` matrices of
key x value head size, float32 in Qwen3.5) once per step and its short-convolution window; each
token updates the state with a rank-one delta and reads it out (about 6 x dk x dv flops a head).
Prefill runs the chunked form (Yang et al., "Gated Delta Networks", ICLR 2025): per token the same
state terms plus attention within its chunk of ``CHUNK`` tokens.
"""

from __future__ import annotations

import numpy as np

from .kernels import smooth_max

PRICING = "roofline at this GPU and framework's attention fits (no kernel table times Gated DeltaNet)"
CHUNK = 64    # chunk length of the chunked gated delta rule (flash-linear-attention's chunk_gated_delta_rule)


def decode(hw, p, la, num_seqs, q_len, tp: int = 1) -> dict:
    """One layer's decode: ``num_seqs`` sequences of ``q_len`` tokens each (``p``: the GPU's
    decode-attention fit)."""
    hv, dk, dv, conv = la.per_gpu(tp)
    B, Q = (np.asarray(v, dtype=float) for v in (num_seqs, q_len))
    io = B * Q * (conv + hv * dv) * 2.0 * 2.0          # q/k/v in (bf16) and the output, read and written
    bytes_ = 2.0 * B * la.state_bytes_per_seq(tp) + io  # the state and window each read and written
    flops = 6.0 * B * Q * hv * dk * dv
    memory = bytes_ / (hw.hbm_bytes_per_s * p["eff_memory"])
    compute = flops / (hw.peak_flops_per_s() * p["eff_compute"])
    overhead = p["overhead_s"] + p["per_seq_s"] * B
    return {"latency_s": overhead + smooth_max(compute, memory, p["q"]), "compute_s": compute,
            "memory_s": memory, "overhead_s": overhead, "flops": flops, "bytes": bytes_}


def prefill_time(hw, p, la, tokens, num_seqs=1, tp: int = 1) -> dict:
    """One layer's prefill of ``tokens`` new tokens over ``num_seqs`` sequences (``p``: the GPU's
    prefill-attention fit)."""
    hv, dk, dv, conv = la.per_gpu(tp)
    T, B = (np.asarray(v, dtype=float) for v in (tokens, num_seqs))
    flops = T * hv * (6.0 * dk * dv + 2.0 * CHUNK * (dk + dv))
    bytes_ = T * (conv + hv * dv) * 2.0 * 2.0 + 2.0 * B * hv * dk * dv * la.state_bytes_per_el
    memory = bytes_ / (hw.hbm_bytes_per_s * p["eff_memory"])
    compute = flops / (hw.peak_flops_per_s() * p["eff_compute"])
    overhead = p["overhead_s"] + 0.0 * T
    return {"latency_s": overhead + smooth_max(compute, memory, p["q"]), "compute_s": compute,
            "memory_s": memory, "overhead_s": overhead, "flops": flops, "bytes": bytes_}


def layer_time(cm, la, tp: int, num_decode: int, q: int, prefill, cache: dict) -> float:
    """One linear-attention layer of a step: decode over each sequence's state, each prompt chunk
    prefilled (cached per decode batch and per chunk, so the cache stays as small as the attention's)."""
    t = 0.0
    if num_decode:
        if ("lin_dec", num_decode, q) not in cache:
            cache[("lin_dec", num_decode, q)] = float(decode(cm.hw, cm.fit_params("attention_generation"), la, num_decode, q,
                                                             tp)["latency_s"])
        t += cache[("lin_dec", num_decode, q)]
    for chunk, _ in prefill:
        if ("lin_pre", chunk) not in cache:
            cache[("lin_pre", chunk)] = float(prefill_time(cm.hw, cm.fit_params("attention_context"), la, chunk, 1, tp)["latency_s"])
        t += cache[("lin_pre", chunk)]
    return t
