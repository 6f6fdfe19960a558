"""Request streams: ``vllm bench serve``-style random datasets and public trace formats."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.errors import ConfigError
from ..config.datasets import all_datasets
from ..config.scenario import constant_length


@dataclass(frozen=True)
class RequestSpec:
    request_id: int
    arrival_s: float          # when the client would send it (before any max_concurrency wait)
    input_len: int
    output_len: int
    conversation: int = -1    # multi-turn: the conversation this turn belongs to (-1: single request)
    prefix_len: int = 0       # multi-turn: tokens of history re-sent in front of this turn's new prompt


def _lengths(rng, mean: int, ratio: float, dist: str, n: int) -> np.ndarray:
    if constant_length(dist, ratio):
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


MAX_TRACE_BYTES = 1 << 30


def _read_table(path: Path) -> pd.DataFrame:
    """A trace file as a table; unreadable or malformed files are one-line errors naming it."""
    src = str(path)
    if not path.is_file():
        raise ConfigError("trace file not found" if not path.exists() else "not a regular file", source=src,
                          field="workload.trace_file")
    if path.stat().st_size > MAX_TRACE_BYTES:
        raise ConfigError(f"larger than {MAX_TRACE_BYTES >> 20} MiB", source=src, field="workload.trace_file")
    try:
        if path.suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=True)
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ConfigError("empty trace file", source=src, field="workload.trace_file") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ConfigError(f"unreadable trace ({str(exc).splitlines()[0][:120]})", source=src,
                          field="workload.trace_file") from None
    except OSError as exc:
        raise ConfigError(f"cannot be read ({exc.strerror})", source=src, field="workload.trace_file") from None


def read_trace(path: str | Path, fmt: str, num_prompts: int | None, time_scale: float = 1.0) -> list[RequestSpec]:
    path = Path(path)
    src = str(path)
    tcol, unit, icol, ocol = TRACE_FORMATS[fmt]
    df = _read_table(path)
    missing = [c for c in (tcol, icol, ocol) if c not in df.columns]
    if missing:
        raise ConfigError(f"missing columns {missing} for trace_format {fmt}", source=src)
    if fmt == "burstgpt" and "Response tokens" in df:
        df = df[pd.to_numeric(df["Response tokens"], errors="coerce") > 0]
    if df.empty:
        raise ConfigError("no requests in the trace", source=src)
    t = df[tcol]
    if unit is None:    # Azure: ISO timestamps
        t = pd.to_datetime(t, errors="coerce", utc=True)
        bad = t.isna()
        secs = (t - t.min()).dt.total_seconds().values
    else:
        t = pd.to_numeric(t, errors="coerce").astype(float)
        bad = ~np.isfinite(t.values)
        secs = (t.values - np.nanmin(t.values) if not bad.all() else t.values) * unit
    if bad.any():
        row = int(np.flatnonzero(np.asarray(bad))[0])
        cell = df[tcol].iloc[row]
        cell = cell.item() if hasattr(cell, "item") else cell
        raise ConfigError(f"row {row + 1}: {tcol} {cell!r} is not a valid time", source=src, field=tcol)
    for col in (icol, ocol):
        v = pd.to_numeric(df[col], errors="coerce").values
        wrong = ~np.isfinite(v) | (v < 0) | (v > (1 << 20)) | (v != np.floor(v))
        if wrong.any():
            row = int(np.flatnonzero(wrong)[0])
            cell = df[col].iloc[row]
            cell = cell.item() if hasattr(cell, "item") else cell       # a numpy scalar as the number it is
            raise ConfigError(f"row {row + 1}: {col} {cell!r} is not a token count in [0, {1 << 20}]",
                              source=src, field=col)
    order = np.argsort(secs, kind="stable")
    df, secs = df.iloc[order], secs[order] * time_scale
    if num_prompts:
        df, secs = df.iloc[:num_prompts], secs[:num_prompts]
    # a zero-length prompt or output (real traces have them) still costs one token
    return [RequestSpec(i, float(s), max(1, int(a)), max(1, int(b)))
            for i, (s, a, b) in enumerate(zip(secs, df[icol], df[ocol]))]


def conversations(specs: list[RequestSpec], turns: int) -> list[RequestSpec]:
    """Consecutive requests as conversations of ``turns`` turns: each turn re-sends the history (every
    earlier turn's prompt and answer) in front of its own new prompt, as chat clients do."""
    out = []
    for s in specs:
        c, t = divmod(s.request_id, turns)
        prefix = 0 if t == 0 else out[-1].input_len + out[-1].output_len
        out.append(RequestSpec(s.request_id, s.arrival_s, prefix + s.input_len, s.output_len, c, prefix))
    return out


def build(wl, rng: np.random.Generator) -> list[RequestSpec]:
    if wl.conversation_turns > 1:
        return conversations(_build(wl, rng), wl.conversation_turns)
    return _build(wl, rng)


def _build(wl, rng: np.random.Generator) -> list[RequestSpec]:
    if wl.dataset_name == "trace":
        return read_trace(wl.trace_file, wl.trace_format or "vidur", wl.num_prompts, wl.trace_time_scale)
    if wl.dataset_name in all_datasets():
        e = all_datasets()[wl.dataset_name]
        ds = wl.model_copy(update={"random_input_len": int(e["input_len"]), "random_output_len": int(e["output_len"]),
                                   "random_range_ratio": float(e["spread"]), "input_len_distribution": "lognormal",
                                   "output_len_distribution": "lognormal"})
        return random_requests(ds, rng)
    if wl.dataset_name == "fixed":
        return [RequestSpec(r.request_id, r.arrival_s, wl.random_input_len, wl.random_output_len)
                for r in random_requests(wl, rng)]
    return random_requests(wl, rng)
