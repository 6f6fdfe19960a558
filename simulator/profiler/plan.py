"""Which shapes to measure: a model's own GEMM, MoE and attention shapes over token counts.

Models are read as plain YAML from the catalog (no pydantic needed on a bare GPU box).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..common.paths import MODELS_DIR

POW2 = [2 ** i for i in range(14)]            # 1 .. 8192 tokens


@dataclass
class Plan:
    gemm: list = field(default_factory=list)                  # (m, n, k)
    moe: list = field(default_factory=list)                   # (T, H, I, E, K, tp, ep, dist, gated)
    attention_generation: list = field(default_factory=list)  # (B, ctx, heads, kv_heads, head_dim)
    attention_context: list = field(default_factory=list)     # (B, isl, heads, kv_heads, head_dim)
    e2e: list = field(default_factory=list)                   # (model name, arch, tp, B, q_len, ctx, layers)

    def size(self) -> int:
        return sum(len(v) for v in self.__dict__.values())


def load_arch(name: str) -> dict:
    path = MODELS_DIR / f"{name}.yaml"
    if not Path(path).exists():
        from ..common.errors import ConfigError
        known = sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown model {name!r}; known: {known}", field="--models")
    return yaml.safe_load(Path(path).read_text())


def _dedup(xs):
    return list(dict.fromkeys(xs))


def for_models(models: list[str], tps=(1,), tokens=POW2, batches=(1, 2, 4, 8, 16, 32, 64, 128, 256),
               contexts=(128, 512, 2048, 8192), isls=(128, 256, 512, 1024, 2048, 4096, 8192),
               distributions=("balanced", "uniform", "power_law_1.2"), e2e_models=(), e2e_layers=4,
               e2e_context=512, e2e_q_lens=(1, 4), e2e_tps=(1,), max_kv_tokens=1 << 20) -> Plan:
    p = Plan()
    for name in models:
        a = load_arch(name)
        h, heads = a["hidden_size"], a["num_attention_heads"]
        kvh = a.get("num_key_value_heads", heads)
        d = a.get("head_dim") or h // heads
        moe = a.get("moe")
        for tp in tps:
            hq, hk = max(1, heads // tp), max(1, kvh // tp)
            shapes = [((hq + 2 * hk) * d, h), (h, hq * d)]
            if moe:
                shapes.append((moe["num_experts"], h))   # router
                si = moe.get("shared_expert_intermediate_size", 0) // tp
                if si:
                    shapes += [(2 * si, h), (h, si)]
            else:
                inter = a["intermediate_size"] // tp
                shapes += [((2 if a.get("gated_ffn", True) else 1) * inter, h), (h, inter)]
            p.gemm += [(m, n, k) for n, k in shapes for m in tokens]
            if moe:
                p.moe += [(t, h, moe["moe_intermediate_size"], moe["num_experts"], moe["num_experts_per_tok"],
                           tp, 1, dist, moe.get("gated", True)) for dist in distributions for t in tokens]
            p.attention_generation += [(b, c, hq, hk, d) for b in batches for c in contexts if b * c <= max_kv_tokens]
            p.attention_context += [(b, s, hq, hk, d) for b in (1, 4) for s in isls if b * s <= max_kv_tokens // 16]
    for name in e2e_models:
        a = load_arch(name)
        p.e2e += [(name, a, tp, b, q, e2e_context, e2e_layers) for tp in e2e_tps for b in batches
                  for q in e2e_q_lens]
    for k in ("gemm", "moe", "attention_generation", "attention_context"):
        setattr(p, k, _dedup(getattr(p, k)))
    return p


TINY_ARCH = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
             "moe": {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                     "shared_expert_intermediate_size": 64}}
TINY_DENSE = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 256,
              "gated_ffn": False}


def tiny() -> Plan:
    """Small shapes that run in seconds on a CPU: tests the harness end to end."""
    toks = [1, 4, 16, 64]
    p = Plan()
    p.gemm = [(m, n, k) for m in toks for n, k in ((192, 64), (64, 128), (128, 64))]
    p.moe = [(t, 64, 32, 8, 2, tp, 1, dist, True) for t in toks for tp in (1, 2)
             for dist in ("balanced", "uniform", "power_law_1.2")]
    p.attention_generation = [(b, c, 4, 2, 16) for b in (1, 4) for c in (16, 64)]
    p.attention_context = [(b, s, 4, 2, 16) for b in (1, 2) for s in (16, 64)]
    p.e2e = [(n, a, 1, b, q, 32, 2) for n, a in (("tiny-moe", TINY_ARCH), ("tiny-dense", TINY_DENSE))
             for b in (1, 4) for q in (1, 4)]
    return p
