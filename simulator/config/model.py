"""Model architectures as validated data (``workloads/models/<name>.yaml``), from public configs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import precision
from ..common.datafiles import read_yaml
from ..common.errors import pydantic_error
from ..common.paths import MODELS_DIR, data_file


class MoEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    num_experts: int = Field(gt=0)
    num_experts_per_tok: int = Field(gt=0)
    moe_intermediate_size: int = Field(gt=0)
    shared_expert_intermediate_size: int = Field(default=0, ge=0)
    gated: bool = True
    first_k_dense_replace: int = Field(default=0, ge=0, description="leading layers with a dense FFN")
    moe_layer_step: int = Field(default=1, ge=1, description=(
        "after the leading dense layers, every n-th layer is MoE and the rest dense (Llama-4's "
        "interleave_moe_layer_step: layers n-1, 2n-1, ...)"))

    @model_validator(mode="after")
    def _topk(self):
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError("num_experts_per_tok exceeds num_experts")
        return self


class MLAConfig(BaseModel):
    """DeepSeek multi-head latent attention (config.json names): KV cached as one latent of
    ``kv_lora_rank`` plus a shared rope key of ``qk_rope_head_dim`` per token and layer."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kv_lora_rank: int = Field(gt=0)
    qk_rope_head_dim: int = Field(gt=0)
    qk_nope_head_dim: int = Field(gt=0)
    v_head_dim: int = Field(gt=0)
    q_lora_rank: Optional[int] = Field(default=None, gt=0)

    @property
    def latent_dim(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim


class SparseAttentionConfig(BaseModel):
    """DeepSeek sparse attention (DSA; DeepSeek-V3.2, GLM-5; config.json names): a lightning indexer
    of ``index_n_heads`` x ``index_head_dim`` scores every cached token for each query, and the MLA
    attention reads only the ``index_topk`` best. The indexer's keys are cached per token and layer in
    FP8 with one float32 scale (``index_head_dim`` + 4 bytes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    index_topk: int = Field(gt=0)
    index_n_heads: int = Field(gt=0)
    index_head_dim: int = Field(gt=0)

    @property
    def key_bytes_per_token(self) -> float:
        return self.index_head_dim + 4.0


class LinearAttentionConfig(BaseModel):
    """Gated DeltaNet layers (Qwen3-Next / Qwen3.5 config.json names): every
    ``full_attention_interval``-th layer is full attention, the others linear attention, which keeps a
    fixed recurrent state per sequence (``linear_num_value_heads`` matrices of key x value head size,
    at ``state_bytes_per_el``: config.json ``mamba_ssm_dtype`` float32) and a short convolution window
    instead of a KV cache."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    full_attention_interval: int = Field(ge=2)
    linear_num_key_heads: int = Field(gt=0)
    linear_num_value_heads: int = Field(gt=0)
    linear_key_head_dim: int = Field(gt=0)
    linear_value_head_dim: int = Field(gt=0)
    linear_conv_kernel_dim: int = Field(gt=0)
    state_bytes_per_el: float = Field(default=4.0, gt=0)

    @property
    def conv_dim(self) -> int:
        """Channels of the short convolution: q, k and v."""
        return 2 * self.linear_num_key_heads * self.linear_key_head_dim + self.linear_num_value_heads * self.linear_value_head_dim

    def per_gpu(self, tp: int) -> tuple[int, int, int, int]:
        """One GPU's value heads, key and value head sizes and convolution channels (heads split by TP,
        at least one a rank): what both the state pool and the kernels size."""
        hv, hk = max(1, self.linear_num_value_heads // tp), max(1, self.linear_num_key_heads // tp)
        dk, dv = self.linear_key_head_dim, self.linear_value_head_dim
        return hv, dk, dv, 2 * hk * dk + hv * dv

    def state_bytes_per_seq(self, tp: int) -> float:
        """One sequence's recurrent state and convolution window in one layer on one GPU."""
        hv, dk, dv, conv = self.per_gpu(tp)
        return hv * dk * dv * self.state_bytes_per_el + conv * (self.linear_conv_kernel_dim - 1) * 2.0

    def params_per_layer(self, hidden: int) -> int:
        """in_proj_qkvz (q, k, v and the output gate z), in_proj_ba (beta and the decay), conv1d, out_proj."""
        vd = self.linear_num_value_heads * self.linear_value_head_dim
        return hidden * (self.conv_dim + vd) + hidden * 2 * self.linear_num_value_heads \
            + self.conv_dim * self.linear_conv_kernel_dim + vd * hidden


class Quantization(BaseModel):
    """Checkpoint weight precision of the linear layers (``gemm``: attention, dense FFN, shared
    experts) and of the routed experts (``moe``); embeddings, router and LM head stay 16-bit."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gemm: str = "bf16"
    moe: str = "bf16"
    group_size: Optional[int] = Field(default=None, description="int4_wo scale group along K (128 when unset)")

    @field_validator("gemm", "moe")
    @classmethod
    def _canonical(cls, name: str) -> str:
        """Stored by canonical name (aliases such as awq resolved), so it prices and compares as one."""
        return precision.get(name).name

    @model_validator(mode="after")
    def _group(self):
        if self.group_size is not None:
            if self.group_size not in precision.INT4_GROUP_SIZES:
                raise ValueError(f"group_size {self.group_size} not supported; allowed: "
                                 f"{', '.join(map(str, precision.INT4_GROUP_SIZES))}")
            if "int4_wo" not in (self.gemm, self.moe):
                raise ValueError("group_size applies to int4_wo weights only; neither gemm nor moe is int4_wo")
        return self

    def precision(self, part: str) -> precision.Precision:
        """The Precision of ``gemm`` or ``moe`` weights, int4_wo at its scale group."""
        name = getattr(self, part)
        if name == "int4_wo" and self.group_size:
            return precision.int4_grouped(self.group_size)
        return precision.get(name)


class ModelArch(BaseModel):
    """One transformer. Sizes follow Hugging Face ``config.json`` names."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    source: str
    kind: Literal["model", "eagle_head"] = "model"
    hidden_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    head_dim: Optional[int] = Field(default=None, gt=0)
    intermediate_size: int = Field(gt=0, description="dense FFN size (dense layers, or MoE's dense layers)")
    gated_ffn: bool = True
    vocab_size: int = Field(gt=0)
    tie_word_embeddings: bool = False
    max_position_embeddings: int = Field(default=32768, gt=0)
    moe: Optional[MoEConfig] = None
    kv_cache_dim_per_token: Optional[int] = Field(
        default=None, gt=0, description="override K+V elements per token per layer (MLA latent cache)")
    fc_in_multiplier: int = Field(default=0, ge=0, description="EAGLE heads: fc from m*hidden to hidden")
    qkv_in_multiplier: int = Field(default=1, ge=1, le=4, description=(
        "EAGLE-3 heads: the decoder layer's q/k/v projections read [token embedding; fused hidden state], "
        "2 x hidden wide"))
    quantization: Quantization = Field(default_factory=Quantization, description="the checkpoint's native precision")
    mla: Optional[MLAConfig] = None
    sliding_window: Optional[int] = Field(default=None, gt=0, description="window of the sliding-window layers")
    num_sliding_window_layers: int = Field(default=0, ge=0, description=(
        "layers attending over the last sliding_window tokens only (gpt-oss: every other layer)"))
    attention_sinks: bool = Field(default=False, description="learned per-head sink logits (gpt-oss); cost negligible")
    qk_norm_across_heads: bool = Field(default=False, description=(
        "RMSNorm of q and k over all heads at once (config.json qk_norm_type per_layer, MiniMax-M2): "
        "under TP each rank holds some heads, so the squared sums are all-reduced, one call a layer"))
    num_nextn_predict_layers: int = Field(default=0, ge=0, description="MTP layers shipped with the checkpoint")
    linear_attention: Optional[LinearAttentionConfig] = None
    sparse_attention: Optional[SparseAttentionConfig] = None
    attn_output_gate: bool = Field(default=False, description=(
        "full-attention layers gate their output by a second q-sized projection (Qwen3-Next, Qwen3.5)"))
    notes: str = ""

    @model_validator(mode="after")
    def _shapes(self):
        if self.num_sliding_window_layers > self.num_hidden_layers:
            raise ValueError("num_sliding_window_layers exceeds num_hidden_layers")
        if self.num_sliding_window_layers and not self.sliding_window:
            raise ValueError("num_sliding_window_layers needs sliding_window")
        if self.mla is not None and self.kv_cache_dim_per_token:
            raise ValueError("give mla or kv_cache_dim_per_token, not both")
        if self.sparse_attention is not None and (self.mla is None or self.mla.q_lora_rank is None):
            raise ValueError("sparse_attention needs mla with a q_lora_rank (its indexer reads the q latent)")
        if self.linear_attention is not None and (self.mla is not None or self.num_sliding_window_layers):
            raise ValueError("linear_attention layers with mla or sliding-window layers are not modelled")
        if self.moe is not None and self.num_moe_layers == 0:
            raise ValueError(f"moe: first_k_dense_replace {self.moe.first_k_dense_replace} and moe_layer_step "
                             f"{self.moe.moe_layer_step} leave no MoE layer among {self.num_hidden_layers}")
        return self

    @property
    def head_dim_(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    def is_moe_layer(self, layer: int) -> bool:
        if self.moe is None:
            return False
        k = self.moe.first_k_dense_replace
        return layer >= k and (layer - k + 1) % self.moe.moe_layer_step == 0

    @property
    def num_moe_layers(self) -> int:
        if self.moe is None:
            return 0
        return (self.num_hidden_layers - self.moe.first_k_dense_replace) // self.moe.moe_layer_step

    @property
    def num_linear_attention_layers(self) -> int:
        """Layers with a recurrent state instead of a KV cache (every layer but each interval-th)."""
        la = self.linear_attention
        return 0 if la is None else self.num_hidden_layers - self.num_hidden_layers // la.full_attention_interval

    @property
    def num_full_attention_layers(self) -> int:
        """Layers whose attention reads, and whose KV cache holds, the whole context."""
        return self.num_hidden_layers - self.num_sliding_window_layers - self.num_linear_attention_layers

    def linear_state_bytes_per_seq(self, tp: int = 1) -> float:
        """One sequence's recurrent and convolution state on one GPU (heads split by TP), all layers."""
        la = self.linear_attention
        return 0.0 if la is None else self.num_linear_attention_layers * la.state_bytes_per_seq(tp)

    @property
    def latent_kv(self) -> bool:
        """The KV cache is one latent vector per token and layer, the same on every TP rank."""
        return self.mla is not None or bool(self.kv_cache_dim_per_token)

    def kv_elems_per_token_per_layer(self) -> int:
        if self.mla is not None:
            return self.mla.latent_dim
        return self.kv_cache_dim_per_token or 2 * self.num_key_value_heads * self.head_dim_

    def attention_params_per_layer(self) -> int:
        h = self.hidden_size
        if self.mla is None:
            d = self.head_dim_
            m = self.qkv_in_multiplier
            gate = self.num_attention_heads if self.attn_output_gate else 0
            return h * d * (self.num_attention_heads * (m + 1) + gate + self.num_key_value_heads * 2 * m)
        a, H = self.mla, self.num_attention_heads
        qk = a.qk_nope_head_dim + a.qk_rope_head_dim
        q = h * a.q_lora_rank + a.q_lora_rank * H * qk if a.q_lora_rank else h * H * qk
        sa = self.sparse_attention     # the indexer's q (from the q latent), key and head weights
        indexer = 0 if sa is None else a.q_lora_rank * sa.index_n_heads * sa.index_head_dim + h * (sa.index_head_dim + sa.index_n_heads)
        return q + h * a.latent_dim + a.kv_lora_rank * H * (a.qk_nope_head_dim + a.v_head_dim) + H * a.v_head_dim * h + indexer

    def parameter_count(self) -> dict:
        """Weights by part: attention, dense FFN, experts, shared experts, embeddings."""
        h = self.hidden_size
        attn = self.attention_params_per_layer()
        mats = 3 if self.gated_ffn else 2
        dense_layers = self.num_hidden_layers - self.num_moe_layers
        linear = self.num_linear_attention_layers
        out = {"attention": attn * (self.num_hidden_layers - linear)
                            + (linear and linear * self.linear_attention.params_per_layer(h)),
               "dense_ffn": dense_layers * mats * h * self.intermediate_size,
               "experts": 0, "shared_experts": 0, "router": 0,
               "embeddings": self.vocab_size * h * (1 if self.tie_word_embeddings else 2),
               "fc": self.fc_in_multiplier * h * h}
        if self.moe:
            em = 3 if self.moe.gated else 2
            out["experts"] = self.num_moe_layers * self.moe.num_experts * em * h * self.moe.moe_intermediate_size
            out["shared_experts"] = self.num_moe_layers * 3 * h * self.moe.shared_expert_intermediate_size
            out["router"] = self.num_moe_layers * h * self.moe.num_experts
        return out

    def weight_bytes(self, quant: Quantization | None = None) -> float:
        """Weight bytes at a precision (default: the checkpoint's): routed experts at ``quant.moe``,
        attention/dense/shared-expert/fc matrices at ``quant.gemm``, embeddings and router 16-bit."""
        q = quant or self.quantization
        lin, exp = q.precision("gemm").weight_bytes, q.precision("moe").weight_bytes
        c = self.parameter_count()
        return (exp * c["experts"] + lin * (c["attention"] + c["dense_ffn"] + c["shared_experts"] + c["fc"])
                + 2.0 * (c["embeddings"] + c["router"]))

    def expert_weight_bytes(self, quant: Quantization | None = None) -> float:
        """Bytes of the routed experts alone (what expert parallelism spreads over its ranks)."""
        q = quant or self.quantization
        return q.precision("moe").weight_bytes * self.parameter_count()["experts"]


def parse(data, source: str) -> ModelArch:
    try:
        return ModelArch.model_validate(data)
    except ValidationError as exc:
        raise pydantic_error(exc, source) from None


def load(name_or_path: str, source: str | None = None, field: str = "model", base_dir: Path | None = None) -> ModelArch:
    """An architecture by catalog name (``workloads/models/<name>.yaml``) or by path."""
    return load_file(model_file(name_or_path, source, field, base_dir))


def load_file(path: Path) -> ModelArch:
    return parse(read_yaml(path), str(path))


def model_file(name_or_path: str, source: str | None = None, field: str = "model", base_dir: Path | None = None) -> Path:
    return data_file(name_or_path, MODELS_DIR, "model", source, field, base_dir)
