"""Weight and KV-cache precisions: bytes per element, which tensor cores run them, which kernel
tables measure them. One table, so a new precision is one entry.

Names follow vLLM/SGLang ``--quantization`` (aliases map their other spellings); ``table_dtype``
is the name AIConfigurator's kernel tables use in their ``*_dtype`` columns.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..common.errors import ConfigError


@dataclass(frozen=True, eq=False)     # one instance per name (PRECISIONS): identity hashing keeps cache keys cheap
class Precision:
    name: str
    weight_bytes: float        # per weight element, scales included
    act_bytes: float           # per activation element read by the GEMM (quantised on the fly or not)
    tensor_core: str           # which peak runs the math: bf16 | fp8 | fp4
    table_dtype: str           # AIConfigurator dtype column value
    about: str = ""
    kernel_source: str = ""    # a batch-size kernel variant's collector label (SMALL_BATCH_MOE); "" for the precision

    @property
    def base(self) -> str:
        """The weight precision a kernel variant runs (its own name for a precision)."""
        return self.name.split("@")[0]

    @property
    def quantizes_activations(self) -> bool:
        """W8A8/W4A4 GEMMs first quantise their bf16 input in a separate pass over it."""
        return self.act_bytes < 2.0


# Scale overheads: fp8 per-tensor ~0; fp8 block-wise one fp32 scale per 128x128 weight block and per
# 1x128 activation group (DeepSeek-V3 recipe); NVFP4 one fp8 scale per 16 elements; MXFP4 one e8m0
# scale per 32; int4 weight-only (AWQ/GPTQ) one bf16 scale per group of 128.
PRECISIONS = {
    "bf16": Precision("bf16", 2.0, 2.0, "bf16", "bfloat16", about="16-bit weights (the checkpoint default)"),
    "fp8": Precision("fp8", 1.0, 1.0, "fp8", "fp8", "FP8 W8A8, per-tensor/channel scales"),
    "fp8_block": Precision("fp8_block", 1.0 + 4.0 / 128 ** 2, 1.0 + 4.0 / 128, "fp8", "fp8_block",
                           "FP8 W8A8 with 128x128 block scales (DeepSeek-V3 style)"),
    "nvfp4": Precision("nvfp4", 0.5 + 1.0 / 16, 0.5 + 1.0 / 16, "fp4", "nvfp4",
                       "NVFP4 W4A4 (ModelOpt), fp8 scale per 16 elements"),
    "mxfp4": Precision("mxfp4", 0.5 + 1.0 / 32, 2.0, "bf16", "w4a16_mxfp4",
                       "MXFP4 weights, 16-bit activations (gpt-oss experts)"),
    # Blackwell's block-scaled MMA runs MXFP4 x MXFP8 (the fp4 field gates it to Blackwell; the fitted
    # efficiency absorbs which peak it reaches)
    "mxfp4_mxfp8": Precision("mxfp4_mxfp8", 0.5 + 1.0 / 32, 1.0 + 1.0 / 32, "fp4", "w4a8_mxfp4_mxfp8",
                             "MXFP4 weights x MXFP8 activations (W4A8, Blackwell; TRT-LLM's gpt-oss experts)"),
    "int4_wo": Precision("int4_wo", 0.5 + 2.0 / 128, 2.0, "bf16", "int4_wo",
                         "int4 weight-only (AWQ/GPTQ/compressed-tensors W4A16), group 128"),
}
ALIASES = {"bfloat16": "bf16", "fp16": "bf16", "none": "bf16", "fp8_blockwise": "fp8_block",
           "fp8_block_scaled": "fp8_block", "modelopt_fp4": "nvfp4", "fp4": "nvfp4", "w4a16_mxfp4": "mxfp4",
           "w4a8_mxfp4_mxfp8": "mxfp4_mxfp8", "mxfp4_mxfp8_w4a8": "mxfp4_mxfp8",
           "int4": "int4_wo", "awq": "int4_wo", "gptq": "int4_wo", "awq_marlin": "int4_wo", "gptq_marlin": "int4_wo"}
# How a framework runs a checkpoint precision on an architecture when the scenario does not say:
# TensorRT-LLM's default MoE backend on Blackwell (TRTLLM) runs MXFP4 experts with MXFP8 activations,
# on Hopper (Triton) with BF16 ones (TensorRT-LLM deployment guide for GPT-OSS, "MoE Backend Support
# Matrix": https://nvidia.github.io/TensorRT-LLM/deployment-guide/deployment-guide-for-gpt-oss-on-trtllm.html).
# vLLM's GPT-OSS recipe for Blackwell sets VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1 (FlashInfer's
# MXFP4 x MXFP8 MoE; vllm-project/recipes OpenAI/GPT-OSS.md, "Recipe for NVIDIA Blackwell & Hopper
# Hardware"); AIConfigurator's measured vLLM gpt-oss-120b runs on B200 decode at that kernel's speed.
SERVED_AS = {("trtllm", "blackwell"): {"mxfp4": "mxfp4_mxfp8"}, ("vllm", "blackwell"): {"mxfp4": "mxfp4_mxfp8"}}


# A MoE kernel a framework picks by batch size within one weight precision, fitted on its own rows and
# priced where the framework runs it: (framework, precision) -> (variant, most tokens on the rank).
# TensorRT-LLM runs gated NVFP4 experts of at most 128 tokens in CUTLASS's min-latency mode, fused
# with the tensor-parallel all-reduce, so only with TP > 1 and without attention DP
# (NVIDIA/TensorRT-LLM tensorrt_llm/_torch/models/modeling_deepseekv3.py: min_latency_mode needs
# POST_MOE_FUSION, i.e. has_tp and not enable_attention_dp; Deepseekv3MoE asserts not use_dp).
# AIConfigurator's collector times it as "moe_torch_flow_min_latency" and its estimator picks it for
# such layers (ai-dynamo/aiconfigurator src/aiconfigurator/sdk/operations/moe.py,
# MoE._query_moe_table, which also counts attention-DP ranks' tokens; the framework's rule is followed
# here). B200, 1.3.0rc20, DeepSeek's experts at EP 8, balanced routing, 16 tokens: 0.085 ms against
# the default CUTLASS kernel's 0.185 ms.
SMALL_BATCH_MOE = {("trtllm", "nvfp4"): (Precision("nvfp4@min_latency", 0.5 + 1.0 / 16, 0.5 + 1.0 / 16, "fp4", "nvfp4",
                                                   "NVFP4 experts, TensorRT-LLM's min-latency kernel",
                                                   "moe_torch_flow_min_latency"), 128)}


def moe_kernel_variants(framework: str) -> list:
    """The batch-size MoE kernel variants ``framework`` runs (fitted beside its precisions)."""
    return [v for (f, _), (v, _) in SMALL_BATCH_MOE.items() if f == framework]


def served_moe(prec: Precision, framework: str, gated: bool, tokens: int, tp: int, attention_dp: int,
               fitted) -> Precision:
    """The MoE kernel ``framework`` runs ``prec`` experts with for ``tokens`` tokens on a rank, with
    tensor parallel ``tp`` and attention data parallel ``attention_dp``: a variant where ``fitted``
    (the GPU's calibrated names) holds it, else ``prec``'s own."""
    variant, most = SMALL_BATCH_MOE.get((framework, prec.name), (None, 0))
    ok = variant is not None and gated and tokens <= most and tp > 1 and attention_dp == 1 and variant.name in fitted
    return variant if ok else prec


def asked_against_checkpoint(quant, native) -> str | None:
    """What a run should know when its precisions are not how the frameworks would run the checkpoint
    (None when they are): fp8 asked of weights stored with 128x128 block scales, which vLLM, SGLang
    (their Fp8Config reads weight_block_size from the checkpoint) and TensorRT-LLM
    (ModelConfig.load_hf_quant_config: FP8_BLOCK_SCALES) run block-scaled whatever the flag."""
    parts = [p for p in ("gemm", "moe") if getattr(quant, p) == "fp8" and getattr(native, p) == "fp8_block"]
    if not parts:
        return None
    return (f"{' and '.join(parts)} priced as per-tensor fp8, as asked, but the checkpoint stores "
            f"fp8_block weights, which vLLM, SGLang and TensorRT-LLM run block-scaled: leave "
            f"engine.quantization unset or write fp8_block to price what they run")


def served_as(name: str, framework: str, architecture: str) -> str:
    """The precision ``framework`` runs checkpoint precision ``name`` in on ``architecture``."""
    return SERVED_AS.get((framework, architecture), {}).get(name, name)


# Widths a framework's MoE kernel runs expert weights at, by architecture: (expert intermediate size
# per rank, hidden size), each rounded up to a multiple. The kernel computes and reads the padded
# matrices, so gpt-oss's 2880-wide experts at TP 8 (360 per rank) run 512 wide on Blackwell.
# MXFP4 weights are stored padded: vLLM `quantization/mxfp4.py` `Mxfp4MoEMethod.create_weights`:
# FlashInfer's SM100 paths 256 / 256, else (Triton, Hopper's default) 64 / none. SGLang
# `quantization/mxfp4.py` `create_weights`: FlashInfer (Blackwell) 256 / 256, Triton 64 / none.
# TensorRT-LLM's trtllm-gen MoE (Blackwell): weights 128, input hidden 512 (`fused_moe/quantization.py`,
# MXFP4WeightTRTLLMGenFusedMoEMethod); its Hopper backend (Triton) is not read: unpadded.
# FP8 block-scaled experts run in whole 128-wide scale blocks: vLLM's and SGLang's fused MoE take
# BLOCK_SIZE_N = block_n (`fused_moe.get_default_config`, "BLOCK_SIZE_N must be divisible by
# block_shape[0]"). Serving refuses such widths (BLOCK_ALIGNED below); collectors time them.
# NVFP4 experts: SGLang's FusedMoE rounds the width to 128 for FlashInfer's TRT-LLM MoE kernels, its
# Blackwell backend ("flashinfer_trtllm kernel requires intermediate_size to be a multiple of 128",
# `moe/fused_moe_triton/layer.py`); TensorRT-LLM's default CUTLASS MoE pads the width to 128
# (AIConfigurator's candidate checks: "CUTLASS pads intermediate_size_per_partition up to 128").
# Applied alike when fitting a table and when pricing a run.
_FP8_BLOCK = {"fp8_block": (128, 1)}
EXPERT_PADDING = {("vllm", "blackwell"): {"mxfp4": (256, 256), "mxfp4_mxfp8": (256, 256), **_FP8_BLOCK},
                  ("vllm", "hopper"): {"mxfp4": (64, 1), **_FP8_BLOCK},
                  ("vllm", "ada"): _FP8_BLOCK,
                  ("sglang", "blackwell"): {"mxfp4": (256, 256), "mxfp4_mxfp8": (256, 256), "nvfp4": (128, 1),
                                            **_FP8_BLOCK},
                  ("sglang", "hopper"): {"mxfp4": (64, 1), **_FP8_BLOCK},
                  ("sglang", "ada"): _FP8_BLOCK,
                  ("trtllm", "blackwell"): {"mxfp4": (128, 512), "mxfp4_mxfp8": (128, 512), "nvfp4": (128, 1)}}


# Block-scaled expert weights whose width per rank is not a whole number of scale blocks do not load:
# vLLM and SGLang raise "The output_size of gate's and up's weight = 192 is not divisible by weight
# quantization block_n = 128" (their fp8 MoE `create_weights`), e.g. Qwen3-235B-A22B-FP8 (1536 wide)
# at TP 8. Users serve such a model with expert parallel instead, which keeps every expert whole.
BLOCK_ALIGNED = {"fp8_block": (128, ("vllm", "sglang"))}


def expert_split_refused(model, name: str, moe_tp: int, framework: str) -> str:
    """Why ``framework`` refuses ``model``'s ``name`` experts split ``moe_tp`` ways ('' where it does not)."""
    block, frameworks = BLOCK_ALIGNED.get(name, (1, ()))
    if model.moe is None or str(framework).lower() not in frameworks:
        return ""
    width = model.moe.moe_intermediate_size / moe_tp
    if width % block == 0:
        return ""
    return (f"{model.name}'s {name} experts are {width:g} wide per rank at MoE TP {moe_tp}, not a multiple of the "
            f"{block}-wide weight-scale blocks: {framework} refuses to load them")


def check_expert_blocks(model, name: str, moe_tp: int, framework: str, source: str | None, field: str) -> None:
    """A one-line error where ``framework`` refuses ``model``'s ``name`` experts split ``moe_tp`` ways."""
    why = expert_split_refused(model, name, moe_tp, framework)
    if why:
        raise ConfigError(f"{why}; enable expert parallel or lower the TP size", source=source, field=field)


def padded(width, multiple):
    """``width`` rounded up to a multiple of ``multiple`` (elementwise)."""
    return np.ceil(np.asarray(width, dtype=float) / multiple) * multiple


def expert_padding(name: str, framework: str, architecture: str) -> tuple[int, int]:
    """(intermediate, hidden) multiples ``framework`` pads ``name`` experts to on ``architecture``;
    (1, 1) where it does not pad."""
    return EXPERT_PADDING.get((str(framework).lower(), architecture), {}).get(name, (1, 1))


KV_DTYPES = {"bf16": 2.0, "fp8": 1.0}
KV_ALIASES = {"bfloat16": "bf16", "auto": None, "fp8_e4m3": "fp8", "fp8_e5m2": "fp8"}


# Scale groups an int4 weight-only checkpoint may use along K (Marlin's MoE and GEMM kernels run 32,
# 64 and 128: vLLM marlin_utils MARLIN_SUPPORTED_GROUP_SIZES, channelwise aside); int4_wo is group 128.
INT4_GROUP_SIZES = (32, 64, 128)


@functools.lru_cache(maxsize=None)      # one instance per group: identity-keyed caches stay cheap
def int4_grouped(group_size: int) -> Precision:
    """int4_wo with one bf16 scale per ``group_size`` weights (Kimi-K2.5's release: 32): more scale
    bytes, the same kernels and fits (they are looked up by name)."""
    base = PRECISIONS["int4_wo"]
    if group_size == 128:
        return base
    return Precision(base.name, 0.5 + 2.0 / group_size, base.act_bytes, base.tensor_core, base.table_dtype,
                     f"int4 weight-only, group {group_size}")


def get(name: str, source: str | None = None, field: str = "quantization") -> Precision:
    """A precision by name or alias; an unknown one is a one-line error listing the allowed names."""
    key = str(name).lower()
    key = ALIASES.get(key, key)
    if key not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}; allowed: {', '.join(PRECISIONS)} "
                          f"(aliases: {', '.join(sorted(ALIASES))})", source=source, field=field)
    return PRECISIONS[key]


def kv_bytes(kv_cache_dtype: str, source: str | None = None, field: str = "engine.kv_cache_dtype") -> tuple[str, float]:
    """(KV dtype name, bytes per element). ``auto`` stores KV in the activation dtype: bf16, as
    vLLM does for every checkpoint here (an FP8 checkpoint's KV stays bf16 unless asked)."""
    key = str(kv_cache_dtype).lower()
    key = KV_ALIASES.get(key, key)
    if key is None:
        key = "bf16"
    if key not in KV_DTYPES:
        raise ConfigError(f"unknown kv_cache_dtype {kv_cache_dtype!r}; allowed: auto, bf16, fp8", source=source,
                          field=field)
    return key, KV_DTYPES[key]


def check_supported(prec: Precision, hw, source: str | None = None, field: str = "quantization") -> None:
    """Refuse a precision the GPU has no tensor cores for (NVFP4 before Blackwell, FP8 before Hopper/Ada)."""
    runs = lambda p: getattr(hw, f"{p.tensor_core}_flops_per_s", None) is not None  # noqa: E731  (a Hardware peak field)
    if not runs(prec):
        ok = [p.name for p in PRECISIONS.values() if runs(p)]
        raise ConfigError(f"{prec.name} needs {prec.tensor_core.upper()} tensor cores, which {hw.name} "
                          f"({hw.architecture}) lacks; allowed on it: {', '.join(ok)}", source=source, field=field)
