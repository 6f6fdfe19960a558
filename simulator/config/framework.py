"""Serving frameworks' step-model entries (``workloads/frameworks.yaml``), validated, by version."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, ValidationError

from ..common.datafiles import read_yaml
from ..common.errors import ConfigError, pydantic_error
from ..common.paths import REPO_ROOT
from ..common.versions import is_dated, version_key
from .schema import Strict

FRAMEWORKS_FILE = REPO_ROOT / "workloads" / "frameworks.yaml"


class MemoryBudget(Strict):
    below_gib: Optional[float] = Field(gt=0, description="GPUs with less memory than this (null: any)")
    tokens: int = Field(ge=1, le=1_000_000)


class StepEntry(Strict):
    since: str = Field(max_length=64)
    released: Optional[str] = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$", description=(
        "the release date of `since` (YYYY-MM-DD): a build known only by its date (a main-branch build) "
        "takes the newest entry released by then"))
    step_cpu_ms: float = Field(ge=0, le=10_000)
    per_seq_cpu_ms: float = Field(ge=0, le=10_000)
    spec_round_cpu_ms: float = Field(ge=0, le=10_000)
    cpu_overlap: bool
    sync_ms: float = Field(ge=0, le=10_000)
    draft_pass_cpu_ms: float = Field(default=0.0, ge=0, le=10_000, description=(
        "per draft forward pass of a speculative round: the proposer's input preparation and launches"))
    disagg_handoff_ms: float = Field(default=0.0, ge=0, description=(
        "disaggregated serving: a request's fixed cost between prefill and decode beyond the KV bytes "
        "(transfer setup, decode-side polling and admission, the first token's trip)"))
    prefill_kernel_launch_us: float = Field(default=0.0, ge=0, le=10_000, description=(
        "CPU per kernel of a step with prompt tokens, launched without CUDA graphs (SGLang and TensorRT-LLM "
        "capture decode batches only); such a step lasts at least its launches (simulator/cost/launches.py). "
        "0: prefill replays graphs or compiled code (vLLM's piecewise graphs)"))
    dp_dispatch: Literal["fewest_requests", "round_robin"] = Field(default="fewest_requests", description=(
        "attention DP: the rank a new request goes to, the one with the fewest running + waiting requests "
        "(vLLM's DP coordinator) or the next in turn whatever its load (SGLang --load-balance-method "
        "round_robin, its default)"))
    disagg_dp_dispatch: Literal["fewest_requests", "round_robin", "random"] = Field(
        default="fewest_requests", description=(
            "attention DP in a disaggregated prefill or decode worker: as dp_dispatch, or random (SGLang sends a "
            "request to rank bootstrap_room % dp, the room drawn at random per request)"))
    mixed_prefill: bool = Field(default=True, description=(
        "prefill chunks ride in the same step as the running decodes (vLLM chunked prefill, TRT-LLM "
        "in-flight batching); false: a step is prefill-only whenever a prefill batch can be formed, "
        "decodes paused (SGLang without --enable-mixed-chunk)"))
    kv_memory: Literal["total", "free"] = Field(default="total", description=(
        "what engine.gpu_memory_utilization is a fraction of: the GPU's memory, weights and activations "
        "then taken out (vLLM --gpu-memory-utilization, SGLang --mem-fraction-static), or the memory "
        "still free once weights and activations are in (TensorRT-LLM kv_cache_config.free_gpu_memory_fraction)"))
    moe_a2a_backend: Literal["none", "deepep"] = Field(default="none", description=(
        "how attention-DP ranks exchange tokens with an expert-parallel MoE: none, every rank gathers the "
        "group's tokens and its experts run on all of them (SGLang --moe-a2a-backend none, vLLM "
        "allgather_reducescatter, the defaults), or deepep, an all-to-all dispatch and combine"))
    moe_a2a_source: str = ""
    batched_tokens_by_memory: list[MemoryBudget] = Field(default_factory=list, description=(
        "the framework's own token budget per step when a scenario sets none, by the GPU's memory, "
        "first match (SGLang's chunked_prefill_size); empty: engine.max_num_batched_tokens's 8,192"))
    kernels_before_collections: Literal["newest", "oldest"] = Field(default="newest", description=(
        "which kernel fits price a release older than every collected table version: the newest (what "
        "this entry's step terms were fitted with) or the oldest collection (the nearest in time)"))
    kernel_time_scale: dict[Literal["ampere", "ada", "hopper", "blackwell", "cdna3"], float] = Field(
        default_factory=dict, description=(
            "per GPU architecture: the serving path's GEMM and MoE kernel time over what the framework's "
            "kernel tables time (1 where absent)"))
    kernel_fixed_scale: dict[Literal["ampere", "ada", "hopper", "blackwell", "cdna3"], float] = Field(
        default_factory=dict, description=(
            "per GPU architecture: the fixed per-kernel terms (launch and setup, k-loop and per-expert "
            "latency) over the tables' (kernel_time_scale where absent)"))
    kernel_time_scale_source: str = ""
    rank_skew: dict[Literal["ampere", "ada", "hopper", "blackwell", "cdna3"], float] = Field(
        default_factory=dict, description=(
            "per GPU architecture: TP/EP worker synchronisation, the relative spread of the ranks' GPU "
            "time between collectives; a step over n ranks waits for the slowest, rank_skew * sqrt(2 ln n) "
            "of its GPU time (0 where absent)"))
    rank_skew_source: str = ""
    source: str

    def batched_tokens(self, memory_bytes: float) -> int | None:
        """The default token budget on a GPU of this much memory (None: the engine's 8,192)."""
        for b in self.batched_tokens_by_memory:
            if b.below_gib is None or memory_bytes < b.below_gib * 2 ** 30:
                return b.tokens
        return None

    def kernel_scale(self, architecture: str) -> float:
        return self.kernel_time_scale.get(architecture, 1.0)

    def skew(self, architecture: str) -> float:
        return self.rank_skew.get(architecture, 0.0)

    def kernel_fixed(self, architecture: str) -> float:
        return self.kernel_fixed_scale.get(architecture, self.kernel_scale(architecture))


def entries(framework: str) -> list[StepEntry]:
    data = read_yaml(FRAMEWORKS_FILE)
    if framework not in data:
        raise ConfigError(f"no step-model entry for {framework!r}; have {sorted(data)}", source=str(FRAMEWORKS_FILE))
    try:
        return sorted((StepEntry.model_validate(e) for e in data[framework]), key=lambda e: version_key(e.since))
    except ValidationError as exc:
        raise pydantic_error(exc, f"{FRAMEWORKS_FILE}: {framework}") from None


def step_entry(framework: str, version: str | None = None) -> StepEntry:
    """The newest entry at or below ``version`` (the newest overall when None); for a date
    (YYYY-MM-DD: a build known by its date), the newest entry released by then."""
    es = entries(framework)
    if is_dated(version):
        by_then = [e for e in es if e.released is None or e.released <= str(version)]
        return by_then[-1] if by_then else es[0]
    if version is None or not str(version)[:1].isdigit():    # unset, or a nightly build: the newest
        return es[-1]
    ok = [e for e in es if version_key(e.since) <= version_key(str(version))]
    return ok[-1] if ok else es[0]
