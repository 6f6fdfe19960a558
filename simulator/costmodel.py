"""The kernel cost model: one GPU, calibrated roofline + measured-residual tables.

Pure: no SimPy, no globals beyond read-only caches of files. Every call returns a
:class:`KernelCost` with the latency, its roofline terms, bytes moved, and which path answered
(``table`` = the exact shape was measured; ``roofline+neighbours``; ``roofline``), and whether
the GPU's parameters were transferred from another GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import gpu as gpu_mod
from . import kernels
from .errors import ConfigError
from .paths import GPU_SPECS_DIR
from .residuals import ResidualTable
from .routing import busiest_rank

OPS = ("gemm", "moe", "attention_generation", "attention_context", "allreduce")


@dataclass(frozen=True)
class KernelCost:
    op: str
    latency_s: float
    compute_s: float
    memory_s: float
    overhead_s: float
    flops: float
    bytes: float
    path: str
    gpu: str
    calibrated_on: str
    extra: dict = field(default_factory=dict)

    @property
    def transferred(self) -> bool:
        return self.gpu != self.calibrated_on

    def as_dict(self) -> dict:
        d = {"op": self.op, "gpu": self.gpu, "latency_ms": self.latency_s * 1e3,
             "compute_ms": self.compute_s * 1e3, "memory_ms": self.memory_s * 1e3,
             "overhead_ms": self.overhead_s * 1e3, "flops": self.flops, "bytes": self.bytes,
             "path": self.path,
             "calibration": (f"uncalibrated, transferred from {self.calibrated_on}" if self.transferred
                             else f"calibrated on {self.calibrated_on}")}
        d.update(self.extra)
        return d


def _pos(name, value):
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(f"must be a positive number, got {value}", field=name)


@functools.lru_cache(maxsize=None)
def _residual_tables(gpu_name: str) -> dict:
    path = GPU_SPECS_DIR / "calibration" / f"{gpu_name}_residuals.parquet"
    if not path.exists():
        return {}
    frame = pd.read_parquet(path)
    return {op: ResidualTable.from_frame(op, frame) for op in frame["op"].unique()}


class CostModel:
    """Kernel latencies on one GPU. ``l2_warm=True`` reproduces benchmark (trace) conditions."""

    def __init__(self, hw: gpu_mod.Hardware | str, l2_warm: bool = False, use_tables: bool = True):
        self.hw = gpu_mod.load(hw) if isinstance(hw, str) else hw
        self.source = gpu_mod.calibrated_source(self.hw)
        self.params = self.source.calibration.params
        self.l2_warm = l2_warm
        self.tables = _residual_tables(self.source.name) if use_tables else {}
        self._cache = {}
        self._lookups = {}

    def _p(self, op):
        if op not in self.params:
            raise ConfigError(f"gpu {self.source.name} has no calibration for {op}; run moesd calibrate",
                              field="gpu")
        return self.params[op]

    def _finish(self, op, terms, shape, key, size, extra=None) -> KernelCost:
        corr, path = 0.0, "roofline"
        table = self.tables.get(op)
        if table is not None:
            # Residuals vary slowly along the size axis: look up at 1/64-octave resolution, cached.
            ck = (op, tuple(shape), tuple(key), round(float(np.log2(max(size, 1.0))) * 64))
            hit = self._lookups.get(ck)
            if hit is None:
                hit = self._lookups[ck] = table.lookup(shape, key, size)
            corr, path = hit
        f = float(np.exp(corr))
        lat = float(terms["latency_s"]) * f
        return KernelCost(op, lat, float(terms["compute_s"]), float(terms["memory_s"]),
                          float(terms["overhead_s"]), float(terms["flops"]), float(terms["bytes"]), path,
                          self.hw.name, self.source.name, {**(extra or {}), "table_factor": f})

    def _cached(self, key, fn):
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = fn()
        return hit

    # --- ops -------------------------------------------------------------------------------

    def gemm(self, m: int, n: int, k: int, bytes_per_el: float = 2.0) -> KernelCost:
        for name, v in (("m", m), ("n", n), ("k", k)):
            _pos(name, v)

        def run():
            t = kernels.gemm(self.hw, self._p("gemm"), m, n, k, bytes_per_el, self.l2_warm)
            return self._finish("gemm", t, (n, k), (), m)
        return self._cached(("gemm", m, n, k, bytes_per_el), run)

    def moe_from_counts(self, counts: np.ndarray, hidden_size: int, inter_size: int, topk: int,
                        tp: int = 1, ep: int = 1, gated: bool = True, bytes_per_el: float = 2.0) -> KernelCost:
        """Fused MoE layer given the token count of every expert (length E, summing to T*K)."""
        counts = np.asarray(counts)
        E = len(counts)
        if E % ep:
            raise ConfigError(f"num_experts {E} is not divisible by expert-parallel size {ep}", field="moe_ep_size")
        for name, v in (("hidden_size", hidden_size), ("inter_size", inter_size), ("topk", topk), ("moe_tp_size", tp)):
            _pos(name, v)
        T = int(round(counts.sum() / topk))
        local = busiest_rank(counts, ep)
        act = local[local > 0]
        active, slots, padded = len(act), float(act.sum()), float((np.ceil(act / 16.0) * 16.0).sum())

        def run():   # the cost depends on the loads only through these features: cache on them
            t = kernels.moe(self.hw, self._p("moe"), active, slots, padded, T, topk, hidden_size, inter_size / tp,
                            gated, ep, bytes_per_el, self.l2_warm)
            return self._finish("moe", t, (hidden_size, inter_size, E, topk), (tp, ep, "balanced"), max(T, 1),
                                {"active_experts": active, "weight_bytes": float(t["weight_bytes"]),
                                 "tokens_per_active_expert": slots / max(active, 1)})
        return self._cached(("moe", active, slots, padded, T, hidden_size, inter_size, E, topk, tp, ep, gated,
                             bytes_per_el), run)

    def moe(self, num_tokens: int, hidden_size: int, inter_size: int, num_experts: int, topk: int,
            tp: int = 1, ep: int = 1, distribution: str = "uniform", gated: bool = True,
            rng: np.random.Generator | None = None, samples: int = 16) -> KernelCost:
        """MoE layer for T tokens under a routing distribution (mean over seeded samples).

        ``distribution``: uniform | power_law_<exponent> | balanced (round robin, as the traces).
        """
        from .routing import Routing, collector_counts
        _pos("num_tokens", num_tokens)
        _pos("num_experts", num_experts)
        if topk > num_experts:
            raise ConfigError(f"topk {topk} exceeds num_experts {num_experts}", field="topk")
        rng = rng or np.random.default_rng(0)
        if distribution == "balanced":
            draws = [collector_counts(num_tokens, num_experts, topk, 1, "balanced")]
        elif distribution == "uniform" or distribution.startswith("power_law"):
            r = (Routing() if distribution == "uniform"
                 else Routing("power_law", exponent=float(distribution.rsplit("_", 1)[-1])))
            draws = [r.sample_counts([num_tokens], num_experts, topk, rng) for _ in range(samples)]
        else:
            raise ConfigError(f"unknown distribution {distribution!r}; allowed: uniform, balanced, power_law_<a>",
                              field="distribution")
        costs = [self.moe_from_counts(c, hidden_size, inter_size, topk, tp, ep, gated) for c in draws]
        mean = lambda a: float(np.mean([getattr(c, a) for c in costs]))  # noqa: E731
        extra = {k: float(np.mean([c.extra[k] for c in costs])) for k in costs[0].extra}
        return KernelCost("moe", mean("latency_s"), mean("compute_s"), mean("memory_s"), mean("overhead_s"),
                          mean("flops"), mean("bytes"), costs[0].path, self.hw.name, self.source.name, extra)

    def attention_decode(self, batch_size: int, context_len: float, num_heads: int, num_kv_heads: int,
                         head_dim: int, q_len: int = 1, kv_bytes_per_el: float = 2.0) -> KernelCost:
        """Decode/verification attention: B sequences, mean context, q_len query tokens each."""
        for name, v in (("batch_size", batch_size), ("isl", context_len), ("num_heads", num_heads),
                        ("num_key_value_heads", num_kv_heads), ("head_dim", head_dim), ("q_len", q_len)):
            _pos(name, v)

        def run():
            t = kernels.attention_generation(self.hw, self._p("attention_generation"), batch_size, context_len,
                                             num_heads, num_kv_heads, head_dim, q_len, kv_bytes_per_el, self.l2_warm)
            return self._finish("attention_generation", t, (num_heads, num_kv_heads, head_dim, batch_size), (),
                                context_len)
        return self._cached(("attn_dec", batch_size, context_len, num_heads, num_kv_heads, head_dim, q_len,
                             kv_bytes_per_el), run)

    def attention_prefill(self, batch_size: int, seq_len: int, num_heads: int, num_kv_heads: int,
                          head_dim: int, prefix_len: int = 0) -> KernelCost:
        for name, v in (("batch_size", batch_size), ("isl", seq_len), ("num_heads", num_heads),
                        ("num_key_value_heads", num_kv_heads), ("head_dim", head_dim)):
            _pos(name, v)

        def run():
            t = kernels.attention_context(self.hw, self._p("attention_context"), batch_size, seq_len, num_heads,
                                          num_kv_heads, head_dim, prefix_len)
            return self._finish("attention_context", t, (num_heads, num_kv_heads, head_dim, batch_size), (),
                                seq_len + prefix_len)
        return self._cached(("attn_pre", batch_size, seq_len, num_heads, num_kv_heads, head_dim, prefix_len), run)

    def allreduce(self, message_bytes: float, num_gpus: int, cuda_graph: bool = True) -> KernelCost:
        """vLLM custom all-reduce; GPU counts without their own fit use the nearest measured one."""
        _pos("message_size", message_bytes)
        if num_gpus <= 1:
            return KernelCost("allreduce", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, "none", self.hw.name, self.source.name)
        backend = "vllm_graph" if cuda_graph else "vllm_eager"

        def run():
            fits = self._p("allreduce")
            counts = sorted({int(k.split(":")[0]) for k in fits})
            n_fit = min(counts, key=lambda c: abs(np.log2(c) - np.log2(num_gpus)))
            key = f"{n_fit}:{backend}" if f"{n_fit}:{backend}" in fits else next(k for k in fits if k.startswith(f"{n_fit}:"))
            t = kernels.allreduce(self.hw, fits[key], message_bytes, num_gpus)
            return self._finish("allreduce", t, (num_gpus,), (key.split(":")[1],), message_bytes)
        return self._cached(("ar", message_bytes, num_gpus, backend), run)

    def alltoall(self, message_bytes: float, num_gpus: int, cuda_graph: bool = True) -> KernelCost:
        """EP dispatch or combine, priced as an all-reduce of the same payload (same links, one pass)."""
        c = self.allreduce(message_bytes, num_gpus, cuda_graph)
        return KernelCost("alltoall", c.latency_s * 0.5 + c.overhead_s * 0.5, c.compute_s, c.memory_s * 0.5,
                          c.overhead_s, 0.0, c.bytes * 0.5, c.path, c.gpu, c.calibrated_on)
