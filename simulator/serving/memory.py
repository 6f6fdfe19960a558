"""GPU memory: weights per GPU and the KV-cache blocks left for a replica."""

from __future__ import annotations

import math

from ..common.errors import ConfigError
from ..config.precision import padded

ACTIVATION_RESERVE_BYTES = 2.0 * 2 ** 30   # activations, CUDA graphs, NCCL buffers (per GPU)


def kv_bytes_per_token(model, tp: int, kv_bytes_per_el: float = 2.0) -> float:
    """KV bytes per token on one GPU (heads split by TP; an MLA latent cache is replicated)."""
    per_layer = model.kv_elems_per_token_per_layer()
    if not model.latent_kv:
        per_layer = per_layer * max(1, model.num_key_value_heads // tp) / model.num_key_value_heads
    # sliding-window layers keep at most the window per sequence (vLLM's hybrid KV allocator): a few
    # blocks per running sequence, left out of the per-token budget; linear-attention layers keep a
    # fixed state per sequence instead (kv_blocks' state_seqs)
    full = model.num_full_attention_layers
    indexer = model.sparse_attention.key_bytes_per_token if model.sparse_attention else 0.0   # DSA's keys, FP8
    return per_layer * full * kv_bytes_per_el + indexer * full


def kv_blocks(target, draft, hw, tp: int, gpu_memory_utilization: float, block_size: int,
              kv_bytes_per_el: float = 2.0, source: str | None = None, quant=None, expert_gpus: int | None = None,
              field: str = "hardware.tensor_parallel_size", of_free: bool = False, expert_pad: float = 1.0,
              state_seqs: int = 0) -> int:
    """KV blocks per replica (per attention-DP rank); a ConfigError when the weights do not fit.
    ``quant``: the target's weight precision (default its checkpoint's); a draft model keeps its own.
    ``expert_gpus``: the GPUs the routed experts are spread over (default ``tp``; tp x dp with
    attention data parallel). ``of_free``: ``gpu_memory_utilization`` is a fraction of the memory
    left once weights and activations are in (TensorRT-LLM), not of the GPU's (vLLM, SGLang).
    ``expert_pad``: how much the framework's padded layout grows the routed experts (``padded_growth``).
    ``state_seqs``: sequences whose linear-attention state is reserved up front, as SGLang sizes its
    state pool (mamba pool) apart from the KV cache: the batch limit."""
    weights = target.weight_bytes(quant) / tp
    if target.moe and (expert_gpus and expert_gpus != tp or expert_pad != 1.0):
        experts = target.expert_weight_bytes(quant)
        weights += experts * expert_pad / (expert_gpus or tp) - experts / tp
    per_tok = kv_bytes_per_token(target, tp, kv_bytes_per_el)
    if draft is not None:
        weights += draft.weight_bytes() / tp
        per_tok += kv_bytes_per_token(draft, tp, kv_bytes_per_el)
    if of_free:
        budget = hw.memory_bytes - ACTIVATION_RESERVE_BYTES
        free = (budget - weights) * gpu_memory_utilization
    else:
        budget = hw.memory_bytes * gpu_memory_utilization - ACTIVATION_RESERVE_BYTES
        free = budget - weights
    free -= state_seqs * target.linear_state_bytes_per_seq(tp)
    if free <= 0:
        raise ConfigError(
            f"model {target.name}{' + ' + draft.name if draft else ''} needs {weights / 2**30:.1f} GiB of "
            f"{_label(quant or target.quantization)} weights per GPU but {hw.name} offers {budget / 2**30:.1f} GiB"
            f"{'' if of_free else f' at gpu_memory_utilization={gpu_memory_utilization}'}; "
            f"raise tensor_parallel_size", source=source, field=field)
    blocks = int(free // (per_tok * block_size))
    if blocks < 1:
        raise ConfigError("no room left for a single KV block", source=source, field="engine.gpu_memory_utilization")
    return blocks


def _label(q) -> str:
    return q.gemm if q.gemm == q.moe else f"{q.gemm}/{q.moe} (linear/experts)"


def blocks_for(tokens: int, block_size: int) -> int:
    return math.ceil(tokens / block_size)


def padded_growth(model, moe_tp: int, pad: tuple) -> float:
    """Padded over true routed-expert bytes when a rank holds 1/moe_tp of each expert's width and the
    framework rounds that width and the hidden size up to ``pad`` (``precision.expert_padding``)."""
    if not model.moe:
        return 1.0
    width, h = model.moe.moe_intermediate_size / moe_tp, model.hidden_size
    return float(padded(width, pad[0]) * padded(h, pad[1]) / (width * h))
