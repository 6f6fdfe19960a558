"""A capacity plan as validated data (``plan.yaml``): model, drafts, workload, SLOs and the search space.

The search itself is :mod:`simulator.analysis.plan`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..common.errors import ConfigError, pydantic_error
from .scenario import apply_overrides


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Draft(_Strict):
    method: str = "draft_model"
    model: Optional[Union[str, dict]] = None
    acceptance: dict = Field(default_factory=lambda: {"rate": 0.8})


class PlanSLO(_Strict):
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


class Search(_Strict):
    gpus: list[str] = Field(default_factory=lambda: ["h100_sxm"], min_length=1)
    total_gpus: list[int] = Field(default_factory=lambda: [2], min_length=1)
    tensor_parallel_size: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    enable_expert_parallel: list[bool] = Field(default_factory=lambda: [False])
    max_num_seqs: list[int] = Field(default_factory=lambda: [128], min_length=1)
    num_speculative_tokens: list[int] = Field(default_factory=lambda: [0, 3], min_length=1)
    adaptive_k: list[bool] = Field(default_factory=lambda: [False])


class Bisection(_Strict):
    rate_min: float = Field(default=0.05, gt=0)
    rate_max: float = Field(default=500.0, gt=0)
    rel_tol: float = Field(default=0.15, gt=0, lt=1)
    max_sims: int = Field(default=5, ge=2, le=40)


class PlanSpec(_Strict):
    name: str = "plan"
    model: Union[str, dict]
    drafts: list[Draft] = Field(default_factory=list)
    workload: dict = Field(default_factory=lambda: {"random_input_len": 512, "random_output_len": 256,
                                                    "random_range_ratio": 0.5, "num_prompts": 200})
    engine: dict = Field(default_factory=dict)
    routing: dict = Field(default_factory=dict)
    slo: PlanSLO
    target_request_rate: Optional[float] = Field(default=None, gt=0)
    load_levels: list[float] = Field(default_factory=list)
    search: Search = Field(default_factory=Search)
    costs: dict[str, float] = Field(default_factory=dict, description="$ per GPU-hour overrides")
    bisection: Bisection = Field(default_factory=Bisection)
    seed: int = 0


def load_plan(path, overrides: list[str] = ()) -> PlanSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such plan file" if not path.exists() else "not a file", source=str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise ConfigError("invalid YAML", source=str(path)) from None
    return parse_plan(data, str(path), overrides)


def parse_plan(data, source: str, overrides: list[str] = ()) -> PlanSpec:
    if not isinstance(data, dict):
        raise ConfigError("a plan must be a mapping", source=source)
    apply_overrides(data, overrides, source)
    try:
        return PlanSpec.model_validate(data)
    except ValidationError as exc:
        raise pydantic_error(exc, source) from None
