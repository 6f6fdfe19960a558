"""The kernel cost model: one GPU, calibrated roofline + measured-residual tables.

Pure: no SimPy, no globals beyond read-only caches of files. Every call returns a
:class:`KernelCost` with the latency, its roofline terms, bytes moved, and which path answered
(``table`` = the exact shape was measured; ``roofline+neighbours``; ``roofline+same-tiles``;
``roofline``), and whether the GPU's parameters were transferred from another GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import gpu as gpu_mod
from . import kernels
from ..common.errors import ConfigError
from ..config.precision import Precision, expert_padding, served_moe
from .kernels import BF16
from .residuals import precision_tables, residual_tables
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
             "compute_ms": self.compute_s * 1e3, "memory_ms": self.memory_s * 1e3, "overhead_ms": self.overhead_s * 1e3,
             "flops": self.flops, "bytes": self.bytes, "path": self.path,
             "calibration": (f"uncalibrated, transferred from {self.calibrated_on}" if self.transferred
                             else f"calibrated on {self.calibrated_on}")}
        d.update(self.extra)
        return d


def _pos(name, value):
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(f"must be a positive number, got {value}", field=name)


class CostModel:
    """Kernel latencies on one GPU. ``l2_warm=True`` reproduces benchmark (trace) conditions."""

    def __init__(self, hw: gpu_mod.Hardware | str, l2_warm: bool = False, use_tables: bool = True,
                 framework: str | None = None, kernel_time_scale: float = 1.0, kernel_fixed_scale: float | None = None,
                 version: str | None = None, before_all: str = "newest"):
        self.hw = gpu_mod.load(hw) if isinstance(hw, str) else hw
        self.source = gpu_mod.calibrated_source(self.hw)
        cal, self.params = self.source.calibration, self.source.calibration.params
        base = gpu_mod.base_framework(cal)[0]
        self.framework = framework or base
        if self.framework != base and self.framework not in cal.frameworks:
            have = ", ".join([base, *(k for k in cal.frameworks if "@" not in k)])
            raise ConfigError(f"gpu {self.source.name} has no {self.framework} kernel calibration (has: {have})",
                              field="engine.framework")
        # GEMM and MoE kernels are fitted per (framework[, version], precision); attention and all-reduce per GPU
        by_prec, self.version_key = gpu_mod.kernel_params(cal, self.framework, version, before_all)
        older = cal.frameworks[self.version_key]["precisions"] if self.version_key else {}
        self._versioned = {(op, name) for name, ops in older.items() for op in ops}
        # the serving path's GEMM/MoE time over the tables' (frameworks.yaml), once into their parameters
        self.kernel_time_scale = s = float(kernel_time_scale)
        self.kernel_fixed_scale = f = s if kernel_fixed_scale is None else float(kernel_fixed_scale)
        self._by_precision = {name: {op: kernels.time_scaled(op, p, s, f) if op in ("gemm", "moe") else p
                                     for op, p in ops.items()} for name, ops in by_prec.items()}
        self.l2_warm, self._base, self._cache, self._lookups = l2_warm, base, {}, {}
        self.moe_fits = frozenset(name for name, ops in by_prec.items() if "moe" in ops)    # precisions and variants
        self.tables = dict(residual_tables(self.source.name)) if use_tables else {}
        # the other (framework, precision) kernels' residual tables, keyed (op, precision); an older
        # version's own override the newest's
        for key in (self.framework, self.version_key):
            self.tables.update(precision_tables(self.source.name, key) if use_tables and key else {})

    @property
    def tables_label(self) -> str:
        """Whose kernel tables the GEMM/MoE parameters were fitted on, e.g. ``sglang 0.5.14``."""
        cal, key = self.source.calibration, self.version_key or self.framework
        if key in cal.frameworks:
            return f"{self.framework} {cal.frameworks[key].get('version', '')}".strip()
        return cal.framework or self.framework

    def fit_params(self, op, prec: Precision = BF16):
        if op in ("gemm", "moe"):
            got = self._by_precision.get(prec.name, {})
            if op not in got:
                have = sorted(k for k, v in self._by_precision.items() if op in v)
                raise ConfigError(f"gpu {self.source.name} has no {prec.name} {op} calibration for {self.framework} "
                                  f"(calibrated: {', '.join(have) or 'none'}); run moesd calibrate", field="quantization")
            return got[op]
        if op not in self.params:
            raise ConfigError(f"gpu {self.source.name} has no calibration for {op}; run moesd calibrate",
                              field="gpu")
        return self.params[op]

    def expert_pad(self, prec: Precision) -> tuple:    # the widths this framework pads the experts to
        return expert_padding(prec.base, self.framework, self.hw.architecture)

    def _table_op(self, op, prec: Precision = BF16):
        """Which residual table corrects this kernel: ``op`` for the base framework's bf16 kernels,
        ``(op, precision)`` for the per-precision / per-framework ones."""
        own = self.framework == self._base and prec.name == "bf16" and (op, "bf16") not in self._versioned
        return op if own else (op, prec.name)

    def _factor(self, op, shape, key, size) -> tuple[float, str]:
        """Measured/roofline factor and path for one query. Residuals vary slowly along the size
        axis: looked up at the nearest 1/64-octave grid point, cached. (At the grid point, not at
        the first size that hit it, so a result never depends on what the process computed before.)

        Twin of :meth:`_factors`, kept on purpose: this one also returns the path label that a
        single kernel query reports, and its scalar ``exp`` is bit-for-bit what the committed
        figures were computed with; routing it through the vector memo could move their last bit.
        ``tests/test_costmodel.py::test_scalar_and_vector_twins_agree`` pins the two together."""
        table = self.tables.get(op) if op else None
        if table is None:
            return 1.0, "roofline"
        g = round(float(np.log2(max(size, 1.0))) * 64)
        ck = (op, tuple(shape), tuple(key), g)
        hit = self._lookups.get(ck)
        if hit is None:
            corr, path = table.lookup(shape, key, 2.0 ** (g / 64))
            hit = self._lookups[ck] = (float(np.exp(corr)), path)
        return hit

    def _factors(self, op, shape, key, sizes: np.ndarray) -> np.ndarray:
        """``_factor`` for many sizes of one shape at once (same grid, same values; the vector twin
        that tabulating uses, see :meth:`_factor` for why there are two)."""
        table = self.tables.get(op) if op else None
        if table is None:
            return np.ones(len(sizes))
        g = np.round(np.log2(np.maximum(np.asarray(sizes, dtype=float), 1.0)) * 64).tolist()
        # per grid point, memoised: lookup_many and exp are elementwise, so the values are the same
        memo = self._lookups.setdefault((op, tuple(shape), tuple(key), "grid"), {})
        missing = sorted({x for x in g if x not in memo})
        if missing:
            corr, _, _ = table.lookup_many(shape, key, 2.0 ** (np.array(missing) / 64))
            memo.update(zip(missing, np.exp(corr).tolist()))
        return np.array([memo[x] for x in g])

    def _finish(self, op, terms, shape, key, size, extra=None, table_op="same") -> KernelCost:
        f, path = self._factor(op if table_op == "same" else table_op, shape, key, size)
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

    def gemm(self, m: int, n: int, k: int, prec: Precision = BF16) -> KernelCost:
        _pos("m", m), _pos("n", n), _pos("k", k)

        def run():
            t = kernels.gemm(self.hw, self.fit_params("gemm", prec), m, n, k, prec, self.l2_warm)
            return self._finish("gemm", t, (n, k), (), m, {"precision": prec.name}, self._table_op("gemm", prec))
        return self._cached(("gemm", m, n, k, prec), run)

    def gemm_latency_s(self, ms: np.ndarray, n: int, k: int, prec: Precision = BF16) -> np.ndarray:
        """``gemm(m, n, k).latency_s`` for many token counts ``m`` at once (for tabulating)."""
        t = kernels.gemm(self.hw, self.fit_params("gemm", prec), ms, n, k, prec, self.l2_warm)
        return t["latency_s"] * self._factors(self._table_op("gemm", prec), (n, k), (), ms)

    @staticmethod
    def _moe_loads(counts: np.ndarray, topk: int, ep: int) -> tuple:
        """(T, active experts, token-slots, slots padded to 16-row blocks) on the busiest EP rank:
        all a fused MoE kernel's time depends on.

        Scalar twin of :meth:`moe_loads_many`, kept on purpose: it runs once per engine step on
        the hot path, where a one-row vector call costs several times more. Ties for the busiest
        rank go to the lowest rank in both. ``test_scalar_and_vector_twins_agree`` pins them."""
        counts = np.asarray(counts)
        if len(counts) % ep:
            raise ConfigError(f"num_experts {len(counts)} is not divisible by expert-parallel size {ep}",
                              field="moe_ep_size")
        total = int(np.add.reduce(counts))
        local = busiest_rank(counts, ep)
        return (round(total / topk), int(np.count_nonzero(local)), total if ep <= 1 else int(np.add.reduce(local)),
                int(np.add.reduce((local + 15) // 16)) * 16)

    @staticmethod
    def moe_loads_many(counts: np.ndarray, topk: int, ep: int) -> list:
        """``_moe_loads`` of each row of ``counts`` [steps, E], and each row's distinct experts."""
        steps, E = counts.shape
        total = np.add.reduce(counts, axis=1)
        if ep <= 1:
            local, slots = counts, total
        else:
            per = counts.reshape(steps, ep, E // ep)
            local = per[np.arange(steps), np.argmax(np.add.reduce(per, axis=2), axis=1)]
            slots = np.add.reduce(local, axis=1)
        active = np.count_nonzero(local, axis=1)
        padded = np.add.reduce((local + 15) // 16, axis=1) * 16
        everywhere = active if ep <= 1 else np.count_nonzero(counts, axis=1)
        return list(zip(zip(np.round(total / topk).astype(np.int64).tolist(), active.tolist(), slots.tolist(),
                            padded.tolist()), everywhere.tolist()))

    def moe_from_counts(self, counts: np.ndarray, hidden_size: int, inter_size: int, topk: int,
                        tp: int = 1, ep: int = 1, gated: bool = True, prec: Precision = BF16) -> KernelCost:
        """Fused MoE layer given the token count of every expert (length E, summing to T*K)."""
        for name, v in (("hidden_size", hidden_size), ("inter_size", inter_size), ("topk", topk), ("moe_tp_size", tp)):
            _pos(name, v)
        E = len(counts)
        T, active, slots, padded = self._moe_loads(counts, topk, ep)
        prec = served_moe(prec, self.framework, gated, T, tp * ep, 1, self.moe_fits)   # its GPUs tensor parallel

        def run():   # the cost depends on the loads only through these features: cache on them
            t = kernels.moe(self.hw, self.fit_params("moe", prec), active, slots, padded, T, topk, hidden_size, inter_size / tp,
                            gated, ep, prec, self.l2_warm, pad=self.expert_pad(prec))
            return self._finish("moe", t, (hidden_size, inter_size, E, topk), (tp, ep, "balanced"), max(T, 1),
                                {"active_experts": active, "weight_bytes": float(t["weight_bytes"]),
                                 "tokens_per_active_expert": slots / max(active, 1), "precision": prec.name},
                                self._table_op("moe", prec))
        return self._cached(("moe", active, slots, padded, T, hidden_size, inter_size, E, topk, tp, ep, gated,
                             prec), run)

    def moe_latency_s(self, counts: np.ndarray, hidden_size: int, inter_size: int, topk: int,
                      tp: int = 1, ep: int = 1, gated: bool = True, prec: Precision = BF16) -> float:
        """``moe_from_counts(...).latency_s``, fast for the engine's per-step calls.

        For given (T, active, slots) the padded slot count takes at most active + 1 values
        (multiples of 16), so a miss prices them all in one vectorised call, with its neighbours
        (``_price_moe_curves``)."""
        return self.moe_latency_from_loads(self._moe_loads(counts, topk, ep), hidden_size, inter_size, len(counts),
                                           topk, tp, ep, gated, prec)

    def moe_latency_from_loads(self, loads: tuple, hidden_size: int, inter_size: int, num_experts: int, topk: int,
                               tp: int = 1, ep: int = 1, gated: bool = True, prec: Precision = BF16) -> float:
        """``moe_latency_s`` given ``_moe_loads`` of the counts."""
        T, active, slots, padded = loads
        shape = (hidden_size, inter_size, num_experts, topk, tp, ep, gated, prec)
        hit = self._cache.get(("moe_curve", T, active, slots, shape))
        if hit is None:
            self._price_moe_curves(T, active, slots, shape)
            hit = self._cache[("moe_curve", T, active, slots, shape)]
        return hit[1][padded // 16 - hit[0]]

    def _price_moe_curves(self, T: int, active: int, slots: int, shape: tuple) -> None:
        """Cache the latency at every padded-slot count (at most active + 1 multiples of 16) for
        (T, active, slots) and, in the same vectorised call, for the neighbours the next steps
        will likely ask for: the other token counts of T's block of 16 without EP (slots = T * topk),
        slot counts within 3 with EP, and active counts within 1 (wider neighbourhoods cost more in
        the call than they save in later misses)."""
        hidden_size, inter_size, num_experts, topk, tp, ep, gated, prec = shape
        per_rank = num_experts // max(ep, 1)
        acts = np.arange(max(1, active - 1), min(per_rank, active + 1) + 1)
        if ep <= 1:
            Ts = np.arange(T - T % 16, T - T % 16 + 16)
            x, a = np.repeat(Ts, len(acts)), np.tile(acts, len(Ts))
            s_ = x * topk
        else:
            sl = np.arange(max(1, slots - 3), slots + 4)
            a, s_ = np.repeat(acts, len(sl)), np.tile(sl, len(acts))
            x = np.full(len(a), T)
        # feasible: each active expert holds 1..T slots, and there are T * topk slots in all
        ok = (s_ >= a) & (s_ <= a * np.maximum(x, 1)) & (s_ <= x * topk)
        keys = [("moe_curve", xi, ai, si, shape) for xi, ai, si in zip(x.tolist(), a.tolist(), s_.tolist())]
        ok &= np.array([k not in self._cache for k in keys])
        ok[np.flatnonzero((x == T) & (a == active) & (s_ == slots))] = True
        x, a, s_ = x[ok], a[ok], s_[ok]
        lo, hi = -(-s_ // 16), (s_ + 15 * a) // 16 + 1
        rep = hi - lo
        ps = 16.0 * (np.arange(rep.sum()) - np.repeat(np.cumsum(rep) - rep, rep) + np.repeat(lo, rep))
        t = kernels.moe(self.hw, self.fit_params("moe", prec), np.repeat(a, rep), np.repeat(s_, rep), ps, np.repeat(x, rep), topk,
                        hidden_size, inter_size / tp, gated, ep, prec, self.l2_warm, pad=self.expert_pad(prec))
        lat = t["latency_s"] * np.repeat(self._factors(self._table_op("moe", prec), shape[:4], (tp, ep, "balanced"),
                                                       np.maximum(x, 1)), rep)
        vals, ends = lat.tolist(), np.cumsum(rep).tolist()
        for xi, ai, si, l_, r, e in zip(x.tolist(), a.tolist(), s_.tolist(), lo.tolist(), rep.tolist(), ends):
            self._cache[("moe_curve", xi, ai, si, shape)] = (l_, vals[e - r:e])

    def moe(self, num_tokens: int, hidden_size: int, inter_size: int, num_experts: int, topk: int,
            tp: int = 1, ep: int = 1, distribution: str = "uniform", gated: bool = True,
            rng: np.random.Generator | None = None, samples: int = 16, prec: Precision = BF16) -> KernelCost:
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
        costs = [self.moe_from_counts(c, hidden_size, inter_size, topk, tp, ep, gated, prec) for c in draws]
        mean = lambda a: float(np.mean([getattr(c, a) for c in costs]))  # noqa: E731
        extra = {k: (float(np.mean([c.extra[k] for c in costs])) if k != "precision" else prec.name)
                 for k in costs[0].extra}
        extra |= {"kernel": costs[0].extra["precision"]} if costs[0].extra["precision"] != prec.name else {}
        return KernelCost("moe", mean("latency_s"), mean("compute_s"), mean("memory_s"), mean("overhead_s"),
                          mean("flops"), mean("bytes"), costs[0].path, self.hw.name, self.source.name, extra)

    def attention_decode(self, batch_size: int, context_len: float, num_heads: int, num_kv_heads: int,
                         head_dim: int, q_len: int = 1, kv_bytes_per_el: float = 2.0) -> KernelCost:
        """Decode/verification attention: B sequences, mean context, q_len query tokens each."""
        for name, v in (("batch_size", batch_size), ("isl", context_len), ("num_heads", num_heads),
                        ("num_key_value_heads", num_kv_heads), ("head_dim", head_dim), ("q_len", q_len)):
            _pos(name, v)

        def run():
            t = kernels.attention_generation(self.hw, self.fit_params("attention_generation"), batch_size, context_len,
                                             num_heads, num_kv_heads, head_dim, q_len, kv_bytes_per_el, self.l2_warm)
            return self._finish("attention_generation", t, (num_heads, num_kv_heads, head_dim, batch_size), (),
                                context_len)
        return self._cached(("attn_dec", batch_size, context_len, num_heads, num_kv_heads, head_dim, q_len,
                             kv_bytes_per_el), run)

    def attention_decode_latency_s(self, batch_size: int, context_lens: np.ndarray, num_heads: int,
                                   num_kv_heads: int, head_dim: int, q_len: int = 1,
                                   kv_bytes_per_el: float = 2.0) -> np.ndarray:
        """``attention_decode(...).latency_s`` for many context lengths at once (for tabulating)."""
        t = kernels.attention_generation(self.hw, self.fit_params("attention_generation"), batch_size, context_lens,
                                         num_heads, num_kv_heads, head_dim, q_len, kv_bytes_per_el, self.l2_warm)
        return t["latency_s"] * self._factors("attention_generation", (num_heads, num_kv_heads, head_dim, batch_size),
                                              (), context_lens)

    def mla_decode_latency_s(self, batch_size: int, context_lens: np.ndarray, num_heads: int, latent_dim: int,
                             q_len: int = 1, kv_bytes_per_el: float = 2.0) -> np.ndarray:
        """Absorbed MLA decode attention (``num_heads`` on this GPU) for many context lengths, fitted
        on the framework's MLA tables: an MLA model is never priced with a GQA kernel's fit."""
        got = self._by_precision.get("bf16", {})
        if "mla_generation" not in got:
            raise ConfigError(f"gpu {self.source.name} has no MLA decode calibration for {self.framework} (its MLA "
                              f"kernel tables); run moesd calibrate --gpu {self.source.name} --framework "
                              f"{self.framework}", field="model")
        t = kernels.mla_generation(self.hw, got["mla_generation"], batch_size, context_lens, num_heads, latent_dim,
                                   q_len, kv_bytes_per_el, self.l2_warm)
        kv = "fp8" if kv_bytes_per_el <= 1.0 else "bfloat16"
        return t["latency_s"] * self._factors(("mla_generation", "bf16"), (num_heads, batch_size), (kv,), context_lens)

    def attention_prefill(self, batch_size: int, seq_len: int, num_heads: int, num_kv_heads: int,
                          head_dim: int, prefix_len: int = 0) -> KernelCost:
        for name, v in (("batch_size", batch_size), ("isl", seq_len), ("num_heads", num_heads),
                        ("num_key_value_heads", num_kv_heads), ("head_dim", head_dim)):
            _pos(name, v)

        def run():
            t = kernels.attention_context(self.hw, self.fit_params("attention_context"), batch_size, seq_len, num_heads,
                                          num_kv_heads, head_dim, prefix_len)
            return self._finish("attention_context", t, (num_heads, num_kv_heads, head_dim, batch_size), (),
                                seq_len + prefix_len)
        return self._cached(("attn_pre", batch_size, seq_len, num_heads, num_kv_heads, head_dim, prefix_len), run)

    def _allreduce_fit(self, num_gpus: int, backend: str) -> str:
        """The fitted (GPU count, backend) nearest to this GPU count."""
        fits = self.fit_params("allreduce")
        counts = sorted({int(k.split(":")[0]) for k in fits})
        n_fit = min(counts, key=lambda c: abs(np.log2(c) - np.log2(num_gpus)))
        return f"{n_fit}:{backend}" if f"{n_fit}:{backend}" in fits else next(k for k in fits if k.startswith(f"{n_fit}:"))

    def allreduce(self, message_bytes: float, num_gpus: int, cuda_graph: bool = True) -> KernelCost:
        """vLLM custom all-reduce; GPU counts without their own fit use the nearest measured one."""
        _pos("message_size", message_bytes)
        if num_gpus <= 1:
            return KernelCost("allreduce", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, "none", self.hw.name, self.source.name)
        backend = "vllm_graph" if cuda_graph else "vllm_eager"

        def run():
            key = self._allreduce_fit(num_gpus, backend)
            t = kernels.allreduce(self.hw, self.fit_params("allreduce")[key], message_bytes, num_gpus)
            return self._finish("allreduce", t, (num_gpus,), (key.split(":")[1],), message_bytes)
        return self._cached(("ar", message_bytes, num_gpus, backend), run)

    def allreduce_latency_s(self, message_bytes: np.ndarray, num_gpus: int, cuda_graph: bool = True) -> np.ndarray:
        """``allreduce(...).latency_s`` for many message sizes at once (for tabulating)."""
        message_bytes = np.asarray(message_bytes, dtype=float)
        if num_gpus <= 1:
            return np.zeros(len(message_bytes))
        key = self._allreduce_fit(num_gpus, "vllm_graph" if cuda_graph else "vllm_eager")
        t = kernels.allreduce(self.hw, self.fit_params("allreduce")[key], message_bytes, num_gpus)
        return t["latency_s"] * self._factors("allreduce", (num_gpus,), (key.split(":")[1],), message_bytes)
