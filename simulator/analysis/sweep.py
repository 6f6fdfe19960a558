"""SD speedup and target efficiency over batch size x k, engine and closed form (``moesd sweep``).

Each point is an offline fixed-batch run of the SimPy engine (all requests at t=0,
``max_concurrency`` = ``max_num_seqs`` = B, fixed lengths, enough waves for stable numbers) with SD
off (k=0), with each fixed k, and with adaptive k. The engine's figures are taken over the steps
that decode the full batch with no prefill in them (the no-queueing steady state); the closed form
(simulator.serving.theory) is evaluated at the same mean context.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from ..common.errors import ConfigError
from ..config.datasets import all_datasets
from ..config.scenario import load_scenario
from ..cost.forward import ForwardModel
from ..serving import acceptance, theory
from ..serving.simulation import build, simulate
from .runner import run_many


DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def fixed_batch_overrides(batch: int, k: int, adaptive: bool, waves: int, ranks: int = 1) -> list[str]:
    """A fixed batch of ``batch`` sequences on each of ``ranks`` attention-DP ranks."""
    return ["workload.request_rate=inf", f"workload.num_prompts={batch * ranks * waves}",
            f"workload.max_concurrency={batch * ranks}", "workload.random_range_ratio=0", f"engine.max_num_seqs={batch}",
            f"speculative_config.num_speculative_tokens={k}", f"speculative_config.adaptive={str(adaptive).lower()}"]


def offline_overrides(sc) -> list[str]:
    """The scenario's client turned into the sweep's offline batch: no closed loop, conversations or
    warm-up, and a dataset's mean lengths held fixed (a trace keeps its own lengths)."""
    wl = sc.workload
    out = ["workload.concurrency=null", "workload.measurement=all", "workload.conversation_turns=1",
           "workload.warmup_requests=0"]
    if wl.dataset_name in all_datasets():
        e = all_datasets()[wl.dataset_name]
        out += ["workload.dataset_name=fixed", f"workload.random_input_len={int(e['input_len'])}",
                f"workload.random_output_len={int(e['output_len'])}"]
    return out


def waves_for(batch: int, min_requests: int = 64) -> int:
    return max(2, math.ceil(min_requests / batch))


def fixed_batch_point(job: dict) -> dict:
    """One engine run (a runner job): steady full-batch decode figures."""
    b, k, ranks = job["batch"], job["k"], job.get("ranks", 1)
    sc = load_scenario(job["scenario"], job["overrides"] + fixed_batch_overrides(b, k, job["adaptive"], job["waves"], ranks))
    summary, req, log = simulate(build(sc, job["scenario"]))
    steps = log.frame()
    full = steps[(steps.num_decode == b * ranks) & (steps.num_prefill == 0)]
    if len(full) < 3:
        full = steps[(steps.num_prefill == 0) & (steps.num_decode > 0)]
    dur = full.duration_s.sum()
    tgt = (full.duration_s - full.draft_s).mean()
    drafts = (full.query_len > 1) * full.num_decode
    return {"batch_size": b, "k": k, "adaptive": job["adaptive"], "steps": int(len(full)),
            "effective_batch": float(full.num_decode.mean() / ranks),
            "decode_tok_s": float(full.emitted_tokens.sum() / dur),
            "step_ms": float(full.duration_s.mean() * 1e3), "target_step_ms": float(tgt * 1e3),
            "mean_k": float((full.query_len - 1).mean()),
            "acceptance_length": float(1 + full.accepted_tokens.sum() / drafts.sum()) if drafts.sum() else 1.0,
            "active_experts": float(full.active_experts.mean()),
            "expert_bytes_per_token": float(full.expert_weight_bytes.sum() / full.emitted_tokens.sum()),
            **{f"{p[:-2]}_ms": float(full[p].mean() * 1e3)
               for p in ("draft_s", "attention_s", "gemm_s", "moe_s", "comm_s", "overhead_s")},
            "output_throughput": summary["output_throughput"]}


def _closed_form(setup, ctx: float, batches, ks) -> pd.DataFrame:
    st = theory.step_times(setup, ctx)
    kv_tokens = setup.cfg.num_blocks * setup.cfg.block_size
    seq_len = setup.scenario.workload.random_input_len + setup.scenario.workload.random_output_len
    rows = []
    for b in batches:
        for k in ks:
            rows.append({"batch_size": b, "k": k, "fits_kv_cache": b * (seq_len + k) <= kv_tokens,
                         "speedup_closed": st.speedup(b, k, setup.acceptance),
                         "eta_closed": st.eta(b, k), "tokens_per_round": theory.tokens_per_round(setup.acceptance, k),
                         "activated_experts_closed": st.activated_experts(b, k),
                         "target_step_ms_closed": st.target(b, k + 1) * 1e3, "draft_ms_closed": k * st.draft(b) * 1e3})
    return pd.DataFrame(rows)


def pin_acceptance(sc, overrides: list[str]) -> list[str]:
    """``overrides`` plus one that keeps the loaded scenario ``sc``'s acceptance when k varies: a mean
    acceptance length is the one measured at the scenario's own k, not a length every k would reach."""
    spec = sc.speculative_config
    if spec is None:
        return list(overrides)
    return list(overrides) + [f"speculative_config.acceptance={json.dumps(acceptance.pinned(spec.acceptance, spec.k))}"]


def sweep(scenario: str, overrides: list[str], batches, ks, engine: bool = True, adaptive: bool = True,
          workers: int | None = None, executor: str = "local", address: str | None = None, cache_dir=None,
          family: str = "", progress: bool = True) -> pd.DataFrame:
    """One table: a row per (batch, k) with engine and closed-form figures (k=0 is the baseline)."""
    sc = load_scenario(scenario, overrides)
    if sc.speculative_config is None:
        raise ConfigError("sweep needs a speculative_config (the draft to sweep k for)", source=scenario,
                          field="speculative_config")
    overrides = pin_acceptance(sc, overrides)
    overrides = overrides + offline_overrides(sc)
    sc = load_scenario(scenario, overrides)
    ks = sorted(set(ks))
    k_max = max(ks)
    setup = build(load_scenario(scenario, overrides + [f"speculative_config.num_speculative_tokens={k_max}"]), scenario)
    ctx = sc.workload.random_input_len + sc.workload.random_output_len / 2
    table = _closed_form(setup, ctx, batches, [0] + ks)
    table["adaptive"] = False
    st = theory.step_times(setup, ctx)
    table["best_k_closed"] = table.batch_size.map(lambda b: st.best_k(b, setup.acceptance, k_max))
    note = ""
    if adaptive and setup.cfg.verify_tokens != k_max + 1:
        # adaptive k chooses a chain length per step; an EAGLE tree verifies a fixed token tree
        adaptive = False
        note = (f"{sc.name}: adaptive k skipped (EAGLE tree of {setup.cfg.verify_tokens} tokens: "
                               "adaptive k works with chain drafts only)")
    ranks = setup.pools[-1].dp_ranks       # batch sizes are per attention-DP rank of the (decode) worker
    if engine:
        jobs = [{"scenario": str(scenario), "overrides": list(overrides), "batch": b, "k": k, "adaptive": False,
                 "waves": waves_for(b), "ranks": ranks} for b in batches for k in [0] + ks]
        if adaptive:
            jobs += [{"scenario": str(scenario), "overrides": list(overrides), "batch": b, "k": k_max,
                      "adaptive": True, "waves": waves_for(b), "ranks": ranks} for b in batches]
        res = pd.DataFrame(run_many(fixed_batch_point, jobs, workers, executor, address, cache_dir,
                                    desc=f"sweep {sc.name}", progress=progress))
        base = res[(res.k == 0) & ~res.adaptive].set_index("batch_size")
        res["speedup_sim"] = res.decode_tok_s / res.batch_size.map(base.decode_tok_s)
        res["eta_sim"] = res.batch_size.map(base.target_step_ms) / res.target_step_ms
        fixed = res[~res.adaptive]
        table = table.merge(fixed, on=["batch_size", "k", "adaptive"], how="left")
        if adaptive:
            ad = res[res.adaptive].copy()
            ad["k"] = -1   # marks the adaptive row
            ad["fits_kv_cache"] = ad.batch_size.map(table[table.k == 0].set_index("batch_size").fits_kv_cache)
            table = pd.concat([table, ad], ignore_index=True)
    table.insert(0, "family", family or ("moe" if setup.target.moe else "dense"))
    table.insert(1, "scenario", sc.name)
    table.insert(2, "target", setup.target.name)
    table.insert(3, "gpu", setup.hw.name)
    table = table.sort_values(["batch_size", "adaptive", "k"], kind="stable").reset_index(drop=True)
    if note:
        table.attrs["note"] = note
    return table


def sparsity(scenario: str, overrides: list[str], batches, k: int, topks) -> pd.DataFrame:
    """Closed-form speedup at fixed E while top-K varies (the paper edits num_experts_per_tok)."""
    pinned = pin_acceptance(load_scenario(scenario, overrides), overrides)
    sc = load_scenario(scenario, pinned + [f"speculative_config.num_speculative_tokens={k}"])
    setup = build(sc, scenario)
    ctx = sc.workload.random_input_len + sc.workload.random_output_len / 2
    rows = []
    for topk in topks:
        if not setup.target.moe or topk > setup.target.moe.num_experts:
            continue
        tgt = setup.target.model_copy(update={"moe": setup.target.moe.model_copy(update={"num_experts_per_tok": topk})})
        st = theory.step_times_for(setup.cfg, ForwardModel(tgt, setup.cost, setup.par), setup.draft_fm, ctx)
        for b in batches:
            rows.append({"topk": topk, "num_experts": tgt.moe.num_experts, "batch_size": b, "k": k,
                         "speedup_closed": st.speedup(b, k, setup.acceptance), "eta_closed": st.eta(b, k),
                         "activated_experts_closed": st.activated_experts(b, k)})
    return pd.DataFrame(rows)


def peak(table: pd.DataFrame, col: str = "speedup_closed", k: int | None = None) -> tuple[int, float]:
    """(batch, value) of the highest speedup over batches whose batch fits in the KV cache, at k
    (default: best k per batch)."""
    t = table[~table.adaptive & (table.k > 0) & table.fits_kv_cache.astype(bool)]
    s = t[t.k == k].set_index("batch_size")[col] if k else t.groupby("batch_size")[col].max()
    return int(s.idxmax()), float(s.max())
