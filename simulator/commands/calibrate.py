"""``moesd calibrate``: fit one GPU from kernel traces, write its spec and an HTML report."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..common.atomic import write_text
from ..common.errors import ConfigError
from ..common.paths import GPU_SPECS_DIR, REPO_ROOT, REPORTS_DIR, check_safe_name, shared_traces_dir
from ..config import gpu as gpu_mod
from ..config import precision
from ..cost import calibration
from ..cost.residuals import precision_residuals_name
from ..reports import page
from ..reports.calibration import write_report


# What `moesd calibrate --framework` adds to a spec's calibration: a base refit keeps it.
_OTHER_FITS = ("precisions", "precision_fit", "frameworks")


def run(traces_dir, gpu_name: str, report_path=None, log=print, write: bool = True, ops=None) -> dict:
    """Fit ``gpu_name`` from ``traces_dir``; with ``write`` replace its spec's calibration. With ``ops``
    only those base ops are refitted (their parameters, fit summary and residual rows); the rest of
    the calibration stays as it was. The per-precision fits (``--framework``) are kept either way."""
    hw = gpu_mod.load(gpu_name)
    if ops and hw.calibration is None:
        raise ConfigError(f"{gpu_name} has no calibration to refit ops of; run moesd calibrate --gpu {gpu_name} first",
                          field="--ops")
    calib, residuals, rows = calibration.calibrate_gpu(traces_dir, hw, tuple(ops or calibration.BASE_OPS),
                                                       progress=lambda op: log(f"  fitted {op}"))
    if not write:
        if report_path:
            write_report(report_path, gpu_name, rows)
        return calib
    res_path = GPU_SPECS_DIR / "calibration" / f"{gpu_name}_residuals.parquet"
    spec_file = gpu_mod.spec_path(gpu_name)
    data = yaml.safe_load(spec_file.read_text())
    old = data.get("calibration") or {}
    if ops:
        merged = dict(old)
        for part in ("params", "fit"):
            merged[part] = {**old.get(part, {}), **calib[part]}
        merged["kept"] = [op for op in old.get("kept", []) if op not in calib["fit"]] + calib.get("kept", [])
        if not merged["kept"]:
            merged.pop("kept")
        merged["date"] = calib["date"]
        calib = merged
        prev = pd.read_parquet(res_path) if res_path.is_file() else pd.DataFrame({"op": []})
        residuals = pd.concat([prev[~prev["op"].isin(ops)], residuals], ignore_index=True)
    else:
        calib.update({k: old[k] for k in _OTHER_FITS if k in old})
    calib["residuals_file"] = f"calibration/{res_path.name}"
    # where the traces were, as the repository sees it (no machine-specific absolute path in a committed spec)
    calib["traces"] = os.path.relpath(Path(traces_dir).absolute(), REPO_ROOT)
    data["calibration"] = _plain(calib)
    gpu_mod.Hardware.model_validate(data)  # validate before anything is replaced
    _write_parquet(res_path, residuals)
    write_text(spec_file, yaml.safe_dump(data, sort_keys=False, width=120))
    if report_path:
        write_report(report_path, gpu_name, rows)
    return calib


def run_precisions(traces_dir, gpu_name: str, framework: str, log=print, write: bool = True,
                   version: str | None = None) -> dict:
    """Fit GEMM and MoE per weight precision on ``framework``'s tables and store them in the spec:
    the base framework's (the one the bf16 calibration came from) under ``precisions``, another's
    (all precisions, bf16 included) under ``frameworks.<name>``, one collected ``version``'s alone
    (all precisions) under ``frameworks.<name>@<version>``. Returns {precision: {op: fit}}."""
    hw = gpu_mod.load(gpu_name)
    if hw.calibration is None:
        raise ConfigError(f"{gpu_name} has no bf16 calibration yet; run moesd calibrate --gpu {gpu_name} first",
                          field="--framework")
    base = gpu_mod.base_framework(hw.calibration)[0]
    precs = [p for p in precision.PRECISIONS.values() if framework != base or p.name != "bf16" or version]
    precs += precision.moe_kernel_variants(framework)
    params, fits, residuals = calibration.calibrate_precisions(traces_dir, hw, precs, framework,
                                                               lambda w: log(f"  fitted {w}"), version)
    if not params:
        raise ConfigError(f"no {framework}{' ' + version if version else ''} GEMM or MoE tables for {gpu_name}",
                          source=str(traces_dir), field="--version" if version else "--framework")
    key = f"{framework}@{version}" if version else framework
    if write:
        spec_file = gpu_mod.spec_path(gpu_name)
        data = yaml.safe_load(spec_file.read_text())
        cal = data["calibration"]
        if framework == base and not version:
            cal["precisions"] = _plain(params)
            cal["precision_fit"] = _plain(fits)
        else:
            cal.setdefault("frameworks", {})[key] = _plain({"version": version or calibration.fitted_version(fits),
                                                            "precisions": params, "fit": fits})
        gpu_mod.Hardware.model_validate(data)
        _write_parquet(GPU_SPECS_DIR / "calibration" / precision_residuals_name(gpu_name, key), residuals)
        write_text(spec_file, yaml.safe_dump(data, sort_keys=False, width=120))
    return fits


def _write_parquet(path: Path, frame) -> None:
    """A residual table, replaced in one rename (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    return obj


def run_alltoall(traces_dir: Path, write: bool = True, log=print) -> dict:
    """Fit dispatch + combine on every catalog GPU with DeepEP tables; the network efficiency on the
    multi-node rows (one value: the NIC sets it). Writes gpu_specs/calibration/alltoall.yaml."""
    from ..cost import alltoall_fit, network
    gpus, inter = {}, None
    for spec in sorted(GPU_SPECS_DIR.glob("*.yaml")):
        hw = gpu_mod.load_file(spec)
        fit = alltoall_fit.fit_gpu(traces_dir, hw)
        if fit is None:
            continue
        gpus[hw.name] = fit
        for mode in ("ll", "normal"):
            f = fit[mode]
            log(f"  {hw.name:<10} {mode:<6} rows={f['rows']:>4}  latency {f['latency_s'] * 1e6:6.1f} us  "
                f"NVLink efficiency {f['eff_link']:.3f}  leave-one-hidden-size-out median {f['loso_median_abs_err'] * 100:5.1f}%")
        got = alltoall_fit.fit_inter(traces_dir, hw, fit)
        if got is not None and (inter is None or got[1] > inter[2]):
            inter = (got[0], hw.name, got[1], got[2])
    if not gpus:
        raise ConfigError("no DeepEP tables (comm/sglang/<version>/wideep_deepep_*_perf.parquet)",
                          source=str(traces_dir), field="--traces")
    if inter is None:
        raise ConfigError("no multi-node DeepEP rows to fit the network efficiency on", source=str(traces_dir),
                          field="--traces")
    log(f"  network efficiency {inter[0]:.3f} on {inter[2]} multi-node rows of {inter[1]} "
        f"(median abs error {inter[3] * 100:.1f}%)")
    for fit in gpus.values():
        fit["eff_inter"] = float(f"{inter[0]:.4g}")
    data = {"source": "AIConfigurator DeepEP tables, comm/sglang/<version>/wideep_deepep_{ll,normal}_perf.parquet; "
                      "written by moesd calibrate --alltoall",
            "eff_inter_fitted_on": f"{inter[1]} multi-node low-latency rows ({inter[2]})", "gpus": gpus}
    if write:
        write_text(network.FIT_FILE, yaml.safe_dump(data, sort_keys=False, width=120))
        network._fits.cache_clear()
    return data


def main(args) -> int:
    """``moesd calibrate --gpu G``: fit, write the spec and the report, print the fit per op."""
    if args.alltoall:
        traces_dir = Path(args.traces) if args.traces else shared_traces_dir()
        if not traces_dir.is_dir():
            raise ConfigError("no such trace folder", source=str(traces_dir), field="--traces")
        print(f"fitting expert-parallel dispatch/combine from {traces_dir}")
        run_alltoall(traces_dir, write=not args.dry_run)
        print("dry run: nothing written" if args.dry_run else "wrote gpu_specs/calibration/alltoall.yaml")
        return 0
    if not args.gpu:
        raise ConfigError("give the GPU to fit (a gpu_specs/ name), or --alltoall", field="--gpu")
    if args.version and not args.framework:
        raise ConfigError("--version picks one collected version of a framework's tables: give --framework too",
                          field="--version")
    if args.version:
        check_safe_name(args.version, "--version")
    ops = [o for o in (args.ops or "").split(",") if o]
    bad = [o for o in ops if o not in calibration.BASE_OPS]
    if bad:
        raise ConfigError(f"unknown op {bad[0]!r} (allowed: {', '.join(calibration.BASE_OPS)})", field="--ops")
    if ops and args.framework:
        raise ConfigError("--ops refits base ops; --framework refits GEMM and MoE per precision: give one",
                          field="--ops")
    check_safe_name(args.gpu, "--gpu")
    gpu_mod.load(args.gpu, field="--gpu")                  # a catalog GPU: its spec file is rewritten
    traces_dir = Path(args.traces) if args.traces else shared_traces_dir()
    if not traces_dir.is_dir():
        raise ConfigError("no such trace folder", source=str(traces_dir), field="--traces")
    report = Path(args.report) if args.report else REPORTS_DIR / f"calibration_{args.gpu}.html"
    check_report_path(report)
    if args.framework:
        what = f"{args.framework} {args.version}" if args.version else args.framework
        print(f"calibrating {args.gpu} {what} GEMM/MoE per precision from {traces_dir}")
        fits = run_precisions(traces_dir, args.gpu, args.framework, write=not args.dry_run, version=args.version)
        for prec, ops in fits.items():
            for op, r in ops.items():
                print(f"  {prec:<10} {op:<6} rows={r['rows']:>6}  roofline median {r['median_abs_err']*100:5.1f}%  "
                      f"p90 {r['p90_abs_err']*100:5.1f}%"
                      + (f"  (without expert parallel on {r['borrowed']}'s rows)" if r.get("borrowed") else "")
                      + left_out(r))
        print("dry run: nothing written" if args.dry_run else f"wrote gpu_specs/{args.gpu}.yaml")
        return 0
    print(f"calibrating {args.gpu} from {traces_dir}")
    calib = run(traces_dir, args.gpu, report, write=not args.dry_run, ops=ops)
    for op, f in calib["fit"].items():
        if ops and op not in ops:
            continue
        r = f["roofline"]
        print(f"  {op:<22} rows={r['rows']:>6}  roofline median {r['median_abs_err']*100:5.1f}%  "
              f"p90 {r['p90_abs_err']*100:5.1f}%"
              + left_out(f))
    for op in calib.get("kept", []):
        print(f"  {op:<22} no traces: parameters kept from the earlier calibration")
    print(f"wrote {report}" if args.dry_run else f"wrote gpu_specs/{args.gpu}.yaml and {report}")
    return 0


def left_out(fit: dict) -> str:
    """What a fit summary says it left out (``tablerows.split_inversions``), in words; empty when nothing."""
    n = fit.get("split_inversions")
    return f"  ({n} rows timed over 2x their half-split layout left out)" if n else ""


def check_report_path(path: Path) -> None:
    """A report may replace only a report this tool wrote (never a user's file)."""
    if path.exists():
        if not path.is_file():
            raise ConfigError("exists and is not a file", source=str(path), field="--report")
        with open(path, "rb") as f:
            head = f.read(512)
        if page.GENERATOR.encode() not in head:
            raise ConfigError("exists and was not written by moesd; give another --report path", source=str(path),
                              field="--report")
