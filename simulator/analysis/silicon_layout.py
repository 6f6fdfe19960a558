"""How a silicon-sample row's layout and client concurrency are read: AIConfigurator's sizes
(``tp_size`` per attention-DP rank, ``moe_tp_size x moe_ep_size`` = tp x dp), and the sources that
record them squared."""

from __future__ import annotations

import re

import numpy as np


def cell_int(v, default=1) -> int:
    return default if v is None or (isinstance(v, float) and not np.isfinite(v)) else int(v)


def layout_size(v) -> int:
    """A layout size: 0 or missing means 1 (dense rows state no MoE sizes)."""
    return max(1, cell_int(v))


def concurrency(r: dict) -> int:
    """Client concurrency: the id's ``_c<N>_`` or the source's ``silicon_concurrency=N`` (the
    benchmark's own figure: ``batch_size`` of an attention-DP row is per rank), else ``batch_size``
    (agg) or decode batch x workers x DP ranks (disagg)."""
    for text, pat in ((r.get("id"), r"_c(\d+)_"), (r.get("silicon_data_source"), r"silicon_concurrency=(\d+)")):
        m = re.search(pat, str(text))
        if m:
            return int(m.group(1))
    if str(r["mode"]) == "agg" or r.get("decode_batch_size") is None:
        return cell_int(r.get("batch_size"), 0)
    return layout_size(r["decode_batch_size"]) * layout_size(r.get("decode_num_workers")) * layout_size(r.get("decode_attention_dp_size"))


# Sources that record a vLLM run on X GPUs with TP X and EP X as tp X x attention DP X, EP X*X. The
# same runs, with the same TTFT and TPOT to a few tenths of a percent, appear in the 2026-03-25 file
# as tp X, EP X (MiniMax-M2.5 FP8: B200 tp2_ep2 at 32 users 132.3 ms / 18.18 ms in all three; H100
# tp4_ep4 at 64 users 192.0 / 25.69 against 191.2 / 25.66); on X*X GPUs, with a quarter or a sixteenth
# of the weights per GPU, their TPOT could not match. The 2026-04-06 file names them tp<X>_ep<X>.
SQUARED_DP_SOURCES = ("source_file=2026-04-06.csv", "db-dump/")


def layout(r: dict, prefix: str = "", dense: bool = False, refused=None) -> tuple[dict, str]:
    """(scenario layout keys, assumption made) of the agg row or one disagg pool (``prefill_`` /
    ``decode_``); a ValueError names an inconsistent layout. AIConfigurator's sizes: ``tp_size`` per
    attention-DP rank, ``moe_tp_size x moe_ep_size`` = tp x dp. ``refused(moe_tp)``: why the row's
    framework will not split its experts that many ways ('' when it will)."""
    tp, dp = layout_size(r.get(f"{prefix}tp_size")), layout_size(r.get(f"{prefix}attention_dp_size"))
    mtp, mep = layout_size(r.get(f"{prefix}moe_tp_size")), layout_size(r.get(f"{prefix}moe_ep_size"))
    note, run = "", None
    stated = re.search(r"_tp(\d+)_", str(r.get("id")))
    if (not dense and mep > 1 and mtp in (1, mep) and tp * dp == mep * mep and (tp == 1 or dp == 1)
            and not (stated and int(stated.group(1)) == tp * dp)):
        # some sources record every size squared: tp_size (or attention_dp_size) X*X and moe_tp X for
        # a run on X GPUs with EP X (their ids say tp<X>_ep<X>)
        run = (mep, 1, 1, mep) if dp == 1 else (1, mep, 1, mep)
    elif (not dense and tp == dp > 1 and mtp == 1 and mep == tp * dp
          and any(s in str(r.get("silicon_data_source")) for s in SQUARED_DP_SOURCES)):
        run = (tp, 1, 1, tp)          # the same squaring with attention DP (see SQUARED_DP_SOURCES)
    elif not dense and mtp * mep != tp * dp:
        raise ValueError(f"MoE group moe_tp {mtp} x moe_ep {mep} differs from tp {tp} x attention_dp {dp}")
    why = "sizes recorded squared"
    if not run and not dense and mtp > 1 and mep == 1 and refused and (why := refused(mtp)):
        # a split the framework refuses to load cannot be what ran; expert parallel over the same GPUs
        # (what the same sources record for the other runs of that shape) can
        run = (tp, dp, 1, mtp)
    if run:
        was = f"tp {tp} x dp {dp}, moe_tp {mtp} x moe_ep {mep}"
        tp, dp, mtp, mep = run
        note = f"{was} read as tp {tp} x dp {dp}, EP {mep} ({why})"
    out = {"tensor_parallel_size": tp, "data_parallel_size": dp}
    if not dense and mep > 1:
        out["enable_expert_parallel"] = True
        if mtp > 1:
            out["moe_tensor_parallel_size"] = mtp
    return out, note
