"""GPU specs: datasheet figures and fitted calibration, loaded from ``gpu_specs/<name>.yaml``.

A GPU without its own calibration borrows the dimensionless efficiencies (and fixed overheads)
of the nearest calibrated GPU (``transfer_from``); its own bandwidth, compute and capacity still
set the roofline, and every prediction says it was transferred.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..common.datafiles import read_yaml
from ..common.errors import ConfigError, pydantic_error
from ..common.paths import GPU_SPECS_DIR, data_file
from ..common.versions import is_dated, release_distance, version_key


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: dict[str, dict]
    precisions: dict[str, dict[str, dict]] = Field(default_factory=dict, description=(
        "precision -> op -> parameters fitted on that precision's rows (gemm, moe); bf16 is ``params``"))
    precision_fit: dict[str, dict] = Field(default_factory=dict, description="in-sample fit of each precision's ops")
    frameworks: dict[str, dict] = Field(default_factory=dict, description=(
        "framework -> {version, precisions: precision -> op -> parameters} fitted on that framework's tables"))
    fit: dict[str, dict] = Field(default_factory=dict)
    traces: str = ""
    framework: str = ""
    date: str = ""
    residuals_file: Optional[str] = None
    kept: list[str] = Field(default_factory=list, description="ops without traces; parameters kept from before")


class Hardware(BaseModel):
    """Datasheet figures of one GPU. Rates are per second, sizes in bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    display_name: str
    vendor: str = "nvidia"
    architecture: str
    num_sms: int = Field(gt=0)
    bf16_flops_per_s: float = Field(gt=0)
    fp8_flops_per_s: Optional[float] = Field(default=None, gt=0, description="dense FP8 tensor-core peak (Hopper, Ada, Blackwell)")
    fp4_flops_per_s: Optional[float] = Field(default=None, gt=0, description="dense FP4 tensor-core peak (Blackwell)")
    hbm_bytes_per_s: float = Field(gt=0)
    memory_bytes: float = Field(gt=0)
    l2_bytes: float = Field(gt=0)
    link_bytes_per_s: float = Field(gt=0, description="GPU-to-GPU bandwidth per direction (NVLink or PCIe)")
    pcie_bytes_per_s: float = Field(gt=0)
    # multi-node structure: collectives and KV transfers that leave the NVLink domain pay the network
    gpus_per_node: int = Field(default=8, ge=1, le=1024)
    nvlink_domain_gpus: Optional[int] = Field(default=None, ge=1, le=1024, description=(
        "GPUs one NVLink fabric joins (72 on GB200/GB300 NVL72); default: one node"))
    inter_node_bytes_per_s: float = Field(default=50.0e9, gt=0, description=(
        "network bandwidth per GPU per direction between NVLink domains (400 Gb/s NIC per GPU: 50e9)"))
    inter_node_latency_s: float = Field(default=5.0e-6, ge=0, description="network latency per message")
    cost_per_gpu_hour_usd: float = Field(gt=0)
    sources: dict[str, str]
    transfer_from: Optional[str] = None
    calibration: Optional[Calibration] = None

    @property
    def domain_gpus(self) -> int:
        """GPUs reachable over NVLink from any one GPU."""
        return self.nvlink_domain_gpus or self.gpus_per_node

    def peak_flops_per_s(self, tensor_core: str = "bf16") -> float:
        """Dense tensor-core peak for ``bf16``, ``fp8`` or ``fp4`` math; a GPU without that unit is an
        error (precision.check_supported refuses such scenarios up front)."""
        peak = {"bf16": self.bf16_flops_per_s, "fp8": self.fp8_flops_per_s, "fp4": self.fp4_flops_per_s}[tensor_core]
        if peak is None:
            raise ConfigError(f"{self.name} has no {tensor_core} tensor cores", source=str(spec_path(self.name)))
        return peak


def spec_path(name: str) -> Path:
    return GPU_SPECS_DIR / f"{name}.yaml"


def load(name: str, source: str | None = None, field: str = "gpu", base_dir: Path | None = None) -> Hardware:
    """A GPU spec by catalog name (``gpu_specs/<name>.yaml``) or by path (see paths.data_file);
    unknown names list the allowed ones."""
    return load_file(spec_file(name, source, field, base_dir))


def load_file(path: Path) -> Hardware:
    try:
        return Hardware.model_validate(read_yaml(path))
    except ValidationError as exc:
        raise pydantic_error(exc, str(path)) from None


def spec_file(name: str, source: str | None = None, field: str = "gpu", base_dir: Path | None = None) -> Path:
    """The file ``load`` reads for this reference."""
    return data_file(name, GPU_SPECS_DIR, "gpu", source, field, base_dir)


def calibrated_source(hw: Hardware) -> Hardware:
    """The GPU whose fitted parameters ``hw`` uses: itself, or the one it transfers from."""
    if hw.calibration is not None:
        return hw
    if not hw.transfer_from:
        raise ConfigError("no calibration and no transfer_from", source=str(spec_path(hw.name)))
    src = load(hw.transfer_from)
    if src.calibration is None:
        raise ConfigError(f"transfer_from {hw.transfer_from!r} is not calibrated; run moesd calibrate",
                          source=str(spec_path(hw.name)), field="transfer_from")
    return src


def base_framework(cal) -> tuple[str, str]:
    """(framework, version) of the tables a GPU's own (bf16) calibration was fitted on."""
    parts = cal.framework.split()
    return (parts[0] if parts else "vllm"), (parts[1] if len(parts) > 1 else "")


def versioned_key(cal, framework: str, version: str | None, before_all: str = "newest") -> str | None:
    """The ``<framework>@<version>`` calibration that prices ``version``: the nearest collected version,
    either side (ties to the older), where that is an older one fitted on its own tables; None (the
    framework's own, newest fits) for the newest and for an unset or nightly version. Nearest, not
    the newest at or below: a release shares its kernels and its collector with the next one more
    often than with one several releases back (AIConfigurator's vLLM MoE collector changed at 0.17,
    ``collector/vllm/collect_moe.py``: ``__compat__ = "vllm>=0.17.0"``; its 0.14 tables came from
    the older one; the README states the measured runs this changes). A version older than every
    collection (no table times its kernels) takes ``before_all``: the newest fits (what the step
    model of such releases was fitted with) or the oldest collection (the nearest in time)."""
    older = {k.split("@", 1)[1]: k for k in cal.frameworks if k.startswith(f"{framework}@")}
    if not older or version is None or not str(version)[:1].isdigit() or is_dated(version):
        return None             # unset, a nightly, or a build known by its date
    base, base_version = base_framework(cal)
    newest = base_version if framework == base else str(cal.frameworks.get(framework, {}).get("version", ""))
    cands = {**older, **({newest: None} if newest else {})}
    below = [v for v in cands if version_key(v) <= version_key(str(version))]
    above = [v for v in cands if version_key(v) > version_key(str(version))]
    if not below:
        return cands[min(cands, key=version_key)] if before_all == "oldest" else None
    lo, hi = max(below, key=version_key), min(above, key=version_key, default=None)
    nearer_above = hi is not None and release_distance(hi, str(version)) < release_distance(lo, str(version))
    return cands[hi if nearer_above else lo]


def kernel_params(cal, framework: str, version: str | None = None, before_all: str = "newest") -> tuple[dict, str | None]:
    """({precision: {op: parameters}} of ``framework``'s GEMM/MoE (and MLA decode) fits, the
    ``<framework>@<version>`` key whose fits override them): the base framework's bf16 fit comes
    with the GPU's own parameters; an older version's own fits, where there are some, win."""
    if framework == base_framework(cal)[0]:
        by_prec = {**cal.precisions, "bf16": {**cal.params, **cal.precisions.get("bf16", {})}}
    else:
        by_prec = dict(cal.frameworks[framework].get("precisions", {}))
    key = versioned_key(cal, framework, version, before_all)
    older = cal.frameworks[key]["precisions"] if key else {}
    return {name: {**by_prec.get(name, {}), **older.get(name, {})} for name in dict.fromkeys([*by_prec, *older])}, key


def _fit_record(cal, framework: str, version_key: str | None, prec: str, op: str) -> dict:
    """The in-sample fit record (rows, errors, table version) of one (precision, op) as a run uses it."""
    own = cal.precision_fit if framework == base_framework(cal)[0] else cal.frameworks[framework].get("fit", {})
    for fit in (cal.frameworks[version_key].get("fit", {}) if version_key else {}, own):
        if fit.get(prec, {}).get(op):
            return fit[prec][op]
    return {}


def mla_tables_label(cal, framework: str, version_key: str | None = None) -> str | None:
    """Whose table priced ``framework``'s MLA decode, e.g. ``vllm 0.14.0``, or ``sglang 0.5.14`` where
    every one of the framework's own is host-bound (``cost.tablerows.MLA_STANDINS``); None without a fit."""
    rec = _fit_record(cal, framework, version_key, "bf16", "mla_generation")
    return f"{rec.get('framework', framework)} {rec.get('version', '')}".strip() if rec else None


def older_tables(cal, framework: str, version_key: str | None, quant: dict, label: str) -> str:
    """The run's GEMM/MoE precisions fitted on another collection than ``label``'s (a host-bound
    table passed over, or layouts on another framework's rows), in words: ``fp8_block GEMM: 0.19.0``,
    ``mxfp4 MOE without expert parallel: vllm 0.24.0``; empty when none."""
    out = []
    for op, prec in quant.items():
        rec = _fit_record(cal, framework, version_key, prec, op)
        v = str(rec.get("version", ""))
        if v and not label.endswith(f" {v}"):
            out.append(f"{prec} {op.upper()}: {v}")
        if rec.get("borrowed"):     # layouts whose kernel another collector timed (cost.tablerows.BORROWED_ROWS)
            out.append(f"{prec} {op.upper()} without expert parallel: {rec['borrowed']}")
    return "; ".join(dict.fromkeys(out))
