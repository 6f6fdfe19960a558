"""A capacity plan as validated data (``plan.yaml``): model, drafts, workload, SLOs and the search space.

The search itself is :mod:`simulator.analysis.plan`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, ValidationError, model_validator

from ..common.datafiles import read_user_yaml
from ..common.errors import ConfigError, pydantic_error
from .scenario import apply_overrides
from .schema import SafeName, Strict


PositiveInt = Annotated[int, Field(ge=1, le=1_000_000)]
SpecTokens = Annotated[int, Field(ge=0, le=16)]



class Draft(Strict):
    method: str = "draft_model"
    model: Optional[Union[str, dict]] = None
    acceptance: dict = Field(default_factory=lambda: {"rate": 0.8})


class PlanSLO(Strict):
    ttft_ms: Optional[float] = Field(default=None, gt=0)
    tpot_ms: Optional[float] = Field(default=None, gt=0)
    e2el_ms: Optional[float] = Field(default=None, gt=0)
    percentile: float = Field(default=90, gt=0, le=100)
    goodput_fraction: float = Field(default=0.0, ge=0, le=1, description="share of requests meeting every SLO")

    @model_validator(mode="after")
    def _any(self):
        if self.ttft_ms is None and self.tpot_ms is None and self.e2el_ms is None:
            raise ValueError("give at least one of ttft_ms, tpot_ms, e2el_ms")
        return self


class Search(Strict):
    gpus: list[str] = Field(default_factory=lambda: ["h100_sxm"], min_length=1, max_length=32)
    total_gpus: list[PositiveInt] = Field(default_factory=lambda: [2], min_length=1, max_length=32)
    tensor_parallel_size: list[PositiveInt] = Field(default_factory=lambda: [1, 2], min_length=1, max_length=16)
    enable_expert_parallel: list[bool] = Field(default_factory=lambda: [False], min_length=1)
    data_parallel_size: list[PositiveInt] = Field(default_factory=lambda: [1], min_length=1, max_length=16, description=(
        "attention-DP ranks per worker (MoE models; a worker is tensor_parallel_size x data_parallel_size GPUs)"))
    mode: list[Literal["agg", "disagg"]] = Field(default_factory=lambda: ["agg"], min_length=1)
    prefill_workers: list[PositiveInt] = Field(default_factory=lambda: [1], min_length=1, max_length=16, description=(
        "disagg: workers that prefill; the rest of total_gpus decode (xPyD)"))
    max_num_seqs: list[PositiveInt] = Field(default_factory=lambda: [128], min_length=1, max_length=32)
    num_speculative_tokens: list[SpecTokens] = Field(default_factory=lambda: [0, 3], min_length=1, max_length=16)
    adaptive_k: list[bool] = Field(default_factory=lambda: [False], min_length=1)
    moe_a2a_backend: Optional[list[Literal["none", "deepep"]]] = Field(default=None, min_length=1, description=(
        "token exchange of attention-DP + EP workers to try (SGLang --moe-a2a-backend: none = all-gather, "
        "deepep = all-to-all dispatch); default: engine.moe_a2a_backend, else the framework's"))


class Bisection(Strict):
    rate_min: float = Field(default=0.05, gt=0)
    rate_max: float = Field(default=500.0, gt=0, le=1e6)
    rel_tol: float = Field(default=0.15, gt=0, lt=1)
    max_sims: int = Field(default=5, ge=2, le=40)

    @model_validator(mode="after")
    def _order(self):
        if self.rate_min >= self.rate_max:
            raise ValueError(f"rate_min {self.rate_min} must be below rate_max {self.rate_max}")
        return self


class PlanSpec(Strict):
    name: SafeName = "plan"
    model: Union[str, dict]
    drafts: list[Draft] = Field(default_factory=list)
    workload: dict = Field(default_factory=lambda: {"random_input_len": 512, "random_output_len": 256,
                                                    "random_range_ratio": 0.5, "num_prompts": 200})
    engine: dict = Field(default_factory=dict)
    routing: dict = Field(default_factory=dict)
    slo: PlanSLO
    target_request_rate: Optional[float] = Field(default=None, gt=0, le=1e6)
    load_levels: list[Annotated[float, Field(gt=0, le=1e6)]] = Field(default_factory=list, max_length=32)
    search: Search = Field(default_factory=Search)
    costs: dict[str, Annotated[float, Field(ge=0, le=1e6)]] = Field(default_factory=dict,
                                                                     description="$ per GPU-hour overrides")
    bisection: Bisection = Field(default_factory=Bisection)
    seed: int = Field(default=0, ge=0, lt=2**63)

    @model_validator(mode="after")
    def _a2a(self):
        if self.search.moe_a2a_backend and "moe_a2a_backend" in self.engine:
            raise ValueError("engine.moe_a2a_backend fixes the exchange that search.moe_a2a_backend searches: give one")
        return self

    @model_validator(mode="after")
    def _acceptance_k(self):
        # a mean acceptance length holds at the k it was measured at; across several k it needs that k
        ks = sorted({k for k in self.search.num_speculative_tokens if k})
        for i, d in enumerate(self.drafts):
            if isinstance(d.acceptance, dict) and "mean_acceptance_length" in d.acceptance \
                    and "measured_at_k" not in d.acceptance and len(ks) > 1:
                raise ValueError(f"drafts[{i}].acceptance: mean_acceptance_length needs measured_at_k (the k it was "
                                 f"measured at) when the search tries several k {ks}")
        return self


def load_plan(path, overrides: list[str] = ()) -> PlanSpec:
    return parse_plan(read_user_yaml(Path(path), "plan file"), str(path), overrides)


def parse_plan(data, source: str, overrides: list[str] = ()) -> PlanSpec:
    if not isinstance(data, dict):
        raise ConfigError("a plan must be a mapping", source=source)
    apply_overrides(data, overrides, source)
    try:
        return PlanSpec.model_validate(data)
    except ValidationError as exc:
        raise pydantic_error(exc, source) from None
