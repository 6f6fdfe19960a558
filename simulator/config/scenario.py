"""Scenario YAML: validated with pydantic, unknown keys rejected, vLLM/SGLang names accepted.

``load_scenario(path, overrides)`` applies ``--set a.b=value`` overrides before validation, so an
override is checked exactly like the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from . import gpu as gpu_mod
from . import model as model_mod
from . import precision
from . import topology
from .schema import FrameworkVersion, SafeName, Strict
from .speculative import Speculative
from ..common.datafiles import load_text, read_user_yaml
from ..common.errors import ConfigError, pydantic_error
from ..common.paths import SCENARIOS_DIR, display_path, is_safe_name

# Size limits: past these a run would not finish on one machine (or not fit its memory).
MAX_PROMPTS = 10_000_000
MAX_TOKENS = 1 << 20                 # prompt or output length, tokens
MAX_SPAN_S = 1e7                     # expected arrival span num_prompts / request_rate (~4 months)



class Layout(Strict):
    """One worker's parallel layout, in vLLM's names (SGLang: ``--tp`` = tp x dp, ``--dp`` with
    ``--enable-dp-attention``, ``--ep-size``)."""
    tensor_parallel_size: int = Field(default=1, ge=1, le=256, description="attention TP group (per DP rank)")
    data_parallel_size: int = Field(default=1, ge=1, le=1024, description=(
        "DP ranks; on an MoE model they share the MoE layers (attention data parallel), on a dense one "
        "they are independent engines"))
    enable_expert_parallel: bool = Field(default=False, description="MoE layers expert parallel over tp x dp GPUs")
    moe_tensor_parallel_size: Optional[int] = Field(default=None, ge=1, le=1024, description=(
        "mixed MoE TP x EP: experts split this many ways inside each EP rank (needs enable_expert_parallel)"))

    @property
    def worker_gpus(self) -> int:
        return self.tensor_parallel_size * self.data_parallel_size


class Hardware(Layout):
    gpu: str = "h100_sxm"
    pipeline_parallel_size: Literal[1] = 1
    num_replicas: int = Field(default=1, ge=1, le=4096, description="independent workers behind the router")
    num_nodes: Optional[int] = Field(default=None, ge=1, le=4096, description=(
        "nodes available (gpus_per_node each); default: as many as the workers need"))


class Pool(Layout):
    """A disaggregated pool: ``num_workers`` workers of this layout, with their own batching limits
    (default: the engine's)."""
    num_workers: int = Field(default=1, ge=1, le=1024)
    max_num_seqs: Optional[int] = Field(default=None, ge=1)
    max_num_batched_tokens: Optional[int] = Field(default=None, ge=1)


class Disaggregation(Strict):
    """Prefill and decode on separate pools (xPyD): a request is prefilled on a prefill worker, its KV
    sent to a decode worker, which admits it once the KV has arrived; SD runs on the decode pool."""
    prefill: Pool
    decode: Pool
    kv_transfer: Literal["auto", "nvlink", "network"] = Field(default="auto", description=(
        "the KV link: NVLink when every worker fits one NVLink domain (auto), else the network"))
    handoff_ms: Optional[float] = Field(default=None, ge=0, description=(
        "fixed cost per request between prefill and decode beyond the KV bytes; default: the "
        "framework's disagg_handoff_ms (workloads/frameworks.yaml)"))


MAX_CPU_MS = 10_000.0    # a step-model term past 10 s is a typo, and would overflow the ns clock


class Engine(Strict):
    max_num_seqs: int = Field(default=128, ge=1)
    max_num_batched_tokens: int = Field(default=8192, ge=1)
    enable_chunked_prefill: bool = True
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    block_size: int = Field(default=16, ge=1)
    max_model_len: Optional[int] = Field(default=None, ge=1)
    framework: Literal["vllm", "sglang", "trtllm"] = Field(default="vllm", description=(
        "whose kernels price the step: GEMM and MoE from that framework's calibrated tables"))
    quantization: Optional[Union[str, dict]] = Field(default=None, description=(
        "weight precision (vLLM/SGLang --quantization names: bf16, fp8, fp8_block, nvfp4, mxfp4, int4_wo); "
        "default: the checkpoint's (the model file's quantization); {gemm: X, moe: Y} sets the two apart, "
        "group_size the int4_wo scale group (32, 64, 128; default the checkpoint's, else 128)"))
    kv_cache_dtype: Literal["auto", "bf16", "bfloat16", "fp8", "fp8_e4m3"] = "auto"
    enable_prefix_caching: bool = Field(default=False, description=(
        "reuse the KV of a conversation's history while its blocks are not evicted (vLLM's flag; V1 turns it "
        "on by default, kept off here so single-turn runs are unchanged)"))
    enforce_eager: bool = False
    framework_version: Optional[FrameworkVersion] = Field(default=None, max_length=64, description=(
        "picks the framework's step-model entry in workloads/frameworks.yaml (the newest at or below it) "
        "and its kernel fits (the nearest collected version, either side); default: the newest"))
    # the framework step model (simulator/cost/framework.py); unset = the framework's entry
    step_overhead_ms: Optional[float] = Field(default=None, ge=0, le=MAX_CPU_MS, description="CPU per engine step")
    per_seq_overhead_ms: Optional[float] = Field(default=None, ge=0, le=MAX_CPU_MS, description="CPU per sequence")
    spec_round_overhead_ms: Optional[float] = Field(default=None, ge=0, le=MAX_CPU_MS, description=(
        "extra CPU cost of a speculative round (draft bookkeeping, tree build, verification) beyond a plain step"))
    draft_pass_overhead_ms: Optional[float] = Field(default=None, ge=0, le=MAX_CPU_MS, description="CPU per draft pass")
    kernel_time_scale: Optional[float] = Field(default=None, gt=0, le=10, description=(
        "GEMM/MoE kernel time over the framework tables' (default: workloads/frameworks.yaml, per GPU architecture)"))
    kernel_fixed_scale: Optional[float] = Field(default=None, ge=0, le=10, description=(
        "the same for their fixed per-kernel terms alone (default: the framework entry's, else kernel_time_scale)"))
    cpu_overlap: Optional[bool] = Field(default=None, description=(
        "the CPU prepares step n+1 while the GPU runs step n (SGLang overlap scheduler, vLLM async scheduling)"))
    sync_ms: Optional[float] = Field(default=None, ge=0, le=MAX_CPU_MS, description="per step, never overlapped")
    rank_skew: Optional[float] = Field(default=None, ge=0, le=1, description="relative TP/EP rank skew (default: frameworks.yaml)")
    load_balance_method: Optional[Literal["round_robin", "shortest_queue", "total_requests"]] = Field(
        default=None, description=(
            "attention DP: how a new request picks its rank, SGLang's --load-balance-method (shortest_queue and "
            "total_requests: the rank with the fewest requests, as vLLM's DP coordinator); default: the framework's"))
    prefill_kernel_launch_us: Optional[float] = Field(default=None, ge=0, le=10_000, description=(
        "CPU per kernel of a step with prompt tokens launched without CUDA graphs (default: frameworks.yaml)"))
    enable_mixed_chunk: Optional[bool] = Field(default=None, description=(
        "prefill chunks share steps with decodes (SGLang's flag; default: the framework entry's mixed_prefill)"))
    moe_a2a_backend: Optional[Literal["none", "deepep", "allgather_reducescatter", "naive", "deepep_low_latency",
                                      "deepep_high_throughput"]] = Field(default=None, description=(
        "attention DP + EP token exchange: SGLang's --moe-a2a-backend (none, deepep) or vLLM's "
        "--all2all-backend (allgather_reducescatter, naive = none; deepep_* = deepep); default: the framework's"))
    router: Literal["round_robin", "least_outstanding"] = "round_robin"


class Routing(Strict):
    distribution: Literal["uniform", "power_law", "locality"] = "uniform"
    exponent: float = Field(default=1.0, ge=0)
    locality: float = Field(default=0.0, ge=0, le=1)
    mode: Literal["sample", "expected"] = "sample"


def constant_length(distribution: str, ratio: float) -> bool:
    """Whether a random workload's length distribution gives every request the same length: fixed,
    or uniform with no range (vLLM's --random-range-ratio 0)."""
    return distribution == "fixed" or (distribution == "uniform" and ratio == 0)


class Workload(Strict):
    """``vllm bench serve`` names, plus length distributions and trace files."""

    dataset_name: Literal["random", "trace", "fixed", "sharegpt"] = Field(default="random", description=(
        "random (vllm bench's, lengths random_*), fixed, trace (trace_file), or a dataset of "
        "workloads/datasets.yaml (sharegpt: its measured mean lengths, lognormal spread)"))
    random_input_len: int = Field(default=1024, ge=1, le=MAX_TOKENS)
    random_output_len: int = Field(default=128, ge=1, le=MAX_TOKENS)
    random_range_ratio: float = Field(default=0.0, ge=0, lt=1)
    input_len_distribution: Literal["uniform", "lognormal", "fixed"] = "uniform"
    output_len_distribution: Literal["uniform", "lognormal", "geometric", "fixed"] = "uniform"
    num_prompts: int = Field(default=1000, ge=1, le=MAX_PROMPTS)
    request_rate: Union[float, Literal["inf"]] = "inf"
    burstiness: float = Field(default=1.0, gt=0, le=1e3)
    max_concurrency: Optional[int] = Field(default=None, ge=1, le=1_000_000)
    concurrency: Optional[int] = Field(default=None, ge=1, le=1_000_000, description=(
        "closed loop (aiperf/genai-perf --concurrency): this many users, each sending its next request "
        "when its previous one finishes"))
    warmup_requests: int = Field(default=0, ge=0, description=(
        "the first requests sent are warm-up, left out of every metric (aiperf --warmup-request-count)"))
    conversation_turns: int = Field(default=1, ge=1, le=1000, description=(
        "multi-turn: consecutive requests form conversations of this many turns; each turn re-sends the "
        "history and is sent when the previous turn has finished (needs concurrency)"))
    measurement: Literal["all", "steady"] = Field(default="all", description=(
        "steady (closed loop): also leave out each user's first request (all users start together) and "
        "those sent once the first user has run out of requests (concurrency then falls)"))
    identical_prompts: bool = Field(default=False, description=(
        "every request sends the same prompt and decodes greedily, so requests at the same position carry "
        "the same tokens and route them to the same experts (TensorRT-LLM's examples/run.py as "
        "LLM-Inference-Bench drives it: one prompt copied batch-size times, top_k 1); needs fixed lengths"))
    seed: int = Field(default=0, ge=0, lt=2**63)
    trace_file: Optional[str] = None
    trace_format: Optional[Literal["azure", "burstgpt", "mooncake", "vidur"]] = None
    trace_time_scale: float = Field(default=1.0, gt=0, le=1e6)

    @field_validator("request_rate", mode="before")
    @classmethod
    def _rate(cls, v):
        if isinstance(v, float) and v == float("inf"):
            return "inf"
        if isinstance(v, bool) or not (v == "inf" or isinstance(v, (int, float))):
            raise ValueError("request_rate must be a number > 0 (requests/s) or 'inf'")
        return v

    @model_validator(mode="after")
    def _trace(self):
        if self.dataset_name == "trace" and not self.trace_file:
            raise ValueError("dataset_name trace needs trace_file")
        if self.concurrency is not None and (self.max_concurrency is not None or self.request_rate != "inf"):
            raise ValueError("concurrency (closed loop) sends each request when the previous one finishes: "
                             "leave request_rate at inf and max_concurrency unset")
        if self.conversation_turns > 1 and self.concurrency is None:
            raise ValueError("conversation_turns > 1 needs a closed loop (concurrency): a turn is sent when the "
                             "previous one has finished")
        if self.measurement == "steady" and self.concurrency is None:
            raise ValueError("measurement: steady needs a closed loop (concurrency)")
        if self.identical_prompts and not (
                self.dataset_name == "fixed" or (self.dataset_name == "random"
                                                 and constant_length(self.input_len_distribution, self.random_range_ratio)
                                                 and constant_length(self.output_len_distribution, self.random_range_ratio))):
            raise ValueError("identical_prompts needs every request the same lengths: dataset_name fixed, or random "
                             "with fixed length distributions (or uniform ones at random_range_ratio 0)")
        if self.identical_prompts and self.conversation_turns > 1:
            raise ValueError("identical_prompts with conversation_turns > 1: a conversation's turns differ, so "
                             "its requests are not one prompt")
        if self.warmup_requests >= self.num_prompts:
            raise ValueError(f"warmup_requests {self.warmup_requests} leaves none of num_prompts {self.num_prompts} "
                             "to measure")
        if isinstance(self.request_rate, (int, float)):
            if not self.request_rate > 0:
                raise ValueError("request_rate must be > 0 or 'inf'")
            if self.dataset_name != "trace" and self.num_prompts / self.request_rate > MAX_SPAN_S:
                raise ValueError(f"num_prompts / request_rate = {self.num_prompts / self.request_rate:.3g} s of arrivals; "
                                 f"at most {MAX_SPAN_S:.0e} s (raise request_rate)")
        return self


class SLO(Strict):
    ttft_ms: Optional[float] = Field(default=None, gt=0)
    tpot_ms: Optional[float] = Field(default=None, gt=0)
    e2el_ms: Optional[float] = Field(default=None, gt=0)


class Scenario(Strict):
    name: SafeName = Field(default="scenario", description="the results folder's name under reports/")
    description: str = ""
    model: Union[str, dict]
    speculative_config: Optional[Speculative] = None
    hardware: Hardware = Field(default_factory=Hardware)
    engine: Engine = Field(default_factory=Engine)
    disaggregation: Optional[Disaggregation] = None
    routing: Routing = Field(default_factory=Routing)
    workload: Workload = Field(default_factory=Workload)
    slo: Optional[SLO] = None
    seed: int = Field(default=0, ge=0, lt=2**63)

    @model_validator(mode="after")
    def _identical_prompts(self):
        if self.workload.identical_prompts and self.engine.enable_prefix_caching:
            raise ValueError("workload.identical_prompts with engine.enable_prefix_caching: every prompt after the "
                             "first would be a prefix-cache hit, which is not modelled; turn one of them off")
        if self.workload.identical_prompts and self.speculative_config is not None:
            raise ValueError("workload.identical_prompts with speculative_config: identical sequences accept the same "
                             "drafts, which per-sequence acceptance draws do not reproduce; not modelled")
        return self


def _set(data: dict, dotted: str, raw: str, source: str) -> None:
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {dotted}: {k} is not a mapping", source=source, field=dotted)
        cur = nxt
    cur[keys[-1]] = load_text(raw, f"--set {dotted}")


def _alias_sglang(data: dict) -> None:
    """SGLang top-level names -> our speculative_config."""
    algo = data.pop("speculative_algorithm", None)
    if algo is not None:
        sc = data.setdefault("speculative_config", {}) or {}
        sc.setdefault("method", {"EAGLE": "eagle", "EAGLE3": "eagle3", "NEXTN": "mtp", "STANDALONE": "draft_model",
                                 "NGRAM": "ngram"}.get(str(algo).upper(), str(algo).lower()))
        data["speculative_config"] = sc
    for k in ("speculative_num_steps", "speculative_eagle_topk", "speculative_num_draft_tokens"):
        if k in data:
            data.setdefault("speculative_config", {})[k] = data.pop(k)
    if "speculative_draft_model_path" in data:
        data.setdefault("speculative_config", {})["model"] = data.pop("speculative_draft_model_path")


def apply_overrides(data: dict, overrides, source: str) -> None:
    """``--set a.b=value`` items (values parsed as YAML) into a loaded mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}", source="--set")
        k, v = item.split("=", 1)
        _set(data, k.strip(), v, source)


def parse(data, source: str, overrides: list[str] = ()) -> Scenario:
    if not isinstance(data, dict):
        raise ConfigError("a scenario must be a mapping of keys", source=source)
    apply_overrides(data, overrides, source)
    _alias_sglang(data)
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as exc:
        raise pydantic_error(exc, source) from None
    trace, base = sc.workload.trace_file, _base_dir(source)
    if trace and base is not None and not Path(trace).is_absolute() and not Path(trace).is_file():
        sc.workload.trace_file = str(base / trace)    # like model and GPU paths: from the scenario's folder
    return sc


def scenario_path(path: str | Path) -> Path:
    """A scenario file, or a bundled scenario by name (``quickstart``)."""
    path = Path(path)
    if not path.exists() and is_safe_name(str(path)) and (SCENARIOS_DIR / f"{path}.yaml").is_file():
        path = SCENARIOS_DIR / f"{path}.yaml"
    return path


def load_scenario(path: str | Path, overrides: list[str] = ()) -> Scenario:
    path = scenario_path(path)
    return parse(read_user_yaml(path, "scenario file"), str(path), overrides)


def _base_dir(source: str) -> Path | None:
    """Relative model/GPU paths in a scenario file are taken from the file's folder."""
    p = Path(source)
    return p.parent if p.suffix in (".yaml", ".yml") and p.is_file() else None


def resolve_model(spec, source: str, field: str) -> model_mod.ModelArch:
    return _arch(spec, source, field, _base_dir(source))[0]


def _arch(spec, source: str, field: str, base: Path | None) -> tuple:
    """(architecture, the file it came from as results show it, or 'inline')."""
    if isinstance(spec, dict):
        return model_mod.parse(spec, f"{source}: {field}"), "inline"
    path = model_mod.model_file(spec, source, field, base)
    return model_mod.load_file(path), display_path(path)


def check_compatible(target, draft, sc: Scenario, source: str) -> None:
    """Shapes an engine would refuse at start-up (vLLM's checks), as one-line errors."""
    for arch in (target, draft):
        if arch is not None:
            topology.check_heads(arch, sc.hardware.tensor_parallel_size, source, "hardware.tensor_parallel_size")
    if draft is not None:
        # a draft model shares the target's tokenizer (embedding rows may be padded differently:
        # Qwen2-0.5B has 151,936, Qwen2-7B 152,064, same 151,646 tokens); an EAGLE3 head may draft
        # over a reduced vocabulary mapped onto the target's (its d2t table), never a larger one
        if (abs(draft.vocab_size - target.vocab_size) > 0.01 * target.vocab_size if draft.kind == "model"
                else draft.vocab_size > target.vocab_size):
            raise ConfigError(f"draft {draft.name} has vocabulary {draft.vocab_size}, target {target.name} has "
                              f"{target.vocab_size}: SD needs the same tokenizer", source=source,
                              field="speculative_config.model")
        if draft.kind == "model" and draft.weight_bytes() >= target.weight_bytes():
            raise ConfigError(f"draft {draft.name} is not smaller than target {target.name}", source=source,
                              field="speculative_config.model")


def quantization(sc: Scenario, target: model_mod.ModelArch, hw, source: str) -> model_mod.Quantization:
    """The weight precisions the run prices and sizes: the scenario's ``engine.quantization`` over
    the checkpoint's. A name sets both parts, except mxfp4, which vLLM applies to experts only.
    Each must run on the GPU (one-line error otherwise, never a silent bf16)."""
    q = sc.engine.quantization
    native = target.quantization
    field = "engine.quantization"
    group = q.get("group_size") if isinstance(q, dict) else None
    if q is None or q == "auto":     # the checkpoint's, as the framework runs it on this GPU
        run = lambda n: precision.served_as(n, sc.engine.framework, hw.architecture)  # noqa: E731
        gemm, moe = run(native.gemm), run(native.moe)
    elif isinstance(q, dict):
        extra = set(q) - {"gemm", "moe", "group_size"}
        if extra:
            raise ConfigError(f"unknown keys {sorted(extra)}; allowed: gemm, moe, group_size", source=source, field=field)
        gemm = precision.get(q.get("gemm", native.gemm), source, field).name
        moe = precision.get(q.get("moe", native.moe), source, field).name
    else:
        p = precision.get(q, source, field)
        gemm, moe = native.gemm if p.name == "mxfp4" else p.name, p.name if target.moe else native.moe
    if group is None and "int4_wo" in (gemm, moe):
        group = native.group_size       # int4 weights keep the checkpoint's scale group (128 when it has none)
    try:
        quant = model_mod.Quantization(gemm=gemm, moe=moe, group_size=group)
    except ValidationError as exc:
        raise ConfigError(exc.errors()[0]["msg"].removeprefix("Value error, "), source=source, field=field) from None
    for part in ("gemm", "moe"):
        precision.check_supported(precision.get(getattr(quant, part)), hw, source, field)
    return quant


def resolve(sc: Scenario, source: str):
    """(target arch, draft arch or None, gpu Hardware, the files used): names looked up, errors
    one-line; the files (``model_file``, ``gpu_spec_file``, ``draft_model_file``) go in the summary."""
    base = _base_dir(source)
    target, target_file = _arch(sc.model, source, "model", base)
    draft = draft_file = None
    if sc.speculative_config and sc.speculative_config.model is not None and sc.speculative_config.method != "ngram":
        draft, draft_file = _arch(sc.speculative_config.model, source, "speculative_config.model", base)
    gpu_path = gpu_mod.spec_file(sc.hardware.gpu, source, "hardware.gpu", base)
    hw = gpu_mod.load_file(gpu_path)
    files = {"model_file": target_file, "gpu_spec_file": display_path(gpu_path)}
    if draft_file is not None:
        files["draft_model_file"] = draft_file
    check_compatible(target, draft, sc, source)
    return target, draft, hw, files
