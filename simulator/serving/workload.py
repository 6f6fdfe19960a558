"""Request streams: ``vllm bench serve``-style random datasets and public trace formats."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.errors import ConfigError


@dataclass(frozen=True)
class RequestSpec:
    request_id: int
    arrival_s: float          # when the client would send it (before any max_concurrency wait)
    input_len: int
    output_len: int


def _lengths(rng, mean: int, ratio: float, dist: str, n: int) -> np.ndarray:
    if dist == "fixed" or (dist == "uniform" and ratio == 0):
        return np.full(n, mean, dtype=np.int64)
    if dist == "uniform":   # vLLM: uniform integers in [L(1-r), L(1+r)]
        lo, hi = max(1, int(mean * (1 - ratio))), max(1, int(mean * (1 + ratio)))
        return rng.integers(lo, hi + 1, size=n)
    if dist == "lognormal":
        sigma = max(ratio, 0.5)
        return np.maximum(1, np.round(rng.lognormal(np.log(mean) - sigma ** 2 / 2, sigma, n))).astype(np.int64)
    if dist == "geometric":
        return rng.geometric(1.0 / mean, n).astype(np.int64)
    raise ValueError(dist)


def _arrivals(rng, n: int, rate, burstiness: float) -> np.ndarray:
    """vLLM's arrival process: gamma inter-arrival gaps with shape=burstiness, mean 1/rate."""
    if rate == "inf":
        return np.zeros(n)
    theta = 1.0 / (rate * burstiness)
    gaps = rng.gamma(burstiness, theta, n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def random_requests(wl, rng: np.random.Generator) -> list[RequestSpec]:
    n = wl.num_prompts
    ins = _lengths(rng, wl.random_input_len, wl.random_range_ratio, wl.input_len_distribution, n)
    outs = _lengths(rng, wl.random_output_len, wl.random_range_ratio, wl.output_len_distribution, n)
    arr = _arrivals(rng, n, wl.request_rate, wl.burstiness)
    return [RequestSpec(i, float(a), int(x), int(y)) for i, (a, x, y) in enumerate(zip(arr, ins, outs))]


# trace format -> (time column, time unit in s, input column, output column)
TRACE_FORMATS = {
    "azure": ("TIMESTAMP", None, "ContextTokens", "GeneratedTokens"),
    "burstgpt": ("Timestamp", 1.0, "Request tokens", "Response tokens"),
    "mooncake": ("timestamp", 1e-3, "input_length", "output_length"),
    "vidur": ("arrived_at", 1.0, "num_prefill_tokens", "num_decode_tokens"),
}


def read_trace(path: str | Path, fmt: str, num_prompts: int | None, time_scale: float = 1.0) -> list[RequestSpec]:
    path = Path(path)
    if not path.exists():
        raise ConfigError("trace file not found", source=str(path), field="workload.trace_file")
    tcol, unit, icol, ocol = TRACE_FORMATS[fmt]
    df = pd.read_json(path, lines=True) if path.suffix in (".jsonl", ".json") else pd.read_csv(path)
    missing = [c for c in (tcol, icol, ocol) if c not in df.columns]
    if missing:
        raise ConfigError(f"missing columns {missing} for trace_format {fmt}", source=str(path))
    if fmt == "burstgpt" and "Response tokens" in df:
        df = df[df["Response tokens"] > 0]
    t = df[tcol]
    if unit is None:    # Azure: ISO timestamps
        t = pd.to_datetime(t)
        secs = (t - t.min()).dt.total_seconds().values
    else:
        secs = (t.values.astype(float) - float(t.min())) * unit
    order = np.argsort(secs, kind="stable")
    df, secs = df.iloc[order], secs[order] * time_scale
    if num_prompts:
        df, secs = df.iloc[:num_prompts], secs[:num_prompts]
    return [RequestSpec(i, float(s), max(1, int(a)), max(1, int(b)))
            for i, (s, a, b) in enumerate(zip(secs, df[icol], df[ocol]))]


def build(wl, rng: np.random.Generator) -> list[RequestSpec]:
    if wl.dataset_name == "trace":
        return read_trace(wl.trace_file, wl.trace_format or "vidur", wl.num_prompts, wl.trace_time_scale)
    if wl.dataset_name == "fixed":
        return [RequestSpec(r.request_id, r.arrival_s, wl.random_input_len, wl.random_output_len)
                for r in random_requests(wl, rng)]
    return random_requests(wl, rng)
