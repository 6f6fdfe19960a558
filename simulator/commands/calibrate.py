"""``moesd calibrate``: fit one GPU from kernel traces, write its spec and an HTML report."""

from __future__ import annotations

import io

import numpy as np
import yaml

from ..common.atomic import write_text
from ..common.paths import GPU_SPECS_DIR
from ..config import gpu as gpu_mod
from ..cost import calibration
from ..reports.calibration import write_report


def run(traces_dir, gpu_name: str, report_path=None, log=print, write: bool = True) -> dict:
    """Fit ``gpu_name`` from ``traces_dir``; with ``write`` replace its spec's calibration."""
    hw = gpu_mod.load(gpu_name)
    calib, residuals, rows = calibration.calibrate_gpu(traces_dir, hw, progress=lambda op: log(f"  fitted {op}"))
    if not write:
        if report_path:
            write_report(report_path, gpu_name, rows)
        return calib
    res_path = GPU_SPECS_DIR / "calibration" / f"{gpu_name}_residuals.parquet"
    calib["residuals_file"] = f"calibration/{res_path.name}"
    spec_file = gpu_mod.spec_path(gpu_name)
    data = yaml.safe_load(spec_file.read_text())
    data["calibration"] = _plain(calib)
    gpu_mod.Hardware.model_validate(data)  # validate before anything is replaced
    res_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    residuals.to_parquet(buf, index=False)
    tmp = res_path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(res_path)
    write_text(spec_file, yaml.safe_dump(data, sort_keys=False, width=120))
    if report_path:
        write_report(report_path, gpu_name, rows)
    return calib


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    return obj
