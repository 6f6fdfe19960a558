"""``moesd validate --silicon FILE``: measured serving runs in AIConfigurator's silicon-sample schema,
each classified as expressible (simulated as the benchmark ran it) or blocked by a named capability.

A row is one closed-loop benchmark: ``batch_size`` concurrent users, fixed isl/osl, a backend and
version, weight precisions (``gemm_quant_mode``/``moe_quant_mode``) and a parallel layout. Nothing
is dropped silently: every row comes back, with its simulated TTFT/TPOT or the reason it cannot be.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.cells import number
from ..common.errors import ConfigError
from ..common.paths import GPU_SPECS_DIR, MODELS_DIR, shared_traces_dir
from ..config import precision
from ..config.gpu import load as load_gpu
from ..config.model import Quantization, load as load_model
from ..config.scenario import parse
from ..cost.costmodel import CostModel
from ..serving.metrics import first_sent, prompts_per_prefill
from ..serving.simulation import build, missing_kernels, simulate
from . import silicon_campaigns as campaigns
from .runner import run_many
from .silicon_layout import cell_int, concurrency, layout, layout_size

REQUIRED = ["model_path", "backend", "backend_version", "system", "mode", "isl", "osl", "batch_size", "tp_size",
            "attention_dp_size", "moe_tp_size", "moe_ep_size", "gemm_quant_mode", "moe_quant_mode",
            "silicon_ttft_ms", "silicon_tpot_ms"]

# Hugging Face repo -> catalog architecture. Same-backbone releases map to their base model (cited in
# the catalog files); a model whose attention the simulator cannot price is blocked with the reason.
MODELS = {
    "deepseek-ai/DeepSeek-V3": "DeepSeek-V3", "deepseek-ai/DeepSeek-R1": "DeepSeek-R1",
    "deepseek-ai/DeepSeek-V3-0324": "DeepSeek-V3", "deepseek-ai/DeepSeek-R1-0528": "DeepSeek-R1",
    "moonshotai/Kimi-K2-Instruct": "Kimi-K2", "moonshotai/Kimi-K2.5": "Kimi-K2.5", "moonshotai/Kimi-K2-Thinking": "Kimi-K2.5",
    "MiniMaxAI/MiniMax-M2": "MiniMax-M2", "MiniMaxAI/MiniMax-M2.5": "MiniMax-M2",
    "meta-llama/Llama-3.1-70B": "Llama-3.1-70B", "meta-llama/Llama-3.1-8B": "Llama-3.1-8B",
    "openai/gpt-oss-120b": "gpt-oss-120b", "openai/gpt-oss-20b": "gpt-oss-20b",
    "Qwen/Qwen3-235B-A22B": "Qwen3-235B-A22B", "Qwen/Qwen3-30B-A3B": "Qwen3-30B-A3B",
    "Qwen/Qwen3-32B": "Qwen3-32B", "nvidia/Qwen3-32B-NVFP4": "Qwen3-32B", "Qwen/Qwen3-8B": "Qwen3-8B",
    "zai-org/GLM-4.5-Air": "GLM-4.5-Air", "meta-llama/Llama-3.1-8B-Instruct": "Llama-3.1-8B",
    "meta-llama/Llama-3.1-70B-Instruct": "Llama-3.1-70B", "Qwen/Qwen3-235B-A22B-FP8": "Qwen3-235B-A22B",
    "nvidia/DeepSeek-R1-NVFP4": "DeepSeek-R1", "nvidia/DeepSeek-V3.1-NVFP4": "DeepSeek-V3",
    "Qwen/Qwen3.5-397B-A17B": "Qwen3.5-397B-A17B", "zhipuai/GLM-5": "GLM-5",
}
UNSUPPORTED_MODELS: dict = {}   # repo -> why its architecture cannot be priced (none at present)


def training_file() -> Path:
    """AIConfigurator's measured serving runs in ../shared (the fits' training set)."""
    return shared_traces_dir() / "e2e" / "aiconfigurator" / "silicon_sample_train.csv"


def load_rows(path: Path) -> pd.DataFrame:
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise ConfigError("no such file", source=str(path), field="--silicon") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not a readable CSV ({str(exc)[:80]})", source=str(path), field="--silicon") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ConfigError(f"missing columns {missing} (silicon-sample schema)", source=str(path), field="--silicon")
    if df.empty:
        raise ConfigError("no rows", source=str(path), field="--silicon")
    if "id" not in df.columns:
        df["id"] = [f"row{i + 1}" for i in range(len(df))]
    return df.reset_index(drop=True)


def quant_modes(r: dict) -> tuple[str, str] | None:
    """(gemm, moe) precision names of a row; None when the row states none (then the checkpoint's
    precision is used, and the table says so).

    A 4-bit row of a model published only in MXFP4 (gpt-oss: experts MXFP4, the rest bf16) is its
    checkpoint: the silicon sample labels every 4-bit run ``nvfp4``, which gpt-oss has no weights in.
    So is a row that gives both the checkpoint's expert precision, of a checkpoint whose other
    layers keep another (Kimi-K2.5's INT4 release: experts INT4, the rest bf16, recorded int4_wo
    for GEMM and MoE): no framework quantises the layers the checkpoint left unquantised."""
    g, m = r.get("gemm_quant_mode"), r.get("moe_quant_mode")
    model = MODELS.get(str(r.get("model_path")))
    if model and (MODELS_DIR / f"{model}.yaml").is_file():
        native = _arch(model).quantization
        if g == "nvfp4" and native.moe == "mxfp4":
            arch = _gpu_arch(str(r.get("system")))
            return native.gemm, precision.served_as(native.moe, str(r.get("backend")), arch)
        if isinstance(g, str) and g == m and _canonical(m) == native.moe != native.gemm:
            return native.gemm, native.moe
    if isinstance(g, str) and isinstance(m, str):
        return g, m
    p = r.get("precision")
    if isinstance(p, str) and p == "bf16":
        return "bf16", "bf16"
    return None


def _canonical(name: str) -> str:
    """A precision's canonical name (aliases resolved); the name itself when it is none."""
    try:
        return precision.get(name).name
    except ConfigError:
        return name


@functools.lru_cache(maxsize=None)
def _gpu_arch(system: str) -> str:
    return load_gpu(system).architecture if (GPU_SPECS_DIR / f"{system}.yaml").is_file() else ""


@functools.lru_cache(maxsize=None)
def _arch(name: str):
    return load_model(name)


@functools.lru_cache(maxsize=None)
def _cost_model(system: str, backend: str) -> CostModel | None:
    """One cost model per (GPU, backend) for classifying thousands of rows; None without its fit."""
    try:
        return CostModel(load_gpu(system), framework=backend)
    except ConfigError:
        return None


def _unset(v) -> bool:
    return v is None or (isinstance(v, float) and not np.isfinite(v)) or str(v).strip() == ""


def bad_cell(r: dict, pre: tuple) -> str:
    """What is wrong with a row's numbers ('' when nothing): token counts and the sizes a layout
    reads must be whole numbers (a layout size of 0 or blank means unstated), measurements numbers."""
    opt = ["batch_size"] + [f"{p}{k}" for p in pre for k in ("attention_dp_size", "moe_tp_size", "moe_ep_size",
                                                              "batch_size", "num_workers", "pp_size")]
    checks = [("isl", 1), ("osl", 1)] + [(f"{p}tp_size", 1) for p in pre] + [(c, 0) for c in opt] + [
        ("silicon_ttft_ms", None), ("silicon_tpot_ms", None)]
    for col, low in checks:
        v = r.get(col)
        if _unset(v):
            if low:
                return f"{col} not stated"
            continue
        x = number(v)
        if x is None:
            return f"{col} {v!r} is not a number"
        if low is not None and (x != int(x) or x < low):
            return f"{col} {v!r} is not a whole number >= {low}"
    return ""


def classify(r: dict) -> str:
    """'' when the simulator can express the row, else the capability that blocks it."""
    mode = str(r["mode"])
    pre = ("prefill_", "decode_") if mode == "disagg" else ("",)
    if mode not in ("agg", "disagg"):
        return f"serving mode {mode}"
    if mode == "disagg" and any(_unset(r.get(f"{p}num_workers")) for p in pre):
        # before the cell checks: a disagg row with no pool columns at all is missing its layout, not a cell
        return "ambiguous layout: disagg row states no worker counts"
    if why := bad_cell(r, pre):
        return why
    if any(cell_int(r.get(f"{p}pp_size")) > 1 for p in pre):
        return "pipeline parallel"
    if mode == "disagg" and any(cell_int(r.get(f"{p}num_workers"), 0) < 1 for p in pre):
        # the decode batch (TPOT) and the prefill capacity (TTFT) both hang on them
        return "ambiguous layout: disagg row states no worker counts"
    model = str(r["model_path"])
    if model in UNSUPPORTED_MODELS:
        return UNSUPPORTED_MODELS[model]
    if model not in MODELS or not (MODELS_DIR / f"{MODELS[model]}.yaml").is_file():
        return f"no catalog architecture for {model}"
    arch = _arch(MODELS[model])
    try:
        for p in pre:
            layout(r, p, arch.moe is None, refused_split(r, arch))
    except ValueError as exc:
        return f"ambiguous layout: {exc}"
    system = str(r["system"])
    if not (GPU_SPECS_DIR / f"{system}.yaml").is_file():
        return f"no GPU spec for {system}"
    cost = _cost_model(system, str(r["backend"]))
    if cost is None:
        return f"no {r['backend']} kernel calibration on {system}"
    hw = cost.hw
    q = quant_modes(r) or (arch.quantization.gemm, arch.quantization.moe)
    for op, name in zip(("gemm", "moe"), q):
        try:
            prec = precision.get(name)
            precision.check_supported(prec, hw)
            cost.fit_params(op, prec)
        except ConfigError:
            return f"{name} {op} kernels on {system} with {r['backend']}"
    if arch.mla is not None and missing_kernels(cost, arch, Quantization(gemm=q[0], moe=q[1])):
        return f"MLA decode kernels on {system} with {r['backend']}"
    return ""


def assumption(r: dict) -> str:
    """The documented assumption a row is simulated under ('' for none)."""
    arch = _arch(MODELS[str(r["model_path"])])
    pre = ("prefill_", "decode_") if str(r["mode"]) == "disagg" else ("",)
    notes = [n for p in pre if (n := layout(r, p, arch.moe is None, refused_split(r, arch))[1])]
    if campaigns.mtp_draft(r, arch):
        notes.append(campaigns.MTP_NOTE.format(campaign=" ".join(campaigns.campaign(r))))
    g, m, q = r.get("gemm_quant_mode"), r.get("moe_quant_mode"), quant_modes(r)
    if q and isinstance(g, str) and isinstance(m, str) and (_canonical(g), _canonical(m)) != q:
        notes.append(f"recorded {g}/{m}, run as the checkpoint's {q[0]}/{q[1]} (quant_modes)")
    return "; ".join(notes)


def refused_split(r: dict, arch):
    """Why the row's framework refuses to split its experts moe_tp ways ('' where it does not):
    FP8 block-scaled experts in partial scale blocks (``precision.BLOCK_ALIGNED``)."""
    q = quant_modes(r) or (arch.quantization.gemm, arch.quantization.moe)

    def why(moe_tp: int) -> str:
        try:
            return precision.expert_split_refused(arch, precision.get(q[1]).name, moe_tp, str(r["backend"]))
        except ConfigError:      # a precision it does not know: blocked by its own check
            return ""
    return why


# AIConfigurator's generator launches vLLM with --max-num-batched-tokens max_batch_size + isl + 1500
# (agg) and isl + 1500 (prefill workers): src/aiconfigurator/generator/rule_plugin/benchmark/vllm.rule,
# rendered by its vLLM templates from 0.14.1 (the 0.12.0 template omits it, but AIConfigurator's
# vLLM 0.12.0 runs fit it far better: 94 rows, TTFT 41.3% -> 23.3%, TPOT 7.0% -> 4.4%). So a closed
# loop's users cannot all prefill in one step, as they could under vLLM's 8,192 default.
# Not applied to TensorRT-LLM, whose rule sets the same budget (README, "Closed-loop TTFT": its
# measured runs fit neither), nor to SGLang, whose --max-prefill-tokens isl + 1500 SGLang raises to
# the model's context length (its server-args help).
GENERATOR_TOKEN_BUDGET = ("vllm",)


def scenario(r: dict) -> dict:
    """The scenario that reproduces one row: its closed loop, lengths, backend, precisions, layout."""
    conc = concurrency(r)
    q = quant_modes(r)
    isl = cell_int(r["isl"])
    backend = str(r["backend"])
    budgeted = backend in GENERATOR_TOKEN_BUDGET
    arch = _arch(MODELS[str(r["model_path"])])
    dense, refused = arch.moe is None, refused_split(r, arch)
    data = {
        "name": "silicon_row", "model": MODELS[str(r["model_path"])],
        "hardware": {"gpu": str(r["system"])},
        "engine": {"framework": backend,
                   "framework_version": r["backend_version"] if isinstance(r["backend_version"], str) else None,
                   "quantization": dict(zip(("gemm", "moe"), q)) if q else None,
                   "max_num_seqs": max(conc, 1)},
        "workload": {"dataset_name": "fixed", "random_input_len": isl, "random_output_len": cell_int(r["osl"]),
                     # three rounds per user (the first, all users at once, weighted as protocol_means
                     # says); two past 256 users, which keeps the largest runs to a minute
                     "concurrency": conc, "num_prompts": max(3 * conc, 8) if conc <= 256 else 2 * conc + 64,
                     "measurement": "steady"},
    }
    if backend != "sglang":
        # the generator sets no --chunked-prefill-size for SGLang: its own default by GPU memory applies
        # there (frameworks.yaml batched_tokens_by_memory; it chunks longer prompts)
        data["engine"]["max_num_batched_tokens"] = max(8192, isl)
    if backend == "trtllm":
        # the generator's TensorRT-LLM engine templates: free_gpu_memory_fraction 0.80
        # (generator/config/backend_templates/trtllm/extra_engine_args.*.yaml.j2)
        data["engine"]["gpu_memory_utilization"] = 0.8
    if str(r["mode"]) == "agg":
        lay = layout(r, "", dense, refused)[0]
        data["hardware"].update(lay)
        # each attention-DP rank batches its share of the users
        data["engine"]["max_num_seqs"] = max(1, -(-conc // lay["data_parallel_size"]))
        if budgeted:
            data["engine"]["max_num_batched_tokens"] = data["engine"]["max_num_seqs"] + isl + 1500
    else:
        pools = {}
        for role in ("prefill", "decode"):
            lay = layout(r, f"{role}_", dense, refused)[0]
            pools[role] = {**lay, "num_workers": layout_size(r[f"{role}_num_workers"]),
                           "max_num_seqs": layout_size(r[f"{role}_batch_size"])}
        # the decode pool holds every user (some sources state decode_batch_size 1 at any concurrency),
        # and a rank may hold all of its worker's: the rows do not state SGLang's max running requests,
        # and its disaggregated ranks are picked at random (frameworks.yaml disagg_dp_dispatch), so an
        # even share would make a rank's extra users wait for a decode slot (66 SGLang rows: TPOT 15.9%
        # -> 15.0%, TTFT 42.8% -> 41.8%; balanced ranks never reach it)
        dec = pools["decode"]
        dec["max_num_seqs"] = max(dec["max_num_seqs"], -(-conc // dec["num_workers"]))
        pools["prefill"]["max_num_batched_tokens"] = (isl + 1500 if budgeted
                                                      else max(8192, isl * pools["prefill"]["max_num_seqs"]))
        data["disaggregation"] = pools
    if draft := campaigns.mtp_draft(r, arch):
        data["speculative_config"] = draft
    return data


# AIConfigurator's eval runners send 10 requests per concurrent user, all users starting together
# (genai-perf --request-count 10 x concurrency; bench_serving --num-prompts 10 x concurrency:
# src/aiconfigurator/eval/benchmarks/) and report averages. bench_serving warms nothing up, so the
# first round (every user sending at once) is measured; genai-perf, the pipeline's default, first
# sends 2 x concurrency warm-up requests. A row simulates 3 rounds and extrapolates: the first
# round counts once (or not at all after a warm-up), the later rounds, which repeat one pattern, for
# the rest.
REQUESTS_PER_USER = 10
# Sources whose runs warmed up: AIConfigurator's own gap-analysis runs (its eval pipeline, genai-perf
# by default). Their 704 expressible rows fit the steady rounds better (TTFT median error 45.5% vs
# 52.9% with the first round counted); the other sources' 1,602 the first round counted (e.g. the
# 2026-03-25 file 35.8% -> 24.3%).
WARMED_UP_SOURCES = ("aic-auto-gap-analysis",)


def warmed_up(r: dict) -> bool:
    """Whether a row's benchmark left its first round out (a warm-up): by its source."""
    src = r.get("silicon_data_source")
    return isinstance(src, str) and any(s in src for s in WARMED_UP_SOURCES)


def rounds(req: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A closed loop's finished requests of the first round (every user at once) and of the steady
    rounds (the measured ones after it)."""
    first, done = first_sent(req), req.completed.values
    return req[first & done], req[req.measured.values & ~first & done]


def protocol_means(req: pd.DataFrame, warm_up: bool = False) -> dict:
    """Mean TTFT/TPOT (ms) of a closed-loop run as the benchmark averages them over
    ``REQUESTS_PER_USER`` rounds: the first round's mean once (never after a warm-up), the steady
    rounds' (``measured``) for the rest; the first round's alone when no steady round finished."""
    first, steady = rounds(req)
    out = {}
    for m in ("ttft", "tpot"):
        f = float(np.nanmean(first[f"{m}_s"].values)) if first[f"{m}_s"].notna().any() else np.nan
        r = float(np.nanmean(steady[f"{m}_s"].values)) if steady[f"{m}_s"].notna().any() else f
        v = (r if warm_up and r == r else (f + (REQUESTS_PER_USER - 1) * r) / REQUESTS_PER_USER) * 1e3
        out[f"sim_{m}_ms"] = None if v != v else v
    return out


def simulate_row(job: dict) -> dict:
    """One row's mean TTFT/TPOT as its benchmark measured them (module level: runs in pool workers)."""
    try:
        setup = build(parse(job["scenario"], f"silicon row {job['id']}"))
    except ConfigError as exc:
        return {"blocked": f"{exc.field}: {exc.message}" if exc.field else exc.message}
    _, req, _ = simulate(setup)
    # the cohorts its steady rounds prefilled in (README, "Closed-loop TTFT"); every finished request's if none
    steady = rounds(req)[1]
    return {**protocol_means(req, job.get("warm_up", False)), "kernel_tables": setup.files.get("kernel_tables", ""),
            "sim_prompts_per_prefill": prompts_per_prefill(steady if len(steady) else req[req.completed.values])}


def validate_silicon(path: Path, sample: int | None = None, workers=None, executor="local", address=None,
                     cache_dir=None, progress=True, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """(per-row table, summary) for every row (or a reproducible sample of ``sample`` rows)."""
    df = load_rows(path)
    if sample and sample < len(df):
        df = df.iloc[np.sort(np.random.default_rng(seed).choice(len(df), sample, replace=False))].reset_index(drop=True)
    rows = df.to_dict("records")
    blocked = [classify(r) for r in rows]
    jobs = [{"id": str(r["id"]), "scenario": scenario(r), "warm_up": warmed_up(r)} for r, b in zip(rows, blocked) if not b]
    results = iter(run_many(simulate_row, jobs, workers, executor, address, cache_dir, "silicon rows", progress))
    out = []
    for r, b in zip(rows, blocked):
        res = {} if b else next(results)
        b = b or res.get("blocked", "")
        rec = {"id": r["id"], "model": r["model_path"], "backend": r["backend"], "backend_version": r["backend_version"],
               "gpu": r["system"], "mode": r["mode"],
               "precision": "/".join(q) if (q := quant_modes(r)) else "checkpoint (row states none)",
               "isl": r["isl"], "osl": r["osl"], "concurrency": concurrency(r), "tp": r["tp_size"],
               "moe_ep": r["moe_ep_size"], "expressible": not b, "blocked_by": b,
               "kernel_tables": res.get("kernel_tables", ""),
               "assumption": "" if b else assumption(r),
               "measured_ttft_ms": r["silicon_ttft_ms"], "measured_tpot_ms": r["silicon_tpot_ms"],
               "sim_ttft_ms": res.get("sim_ttft_ms"), "sim_tpot_ms": res.get("sim_tpot_ms"),
               "sim_prompts_per_prefill": res.get("sim_prompts_per_prefill")}
        for m in ("ttft", "tpot"):
            meas, sim = rec[f"measured_{m}_ms"], rec[f"sim_{m}_ms"]
            ok = sim is not None and meas == meas and meas > 0
            rec[f"{m}_err"] = sim / meas - 1.0 if ok else None
        out.append(rec)
    t = pd.DataFrame(out)
    return t, summarize(t)


def _errs(s: pd.Series) -> dict:
    e = s.dropna().astype(float).abs()
    return {"median": float(e.median()) if len(e) else None, "p90": float(np.percentile(e, 90)) if len(e) else None}


def summarize(t: pd.DataFrame) -> dict:
    ok = t[t.expressible]
    groups = []
    for key, g in ok.groupby(["model", "backend", "gpu", "mode"], sort=True):
        groups.append({"model": key[0], "backend": key[1], "gpu": key[2], "mode": key[3], "rows": int(len(g)),
                       "tpot": _errs(g.tpot_err), "ttft": _errs(g.ttft_err)})
    blocked = t[~t.expressible].blocked_by.value_counts()
    return {"rows": int(len(t)), "expressible": int(len(ok)), "coverage": float(len(ok) / len(t)),
            "tpot_median_abs_error": _errs(ok.tpot_err)["median"], "tpot_p90_abs_error": _errs(ok.tpot_err)["p90"],
            "ttft_median_abs_error": _errs(ok.ttft_err)["median"], "ttft_p90_abs_error": _errs(ok.ttft_err)["p90"],
            "blocked": {str(k): int(v) for k, v in blocked.items()}, "groups": groups}
