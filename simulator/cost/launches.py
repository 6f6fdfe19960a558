"""Kernels one forward pass launches, counted from the architecture.

SGLang and TensorRT-LLM capture CUDA graphs for decode batches only: a step with prompt tokens is
launched kernel by kernel from Python, and when each kernel's launch takes longer than it runs (a
short prompt on a big model), the GPU waits on the CPU. The step then takes the launches' time,
however few tokens it has: the framework's CPU cost per kernel (``prefill_kernel_launch_us`` in
workloads/frameworks.yaml) times the count below.

Counted per layer as the frameworks' modules issue them (one kernel each; fusions differ by
framework and version, so this is a count of the operations, not of any one build's kernels):
- attention, GQA: input norm, QKV GEMM, rotary, KV-cache write, attention, output GEMM (6);
  MLA: input norm, the q and kv down-projections, their two latent norms, the q and kv
  up-projections, rotary, the key concatenation, KV-cache write, attention, output GEMM (12);
- dense FFN: norm, gate/up GEMM, activation, down GEMM (4);
- MoE: norm, router GEMM, top-k, token permutation, the two expert GEMMs, activation, combine (8),
  plus gate/up, activation and down of a shared expert (3);
- a GEMM whose activations are quantised (W8A8, W4A4) first runs a quantisation kernel (+1);
- tensor parallel: an all-reduce after attention and after the FFN/MoE (+2).
Then the final norm, LM head and sampling (3).
"""

from __future__ import annotations

from ..config.model import ModelArch
from ..config.precision import Precision

ATTENTION_GQA = 6
ATTENTION_MLA = 12
GQA_GEMMS, MLA_GEMMS = 2, 6
DENSE_FFN, DENSE_GEMMS = 4, 2
MOE_FFN, MOE_GEMMS = 8, 2
SHARED_EXPERT, SHARED_GEMMS = 3, 2
ALLREDUCES = 2
HEAD = 3


def kernels_per_forward(m: ModelArch, gemm: Precision, moe: Precision, tp: int) -> int:
    """Kernels launched by one forward pass of ``m`` on one rank (see the module docstring)."""
    q_dense = 1 if gemm.quantizes_activations else 0
    q_moe = 1 if moe.quantizes_activations else 0
    attn = (ATTENTION_MLA + MLA_GEMMS * q_dense) if m.mla is not None else (ATTENTION_GQA + GQA_GEMMS * q_dense)
    dense = DENSE_FFN + DENSE_GEMMS * q_dense
    moe_ffn = 0
    if m.moe is not None:
        moe_ffn = MOE_FFN + MOE_GEMMS * q_moe
        if m.moe.shared_expert_intermediate_size:
            moe_ffn += SHARED_EXPERT + SHARED_GEMMS * q_dense
    comm = ALLREDUCES if tp > 1 else 0
    moe_layers = m.num_moe_layers
    dense_layers = m.num_hidden_layers - moe_layers
    return m.num_hidden_layers * (attn + comm) + dense_layers * dense + moe_layers * moe_ffn + HEAD
