"""What crosses GPUs beyond the fitted intra-node all-reduce: expert-parallel dispatch and combine,
the inter-node part of collectives, and disaggregated serving's KV transfer.

Dispatch + combine (one MoE layer, one rank sending ``tokens``) is priced as DeepEP moves it: each
token goes to ``topk`` experts spread evenly over ``ep`` ranks, fp8 out (1 byte per element, its
scales folded into the fit) and bf16 back (2 bytes), so ``3 x tokens x topk x hidden`` bytes per
rank, of which ``(d - 1) / ep`` cross NVLink (``d`` ranks in the sender's NVLink domain) and
``(ep - d) / ep`` the network; the two links run at once. Two fitted numbers per mode and GPU, a
latency and a link efficiency, on AIConfigurator's DeepEP tables (low-latency mode for decode,
normal mode for prefill; ``moesd calibrate --alltoall``); the network efficiency on the multi-node
rows. The fits live in ``gpu_specs/calibration/alltoall.yaml``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..common.datafiles import read_yaml
from ..common.errors import ConfigError
from ..common.paths import GPU_SPECS_DIR

FIT_FILE = GPU_SPECS_DIR / "calibration" / "alltoall.yaml"
BYTES_PER_SLOT = 3.0          # fp8 dispatch (1 byte per element) + bf16 combine (2 bytes)
LL_MAX_TOKENS = 128           # SGLang's DeepEP low-latency buffer per rank (SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK)


@functools.lru_cache(maxsize=None)
def _fits() -> dict:
    return read_yaml(FIT_FILE)["gpus"] if FIT_FILE.is_file() else {}


def fit_for(hw) -> dict:
    """The dispatch/combine fit of this GPU, or of the GPU it transfers its calibration from."""
    fits = _fits()
    for name in (hw.name, hw.transfer_from):
        if name and name in fits:
            return fits[name]
    raise ConfigError(f"no expert-parallel all-to-all fit for {hw.name} (fitted: {', '.join(sorted(fits)) or 'none'}); "
                      "run moesd calibrate --alltoall", source=str(FIT_FILE), field="hardware.enable_expert_parallel")


def split_bytes(hw, payload, ep: int) -> tuple:
    """(bytes over NVLink, bytes over the network) of one rank's share of an even all-to-all."""
    d = min(ep, hw.domain_gpus)
    return payload * (d - 1) / ep, payload * (ep - d) / ep


def dispatch_combine_s(hw, fit: dict, tokens, topk: int, hidden: int, ep: int, mode: str | None = None) -> np.ndarray:
    """Seconds of one MoE layer's dispatch + combine for ``tokens`` tokens on the sending rank
    (array). ``mode``: 'll' or 'normal'; default: low-latency up to LL_MAX_TOKENS per rank."""
    t = np.asarray(tokens, dtype=float)
    if ep <= 1:
        return np.zeros_like(t)
    nv, ib = split_bytes(hw, BYTES_PER_SLOT * t * topk * hidden, ep)
    out = np.zeros_like(t)
    for m in ((mode,) if mode else ("ll", "normal")):
        sel = True if mode else ((t <= LL_MAX_TOKENS) if m == "ll" else (t > LL_MAX_TOKENS))
        f = fit[m]
        wire = np.maximum(nv / (hw.link_bytes_per_s * f["eff_link"]), ib / (hw.inter_node_bytes_per_s * fit["eff_inter"]))
        lat = f["latency_s"] + (hw.inter_node_latency_s if ep > hw.domain_gpus else 0.0)
        out = np.where(sel, lat + wire, out)
    return np.where(t > 0, out, 0.0)


def inter_node_allreduce_s(hw, message_bytes, num_gpus: int):
    """What an all-reduce over ``num_gpus`` adds once it leaves the NVLink domain: the cross-domain
    ring of a hierarchical all-reduce, each GPU's share (message / d) over its own NIC."""
    d = min(num_gpus, hw.domain_gpus)
    domains = math.ceil(num_gpus / d)
    if domains <= 1:
        return 0.0 * np.asarray(message_bytes, dtype=float)
    share = np.asarray(message_bytes, dtype=float) / d
    return 2.0 * (domains - 1) / domains * share / hw.inter_node_bytes_per_s + 2.0 * (domains - 1) * hw.inter_node_latency_s


def kv_transfer_s(hw, kv_bytes: float, senders: int, receivers: int, same_domain: bool) -> float:
    """Prefill -> decode KV transfer of one request: its KV is sharded over the sending worker's
    GPUs, each shard sent in parallel to the decode worker (NIXL/Mooncake style, one-sided reads)."""
    lanes = max(1, min(senders, receivers))
    bw = hw.link_bytes_per_s if same_domain else hw.inter_node_bytes_per_s
    return hw.inter_node_latency_s + kv_bytes / (lanes * bw)
