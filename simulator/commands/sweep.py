"""``moesd sweep``: the sweep of :mod:`simulator.analysis.sweep` over the scenario, its dense pair
and a top-K sparsity sweep; writes sweep.csv, sparsity.csv and report.html."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..analysis.sweep import peak, sparsity, sweep
from ..common.atomic import check_output_dir, output_dir
from ..common.errors import ConfigError
from ..common.paths import REPORTS_DIR
from ..config.scenario import load_scenario
from ..serving import acceptance


MAX_VALUES = 64          # values per axis: the engine runs batch x k points


def _ints(text: str, field: str, lo: int, hi: int) -> list[int]:
    """``1,2,4`` or ``1..6`` (or both), each value in [lo, hi], at most MAX_VALUES of them."""
    out: list[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if ".." in part:
                a, b = (int(x) for x in part.split(".."))
                if b - a + 1 > MAX_VALUES:
                    out = [hi + 1]
                    break
                out += list(range(a, b + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        out = []
    if not out or min(out) < lo or max(out) > hi or len(set(out)) > MAX_VALUES:
        raise ConfigError(f"expected up to {MAX_VALUES} integers in [{lo}, {hi}] like 1,2,4 or 1..6, got {text!r}",
                          field=field)
    return sorted(set(out))


def run(args) -> int:
    batches = _ints(args.batch_sizes, "--batch-sizes", 1, 65536)
    ks = _ints(args.num_speculative_tokens, "--num-speculative-tokens", 1, 16)
    topks = _ints(args.topk_sweep, "--topk-sweep", 1, 1024)
    common = dict(engine=not args.closed_form_only, workers=args.workers, executor=args.executor,
                  address=args.address, cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                  progress=not args.quiet)
    sc = load_scenario(args.scenario, args.set)
    out = check_output_dir(Path(args.out) if args.out else REPORTS_DIR / f"sweep_{sc.name}")
    tables = [sweep(args.scenario, args.set, batches, ks, **common)]
    if args.dense_scenario:
        # the MoE scenario's acceptance, at the k it was measured at (the dense pair's k may differ)
        acc = acceptance.pinned(sc.speculative_config.acceptance, sc.speculative_config.k)
        dense_over = [f"speculative_config.acceptance={json.dumps(acc)}", f"hardware.gpu={sc.hardware.gpu}",
                      f"hardware.tensor_parallel_size={sc.hardware.tensor_parallel_size}",
                      f"workload.random_input_len={sc.workload.random_input_len}",
                      f"workload.random_output_len={sc.workload.random_output_len}"]
        tables.append(sweep(args.dense_scenario, dense_over, batches, ks, family="dense", adaptive=False, **common))
    notes = [t.attrs["note"] for t in tables if t.attrs.get("note")]
    spec = sc.speculative_config
    if spec is not None:
        # every k of the sweep keeps this acceptance: the verdict rests on it
        notes.insert(0, "acceptance assumed: " + acceptance.describe_scenario(spec, spec.k))
    table = pd.concat(tables, ignore_index=True)
    k_sp = 3 if 3 in ks else ks[0]
    sp = sparsity(args.scenario, args.set, batches, k_sp, topks)
    with output_dir(out, "moesd sweep") as tmp:
        table.to_csv(tmp / "sweep.csv", index=False, float_format="%.6g")
        sp.to_csv(tmp / "sparsity.csv", index=False, float_format="%.6g")
        if not args.no_report:
            from ..reports.sweep import sweep_report
            sweep_report(tmp / "report.html", sc, table, sp, notes)
    print_summary(table)
    for n in notes:
        print(f"  note: {n}")
    print(f"  results: {out}")
    return 0


def print_summary(table: pd.DataFrame) -> None:
    for (fam, name), t in table.groupby(["family", "scenario"], sort=False):
        has_sim = "speedup_sim" in t and t.speedup_sim.notna().any()
        col = "speedup_sim" if has_sim else "speedup_closed"
        b, v = peak(t, col)
        print(f"{name} ({fam}, {t.target.iloc[0]} on {t.gpu.iloc[0]}): peak speedup {v:.2f}x at batch {b} "
              f"({'engine' if has_sim else 'closed form'})")
        rows = []
        for bs, g in t.groupby("batch_size"):
            fx = g[~g.adaptive & (g.k > 0)]
            best = fx.loc[fx[col].idxmax()]
            line = f"  B={bs:<4} best k={int(best.k)} speedup {best[col]:.2f}x  eta(k) {best.eta_closed:.2f}"
            if not best.fits_kv_cache:
                ran = best.get("effective_batch", float("nan"))
                line += (f"  [KV cache holds fewer than {bs} sequences" +
                         (f": engine ran ~{ran:.0f}]" if pd.notna(ran) else "]"))     # no engine run: NaN
            if has_sim:
                line += f"  closed form {best.speedup_closed:.2f}x"
                ad = g[g.adaptive]
                if len(ad):
                    line += f"  adaptive {ad.speedup_sim.iloc[0]:.2f}x (mean k {ad.mean_k.iloc[0]:.1f})"
            rows.append(line)
        print("\n".join(rows))
