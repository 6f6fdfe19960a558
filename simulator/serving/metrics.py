"""Results in ``vllm bench serve`` terms (summary.json), plus the per-request table.

TTFT, TPOT and E2EL percentiles are exact (one value per request), over the measured requests
(:func:`measured`: all, or all but a warm-up and, for a steady closed loop, its synchronised start
and its wind-down); throughput is over their span. ITL is over every inter-token
gap, which a long run has hundreds of millions of: it comes from a fixed-size log histogram
(:class:`~.requests.LogHistogram`; percentiles within 0.06%, the mean exact to the nanosecond), and
includes the gaps of requests that a stopped run marked failed. Step figures come from the step
log's running statistics (:class:`~.steplog.StepStats`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .steplog import PARTS

PERCENTILES = (50, 90, 95, 99)


def requests_frame(outcome) -> pd.DataFrame:
    R = outcome.requests
    ok = ~R.failed & ~np.isnan(R.finish_s)
    e2el = np.where(ok, R.finish_s - R.send_s, np.nan)
    ttft = np.where(ok, R.first_token_s - R.send_s, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(ok & (R.output_len > 1), (e2el - ttft) / (R.output_len - 1), np.nan)
    return pd.DataFrame({
        "request_id": R.id, "replica": R.replica, "dp_rank": R.dp_rank, "user": R.user, "arrival_s": R.arrival_s, "start_s": R.send_s,
        "input_len": R.input_len, "output_len": R.output_len, "generated": R.generated, "completed": ok,
        "fail_reason": R.fail_reason, "ttft_s": ttft, "tpot_s": tpot, "e2el_s": e2el,
        "first_token_time_s": R.first_token_s, "finish_time_s": R.finish_s,
        "num_chunks": R.chunks, "preemptions": R.preemptions, "num_drafts": R.num_drafts,
        "conversation": R.conversation, "prefix_tokens": R.prefix_len, "cached_tokens": R.cached_tokens,
        "draft_tokens": R.drafted, "accepted_tokens": R.accepted})


def first_sent(req: pd.DataFrame) -> np.ndarray:
    """Mask of each closed-loop user's first request (by send time, then request id)."""
    rank = np.argsort(np.lexsort((req.request_id.values, req.start_s.values)))
    mask = np.zeros(len(req), dtype=bool)
    if len(req):
        mask[pd.Series(rank).groupby(req.user.values).idxmin().values] = True
    return mask


def measured(req: pd.DataFrame, wl) -> np.ndarray:
    """Which requests the metrics cover: all but the first ``warmup_requests`` sent, and in a steady
    closed loop also each user's first request and those sent after the first user ran out."""
    keep = np.ones(len(req), dtype=bool)
    if not len(req):
        return keep
    order = np.lexsort((req.request_id.values, req.start_s.values))
    keep[order[:wl.warmup_requests]] = False
    if wl.measurement == "steady":          # a closed loop: every request has its user
        keep &= ~first_sent(req)
        done_at = req.groupby("user").finish_time_s.max()       # when each user sent nothing more
        keep &= req.start_s.values < float(done_at.min())
    return keep


def _agg(values_ms: np.ndarray, name: str) -> dict:
    # Sorted, so the mean and std do not depend on the order of the values (per-request figures;
    # inter-token gaps go through _agg_hist).
    v = np.sort(values_ms[~np.isnan(values_ms)]) if len(values_ms) else values_ms
    if len(v) == 0:
        out = {f"mean_{name}_ms": None, f"median_{name}_ms": None, f"std_{name}_ms": None}
        out.update({f"p{p}_{name}_ms": None for p in PERCENTILES})
        return out
    out = {f"mean_{name}_ms": float(np.mean(v)), f"median_{name}_ms": float(np.median(v)),
           f"std_{name}_ms": float(np.std(v))}
    out.update({f"p{p}_{name}_ms": float(np.percentile(v, p)) for p in PERCENTILES})
    return out


def _agg_hist(h, name: str) -> dict:
    if h.n == 0:
        return _agg(np.zeros(0), name)
    out = {f"mean_{name}_ms": h.mean() * 1e3, f"median_{name}_ms": h.percentile(50) * 1e3,
           f"std_{name}_ms": h.std() * 1e3}
    out.update({f"p{p}_{name}_ms": h.percentile(p) * 1e3 for p in PERCENTILES})
    return out


def prompts_per_prefill(done: pd.DataFrame) -> float | None:
    """How many prompts took their first token in the same step of the same rank as each request,
    averaged over requests: 1 when every prompt prefilled alone. In a closed loop with identical
    lengths, users whose prompts share a step finish together and send together again, so this
    measures the cohorts that decide its TTFT (README, "Closed-loop TTFT")."""
    if not len(done):
        return None
    return float(done.groupby(["replica", "dp_rank", "first_token_time_s"]).request_id.transform("size").mean())


def summary(outcome, req: pd.DataFrame, scenario, extra: dict) -> dict:
    wl = scenario.workload
    total_requests = len(req)
    if "measured" in req and not req.measured.all():     # a warm-up or steady-state window
        req = req[req.measured]
    done = req[req.completed]
    start = float(req.start_s.min()) if len(req) else 0.0
    duration = float(req.finish_time_s.max() - start) if len(req) else 0.0
    duration = max(duration, 1e-12)
    st = outcome.steps.stats
    s = {
        "duration": duration,
        "completed": int(len(done)),
        "failed": int((~req.completed).sum()),
        "total_input_tokens": int(done.input_len.sum()),
        "total_output_tokens": int(done.generated.sum()),
        "request_throughput": len(done) / duration,
        "request_goodput": None,
        "output_throughput": float(done.generated.sum()) / duration,
        "total_token_throughput": float(done.input_len.sum() + done.generated.sum()) / duration,
        "max_concurrent_requests": int(_max_concurrency(done)),
        "request_rate": wl.request_rate if wl.request_rate == "inf" else float(wl.request_rate),
        "burstiness": wl.burstiness,
        "max_concurrency": wl.max_concurrency,
        "num_prompts": int(total_requests),
    }
    if wl.concurrency is not None or wl.warmup_requests:
        # ITL and the step figures below cover the whole run; the rest only the measured requests
        s["concurrency"] = wl.concurrency
        s["measured_requests"] = int(len(req))
    s.update(_agg(done.ttft_s.values * 1e3, "ttft"))
    s.update(_agg(done.tpot_s.values * 1e3, "tpot"))
    s.update(_agg_hist(outcome.requests.itl_stats(), "itl"))
    s.update(_agg(done.e2el_s.values * 1e3, "e2el"))
    if scenario.slo is not None:
        ok = np.ones(len(done), dtype=bool)
        for name, col in (("ttft_ms", "ttft_s"), ("tpot_ms", "tpot_s"), ("e2el_ms", "e2el_s")):
            lim = getattr(scenario.slo, name)
            if lim is not None:
                ok &= np.nan_to_num(done[col].values * 1e3, nan=0.0) <= lim
        s["request_goodput"] = float(ok.sum()) / duration
    # speculative decoding, vLLM's names
    drafts, drafted, accepted = int(req.num_drafts.sum()), int(req.draft_tokens.sum()), int(req.accepted_tokens.sum())
    s["spec_decode_num_drafts"] = drafts
    s["spec_decode_draft_tokens"] = drafted
    s["spec_decode_accepted_tokens"] = accepted
    s["spec_decode_acceptance_rate"] = (100.0 * accepted / drafted) if drafted else None
    s["spec_decode_acceptance_length"] = (1.0 + accepted / drafts) if drafts else None
    s["spec_decode_per_position_acceptance_rates"] = extra.pop("per_position", None)
    # MoE and step-level figures
    n = st.n
    s["num_steps"] = int(n)
    s["mean_step_ms"] = st.sums["duration_s"] / n * 1e3 if n else None
    s["mean_batch_size"] = st.sums["num_decode"] / st.n_decode_steps if st.n_decode_steps else None
    s["mean_active_experts_per_layer"] = st.sums["active_experts"] / n if n else None
    out_tokens = max(int(done.generated.sum()), 1)
    s["expert_bytes_per_output_token"] = st.sums["expert_weight_bytes"] / out_tokens
    s["num_preemptions"] = int(req.preemptions.sum())
    s["mean_prompts_per_prefill"] = prompts_per_prefill(done)
    if scenario.engine.enable_prefix_caching:      # vLLM's prefix cache hit rate: cached / prompt tokens
        s["prefix_cache_hit_rate"] = float(req.cached_tokens.sum()) / max(float(req.input_len.sum()), 1.0)
    total = sum(st.sums[p] for p in PARTS) or 1.0
    s["step_time_fraction"] = {p.replace("_s", ""): st.sums[p] / total for p in PARTS}
    s.update(extra)
    return s


def _max_concurrency(done: pd.DataFrame) -> int:
    if done.empty:
        return 0
    ev = np.concatenate([np.c_[done.start_s.values, np.ones(len(done))], np.c_[done.finish_time_s.values, -np.ones(len(done))]])
    ev = ev[np.lexsort((ev[:, 1], ev[:, 0]))]
    return int(np.cumsum(ev[:, 1]).max())
