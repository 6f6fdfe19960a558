"""Measurement campaigns of the silicon sample against each other: the TPOT and TTFT ratio of every
pair of campaigns (backend, version, date measured) over the configurations both measured (same model,
GPU, mode, precision, lengths, users and layout as recorded), by users.

Why: a row states no speculative setting. Two campaigns of one release measuring the same recorded
configuration 2x apart in TPOT differ in how they were launched, not in their software; a ratio
near 1 / (1 + accepted drafts) says a draft. `simulator/analysis/silicon_campaigns.py` names the
campaigns read as MTP runs from this table.

    python benchmarks/silicon_campaigns.py [--silicon FILE] [--backend trtllm] [--min-shared 3] [--simulate]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.analysis import silicon                              # noqa: E402
from simulator.analysis.runner import run_many                      # noqa: E402
from simulator.analysis.silicon_campaigns import MTP_CAMPAIGNS, campaign   # noqa: E402
from simulator.analysis.silicon_layout import concurrency           # noqa: E402
from simulator.config.model import load as load_model               # noqa: E402

CONFIG = ["architecture", "system", "mode", "precision", "isl", "osl", "users", "batch_size", "tp_size",
          "attention_dp_size", "moe_tp_size", "moe_ep_size", "prefill_num_workers", "prefill_tp_size",
          "prefill_attention_dp_size", "prefill_moe_ep_size", "decode_num_workers", "decode_tp_size",
          "decode_attention_dp_size", "decode_moe_ep_size", "decode_batch_size"]
USERS = [0, 8, 32, 128, 1 << 20]
USER_BINS = ["<=8", "9-32", "33-128", ">128"]


def by_users(users: pd.Series) -> pd.Series:
    return pd.cut(users, USERS, labels=USER_BINS)


def paired(df: pd.DataFrame) -> pd.DataFrame:
    """One line per configuration two campaigns both measured: campaigns a (the earlier name) and b,
    users, b / a of TPOT and TTFT, and the id of one row of each."""
    # the same architecture under two names (DeepSeek-V3 and R1) is the same configuration
    shapes = {m: str(load_model(silicon.MODELS[m]).model_dump(exclude={"name", "source", "notes"}))
              for m in df.model_path.unique() if m in silicon.MODELS}
    df = df.assign(architecture=df.model_path.map(lambda m: shapes.get(m, m)),
                   users=[concurrency(r) for r in df.to_dict("records")],
                   campaign=[" ".join(campaign(r)) for r in df.to_dict("records")])
    key = df[CONFIG].apply(lambda c: c.map(str)).agg("|".join, axis=1)
    per = df.assign(key=key).groupby(["key", "campaign"]).agg(
        users=("users", "first"), tpot=("silicon_tpot_ms", "median"), ttft=("silicon_ttft_ms", "median"),
        row=("id", "first")).reset_index()
    out = []
    for _, g in per.groupby("key"):
        for (_, a), (_, b) in itertools.combinations(g.sort_values("campaign").iterrows(), 2):
            out.append((a.campaign, b.campaign, a.users, b.tpot / a.tpot, b.ttft / a.ttft, a.row, b.row))
    return pd.DataFrame(out, columns=["a", "b", "users", "tpot", "ttft", "row_a", "row_b"])


def summary(t: pd.DataFrame, min_shared: int) -> pd.DataFrame:
    """Per (a, b, users bin) of campaign pairs sharing at least ``min_shared`` configurations: how many,
    median TPOT and TTFT ratio."""
    if t.empty:
        return t
    t = t.assign(users_bin=by_users(t.users))
    n = t.groupby(["a", "b"]).tpot.transform("size")
    return (t[n >= min_shared].groupby(["a", "b", "users_bin"], observed=True)
            .agg(configs=("tpot", "size"), tpot_ratio=("tpot", "median"), ttft_ratio=("ttft", "median"))
            .reset_index())


def sd_check(t: pd.DataFrame, df: pd.DataFrame, workers) -> pd.DataFrame:
    """The MTP speedup each pair of an MTP campaign and another one measured (the other's TPOT over the
    MTP one's), against the simulator's (the MTP row simulated without its draft over with it); and
    MTP's effect on TTFT the same way (``ttft_measured``, ``ttft_simulated``: with MTP over without)."""
    mtp = {" ".join(c) for c in MTP_CAMPAIGNS}
    t = t[t.a.isin(mtp) ^ t.b.isin(mtp)].copy()
    t["mtp_row"] = np.where(t.b.isin(mtp), t.row_b, t.row_a)
    t["measured"] = np.where(t.b.isin(mtp), 1 / t.tpot, t.tpot)
    t["ttft_measured"] = np.where(t.b.isin(mtp), t.ttft, 1 / t.ttft)
    rows = df.set_index("id").loc[t.mtp_row.unique()].reset_index().to_dict("records")
    jobs = []
    for r in rows:
        sc = silicon.scenario(r)
        jobs.append({"id": f"{r['id']}@mtp", "scenario": sc})
        jobs.append({"id": f"{r['id']}@none", "scenario": {k: v for k, v in sc.items() if k != "speculative_config"}})
    res = run_many(silicon.simulate_row, jobs, workers, "local", None, None, "MTP rows with and without", True)
    tpot = {j["id"]: x.get("sim_tpot_ms") for j, x in zip(jobs, res)}
    ttft = {j["id"]: x.get("sim_ttft_ms") for j, x in zip(jobs, res)}
    t["simulated"] = [tpot[f"{i}@none"] / tpot[f"{i}@mtp"] for i in t.mtp_row]
    t["ttft_simulated"] = [ttft[f"{i}@mtp"] / ttft[f"{i}@none"] for i in t.mtp_row]
    t["isl"] = df.drop_duplicates("id").set_index("id").isl.loc[t.mtp_row].astype(int).to_numpy()
    t["error"] = t.simulated / t.measured - 1
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--silicon", default=str(silicon.training_file()))
    ap.add_argument("--backend", default="trtllm")
    ap.add_argument("--min-shared", type=int, default=3, help="configurations two campaigns must share")
    ap.add_argument("--simulate", action="store_true",
                    help="also simulate each MTP campaign's paired rows with and without the draft")
    ap.add_argument("--workers", type=int, default=None)
    a = ap.parse_args()
    df = silicon.load_rows(Path(a.silicon))
    df = df[df.backend == a.backend]
    per = paired(df)
    t = summary(per, a.min_shared)
    mtp = {" ".join(c) for c in MTP_CAMPAIGNS}
    print(f"{a.backend}: {len(df)} rows; campaign pairs sharing >= {a.min_shared} configurations "
          f"(ratios b / a, medians; * a campaign read as MTP runs)")
    for (ca, cb), g in t.groupby(["a", "b"], sort=True):
        print(f"\n  a: {ca}{' *' if ca in mtp else ''}\n  b: {cb}{' *' if cb in mtp else ''}")
        for r in g.itertuples():
            print(f"    users {r.users_bin:>6}  {r.configs:3d} configs  TPOT {r.tpot_ratio:5.2f}  TTFT {r.ttft_ratio:5.2f}")
    if t.empty:
        print("  none")
    else:
        print(f"\n  all pairs: TPOT ratio median {np.median(t.tpot_ratio):.2f}")
    if a.simulate and not per.empty:
        c = sd_check(per, df, a.workers)
        print(f"\nMTP speedup, measured (the paired campaign's TPOT over the MTP campaign's) against simulated "
              f"(the MTP row without its draft over with it), {len(c)} configurations:")
        for users, g in c.groupby(by_users(c.users), observed=True):
            print(f"  users {users:>6}  {len(g):3d}  measured {g.measured.median():.2f}x  simulated "
                  f"{g.simulated.median():.2f}x  |error| median {g.error.abs().median():.1%}")
        print(f"  all: |error| median {c.error.abs().median():.1%}, p90 {np.percentile(c.error.abs(), 90):.1%}; "
              f"speedup above 1 measured {int((c.measured > 1).sum())} of {len(c)}, simulated "
              f"{int((c.simulated > 1).sum())}")
        print("\nMTP's effect on TTFT (with MTP over without), measured against simulated, same configurations:")
        for users, g in c.groupby(by_users(c.users), observed=True):
            print(f"  users {users:>6}  {len(g):3d}  measured {g.ttft_measured.median():.2f}x  simulated "
                  f"{g.ttft_simulated.median():.2f}x")
        for isl, g in c.groupby("isl"):
            print(f"  prompts {isl:>6}  {len(g):3d}  measured {g.ttft_measured.median():.2f}x  simulated "
                  f"{g.ttft_simulated.median():.2f}x")
        print(f"  all: measured {c.ttft_measured.median():.2f}x (above 1 in {int((c.ttft_measured > 1).sum())} of "
              f"{len(c)}), simulated {c.ttft_simulated.median():.2f}x (above 1 in {int((c.ttft_simulated > 1).sum())})")


if __name__ == "__main__":
    main()
