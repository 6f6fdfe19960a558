"""What every validated user file (scenario, plan) shares: a strict, finite base model, the
safe-name type of the results folders they name and the framework-version type."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from ..common.paths import SAFE_NAME_RULE, is_safe_name
from ..common.versions import normalise


class Strict(BaseModel):
    # strict: no silent coercion (`num_prompts: true` is not 1); finite: no NaN or infinity
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _safe_name(v: str) -> str:
    if not is_safe_name(v):
        raise ValueError(f"{v!r} is not a safe folder name: {SAFE_NAME_RULE}")
    return v


SafeName = Annotated[str, AfterValidator(_safe_name)]
FrameworkVersion = Annotated[str, AfterValidator(normalise)]
