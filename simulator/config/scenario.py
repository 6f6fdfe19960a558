"""Scenario YAML: validated with pydantic, unknown keys rejected, vLLM/SGLang names accepted.

``load_scenario(path, overrides)`` applies ``--set a.b=value`` overrides before validation, so an
override is checked exactly like the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import gpu as gpu_mod
from . import model as model_mod
from ..common.errors import ConfigError, pydantic_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Acceptance(_Strict):
    """One of: ``rate`` (i.i.d. per token), ``per_position`` rates, ``mean_acceptance_length``
    (SGLang's accept length incl. the bonus token), or ``histogram`` (P(accepted drafts = j))."""

    rate: Optional[float] = Field(default=None, ge=0, le=1)
    per_position: Optional[list[float]] = None
    mean_acceptance_length: Optional[float] = Field(default=None, ge=1)
    histogram: Optional[list[float]] = None

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("rate", "per_position", "mean_acceptance_length", "histogram") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of rate, per_position, mean_acceptance_length, histogram (got {given or 'none'})")
        for k in ("per_position", "histogram"):
            v = getattr(self, k)
            if v is not None and (not v or any(x < 0 or x > 1 for x in v)):
                raise ValueError(f"{k} values must lie in [0, 1]")
        if self.histogram is not None and abs(sum(self.histogram) - 1) > 1e-6:
            raise ValueError("histogram must sum to 1")
        return self


class Speculative(_Strict):
    """vLLM ``speculative_config`` names; SGLang's tree knobs are accepted as aliases."""

    method: Literal["draft_model", "eagle", "eagle3", "mtp", "ngram"] = "draft_model"
    model: Optional[Union[str, dict]] = None
    num_speculative_tokens: Optional[int] = Field(default=None, ge=0, le=16)
    speculative_num_steps: Optional[int] = Field(default=None, ge=0, le=16)
    speculative_eagle_topk: Optional[int] = Field(default=None, ge=1, le=16)
    speculative_num_draft_tokens: Optional[int] = Field(default=None, ge=1, le=128)
    adaptive: bool = False
    acceptance: Acceptance = Field(default_factory=lambda: Acceptance(rate=0.8))

    @model_validator(mode="after")
    def _k(self):
        if self.num_speculative_tokens is None:
            self.num_speculative_tokens = self.speculative_num_steps if self.speculative_num_steps is not None else 3
        if self.method in ("draft_model", "eagle", "eagle3") and self.model is None:
            raise ValueError(f"method {self.method} needs 'model' (a catalog name or an inline architecture)")
        return self

    @property
    def k(self) -> int:
        return int(self.num_speculative_tokens)

    @property
    def verify_tokens(self) -> int:
        """Query tokens per sequence in verification: k+1, or SGLang's tree size when given."""
        if self.speculative_num_draft_tokens and (self.speculative_eagle_topk or 1) > 1:
            return int(self.speculative_num_draft_tokens)
        return self.k + 1


class Hardware(_Strict):
    gpu: str = "h100_sxm"
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    pipeline_parallel_size: Literal[1] = 1
    data_parallel_size: int = Field(default=1, ge=1, le=1024)
    enable_expert_parallel: bool = False


class Engine(_Strict):
    max_num_seqs: int = Field(default=128, ge=1)
    max_num_batched_tokens: int = Field(default=8192, ge=1)
    enable_chunked_prefill: bool = True
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    block_size: int = Field(default=16, ge=1)
    max_model_len: Optional[int] = Field(default=None, ge=1)
    kv_cache_dtype: Literal["auto", "bfloat16", "fp8"] = "auto"
    enforce_eager: bool = False
    step_overhead_ms: float = Field(default=1.5, ge=0, description="CPU scheduling/sampling per engine step")
    per_seq_overhead_ms: float = Field(default=0.0, ge=0, description="CPU cost per scheduled sequence per step")
    spec_round_overhead_ms: float = Field(default=0.0, ge=0,
                                          description="extra CPU cost of a speculative round (draft bookkeeping, "
                                                      "tree build, verification) beyond a plain step")
    router: Literal["round_robin", "least_outstanding"] = "round_robin"


class Routing(_Strict):
    distribution: Literal["uniform", "power_law", "locality"] = "uniform"
    exponent: float = Field(default=1.0, ge=0)
    locality: float = Field(default=0.0, ge=0, le=1)
    mode: Literal["sample", "expected"] = "sample"


class Workload(_Strict):
    """``vllm bench serve`` names, plus length distributions and trace files."""

    dataset_name: Literal["random", "trace", "fixed"] = "random"
    random_input_len: int = Field(default=1024, ge=1)
    random_output_len: int = Field(default=128, ge=1)
    random_range_ratio: float = Field(default=0.0, ge=0, lt=1)
    input_len_distribution: Literal["uniform", "lognormal", "fixed"] = "uniform"
    output_len_distribution: Literal["uniform", "lognormal", "geometric", "fixed"] = "uniform"
    num_prompts: int = Field(default=1000, ge=1)
    request_rate: Union[float, Literal["inf"]] = "inf"
    burstiness: float = Field(default=1.0, gt=0)
    max_concurrency: Optional[int] = Field(default=None, ge=1)
    seed: int = 0
    trace_file: Optional[str] = None
    trace_format: Optional[Literal["azure", "burstgpt", "mooncake", "vidur"]] = None
    trace_time_scale: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _trace(self):
        if self.dataset_name == "trace" and not self.trace_file:
            raise ValueError("dataset_name trace needs trace_file")
        if isinstance(self.request_rate, (int, float)) and self.request_rate <= 0:
            raise ValueError("request_rate must be > 0 or 'inf'")
        return self


class SLO(_Strict):
    ttft_ms: Optional[float] = Field(default=None, gt=0)
    tpot_ms: Optional[float] = Field(default=None, gt=0)
    e2el_ms: Optional[float] = Field(default=None, gt=0)


class Scenario(_Strict):
    name: str = "scenario"
    description: str = ""
    model: Union[str, dict]
    speculative_config: Optional[Speculative] = None
    hardware: Hardware = Field(default_factory=Hardware)
    engine: Engine = Field(default_factory=Engine)
    routing: Routing = Field(default_factory=Routing)
    workload: Workload = Field(default_factory=Workload)
    slo: Optional[SLO] = None
    seed: int = 0


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
    try:
        cur[keys[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"unparseable value {raw!r}", source="--set", field=dotted) from None


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
    return sc


def load_scenario(path: str | Path, overrides: list[str] = ()) -> Scenario:
    path = Path(path)
    if not path.is_file():
        from ..common.paths import SCENARIOS_DIR
        alt = SCENARIOS_DIR / f"{path}.yaml"
        if alt.is_file():
            path = alt
        else:
            raise ConfigError("no such scenario file" if not path.exists() else "not a file", source=str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"invalid YAML{where}", source=str(path)) from None
    return parse(data, str(path), overrides)


def resolve_model(spec, source: str, field: str) -> model_mod.ModelArch:
    if isinstance(spec, dict):
        return model_mod.parse(spec, f"{source}: {field}")
    return model_mod.load(spec, source=source)


def resolve(sc: Scenario, source: str):
    """(target arch, draft arch or None, gpu Hardware): names looked up, errors one-line."""
    target = resolve_model(sc.model, source, "model")
    draft = None
    if sc.speculative_config and sc.speculative_config.model is not None and sc.speculative_config.method != "ngram":
        draft = resolve_model(sc.speculative_config.model, source, "speculative_config.model")
    hw = gpu_mod.load(sc.hardware.gpu, source=source)
    return target, draft, hw
