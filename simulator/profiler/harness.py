"""Timing and provenance: CUDA events after warm-up on a GPU, the wall clock on CPU."""

from __future__ import annotations

import datetime as dt
import math
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median_ms: float
    std_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int          # samples taken (each the mean of `inner` back-to-back calls)
    inner: int


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _sample_ms(fn, dev: torch.device, inner: int) -> float:
    """Mean time of one call over `inner` back-to-back calls (amortises launch gaps, as a graph would)."""
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) * 1e3 / inner


def measure(fn, dev: torch.device | None = None, warmup: int = 3, repeats: int = 7,
            target_sample_ms: float = 2.0, max_inner: int = 50) -> Timing:
    """Median and spread of one call's latency, after `warmup` calls (buffers stay warm, like the
    AIConfigurator collectors, so the tables are comparable)."""
    dev = dev or device()
    for _ in range(warmup):
        fn()
    _sync(dev)
    first = _sample_ms(fn, dev, 1)
    inner = int(max(1, min(max_inner, math.ceil(target_sample_ms / max(first, 1e-3)))))
    xs = sorted(_sample_ms(fn, dev, inner) for _ in range(repeats))
    q = lambda p: xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]  # noqa: E731
    return Timing(statistics.median(xs), statistics.pstdev(xs), q(0.1), q(0.9), repeats, inner)


def environment(dev: torch.device | None = None) -> dict:
    """What the rows were measured on: device, driver, CUDA, torch, clocks, date."""
    dev = dev or device()
    env = {"torch": torch.__version__, "cuda": torch.version.cuda or "", "driver": "", "clocks": "",
           "date": dt.date.today().isoformat(), "host_cpu": platform.processor() or platform.machine()}
    if dev.type == "cuda":
        env["device"] = torch.cuda.get_device_name(dev)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,clocks.mem",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout
            drv, *clk = [x.strip() for x in out.splitlines()[0].split(",")]
            env["driver"], env["clocks"] = drv, f"sm {clk[0]} (max {clk[1]}), mem {clk[2]}"
        except Exception:  # nvidia-smi missing: provenance is best effort, timing is not affected
            pass
    else:
        env["device"] = f"cpu ({env['host_cpu']})"
    return env


def row(op: str, gpu: str, env: dict, kernel_source: str, dtype: str, timing: Timing, shape: dict,
        framework: str = "torch") -> dict:
    """One row of the trace schema (traces/README.md)."""
    return {"op": op, "gpu": gpu, "device": env["device"], "framework": framework,
            "framework_version": env["torch"], "kernel_source": kernel_source, "dtype": dtype,
            "latency_ms": timing.median_ms, "latency_std_ms": timing.std_ms, "latency_p10_ms": timing.p10_ms,
            "latency_p90_ms": timing.p90_ms, "repeats": timing.repeats, "inner": timing.inner,
            "driver": env["driver"], "cuda": env["cuda"], "torch": env["torch"], "clocks": env["clocks"],
            "date": env["date"], "source": f"moesd profile ({env['date']})", **shape}
