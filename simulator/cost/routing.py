"""MoE routing: which experts a step's tokens activate, and how many tokens each expert gets.

Two families live here:
- *serving* routing (what the simulator samples each step): ``uniform``, ``power_law`` (expert
  popularity ~ rank^-exponent) and ``locality`` (consecutive tokens of one sequence reuse the
  previous token's experts with some probability), sampled with a seeded ``numpy.random.Generator``
  or taken in expectation;
- *collector* routing: how AIConfigurator generated the MoE trace rows (``balanced`` round robin,
  ``power_law_<a>`` skewed loads, busiest EP rank timed), so calibration compares like with like.

Loads are returned for one EP rank: the busiest one, since an MoE layer waits for its slowest rank.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np


def expected_distinct_experts(num_tokens, num_experts: int, topk: int):
    """E * (1 - (1 - K/E)^T): distinct experts hit by T independently, uniformly routed tokens."""
    rho = topk / num_experts
    return num_experts * (1.0 - (1.0 - rho) ** np.asarray(num_tokens, dtype=float))


def full_activation_threshold(num_experts: int, topk: int, tau: float = 0.95) -> int:
    """Smallest T with N(T) >= tau * E (the paper's t_thres)."""
    rho = topk / num_experts
    if rho >= 1.0:
        return 1
    return int(math.ceil(math.log(1.0 - tau) / math.log(1.0 - rho)))


def tokens_per_active_expert(num_tokens, num_experts: int, topk: int):
    """rho * T / (1 - (1 - rho)^T): mean tokens per activated expert under uniform routing."""
    t = np.asarray(num_tokens, dtype=float)
    rho = topk / num_experts
    return rho * t / (1.0 - (1.0 - rho) ** t)


def busiest_rank(counts: np.ndarray, ep: int) -> np.ndarray:
    """Per-expert counts of the EP rank with the most token-slots (experts split contiguously)."""
    if ep <= 1:
        return counts
    per = counts.reshape(ep, -1)
    return per[int(np.argmax(per.sum(axis=1)))]


def expected_count_vector(num_tokens: int, num_experts: int, topk: int) -> np.ndarray:
    """Integer loads with the expected number of distinct experts N(T), slots spread evenly, and the
    active experts spread evenly over the expert index (so over expert-parallel ranks, which hold
    contiguous blocks of experts: an expected step has no busiest rank)."""
    counts = np.zeros(num_experts, dtype=np.int64)
    if num_tokens <= 0:
        return counts
    active = max(1, min(num_experts, int(round(float(expected_distinct_experts(num_tokens, num_experts, topk))))))
    slots = num_tokens * topk
    loads = np.full(active, slots // active, dtype=np.int64)
    loads[: slots - int(loads.sum())] += 1
    counts[(np.arange(active) * num_experts) // active] = loads
    return counts


# --- serving routing -------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _p_distinct(num_experts: int, topk: int) -> float:
    """Probability that K ids drawn uniformly with replacement from E are all distinct."""
    return math.prod(1.0 - i / num_experts for i in range(topk))


@dataclass(frozen=True)
class Routing:
    """A routing distribution for serving. ``kind``: uniform | power_law | locality.

    ``exponent``: power-law skew of expert popularity (0 = uniform).
    ``locality``: probability that a token reuses each expert of the previous token of the same
    sequence (draft blocks and verification windows are runs of adjacent tokens).
    """

    kind: str = "uniform"
    exponent: float = 0.0
    locality: float = 0.0

    def popularity(self, num_experts: int) -> np.ndarray:
        if self.kind == "power_law" and self.exponent > 0:
            p = np.arange(1, num_experts + 1, dtype=float) ** (-self.exponent)
        else:
            p = np.ones(num_experts)
        return p / p.sum()

    def sample_counts(self, seq_tokens: list[int] | np.ndarray, num_experts: int, topk: int,
                      rng: np.random.Generator) -> np.ndarray:
        """Tokens per expert for a step; ``seq_tokens[i]`` = tokens of sequence i in the step."""
        seq_tokens = np.asarray(seq_tokens)
        total = int(np.add.reduce(seq_tokens))
        if total == 0 or topk >= num_experts:
            return np.full(num_experts, total, dtype=np.int64)
        if self.keys_only(total, num_experts, topk):
            return self.counts_from_keys(rng.random((total, num_experts)), 1, topk)[0]
        choice = self._choose(total, num_experts, topk, rng)
        if self.kind == "locality" and self.locality > 0:
            # A token that is not the first of its sequence in this step keeps the previous
            # token's expert in each slot with probability `locality`.
            starts = np.zeros(total, dtype=bool)
            starts[np.concatenate(([0], np.cumsum(seq_tokens)[:-1]))] = True
            keep = (rng.random((total, topk)) < self.locality) & ~starts[:, None]
            for t in np.nonzero(keep.any(axis=1))[0]:
                row = choice[t - 1].copy()
                new = [e for e in choice[t] if e not in row]
                fill = iter(new)
                row = np.where(keep[t], row, -1)
                for j in range(topk):
                    if row[j] < 0:
                        row[j] = next((e for e in fill if e not in row), choice[t][j])
                choice[t] = row
        return np.bincount(choice.ravel(), minlength=num_experts)

    def _choose(self, total: int, num_experts: int, topk: int, rng: np.random.Generator) -> np.ndarray:
        """[total, topk] expert ids, K distinct per token."""
        E, K = num_experts, topk
        if self._keys_path(total, E, K):
            return self._ids_from_keys(rng.random((total, E)), K)
        # Uniform, many tokens: draw K ids per token with replacement (O(T K)); the tokens that drew
        # a repeat (under half) get a fresh subset from the O(E) draw above. Both are uniform over
        # K-subsets, so the result is exact.
        choice = (rng.random((total, K)) * E).astype(np.int64)
        s = np.sort(choice, axis=1)
        bad = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
        if len(bad):
            choice[bad] = np.argpartition(rng.random((len(bad), E)), K - 1, axis=1)[:, :K]
        return choice

    def keys_only(self, total: int, num_experts: int, topk: int) -> bool:
        """Whether routing ``total`` tokens draws exactly ``total x E`` uniform keys and nothing else
        (then several steps' keys can be drawn in one call: ``counts_from_keys``)."""
        if total == 0 or topk >= num_experts or (self.kind == "locality" and self.locality > 0):
            return False
        return self._keys_path(total, num_experts, topk)

    def _keys_path(self, total: int, num_experts: int, topk: int) -> bool:
        if self.kind == "power_law" and self.exponent > 0:
            return True
        return total * num_experts <= 8192 or _p_distinct(num_experts, topk) < 0.5

    def _scores(self, keys: np.ndarray) -> np.ndarray:
        """Per-token scores whose K smallest are the token's experts."""
        if self.kind == "power_law" and self.exponent > 0:
            # Gumbel top-k: K distinct experts per token, drawn in turn with probability ~ popularity.
            return np.log(-np.log(keys)) - np.log(self.popularity(keys.shape[1]))
        # Uniform: the K smallest of E random keys per token (one O(E) draw, cheapest when small).
        return keys

    def _ids_from_keys(self, keys: np.ndarray, topk: int) -> np.ndarray:
        return np.argpartition(self._scores(keys), topk - 1, axis=1)[:, :topk]

    def counts_from_keys(self, keys: np.ndarray, steps: int, topk: int) -> np.ndarray:
        """[steps, E] tokens per expert from ``steps x total`` rows of keys (``keys_only`` cases):
        row block j is step j, routed exactly as ``sample_counts`` would route it.

        Each token's experts are its scores at or below its K-th smallest (np.partition, twice as
        fast as argpartition): the same set argpartition picks unless a tie straddles the K-th
        score (continuous keys: probability ~E^2 / 2^53 per token), which the count check catches."""
        E = keys.shape[1]
        v = self._scores(keys)
        picked = v <= np.partition(v, topk - 1, axis=1)[:, topk - 1:topk]
        counts = np.add.reduce(picked.reshape(steps, -1, E), axis=1)
        if int(np.add.reduce(counts, axis=None)) != len(keys) * topk:
            ids = np.argpartition(v, topk - 1, axis=1)[:, :topk] + np.repeat(np.arange(steps) * E, len(keys) // steps)[:, None]
            counts = np.bincount(ids.ravel(), minlength=steps * E).reshape(steps, E)
        return counts

    def expected_counts(self, num_tokens: float, num_experts: int, topk: int) -> np.ndarray:
        """Expected tokens per expert (fractional), for the in-expectation cost path."""
        if topk >= num_experts:
            return np.full(num_experts, float(num_tokens))
        p = self.popularity(num_experts)
        # Inclusion probability of each expert in a K-subset, approximated by min(1, K p) for skew.
        incl = np.minimum(1.0, topk * p)
        incl *= topk / incl.sum()
        return num_tokens * incl


# --- collector routing (how the trace rows were generated) -----------------------------------


def collector_counts(num_tokens: int, num_experts: int, topk: int, ep: int, distribution: str,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """Per-expert token counts on the timed EP rank, as AIConfigurator's collector routed them.

    ``balanced``: slot j of token i goes to expert (i + j*ceil(E/K)) mod E (spread over the
    stride when T is small), so min(E, T*K) experts are active.
    ``uniform``: each token picks K distinct experts uniformly at random (the profiler's i.i.d. case).
    ``power_law_<a>``: see ``_collector_power_law``.
    """
    T, E, K = int(num_tokens), int(num_experts), int(topk)
    if distribution == "balanced":
        stride = math.ceil(E / K)
        i = np.arange(T)[:, None]
        j = np.arange(K)[None, :]
        if T >= stride:
            ids = (i + j * stride) % E
        else:
            ids = (np.floor(i * stride / T) + j * stride).astype(np.int64) % E
        counts = np.bincount(ids.ravel(), minlength=E)
        return busiest_rank(counts, ep)
    if distribution == "uniform":
        rng = rng or np.random.default_rng(0)
        ids = np.argsort(rng.random((T, E)), axis=1)[:, :K]
        return busiest_rank(np.bincount(ids.ravel(), minlength=E), ep)
    if not distribution.startswith("power_law"):
        raise ValueError(f"unknown distribution {distribution!r}")
    return _collector_power_law(T, E, K, max(int(ep), 1), float(distribution.split("_")[-1]),
                                rng or np.random.default_rng(0))


def _collector_power_law(T: int, E: int, K: int, ep: int, alpha: float, rng) -> np.ndarray:
    """The collector's power-law routing (AIConfigurator collector/helper.py, 2026 version that
    timed the vLLM 0.24 tables), rank 0 after its swap:

    1. per-expert loads from a bounded power law (support [1, 0.8 T] when T*K > E, else
       [0.01, 2]), scaled to T*K slots and rounded;
    2. each expert capped at T; the overflow, then the rounding error, handed out one slot per
       EP rank in turn, each rank giving it to its least-loaded expert (lowest index on ties);
    3. the busiest rank swapped into rank 0, which is the one timed.

    Step 2 matters at small T: every load rounds to 0, so the slots land on the first experts
    of each rank, the same ones in every draw (their weights stay in L2 across the timed loop),
    and spread over the ranks (the busiest rank holds about T*K/ep of them, not all)."""
    xmin, xmax = (1.0, T * 0.8) if T * K > E else (0.01, 2.0)
    a1 = 1.0 - alpha
    loads = ((xmax ** a1 - xmin ** a1) * rng.random(E) + xmin ** a1) ** (1.0 / a1)
    counts = np.round(loads / loads.sum() * (T * K)).astype(np.int64)
    overflow = int(np.maximum(counts - T, 0).sum())
    counts = np.minimum(counts, T).reshape(ep, E // ep)
    _round_robin(counts, overflow, T, +1)
    delta = T * K - int(counts.sum())
    _round_robin(counts, abs(delta), T, 1 if delta > 0 else -1)
    return busiest_rank(counts.ravel(), ep)


def _round_robin(counts: np.ndarray, remaining: int, cap: int, step: int) -> None:
    """Add (step=+1) or remove (-1) ``remaining`` slots, one per rank in rank order per round:
    each rank's least-loaded expert under ``cap`` (adding) or most-loaded non-empty one
    (removing), lowest index on ties. In place."""
    rows = np.arange(counts.shape[0])
    while remaining > 0:
        if step > 0:
            valid = counts < cap
            pick = np.argmin(np.where(valid, counts, np.iinfo(np.int64).max), axis=1)
        else:
            valid = counts > 0
            pick = np.argmax(np.where(valid, counts, -1), axis=1)
        ranks = rows[valid.any(axis=1)][:remaining]
        if len(ranks) == 0:
            return
        counts[ranks, pick[ranks]] += step
        remaining -= len(ranks)
