"""``moesd plan``: the cheapest deployment that meets the SLOs, with and without SD.

Writes ``configs.csv`` (every configuration, its max sustainable rate or why it has none),
``best_config_topn.csv`` and ``pareto.csv`` (AIConfigurator's column names), ``plan.json`` (the
answer: cheapest configuration for the target rate, SD recommendation per load level, pruned
configurations and why) and ``report.html``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.plan import plan
from ..common.atomic import check_output_dir, output_dir
from ..common.errors import ConfigError
from ..common.paths import REPORTS_DIR
from ..config.plan import PlanSpec, load_plan, parse_plan
from ..config.speculative import Acceptance
from ..serving import acceptance as acc_mod


def spec_from_args(args) -> PlanSpec:
    if args.plan:
        return load_plan(args.plan, args.set)
    if not (args.model and args.system):
        raise ConfigError("give a plan.yaml, or at least --model and --system", field="plan")
    slo = {k: v for k, v in (("ttft_ms", args.ttft), ("tpot_ms", args.tpot), ("e2el_ms", args.e2el)) if v}
    # a folder name: a model path's slashes and the GPU list's commas become '-'
    model = args.model.removesuffix(".yaml").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]", "-", f"plan_{model}_{args.system}")[:128]
    data = {"name": name, "model": args.model,
            "workload": {"random_input_len": args.isl, "random_output_len": args.osl, "random_range_ratio": 0.5,
                         "num_prompts": args.num_prompts},
            "slo": slo or {"tpot_ms": 50.0},
            "search": {"gpus": args.system.split(","), "total_gpus": [args.total_gpus],
                       "tensor_parallel_size": [t for t in (1, 2, 4, 8) if t <= args.total_gpus],
                       "num_speculative_tokens": [0] + ([args.k] if args.draft else []),
                       "adaptive_k": [False, True] if args.draft else [False]}}
    if args.draft:
        data["drafts"] = [{"method": args.draft_method, "model": args.draft}]
        if args.acceptance_rate is not None:     # else the plan's default, which the answer says it is
            data["drafts"][0]["acceptance"] = {"rate": args.acceptance_rate}
    if args.target_rate:
        data["target_request_rate"] = args.target_rate
    return parse_plan(data, "command line", args.set)


def run(args) -> int:
    spec = spec_from_args(args)
    out = check_output_dir(Path(args.out) if args.out else REPORTS_DIR / spec.name)
    cache = Path(args.cache_dir) if args.cache_dir else REPORTS_DIR / ".plan_cache"
    res = plan(spec, args.workers, args.executor, args.address, cache, progress=not args.quiet, top_n=args.top_n)
    res["answer"]["sd_acceptance"] = sd_acceptance(spec)
    with output_dir(out, "moesd plan") as tmp:
        res["table"].sort_values("request_rate", ascending=False).to_csv(tmp / "configs.csv", index=False,
                                                                        float_format="%.6g")
        res["top"].to_csv(tmp / "best_config_topn.csv", index=False, float_format="%.6g")
        res["pareto"].to_csv(tmp / "pareto.csv", index=False, float_format="%.6g")
        (tmp / "plan.json").write_text(json.dumps(res["answer"], indent=1, default=_plain) + "\n")
        if not args.no_report:
            from ..reports.plan import plan_report
            plan_report(tmp / "report.html", spec, res)
    print_answer(res["answer"], res["top"])
    print(f"  results: {out}")
    return 0


def sd_acceptance(spec: PlanSpec) -> dict:
    """Per draft, the acceptance its SD candidates assume, in words (a default said so): the SD verdict
    rests on it."""
    out, k = {}, max([x for x in spec.search.num_speculative_tokens if x] or [1])
    for d in spec.drafts:
        out[str(d.model if isinstance(d.model, str) else d.method)] = acc_mod.describe(
            Acceptance(**d.acceptance), k,
            None if "acceptance" in d.model_fields_set else "the draft's acceptance (--acceptance-rate)")
    return out


def _plain(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)


def print_answer(ans: dict, top: pd.DataFrame) -> None:
    b = ans["best"]
    print(f"{ans['configurations']} configurations ({ans['feasible']} meet the SLOs, {len(ans['pruned'])} pruned)")
    if ans["target_request_rate"]:
        print(f"cheapest for {ans['target_request_rate']:g} req/s: {b['config']} x{b['copies_for_target']} "
              f"= {b['gpus_for_target']} GPUs, ${b['cost_for_target_per_hour_usd']:.2f}/h")
    else:
        print(f"best tokens/s/GPU: {b['config']}")
    print(f"  max {b['request_rate']:.3g} req/s per copy, p{ans['slo']['percentile']:g} TTFT {b['ttft']:.0f} ms, "
          f"TPOT {b['tpot']:.1f} ms, {b['tokens/s/gpu']:.0f} tok/s/GPU, {b['tokens/s/user']:.0f} tok/s/user")
    rec = ans["sd_recommendation"]
    print(f"SD on {rec['hardware']}: {rec['summary']}")
    for draft, text in ans.get("sd_acceptance", {}).items():
        print(f"  SD with {draft} assumes acceptance {text}")
    cols = ["config", "request_rate", "ttft", "tpot", "tokens/s/gpu", "tokens/s/user", "cost_per_hour_usd"]
    print(top[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
