"""A scenario resolved into a runnable simulation (``build``) and run through the engine (``simulate``).

Shared by every command that simulates: ``moesd simulate`` writes the result, sweeps, plans and
validation read figures off it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..common.errors import ConfigError
from ..config import gpu as gpu_mod
from ..config import framework as framework_mod
from ..config import precision
from ..config import scenario as scenario_mod
from ..config import topology
from ..config.scenario import resolve
from ..cost import linear_attention, network, sparse_attention
from ..cost.costmodel import CostModel
from ..cost.framework import FrameworkStep
from ..cost.forward import Batch, ForwardModel, Parallel
from ..cost.routing import Routing
from . import acceptance as acc_mod
from . import engine, memory, metrics, theory, workload
from .adaptive import AdaptiveK


@dataclass
class RoutingChoice:
    model: Routing
    mode: str
    identical: bool = False     # workload.identical_prompts: same-position sequences route alike


@dataclass
class Setup:
    """Everything a run needs, resolved from a scenario (also used by sweeps and tests)."""
    scenario: object
    target: object
    draft: object
    hw: object
    cost: CostModel
    par: Parallel
    target_fm: ForwardModel
    draft_fm: ForwardModel | None
    cfg: engine.EngineConfig
    acceptance: object
    routing: RoutingChoice
    files: dict = None          # the model and GPU spec files used (summary fields)
    pools: list = None          # PoolSetup per pool: one (aggregated), or prefill + decode


_MODELS: dict = {}


def _shared(key, make):
    """Cost and forward models are pure and memoise their answers: share them between the runs of
    one process (a sweep or plan runs hundreds of scenarios on the same model and GPU)."""
    hit = _MODELS.get(key)
    if hit is None:
        if len(_MODELS) > 256:
            _MODELS.clear()
        hit = _MODELS[key] = make()
    return hit


def build(sc, source: str = "scenario") -> Setup:
    target, draft, hw, files = resolve(sc, source)
    eng = sc.engine
    quant = scenario_mod.quantization(sc, target, hw, source)
    kv_name, kv_el = precision.kv_bytes(eng.kv_cache_dtype, source)
    entry = framework_mod.step_entry(eng.framework, eng.framework_version)   # looked up once per build
    scales = kernel_scales(eng, hw, entry)
    cost = _shared(("cost", hw.model_dump_json(), eng.framework, eng.framework_version, scales),
                   lambda: _cost_model(hw, eng.framework, source, *scales, version=eng.framework_version,
                                       before_all=entry.kernels_before_collections))
    _check_calibrated(cost, target, quant, source)
    plans = topology.check(sc, target, hw, source)
    spec = sc.speculative_config
    k = spec.k if spec else 0
    draft_kind, draft_arch = "none", None
    if spec and k > 0:
        if spec.method == "ngram":
            draft_kind = "ngram"
        elif spec.method == "mtp":
            draft_kind = "head"
            draft_arch = draft or target.model_copy(update={"num_hidden_layers": 1, "name": f"{target.name}-MTP",
                                                            "moe": target.moe.model_copy(update={"first_k_dense_replace": 0, "moe_layer_step": 1}) if target.moe else None})
        else:
            draft_kind = "model" if spec.method == "draft_model" else "head"
            draft_arch = draft
    r = sc.routing
    routing = RoutingChoice(Routing(r.distribution, exponent=r.exponent if r.distribution == "power_law" else 0.0,
                                    locality=r.locality), r.mode, sc.workload.identical_prompts)
    pools = []
    for pp in plans:
        sd = pp.role != "prefill" and bool(spec and k)        # a prefill pool never speculates
        pools.append(_pool(sc, pp, target, draft, draft_arch if sd else None, draft_kind if sd else "none",
                           k if sd else 0, hw, cost, quant, kv_el, source, entry))
    main = pools[-1]
    cfg, target_fm, draft_fm = main.cfg, main.target_fm, main.draft_fm
    acceptance = acc_mod.build(spec.acceptance, k) if spec and k else acc_mod.IID(0.0)
    if spec and k and spec.adaptive:
        if spec.verify_tokens != k + 1:
            raise ConfigError("adaptive k works with chain drafts only; drop speculative_eagle_topk/"
                              "speculative_num_draft_tokens", source=source, field="speculative_config.adaptive")
        ctx = sc.workload.random_input_len + sc.workload.random_output_len / 2
        # AdaptiveK memoises step times; the engine passes it the run's acceptance counters, so
        # runs of the same models and overheads share one
        cfg.k_policy = _shared(("adaptive", main.key, cfg.step_model, cfg.draft_tokens_per_pass, ctx, k),
                               lambda: AdaptiveK(theory.step_times_for(cfg, target_fm, draft_fm, ctx), k))
    files = {**(files or {}), "framework": eng.framework, "step_model": f"{eng.framework} {entry.since}",
             "kernel_tables": _tables_label(cost, quant),
             "mla_decode_tables": gpu_mod.mla_tables_label(cost.source.calibration, cost.framework, cost.version_key)
             if target.mla is not None else None,
             "linear_attention": linear_attention.PRICING if target.linear_attention is not None else None,
             "sparse_attention": sparse_attention.PRICING if target.sparse_attention is not None else None,
             "kernel_time_scale": cost.kernel_time_scale, "kernel_fixed_scale": cost.kernel_fixed_scale,
             "rank_skew": rank_skew(eng, entry, hw.architecture),
             "moe_a2a_backend": a2a_backend(eng, entry) if target.moe else None,
             "prefill_kernel_launch_us": cfg.step_model.kernel_launch_s * 1e6,
             "dp_dispatch": cfg.dp_dispatch if main.dp_ranks > 1 else None,
             "quantization": quant.model_dump(exclude_none=True), "kv_cache_dtype": kv_name,
             "quantization_note": precision.asked_against_checkpoint(quant, target.quantization),
             "max_num_batched_tokens": cfg.max_num_batched_tokens,
             # what the SD verdict rests on, said even when the scenario left it to the default
             "acceptance_model": acc_mod.describe_scenario(spec, k) if spec and k else None}
    return Setup(sc, target, draft_arch, hw, cost, main.par, target_fm, draft_fm, cfg, acceptance, routing,
                 files, pools)


def _tables_label(cost, quant) -> str:
    """Whose kernel tables priced the run, naming any of its precisions fitted on an older collection."""
    label = cost.tables_label
    older = gpu_mod.older_tables(cost.source.calibration, cost.framework, cost.version_key,
                                 {"gemm": quant.gemm, "moe": quant.moe}, label)
    return f"{label} ({older})" if older else label


@dataclass
class PoolSetup:
    """One pool's workers: how many, their layout, engine limits and cost models."""
    role: str
    workers: int
    dp_ranks: int
    gpus: int
    par: Parallel
    cfg: engine.EngineConfig
    target_fm: ForwardModel
    draft_fm: ForwardModel | None
    key: tuple


def _pool(sc, pp, target, draft, draft_arch, draft_kind, k, hw, cost, quant, kv_el, source, entry) -> PoolSetup:
    eng, lay, spec = sc.engine, pp.layout, sc.speculative_config
    tp = lay.tensor_parallel_size
    par = Parallel(tensor_parallel_size=tp, enable_expert_parallel=lay.enable_expert_parallel,
                   cuda_graphs=not eng.enforce_eager, data_parallel_size=pp.dp_ranks,
                   moe_tensor_parallel_size=lay.moe_tensor_parallel_size or 0, moe_a2a=a2a_backend(eng, entry))
    precision.check_expert_blocks(target, quant.moe, par.moe_tp, eng.framework, source, f"{pp.field}.tensor_parallel_size")
    pad = memory.padded_growth(target, par.moe_tp, cost.expert_pad(quant.precision("moe")))
    limit = lambda mine, default: default if mine is None else mine  # noqa: E731
    max_num_seqs = limit(getattr(lay, "max_num_seqs", None), eng.max_num_seqs)
    blocks = memory.kv_blocks(target, draft_arch if draft_kind == "model" else None, hw, tp,
                              eng.gpu_memory_utilization, eng.block_size, kv_el, source, quant,
                              expert_gpus=par.moe_group, field=f"{pp.field}.tensor_parallel_size",
                              of_free=entry.kv_memory == "free", expert_pad=pad, state_seqs=max_num_seqs)
    budget = eng.max_num_batched_tokens
    if "max_num_batched_tokens" not in eng.model_fields_set:   # the framework's own default, if it has one
        budget = entry.batched_tokens(hw.memory_bytes) or budget
    cfg = engine.EngineConfig(prefix_caching=eng.enable_prefix_caching,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=limit(getattr(lay, "max_num_batched_tokens", None), budget),
        enable_chunked_prefill=eng.enable_chunked_prefill, block_size=eng.block_size, num_blocks=blocks,
        max_model_len=eng.max_model_len or target.max_position_embeddings,
        step_model=step_model(eng, entry, synced_ranks(par), hw.architecture),
        mixed_prefill=limit(eng.enable_mixed_chunk, entry.mixed_prefill),
        dp_dispatch=dp_dispatch(eng, entry, pp.role),
        k=k, verify_tokens=spec.verify_tokens if spec and k else 1, draft_kind=draft_kind,
        draft_tokens_per_pass=(spec.speculative_eagle_topk or 1) if spec and k else 1)
    target_key = ("fm", target.model_dump_json(), hw.model_dump_json(), par, eng.framework, cost.version_key,
                  cost.kernel_time_scale, cost.kernel_fixed_scale, quant, kv_el)
    target_fm = _shared(target_key, lambda: ForwardModel(target, cost, par, quant, kv_el))
    draft_fm = None
    if draft_arch is not None:
        # an MTP layer is one more layer of the target: its experts sit on the target's EP group and its
        # tokens go through the same dispatch/combine; a draft model or EAGLE head is TP over the worker
        dpar = par if spec.method == "mtp" and draft_arch.moe else Parallel(tp, False, par.cuda_graphs)
        # an MTP layer is part of the target checkpoint (its precision); a draft model or EAGLE head keeps its own
        dquant = quant if spec.method == "mtp" and draft is None else None
        draft_key = ("fm", draft_arch.model_dump_json(), hw.model_dump_json(), dpar, eng.framework, cost.version_key,
                     cost.kernel_time_scale, cost.kernel_fixed_scale, dquant, kv_el)
        draft_fm = _shared(draft_key, lambda: ForwardModel(draft_arch, cost, dpar, dquant, kv_el))
        target_key = (target_key, draft_key)
    return PoolSetup(pp.role, pp.workers, pp.dp_ranks, pp.gpus, par, cfg, target_fm, draft_fm, target_key)


def synced_ranks(par: Parallel) -> int:
    """GPUs whose collectives tie a step together: the MoE layers' group (the TP group without
    attention DP; with it, every DP rank's TP group, joined by the MoE layers' all-to-all under EP or
    their all-reduce without)."""
    return par.moe_group


def sync_fraction(skew: float, ranks: int) -> float:
    """Share of a step's GPU time spent waiting for the slowest of ``ranks`` GPUs whose time between
    collectives spreads by ``skew`` (relative): the expected maximum of that many, skew * sqrt(2 ln n)."""
    return skew * math.sqrt(2.0 * math.log(ranks)) if ranks > 1 else 0.0


def a2a_backend(eng, entry) -> str:
    """The attention-DP + EP token exchange: the scenario's (vLLM's names read as SGLang's), else the framework's."""
    b = entry.moe_a2a_backend if eng.moe_a2a_backend is None else eng.moe_a2a_backend
    return "deepep" if b.startswith("deepep") else "none"


def dp_dispatch(eng, entry, role: str = "agg") -> str:
    """How an attention-DP worker places a new request: the scenario's --load-balance-method, else the
    framework's, for an aggregated worker or a disaggregated pool's (SGLang's: random)."""
    if eng.load_balance_method is None:
        return entry.dp_dispatch if role == "agg" else entry.disagg_dp_dispatch
    return "round_robin" if eng.load_balance_method == "round_robin" else "fewest_requests"


def rank_skew(eng, entry, architecture: str) -> float:
    """The relative rank skew a run uses: the scenario's, else its framework entry's for the GPU."""
    return entry.skew(architecture) if eng.rank_skew is None else eng.rank_skew


def step_model(eng, entry=None, ranks: int = 1, architecture: str = "") -> FrameworkStep:
    """The framework step model of a scenario's engine: its framework's entry for its version
    (workloads/frameworks.yaml; ``entry`` when the caller has it), with any term the scenario sets
    itself; a worker of ``ranks`` GPUs also waits for the slowest of them at its collectives."""
    e = entry or framework_mod.step_entry(eng.framework, eng.framework_version)
    pick = lambda mine, default: default if mine is None else mine  # noqa: E731
    return FrameworkStep(pick(eng.step_overhead_ms, e.step_cpu_ms) / 1e3, pick(eng.per_seq_overhead_ms, e.per_seq_cpu_ms) / 1e3,
                         pick(eng.spec_round_overhead_ms, e.spec_round_cpu_ms) / 1e3, pick(eng.cpu_overlap, e.cpu_overlap),
                         pick(eng.sync_ms, e.sync_ms) / 1e3, pick(eng.draft_pass_overhead_ms, e.draft_pass_cpu_ms) / 1e3,
                         sync_fraction(rank_skew(eng, e, architecture), ranks),
                         pick(eng.prefill_kernel_launch_us, e.prefill_kernel_launch_us) / 1e6)


def kernel_scales(eng, hw, e) -> tuple:
    """(time scale, fixed-term scale) of the serving path's GEMM/MoE kernels over the tables': the
    scenario's, else its framework entry ``e``'s for this GPU architecture; the fixed terms follow
    the time scale unless one sets them."""
    if eng.kernel_time_scale is None:
        scale, fixed = e.kernel_scale(hw.architecture), e.kernel_fixed(hw.architecture)
    else:
        scale = fixed = eng.kernel_time_scale
    return scale, (fixed if eng.kernel_fixed_scale is None else eng.kernel_fixed_scale)


def _cost_model(hw, framework: str, source: str, scale: float = 1.0, fixed: float | None = None,
                version: str | None = None, before_all: str = "newest") -> CostModel:
    try:
        return CostModel(hw, framework=framework, kernel_time_scale=scale, kernel_fixed_scale=fixed, version=version,
                         before_all=before_all)
    except ConfigError as exc:
        raise ConfigError(exc.message, source=source, field="engine.framework") from None


def missing_kernels(cost: CostModel, target, quant) -> str:
    """'' when every kernel the run prices has its own fit on this GPU and framework (each weight
    precision's GEMM/MoE, MLA decode for an MLA model), else what is missing, in one line."""
    ops = [("gemm", quant.gemm)] + ([("moe", quant.moe)] if target.moe else [])
    try:
        for op, name in ops:
            cost.fit_params(op, precision.get(name))
        if target.mla is not None:
            cost.mla_decode_latency_s(1, np.ones(1), 1, target.mla.latent_dim)
    except ConfigError as exc:
        return exc.message
    return ""


def _check_calibrated(cost: CostModel, target, quant, source: str) -> None:
    why = missing_kernels(cost, target, quant)
    if why:
        raise ConfigError(why, source=source, field="engine.quantization" if "mla" not in why.lower() else "model")


def target_efficiency(setup: Setup, batch_size: int, ctx: float) -> float | None:
    """eta = T_T(B, 1) / T_T(B, k+1) at this batch and context (expected routing)."""
    k = setup.cfg.k
    if not k or batch_size < 1:
        return None
    one = setup.target_fm.forward(Batch(batch_size, 1, max(ctx, 1.0))).total_s
    ver = setup.target_fm.forward(Batch(batch_size, setup.cfg.verify_tokens, max(ctx, 1.0))).total_s
    return one / ver


def pool_runs(setup: Setup) -> list:
    """The engine's view of the pools; a prefill pool gets its KV transfer time per request."""
    runs = [engine.PoolRun(p.role, p.workers, p.dp_ranks, p.cfg, p.target_fm, p.draft_fm) for p in setup.pools]
    d = setup.scenario.disaggregation
    if d is not None:
        pre, dec = setup.pools
        same = d.kv_transfer == "nvlink" or (d.kv_transfer == "auto" and pre.gpus + dec.gpus <= setup.hw.domain_gpus)
        hw, senders, receivers = setup.hw, pre.par.tensor_parallel_size, dec.par.tensor_parallel_size
        eng = setup.scenario.engine
        handoff_s = (d.handoff_ms if d.handoff_ms is not None else
                     framework_mod.step_entry(eng.framework, eng.framework_version).disagg_handoff_ms) / 1e3
        runs[0].kv_bytes_per_token = memory.kv_bytes_per_token(setup.target, 1, pre.target_fm.kv_bytes)
        runs[0].kv_transfer_s = lambda kv_bytes: network.kv_transfer_s(hw, kv_bytes, senders, receivers, same)
        runs[0].handoff_s = handoff_s
    return runs


def topology_summary(setup: Setup) -> dict:
    """Pools as the summary states them: workers, layout, GPUs."""
    out = {}
    for p in setup.pools:
        par = p.par
        out[p.role] = {"workers": p.workers, "gpus": p.gpus, "tensor_parallel_size": par.tensor_parallel_size,
                       "data_parallel_size": par.data_parallel_size, "moe_tensor_parallel_size": par.moe_tp,
                       "moe_expert_parallel_size": par.moe_ep}
    return out


def simulate(setup: Setup, progress=None, spill_dir=None) -> tuple:
    """(summary, requests table, step log). The step log (:class:`~.steplog.StepLog`) gives its
    table with ``.frame()`` and its running statistics as ``.stats``; with ``spill_dir`` it is kept
    on disk, so memory stays flat however long the run."""
    sc = setup.scenario
    seeds = np.random.SeedSequence(sc.seed).spawn(2)
    specs = workload.build(sc.workload, np.random.default_rng(np.random.SeedSequence([sc.workload.seed])))
    out = engine.run(specs, pool_runs(setup), setup.acceptance, setup.routing, int(seeds[1].generate_state(1)[0]),
                     sc.engine.router, sc.workload.max_concurrency, progress, spill_dir, sc.workload.concurrency)
    req = metrics.requests_frame(out)
    req["measured"] = metrics.measured(req, sc.workload)
    steps = out.steps
    st = steps.stats
    mean_b = int(round(st.sums["num_decode"] / st.n_decode_steps)) if st.n_decode_steps else 0
    extra = dict(out.extra)
    extra["target_efficiency"] = target_efficiency(setup, mean_b, float(req.input_len.mean() + req.output_len.mean() / 2))
    extra["gpu"] = setup.hw.name
    extra.update(setup.files or {})
    extra["calibration"] = ("calibrated" if setup.cost.source.name == setup.hw.name
                            else f"uncalibrated, transferred from {setup.cost.source.name}")
    extra["num_gpus"] = sum(p.gpus for p in setup.pools)
    extra["kv_cache_blocks_per_replica"] = setup.cfg.num_blocks
    extra["topology"] = topology_summary(setup)
    summary = metrics.summary(out, req, sc, extra)
    return summary, req, steps
