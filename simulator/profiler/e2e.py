"""End-to-end decoder layers with a model's real dimensions and random weights: the time of one
forward with 1 vs k+1 query tokens per sequence over batch sizes, i.e. the raw target-efficiency
curve eta(B, k) = T(B, 1) / T(B, k+1) on the device (moesd-theory.md, "target efficiency").

Plain torch with the ops vLLM runs (cuBLAS GEMMs, grouped expert GEMMs, SDPA), captured in a CUDA
graph on a GPU as vLLM's decode is, so launch gaps do not hide the memory-bound regime. A few
layers are timed; a layer's cost does not depend on its depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .harness import measure
from .ops import DTYPE, ExpertMLP, _sdpa, verify_mask


def _rms(x, w, eps=1e-6):
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


class DecoderLayer:
    """Attention (GQA, KV cache of `context` tokens) + FFN: dense, or routed experts (+ shared expert)."""

    def __init__(self, arch: dict, dev, batch: int, q_len: int, context: int, tp: int = 1):
        h = arch["hidden_size"]
        self.heads = arch["num_attention_heads"] // tp
        self.kv_heads = max(1, arch.get("num_key_value_heads", arch["num_attention_heads"]) // tp)
        self.d = arch.get("head_dim") or h // arch["num_attention_heads"]
        self.b, self.q = batch, q_len
        r = lambda *s: torch.randn(*s, device=dev, dtype=DTYPE) * 0.02  # noqa: E731
        self.norm1, self.norm2 = torch.ones(h, device=dev, dtype=DTYPE), torch.ones(h, device=dev, dtype=DTYPE)
        self.wqkv = r((self.heads + 2 * self.kv_heads) * self.d, h)
        self.wo = r(h, self.heads * self.d)
        self.k = r(batch, self.kv_heads, context + q_len, self.d)
        self.v = r(batch, self.kv_heads, context + q_len, self.d)
        self.ctx = context
        self.mask = verify_mask(q_len, context + q_len, dev) if q_len > 1 else None
        moe = arch.get("moe")
        self.moe = moe
        if moe:
            self.e, self.topk = moe["num_experts"], moe["num_experts_per_tok"]
            self.router = r(self.e, h)
            self.experts = ExpertMLP(h, moe["moe_intermediate_size"] // tp, self.e, dev, moe.get("gated", True))
            if self.experts.source != "torch_grouped_mm":
                raise RuntimeError("end-to-end MoE timing needs torch._grouped_mm (a per-expert loop is "
                                   "not what a serving engine runs)")
            si = moe.get("shared_expert_intermediate_size", 0) // tp
            self.shared = (r(2 * si, h), r(h, si), r(1, h)) if si else None
        else:
            inter = arch["intermediate_size"] // tp
            self.gated = arch.get("gated_ffn", True)
            self.w1 = r((2 if self.gated else 1) * inter, h)
            self.w2 = r(h, inter)

    def _ffn(self, x):
        if not self.moe:
            u = F.linear(x, self.w1)
            n = self.w2.shape[1]
            a = F.silu(u[:, :n]) * u[:, n:] if self.gated else F.relu(u)
            return F.linear(a, self.w2)
        probs = F.softmax(F.linear(x, self.router).float(), dim=-1)
        weight, ids = probs.topk(self.topk, dim=-1)
        flat = ids.flatten()
        order = flat.argsort(stable=True)
        counts = torch.zeros(self.e, device=x.device, dtype=torch.int32).scatter_add_(
            0, flat.int(), torch.ones_like(flat, dtype=torch.int32))
        offs = counts.cumsum(0, dtype=torch.int32)
        out = self.experts(x, order // self.topk, offs, weight.flatten()[order].unsqueeze(1).to(x.dtype))
        if self.shared is not None:
            wgu, wd, wg = self.shared
            u = F.linear(x, wgu)
            n = wd.shape[1]
            out = out + F.linear(F.silu(u[:, :n]) * u[:, n:], wd) * torch.sigmoid(F.linear(x, wg))
        return out

    def __call__(self, x):
        hn = _rms(x, self.norm1)
        qkv = F.linear(hn, self.wqkv)
        nq, nk = self.heads * self.d, self.kv_heads * self.d
        q = qkv[:, :nq].view(self.b, self.q, self.heads, self.d).transpose(1, 2)
        k = qkv[:, nq:nq + nk].view(self.b, self.q, self.kv_heads, self.d).transpose(1, 2)
        v = qkv[:, nq + nk:].view(self.b, self.q, self.kv_heads, self.d).transpose(1, 2)
        self.k[:, :, self.ctx:].copy_(k)       # append this step's KV (as the paged cache write does)
        self.v[:, :, self.ctx:].copy_(v)
        a = _sdpa(q, self.k, self.v, self.mask).transpose(1, 2).reshape(self.b * self.q, nq)
        x = x + F.linear(a, self.wo)
        return x + self._ffn(_rms(x, self.norm2))


def time_forward(arch: dict, dev, batch: int, q_len: int, context: int, layers: int, tp: int = 1,
                 graphs: bool = True):
    """Timing of `layers` decoder layers for `batch` sequences x `q_len` query tokens."""
    stack = [DecoderLayer(arch, dev, batch, q_len, context, tp) for _ in range(layers)]
    x = torch.randn(batch * q_len, arch["hidden_size"], device=dev, dtype=DTYPE)

    def forward():
        y = x
        for layer in stack:
            y = layer(y)
        return y

    fn = forward
    if graphs and dev.type == "cuda":
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                forward()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            forward()
        fn = graph.replay
    t = measure(fn, dev)
    return t
