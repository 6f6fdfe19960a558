"""The workers a scenario deploys, and the shapes an engine would refuse, as one-line errors.

A scenario is one pool of ``hardware.num_replicas`` identical workers (aggregated serving), or a
prefill pool and a decode pool (``disaggregation``). A worker is ``tensor_parallel_size x
data_parallel_size`` GPUs; on a dense model its DP ranks are independent engines, so they are
served as that many workers of ``tensor_parallel_size`` GPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..common.errors import ConfigError


@dataclass(frozen=True)
class PoolPlan:
    role: str            # agg | prefill | decode
    layout: object       # scenario.Layout (tp, dp, EP, MoE TP)
    workers: int         # engines (a dense model's DP ranks counted as engines)
    dp_ranks: int        # attention-DP ranks per worker (1 unless an MoE model with DP)
    field: str           # where its keys live, for errors

    @property
    def gpus(self) -> int:
        return self.workers * self.dp_ranks * self.layout.tensor_parallel_size


def pools(sc, arch) -> list[PoolPlan]:
    """The scenario's pools, each checked against the model and GPU count."""
    moe = arch.moe is not None
    d = sc.disaggregation
    raw = ([("agg", sc.hardware, sc.hardware.num_replicas, "hardware")] if d is None else
           [("prefill", d.prefill, d.prefill.num_workers, "disaggregation.prefill"),
            ("decode", d.decode, d.decode.num_workers, "disaggregation.decode")])
    out = []
    for role, lay, count, field in raw:
        dp = lay.data_parallel_size
        out.append(PoolPlan(role, lay, count * (1 if moe else dp), dp if moe else 1, field))
    return out


def check(sc, arch, hw, source: str) -> list[PoolPlan]:
    """Every pool's shape against the model, and all pools against the nodes."""
    ps = pools(sc, arch)
    for p in ps:
        _check_layout(p.layout, arch, source, p.field)
    a2a = sc.engine.moe_a2a_backend
    if a2a is not None and a2a.startswith("deepep") and not any(
            arch.moe is not None and p.dp_ranks > 1 and p.layout.enable_expert_parallel for p in ps):
        raise ConfigError(f"{a2a} dispatches tokens between attention-DP ranks to their experts: it needs a worker with "
                          "data_parallel_size > 1 and enable_expert_parallel on an MoE model", source=source,
                          field="engine.moe_a2a_backend")
    need = sum(p.gpus for p in ps)
    nodes = sc.hardware.num_nodes
    if nodes is not None and need > nodes * hw.gpus_per_node:
        what = " + ".join(f"{p.role} {p.gpus}" for p in ps) if len(ps) > 1 else str(need)
        raise ConfigError(f"the workers need {what} GPUs but num_nodes {nodes} x {hw.gpus_per_node} GPUs per "
                          f"{hw.name} node give {nodes * hw.gpus_per_node}", source=source, field="hardware.num_nodes")
    return ps


def nodes_needed(ps: list, hw) -> int:
    return math.ceil(sum(p.gpus for p in ps) / hw.gpus_per_node)


def _check_layout(lay, arch, source: str, field: str) -> None:
    tp, dp = lay.tensor_parallel_size, lay.data_parallel_size
    group = tp * dp
    if lay.moe_tensor_parallel_size is not None:
        if not lay.enable_expert_parallel:
            raise ConfigError("moe_tensor_parallel_size sets mixed MoE TP x EP: it needs enable_expert_parallel: true",
                              source=source, field=f"{field}.moe_tensor_parallel_size")
        if group % lay.moe_tensor_parallel_size:
            raise ConfigError(f"moe_tensor_parallel_size {lay.moe_tensor_parallel_size} does not divide the "
                              f"{group} GPUs of tensor_parallel_size {tp} x data_parallel_size {dp}",
                              source=source, field=f"{field}.moe_tensor_parallel_size")
    if arch.moe is not None and lay.enable_expert_parallel:
        ep = group // (lay.moe_tensor_parallel_size or 1)
        if arch.moe.num_experts % ep:
            raise ConfigError(f"{arch.name} has {arch.moe.num_experts} experts, not divisible by the expert-parallel "
                              f"size {ep} (tensor_parallel_size {tp} x data_parallel_size {dp}"
                              f"{' / moe_tensor_parallel_size' if lay.moe_tensor_parallel_size else ''})",
                              source=source, field=f"{field}.enable_expert_parallel")
    check_heads(arch, tp, source, f"{field}.tensor_parallel_size")


def check_heads(arch, tp: int, source: str, field: str) -> None:
    """TP must split the attention heads, and divide the KV heads or be a multiple of them (vLLM's check)."""
    heads, kv = arch.num_attention_heads, arch.num_key_value_heads
    if heads % tp:
        raise ConfigError(f"{arch.name} has {heads} attention heads, not divisible by tensor_parallel_size {tp}",
                          source=source, field=field)
    if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
        raise ConfigError(f"{arch.name} has {kv} KV heads: tensor_parallel_size {tp} must divide them or be a "
                          "multiple of them", source=source, field=field)
