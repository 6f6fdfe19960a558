"""A scenario's ``speculative_config``: vLLM's names (SGLang's tree knobs as aliases) and the draft
acceptance model, validated."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, model_validator

from .schema import Strict


class Acceptance(Strict):
    """One of: ``rate`` (i.i.d. per token), ``per_position`` rates, ``mean_acceptance_length``
    (SGLang's accept length incl. the bonus token), or ``histogram`` (P(accepted drafts = j))."""

    rate: Optional[float] = Field(default=None, ge=0, le=1)
    per_position: Optional[list[float]] = None
    mean_acceptance_length: Optional[float] = Field(default=None, ge=1)
    measured_at_k: Optional[int] = Field(default=None, ge=1, le=16, description=(
        "the k a mean_acceptance_length was measured at: other k then keep its per-token rate "
        "(default: the run's own k)"))
    histogram: Optional[list[float]] = None

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("rate", "per_position", "mean_acceptance_length", "histogram") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of rate, per_position, mean_acceptance_length, histogram (got {given or 'none'})")
        if self.measured_at_k is not None and self.mean_acceptance_length is None:
            raise ValueError("measured_at_k goes with mean_acceptance_length (the k that length was measured at)")
        for k in ("per_position", "histogram"):
            v = getattr(self, k)
            if v is not None and (not v or any(x < 0 or x > 1 for x in v)):
                raise ValueError(f"{k} values must lie in [0, 1]")
        if self.histogram is not None and abs(sum(self.histogram) - 1) > 1e-6:
            raise ValueError("histogram must sum to 1")
        return self


class Speculative(Strict):
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
