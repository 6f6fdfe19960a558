"""``moesd validate``: the measured-vs-simulated comparison of :mod:`simulator.analysis.validate`;
writes validation.csv, summary.json and report.html."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..analysis.silicon import validate_silicon
from ..analysis.sdvalidate import validate_sd_table
from ..analysis.validate import validate
from ..common.errors import ConfigError
from ..common.atomic import check_output_dir, output_dir
from ..common.paths import REPORTS_DIR
from ..reports.validation import report


def run(args) -> int:
    if args.silicon and args.sd_table:
        raise ConfigError("give one of --silicon and --sd-table", field="--sd-table")
    if (args.assume or args.source) and not args.sd_table:
        raise ConfigError("only with --sd-table", field="--assume" if args.assume else "--source")
    if args.silicon:
        return run_silicon(args)
    if args.sd_table:
        return run_sd_table(args)
    out = check_output_dir(Path(args.out) if args.out else REPORTS_DIR / "validate")
    t, s = validate(args.cases, args.workers, args.executor, args.address,
                    Path(args.cache_dir) if args.cache_dir else None, progress=not args.quiet)
    with output_dir(out, "moesd validate") as tmp:
        t.to_csv(tmp / "validation.csv", index=False, float_format="%.6g")
        (tmp / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
        if not args.no_report:
            report(tmp / "report.html", t, s)
    print_table(t, s)
    print(f"  results: {out}")
    return 0


def print_table(t: pd.DataFrame, s: dict) -> None:
    print(f"{'case':<46} {'measured':>10} {'simulated':>10} {'error':>7}  SD speedup meas/sim")
    for r in t.itertuples():
        sd = f"  {r.measured_speedup:.2f} / {r.sim_speedup:.2f} {'ok' if r.sd_sign_right else 'WRONG SIGN'}" \
            if r.measured_speedup == r.measured_speedup else ""
        print(f"{r.case:<46} {r.measured_throughput_tok_s:>10.1f} {r.sim_throughput_tok_s:>10.1f} "
              f"{r.throughput_err:>+7.1%}{sd}")
    print(f"\n{'group':<44} {'cases':>5} {'thr median':>10} {'p90':>7} {'lat median':>10} {'p90':>7}  SD sign")
    for g, v in s.items():
        lat = f"{v['latency_median_abs_err']:>10.1%} {v['latency_p90_abs_err']:>7.1%}" \
            if v["latency_median_abs_err"] is not None else f"{'-':>10} {'-':>7}"
        sign = f"{v['sd_sign_right']}/{v['sd_cases']}" if v["sd_cases"] else "-"
        print(f"{g:<44} {v['cases']:>5} {v['throughput_median_abs_err']:>10.1%} "
              f"{v['throughput_p90_abs_err']:>7.1%} {lat}  {sign}")


def run_silicon(args) -> int:
    """``--silicon FILE``: classify and simulate every row; silicon.csv + summary.json under --out."""
    if args.sample is not None and args.sample < 1:
        raise ConfigError(f"must be at least 1, got {args.sample}", field="--sample")
    out = check_output_dir(Path(args.out) if args.out else REPORTS_DIR / "validate_silicon")
    t, s = validate_silicon(Path(args.silicon), args.sample, args.workers, args.executor, args.address,
                            Path(args.cache_dir) if args.cache_dir else None, progress=not (args.quiet or args.json))
    with output_dir(out, "moesd validate --silicon") as tmp:
        t.to_csv(tmp / "silicon.csv", index=False, float_format="%.6g")
        (tmp / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    if args.json:
        rows = json.loads(t.to_json(orient="records"))
        print(json.dumps({**s, "per_row": rows}))
        return 0
    print(f"{'model':<26} {'backend':<7} {'gpu':<9} {'mode':<5} {'rows':>5}  {'TPOT med':>8} {'p90':>6}  "
          f"{'TTFT med':>8} {'p90':>6}")
    for g in s["groups"]:
        print(f"{g['model'][:26]:<26} {g['backend']:<7} {g['gpu']:<9} {g['mode']:<5} {g['rows']:>5}  "
              f"{pct(g['tpot']['median']):>8} {pct(g['tpot']['p90'])}  {pct(g['ttft']['median']):>8} {pct(g['ttft']['p90'])}")
    print(f"\nrows {s['rows']}, expressible {s['expressible']} ({s['coverage']:.0%}); TPOT median "
          f"{pct(s['tpot_median_abs_error']).strip()}, TTFT median {pct(s['ttft_median_abs_error']).strip()}")
    return _print_blocked(s, out)


def pct(v) -> str:
    return f"{v:6.1%}" if v is not None else f"{'-':>6}"


def _print_blocked(s: dict, out: Path) -> int:
    print("blocked:")
    for reason, n in s["blocked"].items():
        print(f"  {n:>5}  {reason}")
    print(f"  results: {out}")
    return 0


def run_sd_table(args) -> int:
    """``--sd-table FILE``: every row classified, expressible setups simulated with and without SD;
    sd_table.csv + summary.json under --out, error tables per source and framework."""
    out = check_output_dir(Path(args.out) if args.out else REPORTS_DIR / "validate_sd_table")
    t, s = validate_sd_table(Path(args.sd_table), Path(args.assume) if args.assume else None, args.source,
                             args.workers, args.executor, args.address,
                             Path(args.cache_dir) if args.cache_dir else None, progress=not (args.quiet or args.json))
    with output_dir(out, "moesd validate --sd-table") as tmp:
        t.to_csv(tmp / "sd_table.csv", index=False, float_format="%.6g")
        (tmp / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    if args.json:
        print(json.dumps(s))
        return 0
    for title, groups in (("source", s["by_source"]), ("framework", s["by_framework"])):
        print(f"{title:<58} {'rows':>5} {'speedup med':>11} {'p90':>6} {'thr med':>7} {'TPOT med':>8}  sign")
        for name, g in groups.items():
            sign = f"{g['sign_right']:.0%} of {g['sign_rows']}" if g["sign_rows"] else "-"
            print(f"{name[:58]:<58} {g['rows']:>5} {pct(g['speedup_median_abs_error']):>11} "
                  f"{pct(g['speedup_p90_abs_error'])} {pct(g['throughput_median_abs_error']):>7} "
                  f"{pct(g['tpot_median_abs_error']):>8}  {sign}")
        print()
    sign = f"{s['sign_right']:.0%} of {s['sign_rows']}" if s["sign_rows"] else "-"
    print(f"rows {s['rows']}, expressible {s['expressible']}; SD speedup median "
          f"{pct(s['speedup_median_abs_error']).strip()} (p90 {pct(s['speedup_p90_abs_error']).strip()}), "
          f"throughput {pct(s['throughput_median_abs_error']).strip()}, TPOT {pct(s['tpot_median_abs_error']).strip()}, "
          f"SD sign right {sign}")
    return _print_blocked(s, out)
