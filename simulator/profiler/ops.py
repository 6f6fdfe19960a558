"""The measured callables. Each builder allocates its tensors once and returns (fn, kernel_source)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..cost import routing

DTYPE = torch.bfloat16


def gemm(m: int, n: int, k: int, dev) -> tuple:
    """y[m, n] = x[m, k] @ w[k, n], weights stored [n, k] as nn.Linear does (cuBLAS on a GPU)."""
    x = torch.randn(m, k, device=dev, dtype=DTYPE)
    w = torch.randn(n, k, device=dev, dtype=DTYPE) * 0.02
    return (lambda: F.linear(x, w)), "torch_linear"


def _grouped_ok(dev) -> bool:
    """torch._grouped_mm exists and agrees with a per-expert loop on a small problem."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        a = torch.randn(40, 64, device=dev, dtype=DTYPE)
        b = torch.randn(3, 32, 64, device=dev, dtype=DTYPE)
        offs = torch.tensor([16, 16, 40], device=dev, dtype=torch.int32)   # includes an empty group
        y = torch._grouped_mm(a, b.transpose(-2, -1), offs=offs)
        ref = torch.cat([a[:16] @ b[0].T, a[16:40] @ b[2].T])
        return bool(torch.allclose(y.float(), ref.float(), rtol=2e-2, atol=2e-1))
    except Exception:  # not built for this device / version: the loop reference is used instead
        return False


class ExpertMLP:
    """Experts of one MoE layer on one rank: gather -> gate_up -> act -> down -> weighted scatter-add.

    Uses a grouped GEMM (torch._grouped_mm, CUTLASS on Hopper) when it works, else loops over the
    active experts (the torch reference)."""

    def __init__(self, hidden: int, inter: int, num_experts: int, dev, gated: bool = True,
                 grouped: bool | None = None):
        self.h, self.i, self.e, self.gated = hidden, inter, num_experts, gated
        width = 2 * inter if gated else inter
        self.w1 = torch.randn(num_experts, width, hidden, device=dev, dtype=DTYPE) * 0.02
        self.w2 = torch.randn(num_experts, hidden, inter, device=dev, dtype=DTYPE) * 0.02
        self.grouped = _grouped_ok(dev) if grouped is None else grouped
        self.source = "torch_grouped_mm" if self.grouped else "torch_expert_loop"

    def _act(self, h):
        return F.silu(h[:, :self.i]) * h[:, self.i:] if self.gated else F.gelu(h)

    def __call__(self, x, token_idx, offs, slot_weight, bounds=None):
        """x [T, H]; token_idx [S] the token of each expert-sorted slot; offs [E] int32 cumulative
        slot ends; slot_weight [S, 1]. `bounds` (host ints) is needed by the loop only."""
        xs = x.index_select(0, token_idx)
        if self.grouped:
            a = self._act(torch._grouped_mm(xs, self.w1.transpose(-2, -1), offs=offs))
            y = torch._grouped_mm(a, self.w2.transpose(-2, -1), offs=offs)
        else:
            y = torch.empty(xs.shape[0], self.h, device=x.device, dtype=x.dtype)
            for e, (s, t) in enumerate(zip(bounds[:-1], bounds[1:])):
                if t > s:
                    y[s:t] = self._act(xs[s:t] @ self.w1[e].T) @ self.w2[e].T
        out = torch.zeros_like(x)
        return out.index_add_(0, token_idx, y * slot_weight)


def moe(num_tokens: int, hidden: int, inter: int, num_experts: int, topk: int, tp: int, ep: int,
        distribution: str, dev, gated: bool = True, seed: int = 0, grouped: bool | None = None) -> tuple:
    """The experts part of one MoE layer on the busiest rank, with the trace collectors' routing
    (simulator.cost.routing.collector_counts): what the `moe` trace rows time."""
    counts = routing.collector_counts(num_tokens, num_experts, topk, ep, distribution, np.random.default_rng(seed))
    experts = ExpertMLP(hidden, inter // tp, len(counts), dev, gated, grouped)
    slots = int(counts.sum())
    bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    # Slot s of the expert-sorted list belongs to token s mod T: every token appears K times.
    token_idx = torch.arange(slots, device=dev) % num_tokens
    offs = torch.tensor(bounds[1:], device=dev, dtype=torch.int32)
    w = torch.rand(slots, 1, device=dev, dtype=DTYPE)
    x = torch.randn(num_tokens, hidden, device=dev, dtype=DTYPE)
    return (lambda: experts(x, token_idx, offs, w, bounds)), experts.source


def verify_mask(q_len: int, kv_len: int, dev):
    """Causal inside the last q_len positions, everything before visible. The lower-right causal
    bias keeps SDPA on its flash / memory-efficient kernels (a dense bool mask would not)."""
    try:
        from torch.nn.attention.bias import causal_lower_right
        return causal_lower_right(q_len, kv_len)
    except ImportError:   # older torch: a dense mask, same result, slower kernel
        return torch.ones(q_len, kv_len, device=dev, dtype=torch.bool).tril(kv_len - q_len)


def _sdpa(q, k, v, mask=None, causal=False):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                          enable_gqa=k.shape[1] != q.shape[1])


def attention_decode(batch: int, context: int, heads: int, kv_heads: int, head_dim: int, dev,
                     q_len: int = 1) -> tuple:
    """q_len query tokens per sequence against `context` cached tokens (+ themselves, causal inside
    the block, as verification of k drafts with q_len = k + 1)."""
    q = torch.randn(batch, heads, q_len, head_dim, device=dev, dtype=DTYPE)
    k = torch.randn(batch, kv_heads, context + q_len, head_dim, device=dev, dtype=DTYPE)
    v = torch.randn_like(k)
    mask = verify_mask(q_len, context + q_len, dev) if q_len > 1 else None
    return (lambda: _sdpa(q, k, v, mask)), "torch_sdpa"


def attention_prefill(batch: int, isl: int, heads: int, kv_heads: int, head_dim: int, dev) -> tuple:
    q = torch.randn(batch, heads, isl, head_dim, device=dev, dtype=DTYPE)
    k = torch.randn(batch, kv_heads, isl, head_dim, device=dev, dtype=DTYPE)
    v = torch.randn_like(k)
    return (lambda: _sdpa(q, k, v, causal=True)), "torch_sdpa"
