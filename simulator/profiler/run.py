"""Run a plan on the local device and write trace files: ``<out>/<op>.csv`` in the trace schema
(what ``moesd calibrate --traces`` reads), ``<out>/e2e_forward.csv`` and ``<out>/environment.json``."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pandas as pd
import torch

from ..common.atomic import write_text
from . import e2e, ops, plan as plan_mod
from .harness import device, environment, measure, row

GPU_NAMES = {"H100": "h100_sxm", "H200": "h200_sxm", "H800": "h800_sxm", "H20": "h20", "B200": "b200_sxm",
             "A100": "a100_sxm", "A800": "a800_80gb", "L40S": "l40s", "L40": "l40"}


def gpu_name(env: dict) -> str:
    for key, name in GPU_NAMES.items():   # dict order: longer names that contain shorter ones first
        if key in env["device"]:
            return name
    return "cpu"


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    pd.DataFrame(rows).to_csv(buf, index=False, float_format="%.6g")
    write_text(path, buf.getvalue())


def run(p: plan_mod.Plan, out: Path, gpu: str | None = None, budget_s: float = float("inf"), log=print) -> dict:
    dev = device()
    env = environment(dev)
    gpu = gpu or gpu_name(env)
    out = Path(out)
    t0 = time.time()
    counts, skipped = {}, []

    def over_budget(label) -> bool:
        if time.time() - t0 > budget_s:
            skipped.append((label, "time budget spent"))
            return True
        return False

    def attempt(label, work):
        """work(), or None with the reason recorded: one shape failing must not lose the rest."""
        if over_budget(label):
            return None
        try:
            return work()
        except torch.OutOfMemoryError:
            skipped.append((label, "out of device memory"))
            torch.cuda.empty_cache()
            return None
        except Exception as exc:   # unsupported kernel config, graph capture of an eager fallback...
            skipped.append((label, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"))
            return None

    def timed(label, build):
        def work():
            fn, src = build()
            return measure(fn, dev), src
        return attempt(label, work)

    def e2e_timing(label, arch, tp, b, q, ctx, layers):
        """(timing, CUDA graph used): a graph capture that fails is retried eagerly, and said."""
        graphs = dev.type == "cuda"
        try:
            return e2e.time_forward(arch, dev, b, q, ctx, layers, tp, graphs=graphs), graphs
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            if not graphs:
                raise
            skipped.append((f"{label} graph capture", f"{type(exc).__name__}: {exc}"[:200]))
            return e2e.time_forward(arch, dev, b, q, ctx, layers, tp, graphs=False), False

    jobs = {
        "gemm": lambda j: (ops.gemm(*j, dev), dict(m=j[0], n=j[1], k=j[2])),
        "moe": lambda j: (ops.moe(*j[:8], dev, gated=j[8]),
                          dict(num_tokens=j[0], hidden_size=j[1], inter_size=j[2], num_experts=j[3], topk=j[4],
                               moe_tp_size=j[5], moe_ep_size=j[6], distribution=j[7])),
        "attention_generation": lambda j: (ops.attention_decode(*j, dev),
                                           dict(batch_size=j[0], isl=1, step=j[1], num_heads=j[2],
                                                num_key_value_heads=j[3], head_dim=j[4])),
        "attention_context": lambda j: (ops.attention_prefill(*j, dev),
                                        dict(batch_size=j[0], isl=j[1], step=0, num_heads=j[2],
                                             num_key_value_heads=j[3], head_dim=j[4])),
    }
    rows = []
    for name, arch, tp, b, q, ctx, layers in p.e2e:
        label = f"e2e {name} B={b} q={q}"
        res = attempt(label, lambda: e2e_timing(label, arch, tp, b, q, ctx, layers))
        if res is None:
            continue
        t, graphs = res
        rows.append({"model": name, "tp": tp, "batch_size": b, "q_len": q, "context_len": ctx, "layers": layers,
                     "latency_ms": t.median_ms, "latency_per_layer_ms": t.median_ms / layers,
                     "latency_std_ms": t.std_ms, "repeats": t.repeats, "cuda_graph": graphs, "gpu": gpu,
                     "device": env["device"], "torch": env["torch"], "cuda": env["cuda"], "driver": env["driver"],
                     "date": env["date"]})
    if rows:
        _write_csv(out / "e2e_forward.csv", rows)
        counts["e2e_forward"] = len(rows)
        log(f"  e2e_forward: {len(rows)} rows ({time.time() - t0:.0f} s)")
    for op, job in jobs.items():
        rows = []
        for j in getattr(p, op):
            shape = {}

            def build(j=j):
                (fn, src), sh = job(j)
                shape.update(sh)
                return fn, src
            res = timed(f"{op} {j}", build)
            if res is None:
                continue
            t, src = res
            if op.startswith("attention"):
                shape.update(kv_cache_dtype="bfloat16", window_size=0)
            rows.append(row(op, gpu, env, src, "bfloat16", t, shape))
        if rows:
            _write_csv(out / f"{op}.csv", rows)
            counts[op] = len(rows)
            log(f"  {op}: {len(rows)} rows ({time.time() - t0:.0f} s)")
    if torch.cuda.device_count() < 2:
        skipped.append(("allreduce", f"{torch.cuda.device_count()} GPU(s) visible; all-reduce needs 2 or more"))
    meta = {**env, "gpu": gpu, "rows": counts, "seconds": round(time.time() - t0, 1),
            "skipped": [f"{a}: {b}" for a, b in skipped]}
    write_text(out / "environment.json", json.dumps(meta, indent=1) + "\n")
    return meta


def _ints(text: str) -> tuple:
    return tuple(int(x) for x in text.split(",") if x)


def main(args) -> int:
    if args.preset == "tiny":
        p = plan_mod.tiny()
    else:
        p = plan_mod.for_models([m for m in args.models.split(",") if m],
                                tps=_ints(args.tp),
                                batches=_ints(args.batch_sizes), e2e_models=[m for m in args.e2e_models.split(",") if m],
                                e2e_layers=args.e2e_layers, e2e_q_lens=_ints(args.e2e_q_lens), e2e_tps=_ints(args.e2e_tp))
    print(f"profiling {p.size()} shapes on {device()} (torch {torch.__version__}, grouped expert GEMM: "
          f"{ops._grouped_ok(device())})", flush=True)
    meta = run(p, Path(args.out), args.gpu, args.budget_s, log=lambda s: print(s, flush=True))
    print(f"wrote {meta['rows']} to {args.out} in {meta['seconds']} s; skipped {len(meta['skipped'])}")
    for s in meta["skipped"][:30]:
        print(f"  skipped {s}")
    return 0


