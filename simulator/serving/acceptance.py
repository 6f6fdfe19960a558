"""Acceptance models: how many of k drafted tokens the target accepts, per sequence per step.

Each model is a small class with ``sample(k, n, rng) -> accepted counts`` and
``expected_accepted(k)``; the bonus token is counted by the engine, not here.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq


class IID:
    """Each draft token accepted with probability ``rate``, until the first rejection."""

    def __init__(self, rate: float):
        self.rate = float(rate)

    def position_rates(self, k: int) -> np.ndarray:
        return np.full(k, self.rate)

    def sample(self, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
        if k == 0 or self.rate <= 0:
            return np.zeros(n, dtype=np.int64)
        if self.rate >= 1:
            return np.full(n, k, dtype=np.int64)
        return np.minimum(rng.geometric(1.0 - self.rate, n) - 1, k)

    def expected_accepted(self, k: int) -> float:
        a = self.rate
        return float(sum(a ** j for j in range(1, k + 1)))


class PerPosition(IID):
    """Conditional acceptance rate of position j given positions < j were accepted."""

    def __init__(self, rates):
        self.rates = np.asarray(rates, dtype=float)

    def position_rates(self, k: int) -> np.ndarray:
        r = self.rates
        return np.concatenate([r, np.full(max(0, k - len(r)), r[-1])])[:k]

    def sample(self, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
        if k == 0:
            return np.zeros(n, dtype=np.int64)
        ok = rng.random((n, k)) < self.position_rates(k)
        return np.where(ok.all(axis=1), k, np.argmin(ok, axis=1))

    def expected_accepted(self, k: int) -> float:
        return float(np.cumprod(self.position_rates(k)).sum())


class Histogram(PerPosition):
    """P(accepted = j), j = 0..len-1, measured at some k; truncated at the k in use."""

    def __init__(self, probs):
        p = np.asarray(probs, dtype=float)
        self.probs = p / p.sum()
        surv = 1.0 - np.cumsum(self.probs)[:-1]                   # P(A > j)
        prev = np.concatenate([[1.0], surv[:-1]])
        rates = np.divide(surv, prev, out=np.zeros_like(surv), where=prev > 0)
        super().__init__(rates if len(rates) else [0.0])


def from_config(acc) -> IID:
    if acc.rate is not None:
        return IID(acc.rate)
    if acc.per_position is not None:
        return PerPosition(acc.per_position)
    if acc.histogram is not None:
        return Histogram(acc.histogram)
    return IID(rate_for_length(acc.mean_acceptance_length, None))


def rate_for_length(length: float, k: int | None) -> float:
    """i.i.d. rate whose mean acceptance length (1 + E[accepted]) at k equals ``length``.

    With ``k`` unknown at parse time it is solved for k=num_speculative_tokens by the engine; here
    k=None means an infinite horizon: length = 1/(1-a).
    """
    if k is None:
        return float(min(max(1.0 - 1.0 / length, 0.0), 0.999))
    if length >= k + 1:
        return 1.0
    if length <= 1:
        return 0.0
    return float(brentq(lambda a: 1 + IID(a).expected_accepted(k) - length, 0.0, 1.0))


def build(acc, k: int):
    """The model a run drafting k tokens uses: a mean acceptance length is matched at the k it was
    measured at (``measured_at_k``, else k), so that a run at another k keeps its per-token rate."""
    if acc.mean_acceptance_length is not None:
        return IID(rate_for_length(acc.mean_acceptance_length, acc.measured_at_k or k))
    return from_config(acc)


def describe(acc, k: int, unset: str | None = None) -> str:
    """The acceptance a run drafting k tokens assumes, in words, with the mean acceptance length it
    implies; ``unset`` names the key left unset when ``acc`` is the schema's default, which the SD
    verdict then rests on."""
    if acc.mean_acceptance_length is not None:
        text = f"mean acceptance length {acc.mean_acceptance_length:g} at k {acc.measured_at_k or k}"
    elif acc.rate is not None:
        text = f"rate {acc.rate:g} per draft token"
    elif acc.per_position is not None:
        text = "per-position rates " + ", ".join(f"{r:g}" for r in acc.per_position)
    else:
        text = f"histogram of accepted drafts over {len(acc.histogram)} counts"
    if acc.mean_acceptance_length is None or (acc.measured_at_k or k) != k:
        text += f" (length {1 + build(acc, k).expected_accepted(k):.2f} at k {k})"
    if unset:
        text += f"; a default: {unset} is not set"
    return text


def describe_scenario(spec, k: int) -> str:
    """``describe`` for a scenario's ``speculative_config``, saying so when it left the acceptance unset."""
    return describe(spec.acceptance, k,
                    None if "acceptance" in spec.model_fields_set else "speculative_config.acceptance")


def pinned(acc, k: int) -> dict:
    """``acc`` as a scenario mapping fixed for any k: a mean acceptance length with no k of its own
    is taken as measured at ``k`` (the scenario's own), which a sweep or plan then varies."""
    d = acc.model_dump(exclude_none=True)
    if acc.mean_acceptance_length is not None and acc.measured_at_k is None and k:
        d["measured_at_k"] = int(k)
    return d
