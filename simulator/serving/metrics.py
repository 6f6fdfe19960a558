"""Results in ``vllm bench serve`` terms (summary.json), plus per-request and per-step tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .engine import STEP_FIELDS

PERCENTILES = (50, 90, 95, 99)


def requests_frame(outcome) -> pd.DataFrame:
    R = outcome.requests
    ok = ~R.failed & ~np.isnan(R.finish_s)
    e2el = np.where(ok, R.finish_s - R.send_s, np.nan)
    ttft = np.where(ok, R.first_token_s - R.send_s, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(ok & (R.output_len > 1), (e2el - ttft) / (R.output_len - 1), np.nan)
    return pd.DataFrame({
        "request_id": R.id, "replica": R.replica, "arrival_s": R.arrival_s, "start_s": R.send_s,
        "input_len": R.input_len, "output_len": R.output_len, "generated": R.generated, "completed": ok,
        "fail_reason": R.fail_reason, "ttft_s": ttft, "tpot_s": tpot, "e2el_s": e2el,
        "first_token_time_s": R.first_token_s, "finish_time_s": R.finish_s,
        "num_chunks": R.chunks, "preemptions": R.preemptions, "num_drafts": R.num_drafts,
        "draft_tokens": R.drafted, "accepted_tokens": R.accepted})


def steps_frame(outcome) -> pd.DataFrame:
    df = pd.DataFrame(outcome.steps, columns=list(STEP_FIELDS))
    return df.sort_values(["start_s", "replica"], kind="stable").reset_index(drop=True)


def _agg(values_ms: np.ndarray, name: str) -> dict:
    # Sorted, so the mean and std do not depend on the order values were logged in (the engine's
    # coasting and step-by-step paths log the same gaps in different orders).
    v = np.sort(values_ms[~np.isnan(values_ms)]) if len(values_ms) else values_ms
    if len(v) == 0:
        out = {f"mean_{name}_ms": None, f"median_{name}_ms": None, f"std_{name}_ms": None}
        out.update({f"p{p}_{name}_ms": None for p in PERCENTILES})
        return out
    out = {f"mean_{name}_ms": float(np.mean(v)), f"median_{name}_ms": float(np.median(v)),
           f"std_{name}_ms": float(np.std(v))}
    out.update({f"p{p}_{name}_ms": float(np.percentile(v, p)) for p in PERCENTILES})
    return out


def summary(outcome, req: pd.DataFrame, steps: pd.DataFrame, scenario, extra: dict) -> dict:
    wl = scenario.workload
    done = req[req.completed]
    start = float(req.start_s.min()) if len(req) else 0.0
    duration = float(req.finish_time_s.max() - start) if len(req) else 0.0
    duration = max(duration, 1e-12)
    itls = outcome.requests.itls()
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
        "num_prompts": int(len(req)),
    }
    s.update(_agg(done.ttft_s.values * 1e3, "ttft"))
    s.update(_agg(done.tpot_s.values * 1e3, "tpot"))
    s.update(_agg(itls * 1e3, "itl"))
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
    dec = steps[steps.num_decode > 0]
    s["num_steps"] = int(len(steps))
    s["mean_step_ms"] = float(steps.duration_s.mean() * 1e3) if len(steps) else None
    s["mean_batch_size"] = float(dec.num_decode.mean()) if len(dec) else None
    s["mean_active_experts_per_layer"] = float(steps.active_experts.mean()) if len(steps) else None
    out_tokens = max(int(done.generated.sum()), 1)
    s["expert_bytes_per_output_token"] = float(steps.expert_weight_bytes.sum()) / out_tokens
    s["num_preemptions"] = int(req.preemptions.sum())
    tot = steps[["draft_s", "attention_s", "gemm_s", "moe_s", "comm_s", "overhead_s"]].sum()
    total = float(tot.sum()) or 1.0
    s["step_time_fraction"] = {k.replace("_s", ""): float(v) / total for k, v in tot.items()}
    s.update(extra)
    return s


def _max_concurrency(done: pd.DataFrame) -> int:
    if done.empty:
        return 0
    ev = np.concatenate([np.c_[done.start_s.values, np.ones(len(done))], np.c_[done.finish_time_s.values, -np.ones(len(done))]])
    ev = ev[np.lexsort((ev[:, 1], ev[:, 0]))]
    return int(np.cumsum(ev[:, 1]).max())
