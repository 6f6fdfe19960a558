"""Roofline kernel-time formulas: pure, vectorised (numpy arrays in, arrays out), no state.

Each op returns its terms in seconds plus the flops and bytes it moves, given
- ``hw``: datasheet figures of one GPU (:class:`simulator.config.gpu.Hardware`), and
- ``p``: that GPU's fitted efficiency parameters for the op (a dict of floats, see ``PARAMS``).

Shape of every formula: ``overhead + softmax_q(compute, memory)``, where compute and memory are
FLOPs / (peak x efficiency) and bytes / (bandwidth x efficiency); the q-norm blends the two
bounds smoothly around the ridge point. ``l2_warm`` models the benchmark artefact of a working
set that stays in L2 between repeats (trace collection); serving runs cold (each layer's weights
and KV differ, so nothing stays resident across a forward pass).
"""

from __future__ import annotations

import numpy as np

from ..config.precision import PRECISIONS, padded

BF16 = PRECISIONS["bf16"]

# Fitted parameters per op: name -> (initial, lower, upper). Efficiencies are dimensionless and
# transfer between GPUs; *_s terms are absolute overheads in seconds.
PARAMS = {
    "gemm": {
        "eff_compute": (0.7, 0.05, 1.0), "eff_memory": (0.8, 0.2, 1.2), "overhead_s": (2.5e-6, 1e-7, 5e-4),
        "l2_gain": (2.0, 1.0, 6.0), "q": (3.0, 1.5, 8.0), "wave_beta": (0.5, 1e-3, 1.0),
        "l2_fit_frac": (0.5, 0.1, 3.0), "k_loop_s": (5e-10, 1e-13, 1e-7), "min_m": (16.0, 1.0, 128.0),
    },
    # MoE memory efficiency down to 5% of HBM: vLLM 0.24's per-tensor FP8 experts (FlashInfer CUTLASS)
    # run at 13-19% on Hopper (H200's table held out: 8.3/24.2% median/p90 at the old 0.2 floor, 4.8/15.0% now)
    "moe": {
        "eff_compute": (0.6, 0.05, 1.0), "eff_memory": (0.8, 0.05, 1.2), "overhead_s": (1e-5, 1e-6, 1e-4),
        "expert_s": (1e-7, 1e-9, 1e-5), "l2_gain": (2.0, 1.0, 6.0), "q": (3.0, 1.5, 8.0),
        "l2_fit_frac": (0.5, 0.1, 3.0), "misaligned_factor": (2.5, 1.0, 5.0), "k_loop_s": (1e-9, 1e-12, 1e-7),
        "occupancy": (1.0, 0.05, 4.0), "eff_elementwise": (0.5, 0.01, 5.0), "ep_overhead_s": (5e-6, 1e-8, 1e-4),
    },
    "attention_generation": {
        "eff_compute": (0.3, 0.01, 1.0), "eff_memory": (0.7, 0.1, 1.2), "overhead_s": (1e-5, 1e-7, 1e-4),
        "per_seq_s": (2e-7, 1e-10, 1e-5), "l2_gain": (2.0, 1.0, 6.0), "l2_fit_frac": (0.5, 0.1, 3.0),
        "q": (3.0, 1.5, 8.0),
    },
    "mla_generation": {
        "eff_compute": (0.3, 0.01, 1.0), "eff_memory": (0.7, 0.1, 1.2), "overhead_s": (1e-5, 1e-7, 1e-4),
        "per_seq_s": (2e-7, 1e-10, 1e-5), "l2_gain": (2.0, 1.0, 6.0), "l2_fit_frac": (0.5, 0.1, 3.0),
        "q": (3.0, 1.5, 8.0),
    },
    "attention_context": {
        "eff_compute": (0.5, 0.01, 1.0), "eff_memory": (0.7, 0.1, 1.2), "overhead_s": (1e-5, 1e-7, 1e-4),
        "q": (3.0, 1.5, 8.0), "tile_tokens": (64.0, 1.0, 256.0),
    },
    "allreduce": {
        "latency_s": (5e-6, 1e-7, 1e-3), "eff_link": (0.5, 0.01, 2.0), "q": (2.0, 1.0, 8.0),
    },
}


# The terms of a GEMM/MoE formula that are times and those that divide a time (efficiencies): scaling
# the first by s and dividing the second by s makes the kernel take s x the time at every shape.
_TIME_TERMS = {"gemm": ("overhead_s", "k_loop_s"), "moe": ("overhead_s", "expert_s", "k_loop_s", "ep_overhead_s")}
_RATE_TERMS = {"gemm": ("eff_compute", "eff_memory"), "moe": ("eff_compute", "eff_memory", "eff_elementwise")}
# Fractions of a datasheet peak (tensor-core FLOP/s, HBM bandwidth); eff_elementwise is not one (it
# stands for fused elementwise passes of unknown count).
_PEAK_BOUND = ("eff_compute", "eff_memory")


def time_scaled(op: str, p: dict, scale: float, fixed_scale: float | None = None) -> dict:
    """Parameters of a kernel that takes ``scale`` x the time of ``p``'s at every shape (the formula
    is homogeneous: every term is a time or one over a rate, and the smooth max keeps the scale),
    except where that would beat the datasheet: a scale below 1 raises the compute and memory
    efficiencies to at most 1 (or the fitted value where already above it). A serving path may run
    faster than its collector timed the kernel (tuned tactics, fused quantisation), not faster than
    the tensor cores and HBM allow: an FP8 expert batch reading all its experts' weights stays
    bandwidth-bound however slow its table. ``fixed_scale`` (default ``scale``) scales the fixed terms
    alone (launch and setup, the k-loop and per-expert latency): those that do not grow with the
    tokens, e.g. a collector's per-op setup that a serving path under CUDA graphs with fused
    quantisation does not pay."""
    fixed = scale if fixed_scale is None else fixed_scale
    if scale == 1.0 and fixed == 1.0:
        return p
    rates = {k: p[k] / scale if k not in _PEAK_BOUND else min(p[k] / scale, max(p[k], 1.0))
             for k in _RATE_TERMS[op]}
    return {**p, **{k: p[k] * fixed for k in _TIME_TERMS[op]}, **rates}


def smooth_max(a, b, q):
    """Smooth max: (a^q + b^q)^(1/q), computed without overflow."""
    m = np.maximum(np.maximum(a, b), 1e-30)
    return m * ((a / m) ** q + (b / m) ** q) ** (1.0 / q)


def _l2_bandwidth(hw, p, working_set_bytes, l2_warm):
    """Effective memory bandwidth: HBM x efficiency, boosted when the working set stays in L2."""
    base = hw.hbm_bytes_per_s * p["eff_memory"]
    if not l2_warm:
        return base + 0.0 * working_set_bytes
    resident = 1.0 / (1.0 + (working_set_bytes / (hw.l2_bytes * p["l2_fit_frac"])) ** 3)
    return base * (1.0 + (p["l2_gain"] - 1.0) * resident)


def gemm(hw, p, m, n, k, prec=BF16, l2_warm=False, l2_weight_copies=1):
    """y[m, n] = x[m, k] @ w[k, n]; m is the token count; ``prec`` (:class:`~simulator.config.precision.Precision`)
    sets weight and activation bytes and the tensor-core peak. ``l2_weight_copies``: with ``l2_warm``,
    how many distinct weight matrices a timed loop cycles through on the same input (their sum
    decides L2 residency; AIConfigurator's collector times six layers back to back)."""
    m, n, k = (np.asarray(v, dtype=float) for v in (m, n, k))
    flops = 2.0 * m * n * k
    tiles = np.ceil(m / 128.0) * np.ceil(n / 128.0)
    waves = np.ceil(tiles / hw.num_sms)
    wave_eff = (tiles / (waves * hw.num_sms)) ** p["wave_beta"]
    compute = (2.0 * np.maximum(m, p["min_m"]) * n * k
               / (hw.peak_flops_per_s(prec.tensor_core) * p["eff_compute"] * wave_eff))
    bytes_ = prec.act_bytes * m * k + prec.weight_bytes * k * n + 2.0 * m * n
    l2_set = bytes_ + (np.asarray(l2_weight_copies, dtype=float) - 1.0) * prec.weight_bytes * k * n
    memory = bytes_ / _l2_bandwidth(hw, p, l2_set, l2_warm)
    overhead = p["overhead_s"] + p["k_loop_s"] * k
    # W8A8/W4A4: the bf16 input is read and written quantised by its own kernel before the GEMM
    quant = (2.0 + prec.act_bytes) * m * k / (hw.hbm_bytes_per_s * p["eff_memory"]) if prec.quantizes_activations else 0.0 * m
    return {"latency_s": overhead + quant + smooth_max(compute, memory, p["q"]), "compute_s": compute,
            "memory_s": memory + quant, "overhead_s": overhead + 0 * m, "flops": flops, "bytes": bytes_}


# MoE kernels whose permute, activation and finalize passes cover only the token-slots routed to the
# rank's own experts: TensorRT-LLM's fused MoE sorts every other slot past
# ``expert_first_token_offset[num_experts_per_node]`` and loops its elementwise kernels to that bound
# (cpp/tensorrt_llm/kernels/cutlass_kernels/moe_gemm/moe_kernels.cu, ``num_valid_tokens``). Under
# expert parallel the Triton fused MoE of vLLM and SGLang runs its activation and sum over all of them.
# Held out, TensorRT-LLM's tables (benchmarks/precision_accuracy.py): README "Precisions, architectures,
# framework kernels"; every vLLM and SGLang table did worse with it, so their kernels keep every slot.
LOCAL_SLOT_MOE = frozenset({"moe_torch_flow_cutlass", "deepgemm"})


def moe(hw, p, active_experts, slots, padded_slots, num_tokens, topk, hidden, inter_local,
        gated=True, ep_size=1, prec=BF16, l2_warm=False, l2_experts=None, pad=(1, 1)):
    """Fused MoE layer on the busiest rank (both expert GEMMs, activation, align/sort, reduce).

    ``active_experts``/``slots``/``padded_slots`` describe that rank's experts: how many got at
    least one token, token-slots routed to them, and slots padded to the kernel's 16-row blocks.
    ``num_tokens * topk`` token-slots pass through the elementwise kernels on every rank, or, with
    ``p["local_slots"]`` (a kernel in ``LOCAL_SLOT_MOE``), only the rank's own ``slots``.
    ``inter_local`` is the expert intermediate size after TP sharding. ``l2_experts``: with
    ``l2_warm``, the distinct experts a timed loop cycles through (the collector times five
    power-law routings back to back); their weights decide L2 residency. Default: the active ones.
    ``pad``: the multiples the framework rounds ``inter_local`` and ``hidden`` up to in its weight
    layout (``precision.expert_padding``); the kernel runs the padded widths.
    """
    a, s, ps = (np.asarray(v, dtype=float) for v in (active_experts, slots, padded_slots))
    T, K, h, i = (np.asarray(v, dtype=float) for v in (num_tokens, topk, hidden, inter_local))
    i, h = padded(i, pad[0]), padded(h, pad[1])
    mats = np.where(np.asarray(gated), 3.0, 2.0)
    weight_bytes = a * mats * h * i * prec.weight_bytes
    act_bytes = 2.0 * s * h * 2.0
    l2_set = weight_bytes if l2_experts is None else np.asarray(l2_experts, dtype=float) * mats * h * i * prec.weight_bytes
    bw = _l2_bandwidth(hw, p, l2_set, l2_warm)
    ctas = ps / 16.0 * np.ceil(mats / 3.0 * 2.0 * i / 128.0)
    fill = np.minimum(1.0, ctas / (hw.num_sms * p["occupancy"])) ** 0.5
    memory = (weight_bytes + act_bytes) / bw / np.maximum(fill, 1e-3)
    flops = 2.0 * s * mats * h * i
    compute = 2.0 * ps * mats * h * i / (hw.peak_flops_per_s(prec.tensor_core) * p["eff_compute"])
    passed = np.where(p.get("local_slots", 0.0) > 0, s, T * K)
    elementwise = passed * (3.0 * i + 2.0 * h) * 2.0 / (hw.hbm_bytes_per_s * p["eff_elementwise"])
    overhead = (p["overhead_s"] + p["ep_overhead_s"] * (np.asarray(ep_size) > 1)
                + p["expert_s"] * a + p["k_loop_s"] * h)
    misaligned = np.where(np.mod(i, 16.0) != 0, p["misaligned_factor"], 1.0)
    latency = (overhead + elementwise + smooth_max(compute, memory, p["q"])) * misaligned
    return {"latency_s": latency, "compute_s": compute, "memory_s": memory, "overhead_s": overhead,
            "elementwise_s": elementwise, "flops": flops, "bytes": weight_bytes + act_bytes,
            "weight_bytes": weight_bytes}


def attention_generation(hw, p, batch_size, context_len, num_heads, num_kv_heads, head_dim,
                         q_len=1, kv_bytes_per_el=2.0, l2_warm=False):
    """Decode attention: each of B sequences attends q_len query tokens over context_len keys."""
    B, L, H, KV, D, Q = (np.asarray(v, dtype=float) for v in
                         (batch_size, context_len, num_heads, num_kv_heads, head_dim, q_len))
    kv_bytes = B * L * 2.0 * KV * D * kv_bytes_per_el
    bytes_ = kv_bytes + B * Q * H * D * 2.0 * 2.0
    flops = 4.0 * B * Q * L * H * D
    memory = bytes_ / _l2_bandwidth(hw, p, kv_bytes, l2_warm)
    compute = flops / (hw.peak_flops_per_s() * p["eff_compute"])
    overhead = p["overhead_s"] + p["per_seq_s"] * B
    return {"latency_s": overhead + smooth_max(compute, memory, p["q"]), "compute_s": compute,
            "memory_s": memory, "overhead_s": overhead, "flops": flops, "bytes": bytes_}


MLA_LATENT = 576     # DeepSeek-V3/R1, Kimi-K2: kv_lora_rank 512 + rope 64 (the MLA tables' only shape)


def mla_generation(hw, p, batch_size, context_len, num_heads, latent_dim=MLA_LATENT, q_len=1, kv_bytes_per_el=2.0,
                   l2_warm=False):
    """Absorbed MLA decode: every local head attends over one shared latent (+ rope key) per token,
    read once. The attention_generation roofline with a single "K+V" vector of ``latent_dim``."""
    return attention_generation(hw, p, batch_size, context_len, num_heads, 0.5, latent_dim, q_len, kv_bytes_per_el,
                                l2_warm)


def attention_context(hw, p, batch_size, seq_len, num_heads, num_kv_heads, head_dim,
                      prefix_len=0, kv_bytes_per_el=2.0, l2_warm=False):
    """Prefill attention (causal) of seq_len new tokens over prefix_len + seq_len keys."""
    B, S, H, KV, D, P = (np.asarray(v, dtype=float) for v in
                         (batch_size, seq_len, num_heads, num_kv_heads, head_dim, prefix_len))
    s_pad = padded(S, p["tile_tokens"])
    flops = 4.0 * B * H * D * S * (P + S / 2.0)
    compute = 4.0 * B * H * D * s_pad * (P + s_pad / 2.0) / (hw.peak_flops_per_s() * p["eff_compute"])
    bytes_ = B * (S * H * D * 2.0 * 2.0 + (P + S) * 2.0 * KV * D * kv_bytes_per_el)
    memory = bytes_ / (hw.hbm_bytes_per_s * p["eff_memory"])
    overhead = p["overhead_s"] + 0.0 * B
    return {"latency_s": overhead + smooth_max(compute, memory, p["q"]), "compute_s": compute,
            "memory_s": memory, "overhead_s": overhead, "flops": flops, "bytes": bytes_}


def allreduce(hw, p, message_bytes, num_gpus):
    """Ring all-reduce: latency + 2(n-1)/n x message / (link bandwidth x efficiency)."""
    S, n = (np.asarray(v, dtype=float) for v in (message_bytes, num_gpus))
    wire = 2.0 * (n - 1.0) / n * S
    memory = wire / (hw.link_bytes_per_s * p["eff_link"])
    overhead = p["latency_s"] + 0.0 * S
    return {"latency_s": smooth_max(overhead, memory, p["q"]) + 0.0 * memory, "compute_s": 0.0 * S,
            "memory_s": memory, "overhead_s": overhead, "flops": 0.0 * S, "bytes": wire}
