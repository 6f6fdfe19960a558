"""Reading an SD table for ``moesd validate --sd-table FILE``: published (or a user's own) speculative-decoding measurements in
the schema of ``traces/e2e/published/sd_training.csv``, each row classified as expressible or blocked
with the reason, and the expressible ones simulated with and without SD as their benchmark ran them.

A row is one metric (throughput, TPOT, ITL, latency or a stated speedup) of one setup, with the value
with SD and, when published, without it. Rows of one setup (every column but the metric and values)
share one pair of simulations. Where a setup leaves something out, the row is either blocked with the
reason or simulated under a documented assumption, written in its ``assumption`` column:
- acceptance length not stated but the setup publishes both ITL and TPOT with SD: their ratio (a
  streamed chunk is one verify step, so ITL / TPOT is the tokens per step);
- lengths not stated: the dataset's entry in ``workloads/datasets.yaml``;
- a ``--assume`` file (YAML, keyed by a prefix of ``source``) fills empty cells of a source, with the
  reason it gives.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.cells import number
from ..common.datafiles import read_yaml
from ..config.datasets import matching
from ..common.errors import ConfigError
from ..common.paths import GPU_SPECS_DIR, MODELS_DIR
from .silicon import MODELS as SILICON_MODELS, UNSUPPORTED_MODELS

REQUIRED = ["source", "framework", "framework_version", "gpu", "tp", "target_model", "draft_method", "draft_model",
            "k", "eagle_topk", "num_draft_tokens", "batch_or_concurrency", "request_rate", "input_len", "output_len",
            "dataset", "metric", "baseline_value", "sd_value", "unit", "acceptance_length", "notes"]
VALUES = ["metric", "baseline_value", "sd_value", "unit"]
METRICS = ("throughput_tok_s", "tpot_ms", "itl_ms", "latency_s", "latency_ms", "speedup", "slowdown",
           "speedup_pct_e2e_runtime")
# metrics where more is better (a speedup is value_sd / value_base); the rest are times
HIGHER_BETTER = {"throughput_tok_s"}
SPEEDUP_METRICS = ("speedup", "slowdown", "speedup_pct_e2e_runtime")
FRAMEWORKS = {"vllm": "vllm", "sglang": "sglang", "tensorrt-llm": "trtllm", "trtllm": "trtllm", "trt-llm": "trtllm"}
GPUS = {"h100 sxm": "h100_sxm", "h100": "h100_sxm", "h100 80gb hbm3": "h100_sxm", "h100 pcie": "h100_pcie",
        "h200": "h200_sxm", "b200": "b200_sxm", "b300": "b300_sxm", "gb200": "gb200", "gb300": "gb300",
        "a100": "a100_sxm", "a100 80gb": "a100_sxm", "a100 40gb": "a100_sxm_40gb", "a800": "a800_80gb",
        "h800": "h800_sxm", "h20": "h20", "l40s": "l40s", "l40": "l40", "mi300x": "mi300x"}
# names the published tables use beyond the silicon sample's -> (catalog architecture, assumption)
EXTRA_MODELS = {
    "Qwen/Qwen3-8B-FP8": "Qwen3-8B", "Qwen/Qwen3-32B-FP8": "Qwen3-32B",
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "Llama-3.1-8B", "Llama-3-8B-Instruct": "Llama-3-8B",
    "meta-llama/Meta-Llama-3-8B-Instruct": "Llama-3-8B",
    # Llama 3 / 3.3 70B share Llama-3.1-70B's published shapes (hidden 8192, 80 layers, GQA 64/8)
    "meta-llama/Llama-3.3-70B-Instruct": "Llama-3.1-70B", "Llama3-70B": "Llama-3.1-70B",
    "Llama-4-Scout-17B-16E": "Llama-4-Scout-17B-16E", "meta-llama/Llama-4-Scout-17B-16E-Instruct": "Llama-4-Scout-17B-16E",
    "Llama-4-Maverick-17B-128E": "Llama-4-Maverick-17B-128E",
    "meta-llama/Llama-4-Maverick-17B-128E-Instruct": "Llama-4-Maverick-17B-128E",
}
MODELS = {**SILICON_MODELS, **EXTRA_MODELS}
UNSUPPORTED = {**UNSUPPORTED_MODELS, "Qwen/Qwen3.5": "hybrid linear attention (Gated DeltaNet layers)"}
# checkpoint precision from the repo name (Qwen's -FP8 releases are 128x128 block-wise FP8, their
# config.json's weight_block_size); a stated dtype in parentheses wins
NAME_PRECISION = (("-FP8", "fp8_block"), ("NVFP4", "nvfp4"))
PAREN_PRECISION = {"bf16": "bf16", "fp16": "bf16", "fp8": "fp8"}
DRAFT_METHODS = (("eagle3", "eagle3", "EAGLE3-"), ("mtp", "mtp", None), ("eagle", "eagle", "EAGLE-"),
                 ("n-gram", "ngram", None), ("ngram", "ngram", None), ("draft model", "draft_model", None))


def read_table(path: Path) -> pd.DataFrame:
    """The CSV, leading ``#`` comment lines skipped; a missing column or unreadable file is one line."""
    path = Path(path)
    src = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            skip = 0
            for line in f:
                if not line.startswith("#"):
                    break
                skip += 1
        df = pd.read_csv(path, skiprows=skip, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise ConfigError("no such file", source=src, field="--sd-table") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ConfigError(f"not a readable CSV ({str(exc).splitlines()[0][:80]})", source=src,
                          field="--sd-table") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ConfigError(f"missing columns {missing} (schema of sd_training.csv)", source=src, field="--sd-table")
    if df.empty:
        raise ConfigError("no rows", source=src, field="--sd-table")
    bad = ~df.metric.isin(METRICS)
    if bad.any():
        i = int(np.flatnonzero(bad.values)[0])
        raise ConfigError(f"row {i + 1}: metric {df.metric.iloc[i]!r}; allowed: {', '.join(METRICS)}",
                          source=src, field="metric")
    df.insert(0, "row", np.arange(1, len(df) + 1))
    return df.reset_index(drop=True)


def read_assumptions(path: Path | None) -> list[tuple[str, dict, dict, str]]:
    """(source prefix, {column: value} a row must have, {column: value} to fill, why) per entry of an
    ``--assume`` YAML file; ``where`` is optional."""
    if path is None:
        return []
    data = read_yaml(Path(path))
    out = []
    for i, e in enumerate(data if isinstance(data, list) else []):
        if not (isinstance(e, dict) and isinstance(e.get("source"), str) and isinstance(e.get("set"), dict)
                and isinstance(e.get("why"), str)):
            raise ConfigError(f"entry {i + 1} needs source (prefix), set (column: value) and why", source=str(path))
        where = e.get("where") or {}
        if not isinstance(where, dict):
            raise ConfigError(f"entry {i + 1}: where must map columns to values", source=str(path), field="where")
        for key, cells in (("set", e["set"]), ("where", where)):
            unknown = [k for k in cells if k not in REQUIRED]
            if unknown:
                raise ConfigError(f"entry {i + 1}: unknown columns {unknown}", source=str(path), field=key)
        out.append((e["source"], {k: str(v) for k, v in where.items()}, {k: str(v) for k, v in e["set"].items()},
                    " ".join(e["why"].split())))
    if not out:
        raise ConfigError("expected a list of {source, set, why} entries", source=str(path))
    return out


def _same(cell, value: str) -> bool:
    a, b = number(cell), number(value)
    return a == b if a is not None and b is not None else str(cell).strip() == value.strip()


def whole(r: dict, col: str, what: str) -> tuple:
    """(a cell's whole number, "") or (None, why not): unstated, not a number, or fractional."""
    v = r[col]
    x = number(v)
    if x is None:
        blank = v is None or str(v).strip().lower() in ("", "nan")
        return None, f"{what} not stated" if blank else f"{col} {v!r} is not a number"
    if x != int(x):
        return None, f"{col} {v!r} is not a whole number"
    return int(x), ""


def framework_of(name: str) -> str | None:
    """The simulator's framework name for a table's (``tensorrt-llm (PyTorch backend)`` -> trtllm)."""
    return next((v for k, v in FRAMEWORKS.items() if name.strip().lower().startswith(k)), None)


def setup_key(r: dict) -> tuple:
    return tuple(r[c] for c in REQUIRED if c not in VALUES)


def _model(name: str) -> tuple[str | None, str | None, str]:
    """(catalog architecture, precision or None for the checkpoint's, blocked reason)."""
    m = re.match(r"\s*([^()]+?)\s*(?:\((.*)\))?\s*$", name)
    repo, paren = (m.group(1), (m.group(2) or "").lower()) if m else (name, "")
    for prefix, why in UNSUPPORTED.items():
        if repo.startswith(prefix):
            return None, None, why
    arch = MODELS.get(repo)
    if arch is None or not (MODELS_DIR / f"{arch}.yaml").is_file():
        return None, None, f"no catalog architecture for {repo}"
    prec = next((p for tag, p in PAREN_PRECISION.items() if re.search(rf"\b{tag}\b", paren)), None)
    prec = prec or next((p for tag, p in NAME_PRECISION if tag in repo), None)
    return arch, prec, ""


def _version(v: str) -> str | None:
    """A release number the step-model table can order; a build known by its date (``main
    2026-02-04``, ``main, 2025-04``, ``mid-2025``) as that date (YYYY-MM-DD; a month's first day,
    mid-year July 1st); other dev builds and branches take the newest."""
    m = re.fullmatch(r"v?(\d+\.\d+(?:\.\d+)?(?:\.post\d+)?)", v.strip())
    if m:
        return m.group(1)
    d = re.search(r"\b(20\d\d-\d\d)(-\d\d)?\b", v)
    if d:
        return d.group(1) + (d.group(2) or "-01")
    y = re.search(r"\bmid-(20\d\d)\b", v)
    return f"{y.group(1)}-07-01" if y else None


def describe(rows: list[dict]) -> tuple[dict | None, str, str]:
    """(scenario with SD, blocked reason, assumptions) of one setup's rows."""
    r = rows[0]
    notes = []
    fw = framework_of(r["framework"])
    if fw is None:
        return None, f"framework {r['framework']!r} (have vllm, sglang, tensorrt-llm)", ""
    gpu_s = r["gpu"].strip()
    if not gpu_s:
        return None, "GPU not stated", ""
    gpu = GPUS.get(gpu_s.lower(), gpu_s if (GPU_SPECS_DIR / f"{gpu_s}.yaml").is_file() else None)
    if gpu is None:
        return None, f"no GPU spec for {gpu_s}", ""
    if gpu_s.lower() in ("h100", "a100"):
        notes.append(f"{gpu_s} read as {gpu} (form factor not stated)")
    arch, prec, why = _model(r["target_model"])
    if arch is None:
        return None, why, ""
    method = next((m for key, m, _ in DRAFT_METHODS if r["draft_method"].strip().lower().startswith(key)), None)
    if method is None:
        return None, f"draft method {r['draft_method']!r}", ""
    k, why = whole(r, "k", "k (draft length)")
    if why:
        return None, why, ""
    if k < 1:
        return None, f"k = {r['k']}: no draft tokens in the SD run", ""
    conc, why = whole(r, "batch_or_concurrency", "batch size / concurrency")
    if why:
        return None, why, ""
    if conc < 1:
        return None, f"batch_or_concurrency {r['batch_or_concurrency']} is not a client count", ""
    spec = {"method": method, "num_speculative_tokens": int(k)}
    prefix = next(p for key, m, p in DRAFT_METHODS if m == method)
    if prefix:
        head = prefix + arch
        if not (MODELS_DIR / f"{head}.yaml").is_file():
            return None, f"no {method} head {head} in the catalog", ""
        spec["model"] = head
    elif method == "draft_model":
        name = r["draft_model"].split("/")[-1]
        if not name or not (MODELS_DIR / f"{name}.yaml").is_file():
            return None, f"draft model {r['draft_model'] or '(not stated)'} not in the catalog", ""
        spec["model"] = name
    topk, ndt = number(r["eagle_topk"]), number(r["num_draft_tokens"])
    if topk and topk > 1 and ndt:
        spec.update(speculative_eagle_topk=int(topk), speculative_num_draft_tokens=int(ndt))
    al = number(r["acceptance_length"])
    if al is None:
        by = {x["metric"]: number(x["sd_value"]) for x in rows}
        if by.get("itl_ms") and by.get("tpot_ms"):
            al = by["itl_ms"] / by["tpot_ms"]
            notes.append(f"acceptance length {al:.2f} = ITL / TPOT with SD")
    if al is None:
        return None, "acceptance length not stated", ""
    al = min(max(al, 1.0), k + 1.0)
    spec["acceptance"] = {"mean_acceptance_length": round(al, 4)}
    wl, why = _workload(r, int(conc), notes)
    if wl is None:
        return None, why, ""
    tp = int(number(r["tp"]) or 1)
    eng = {"framework": fw, "framework_version": _version(r["framework_version"]),
           "max_num_seqs": max(int(conc), 1), "max_num_batched_tokens": 8192}
    if prec:
        eng["quantization"] = prec
    data = {"name": "sd_row", "model": arch, "hardware": {"gpu": gpu, "tensor_parallel_size": tp},
            "engine": eng, "speculative_config": spec, "workload": wl}
    return data, "", "; ".join(notes)


def _workload(r: dict, conc: int, notes: list) -> tuple[dict | None, str]:
    """The benchmark's client: ``conc`` requests in flight at most (vllm bench --max-concurrency,
    genai-perf --concurrency), at the stated rate, with the row's or its dataset's lengths."""
    ds = r["dataset"]
    m = re.search(r"(\d+)\s*prompts?;\s*(\d+)\s*input\s*/\s*(\d+)\s*output tokens total", ds)
    n = int(m.group(1)) if m else None
    isl, osl = number(r["input_len"]), number(r["output_len"])
    shape = {}
    if (isl is None or osl is None) and m:
        isl, osl = int(m.group(2)) / n, int(m.group(3)) / n
    entry = matching(ds)
    if isl is None or osl is None:
        if entry is None:
            return None, "input/output lengths not stated (and no dataset entry in workloads/datasets.yaml)"
        isl, osl = entry["input_len"], entry["output_len"]
        notes.append(f"lengths of {ds.split('(')[0].strip()} from workloads/datasets.yaml")
    if entry is not None:
        shape = {"input_len_distribution": "lognormal", "output_len_distribution": "lognormal",
                 "random_range_ratio": entry["spread"]}
    rate = number(r["request_rate"])
    wl = {"dataset_name": "random" if shape else "fixed", "random_input_len": max(1, round(isl)),
          "random_output_len": max(1, round(osl)), "num_prompts": n or min(max(8 * conc, 16), 256),
          "max_concurrency": conc, "request_rate": rate or "inf", **shape}
    return wl, ""


def load(path: Path, assume: Path | None = None, source: str | None = None) -> tuple[list[dict], dict]:
    """(rows of ``path`` whose source contains ``source``, with ``--assume`` entries applied to their
    empty cells; {row: the assumption applied})."""
    df = read_table(path)
    if source:
        df = df[df.source.str.contains(source, regex=False)]
        if df.empty:
            raise ConfigError(f"no row's source contains {source!r}", source=str(path), field="--source")
    rows = df.to_dict("records")
    applied = {}
    entries = read_assumptions(assume)
    for r in rows:
        for prefix, where, values, why in entries:
            if r["source"].startswith(prefix) and all(_same(r[k], v) for k, v in where.items()):
                filled = {k: v for k, v in values.items() if not str(r[k]).strip()}
                r.update(filled)
                if filled:
                    note = f"{', '.join(f'{k}={v}' for k, v in filled.items())} ({why})"
                    applied[r["row"]] = f"{applied[r['row']]}; {note}" if r["row"] in applied else note
    return rows, applied


def setups(rows: list[dict]) -> dict[tuple, tuple[list[dict], tuple]]:
    """{setup key: (its rows, describe(rows))}."""
    by: dict[tuple, list[dict]] = {}
    for r in rows:
        by.setdefault(setup_key(r), []).append(r)
    return {k: (g, describe(g)) for k, g in by.items()}


def needs_base(rows: list[dict]) -> bool:
    return any(number(x["baseline_value"]) is not None or x["metric"] in SPEEDUP_METRICS for x in rows)
