"""``moesd simulate``: scenario in, results folder out (summary.json, tables, report.html)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from ..common.atomic import check_output_dir, output_dir
from ..common.paths import REPORTS_DIR
from ..config.scenario import load_scenario, scenario_path
from ..serving.simulation import build, simulate


def _json(obj) -> str:
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (np.floating, float)):
            return None if not np.isfinite(v) else float(f"{float(v):.10g}")
        if isinstance(v, np.integer):
            return int(v)
        return v
    return json.dumps(clean(obj), indent=2, sort_keys=False) + "\n"


def write_outputs(out_dir: Path, sc, summary: dict, req, steps, report: bool = True) -> None:
    with output_dir(out_dir, "moesd simulate") as tmp:
        (tmp / "summary.json").write_text(_json(summary))
        req.to_csv(tmp / "requests.csv", index=False, float_format="%.9g")
        steps.write_csv(tmp / "steps.csv")
        (tmp / "scenario.yaml").write_text(yaml.safe_dump(sc.model_dump(mode="json"), sort_keys=False))
        if report:
            from ..reports.simulation import simulation_report
            simulation_report(tmp / "report.html", sc, summary, req, steps)


# prompts per prefill step at which a closed loop's console summary says its TTFT rests on cohorts
COHORT_NOTE = 1.5


def print_table(summary: dict, out_dir: Path) -> None:
    f = lambda v, d=2: "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))  # noqa: E731
    done = f"{summary['completed']} / {summary['failed']}"
    if summary.get("measured_requests", summary["num_prompts"]) < summary["num_prompts"]:
        # a warm-up or steady-state window: the figures below are the measured requests' (as aiperf reports)
        done += f" (measured; {summary['num_prompts']} sent)"
    rows = [("completed / failed", done),
            ("duration (s)", f(summary["duration"])),
            ("request throughput (req/s)", f(summary["request_throughput"])),
            ("output throughput (tok/s)", f(summary["output_throughput"], 1)),
            ("TTFT mean / p99 (ms)", f"{f(summary['mean_ttft_ms'])} / {f(summary['p99_ttft_ms'])}"),
            ("TPOT mean / p99 (ms)", f"{f(summary['mean_tpot_ms'])} / {f(summary['p99_tpot_ms'])}"),
            ("ITL mean (ms)", f(summary["mean_itl_ms"])),
            ("acceptance length", f(summary["spec_decode_acceptance_length"])),
            ("acceptance assumed", summary.get("acceptance_model") or "-"),
            ("target efficiency", f(summary.get("target_efficiency"), 3)),
            ("mean batch size", f(summary["mean_batch_size"], 1)),
            ("prompts per prefill step", f(summary.get("mean_prompts_per_prefill"), 2)),
            ("active experts / MoE layer", f(summary["mean_active_experts_per_layer"], 1)),
            ("expert bytes / output token", f"{summary['expert_bytes_per_output_token'] / 1e6:.1f} MB")]
    if summary.get("request_goodput") is not None:
        rows.insert(3, ("request goodput (req/s)", f(summary["request_goodput"])))
    if summary.get("quantization_note"):
        rows.append(("precision", summary["quantization_note"]))
    w = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"  {a:<{w}}  {b}")
    cohort = summary.get("mean_prompts_per_prefill")
    if summary.get("concurrency") and cohort is not None and cohort >= COHORT_NOTE:
        # users of a closed loop that prefill together finish together and resend together
        print(f"  note: prompts prefilled {cohort:.1f} at a time; a closed loop keeps such cohorts, so its TTFT "
              "(and SD's effect on TTFT) depends on them (README, \"Closed-loop TTFT\")")
    print(f"  results: {out_dir}")


def layout_text(setup) -> str:
    """Pools in a few words: '2 x TP1 DP8 EP8', 'prefill 1 x TP8 EP8, decode 1 x TP1 DP8 EP8'."""
    parts = []
    for p in setup.pools:
        par = p.par
        words = [f"TP{par.tensor_parallel_size}"] + ([f"DP{p.dp_ranks}"] if p.dp_ranks > 1 else [])
        if par.moe_ep > 1:
            words.append(f"EP{par.moe_ep}" + (f" MoE-TP{par.moe_tp}" if par.moe_tp > 1 else ""))
        role = "" if p.role == "agg" else f"{p.role} "
        parts.append(f"{role}{p.workers} x {' '.join(words)}")
    return ", ".join(parts)


def run(args) -> int:
    source = str(scenario_path(args.scenario))
    sc = load_scenario(source, args.set)
    setup = build(sc, source)
    out_dir = check_output_dir(Path(args.out) if args.out else REPORTS_DIR / sc.name)
    bar = None
    if not args.quiet:
        from tqdm import tqdm
        bar = tqdm(total=sc.workload.num_prompts, unit="req", delay=2.0, file=sys.stderr, leave=False)
    # the step log goes to disk as it grows: memory stays flat however long the simulated run
    with tempfile.TemporaryDirectory(prefix="moesd-steps-") as spill:
        try:
            summary, req, steps = simulate(setup, bar.update if bar else None, spill_dir=Path(spill))
        finally:
            if bar:
                bar.close()
        write_outputs(out_dir, sc, summary, req, steps, report=not args.no_report)
    if not args.quiet:
        print(f"{sc.name}: {setup.target.name} on {summary['num_gpus']} {setup.hw.name} ({layout_text(setup)}; "
              f"{summary['calibration']}), SD "
              f"{'k=' + str(setup.cfg.k) + ' ' + sc.speculative_config.method if setup.cfg.k else 'off'}")
        print_table(summary, out_dir)
    return 0
