"""Kernel timing traces in one tidy schema (documented in traces/README.md).

Readers turn AIConfigurator's per-op tables into the schema; the project's own profiler writes it
directly (``<dir>/<op>.csv`` or ``.parquet``), so ``moesd calibrate`` reads either unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..common.errors import ConfigError
from ..common.versions import version_key

OPS = ("gemm", "moe", "attention_generation", "attention_context", "allreduce", "nccl", "mla_generation")

# Shape columns per op, named as in the source tables.
SHAPE_COLUMNS = {
    "gemm": ["m", "n", "k"],
    "moe": ["num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size",
            "moe_ep_size", "distribution"],
    "attention_generation": ["batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim",
                             "kv_cache_dtype", "step", "window_size"],
    "attention_context": ["batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim",
                          "kv_cache_dtype", "step", "window_size"],
    "allreduce": ["num_gpus", "message_size", "backend"],
    "nccl": ["collective", "num_gpus", "message_size"],
    # absorbed MLA decode; num_heads is the heads on one GPU (the collector splits 128 or 64 by tp_size)
    "mla_generation": ["batch_size", "isl", "num_heads", "kv_cache_dtype", "step", "tp_size"],
}
COMMON_COLUMNS = ["op", "gpu", "device", "framework", "framework_version", "kernel_source", "dtype",
                  "latency_ms", "source"]

# AIConfigurator file -> (op, dtype column)
_AIC_FILES = {
    "gemm": ("gemm/gemm_perf.parquet", "gemm_dtype"),
    "moe": ("moe/moe_perf.parquet", "moe_dtype"),
    "attention_generation": ("attention/generation_attention_perf.parquet", "attn_dtype"),
    "attention_context": ("attention/context_attention_perf.parquet", "attn_dtype"),
    "allreduce": ("comm/custom_allreduce_perf.parquet", "allreduce_dtype"),
    "nccl": ("nccl/nccl_perf.parquet", "nccl_dtype"),
    "mla_generation": ("mla/generation_mla_perf.parquet", "mla_dtype"),
}


# AIConfigurator's collective tables give message_size as an element count ("count, not size in
# bytes": its collector builds a [size // 4096, 4096] tensor of the dtype); the schema keeps bytes.
_ELEMENT_BYTES = {"bfloat16": 2, "half": 2, "float16": 2, "int8": 1, "fp8": 1, "float32": 4, "float": 4}

# Columns older collectors did not write, and the value they implied.
_OPTIONAL_DEFAULTS = {"window_size": 0}


def _tidy(df: pd.DataFrame, op: str, gpu: str, dtype_col: str, source: str) -> pd.DataFrame:
    out = pd.DataFrame({
        "op": op,
        "gpu": gpu,
        "device": df.get("device", ""),
        "framework": df.get("framework", "").astype(str).str.lower() if "framework" in df else "",
        "framework_version": df.get("version", "").astype(str) if "version" in df else "",
        "kernel_source": df.get("kernel_source", ""),
        "dtype": df[dtype_col].astype(str),
        "latency_ms": df["latency"].astype(float),
        "source": source,
    })
    for col in SHAPE_COLUMNS[op]:
        if col == "collective":
            out[col] = df["op_name"].astype(str)
        else:
            out[col] = df[col].values
    if "message_size" in SHAPE_COLUMNS[op]:
        unknown = sorted(set(out["dtype"]) - set(_ELEMENT_BYTES))
        if unknown:
            raise ConfigError(f"unknown element type {unknown[0]!r} (known: {', '.join(_ELEMENT_BYTES)})",
                              source=source, field=dtype_col)
        out["message_size"] = out["message_size"].astype(float) * out["dtype"].map(_ELEMENT_BYTES).values
    return out.reset_index(drop=True)


class NoTraces(ConfigError):
    """No trace file of an op for a GPU (as opposed to a damaged one)."""


def _read(path: Path) -> pd.DataFrame:
    """A trace table (Parquet or CSV); damaged, empty or unreadable files are one-line errors."""
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ConfigError("empty trace file", source=str(path)) from None
    except OSError as exc:
        if exc.strerror:
            raise ConfigError(f"cannot be read ({exc.strerror})", source=str(path)) from None
        raise ConfigError(f"not a readable table ({str(exc)[:100]})", source=str(path)) from None
    except Exception as exc:     # pyarrow and the CSV parser raise many types for a corrupt file
        raise ConfigError(f"not a readable table ({exc.__class__.__name__}: {str(exc)[:100]})",
                          source=str(path)) from None
    if df.empty:
        raise ConfigError("no rows", source=str(path))
    return df


def _check_latency(df: pd.DataFrame, col: str, path: Path) -> None:
    lat = pd.to_numeric(df[col], errors="coerce").values
    bad = ~np.isfinite(lat) | (lat <= 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"row {row + 1}: latency {df[col].iloc[row]!r} is not a positive number of ms "
                          f"({int(bad.sum())} such rows)", source=str(path), field=col)


def read_aiconfigurator(gpu_dir: Path, op: str, gpu: str | None = None) -> pd.DataFrame:
    """Read one op of an AIConfigurator ``<gpu>/`` folder (first-release flat layout) into the tidy schema."""
    gpu_dir = Path(gpu_dir)
    rel = _AIC_FILES[op][0]
    path = gpu_dir / rel
    if not path.exists():
        raise ConfigError(f"missing trace file {rel}", source=str(gpu_dir))
    return read_aiconfigurator_table(path, op, gpu, gpu_dir)


def read_aiconfigurator_table(path: Path, op: str, gpu: str | None, gpu_dir: Path) -> pd.DataFrame:
    """One AIConfigurator table file (either layout) into the tidy schema."""
    dtype_col = _AIC_FILES[op][1]
    rel = path.relative_to(gpu_dir)
    df = _read(path)
    for col, default in _OPTIONAL_DEFAULTS.items():
        if col in SHAPE_COLUMNS[op] and col not in df.columns:
            df[col] = default
    missing = [c for c in SHAPE_COLUMNS[op] + ["latency", dtype_col]
               if c != "collective" and c not in df.columns]
    if missing:
        raise ConfigError(f"missing columns {missing}", source=str(path))
    _check_latency(df, "latency", path)
    return _tidy(df, op, gpu or gpu_dir.name, dtype_col, f"aiconfigurator/{gpu_dir.name}/{rel}")


def read_tidy(path: Path) -> pd.DataFrame:
    """Read a file already in the project's schema (what ``moesd profile`` writes)."""
    path = Path(path)
    df = _read(path)
    missing = [c for c in COMMON_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"missing columns {missing}", source=str(path))
    _check_latency(df, "latency_ms", path)
    ops = set(df["op"].unique())
    for op in ops:
        if op not in SHAPE_COLUMNS:
            raise ConfigError(f"unknown op {op!r}; allowed: {list(OPS)}", source=str(path), field="op")
        miss = [c for c in SHAPE_COLUMNS[op] if c not in df.columns]
        if miss:
            raise ConfigError(f"missing columns {miss} for op {op}", source=str(path))
    return df


def framework_tables(gpu_dir: Path, op: str, framework: str = "vllm") -> list[Path]:
    """AIConfigurator's per-framework layout (``<gpu>/<op folder>/<framework>/<version>/<table>``):
    the table of every version that has one, newest first, following a version's ``reuse.yaml``
    when it borrows another's tables (each file once)."""
    rel = Path(_AIC_FILES[op][0])
    root = gpu_dir / rel.parts[0] / framework
    if not root.is_dir():
        return []
    versions = sorted((d.name for d in root.iterdir() if d.is_dir()), key=version_key, reverse=True)
    out = []
    for v in versions:
        path = root / v / rel.name
        if not path.exists() and (root / v / "reuse.yaml").exists():
            for r in (yaml.safe_load((root / v / "reuse.yaml").read_text()) or {}).get("reuse", []):
                if r.get("table") == rel.stem and (root / str(r.get("from_version")) / rel.name).exists():
                    path = root / str(r["from_version"]) / rel.name
        if path.exists() and path not in out:
            out.append(path)
    return out


def framework_table(gpu_dir: Path, op: str, framework: str = "vllm", version: str | None = None) -> Path | None:
    """The table of ``version`` (or of the newest version) in ``framework_tables``, or None."""
    tables = framework_tables(gpu_dir, op, framework)
    if version is not None:
        tables = [t for t in tables if t.parent.name == version]
    return tables[0] if tables else None


def load_versions(traces_dir: Path, gpu: str, op: str, framework: str = "vllm",
                  version: str | None = None) -> list[pd.DataFrame]:
    """Each collected version's table of ``op``, newest first (vLLM's flat first-release table leads):
    a newer collection may time only some precisions, so a fit looks back for the ones it lacks.
    With ``version``, that version's table alone (the one it reuses, if it borrows one)."""
    traces_dir = Path(traces_dir)
    frames = []
    for base in (traces_dir / gpu, traces_dir / "kernels" / "aiconfigurator" / gpu):
        if version is None and framework == "vllm" and (base / _AIC_FILES[op][0]).exists():
            frames.append(read_aiconfigurator(base, op, gpu))
        tables = framework_tables(base, op, framework) if version is None else \
            [t for t in [framework_table(base, op, framework, version)] if t is not None]
        frames += [read_aiconfigurator_table(t, op, gpu, base) for t in tables]
    return frames


def load(traces_dir: Path, gpu: str, op: str, framework: str = "vllm") -> pd.DataFrame:
    """All rows of ``op`` for ``gpu`` under ``traces_dir``, whichever layout holds them.

    Looks for AIConfigurator's layout (``<dir>/<gpu>/gemm/gemm_perf.parquet``, or
    ``<dir>/kernels/aiconfigurator/<gpu>/...``; where only the per-framework layout
    ``<gpu>/gemm/<framework>/<version>/gemm_perf.parquet`` exists, the newest version of
    ``framework``) and the project's own (``<dir>/<gpu>/<op>.csv|parquet`` or
    ``<dir>/kernels/<gpu>/<op>.csv|parquet``).
    """
    traces_dir = Path(traces_dir)
    if not traces_dir.is_dir():
        raise ConfigError("trace folder does not exist", source=str(traces_dir))
    frames = []
    for base in (traces_dir / gpu, traces_dir / "kernels" / "aiconfigurator" / gpu,
                 traces_dir / "kernels" / gpu):
        if framework == "vllm" and (base / _AIC_FILES[op][0]).exists():   # the flat first release is vLLM's
            frames.append(read_aiconfigurator(base, op, gpu))
        elif (table := framework_table(base, op, framework)) is not None:
            frames.append(read_aiconfigurator_table(table, op, gpu, base))
        for ext in (".parquet", ".csv"):
            if (base / f"{op}{ext}").exists():
                frames.append(read_tidy(base / f"{op}{ext}"))
    if not frames:
        raise NoTraces(f"no {op} traces for gpu {gpu!r}", source=str(traces_dir))
    return pd.concat(frames, ignore_index=True)


# Non-gated expert shapes in the traces (two weight matrices, not three): see shared/README.
NON_GATED_SHAPES = {(2048, 5120, 512, 22), (2688, 1856, 128, 6)}
# Every Nemotron-3 expert shape in AIConfigurator's MoE cases (nemotron_h: squared ReLU, up and down
# matrices only; collector/cases/models/NemotronHForCausalLM_cases.yaml lists Nano 2688/1856/E128/K6,
# Super 4096/2688/E512/K22 and Ultra 8192/5120/E512/K22; newer collections also time Super's and
# Ultra's LatentMoE experts at their latent width, 1024 and 2048). The collections below time all of
# them non-gated, as the models run: SGLang's collector picks relu2 by model name
# (collector/sglang/collect_moe.py, _NON_GATED_MOE_MODEL_PATTERNS), and the tables say so. At 512-2048
# tokens, balanced routing, every expert active, a non-gated shape runs 2/3 of the gated ratio to a
# gated shape with as many experts: 2048/5120 over 4096/1024 (E512) is 1.5-1.8x in vLLM 0.24.0's and
# SGLang 0.5.14's tables (2.5x if both were gated), 2688/1856 over 2048/768 (E128) 1.9-2.1x (3.2x),
# and 1024/2688, 8192/5120 run about the weight ratio to 2048/5120 (0.30x and 3.9-4.6x against 0.26x
# and 4x). Older collections keep NON_GATED_SHAPES: vLLM 0.19-0.22's time 4096/2688 and 2048/5120
# nearer the gated ratio (2.5-2.8x), not consistently enough to relabel them.
NEMOTRON_SHAPES = frozenset({(2688, 1856, 128, 6), (1024, 2688, 512, 22), (4096, 2688, 512, 22),
                             (2048, 5120, 512, 22), (8192, 5120, 512, 22)})
NEMOTRON_NON_GATED_SINCE = {"vllm": "0.24.0", "sglang": "0.5.14"}


def timed_gated(shape: tuple, framework, version) -> bool:
    """Whether a MoE table row's experts were timed gated (three weight matrices): by shape and collection."""
    since = NEMOTRON_NON_GATED_SINCE.get(str(framework).lower())
    if since and isinstance(version, str) and version[:1].isdigit() and version_key(version) >= version_key(since):
        return shape not in NEMOTRON_SHAPES
    return shape not in NON_GATED_SHAPES
