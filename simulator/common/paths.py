"""Where the project's data lives: bundled (inside the repo) and shared (beside it, optional)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
GPU_SPECS_DIR = REPO_ROOT / "gpu_specs"
MODELS_DIR = REPO_ROOT / "workloads" / "models"
SCENARIOS_DIR = REPO_ROOT / "workloads" / "scenarios"
REPORTS_DIR = REPO_ROOT / "reports"
TRACES_DIR = REPO_ROOT / "traces"


def shared_traces_dir() -> Path:
    """The shared trace folder: $MOESD_TRACES, else ../shared/traces beside the repo."""
    env = os.environ.get("MOESD_TRACES")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "traces"


def aiconfigurator_dir(gpu: str) -> Path:
    return shared_traces_dir() / "kernels" / "aiconfigurator" / gpu


# A catalog name: letters, digits, '.', '_' and '-', not starting with a dot; a file name and a
# folder name everywhere (no separators, no '..'), so it never reaches outside its folder.
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def is_safe_name(name: str) -> bool:
    return isinstance(name, str) and bool(_SAFE.match(name)) and ".." not in name


SAFE_NAME_RULE = "use 1-128 letters, digits, '.', '_' or '-', not starting with '.' and without '..'"


def check_safe_name(name, field: str, source: str | None = None) -> str:
    if not is_safe_name(name):
        raise ConfigError(f"{name!r} is not a safe name: {SAFE_NAME_RULE}", source=source, field=field)
    return name


def is_path_ref(ref: str) -> bool:
    """A data-file reference given as a path (has a folder separator or a YAML suffix), not a name."""
    return "/" in ref or "\\" in ref or ref.endswith((".yaml", ".yml"))


def data_file(ref: str, catalog: Path, kind: str, source: str | None, field: str, base_dir: Path | None = None) -> Path:
    """The file a model/GPU reference means: by name only inside the catalog folder, by path only
    when given as a path (relative paths from ``base_dir``, the referring file's folder)."""
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"expected a {kind} name or a path to a {kind} YAML file", source=source, field=field)
    if is_path_ref(ref):
        p = Path(ref).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if not p.is_file():
            raise ConfigError(f"{kind} file {str(p)!r} does not exist or is not a file", source=source, field=field)
        return p
    path = catalog / f"{ref}.yaml"
    if not is_safe_name(ref) or not path.is_file():
        allowed = sorted(q.stem for q in catalog.glob("*.yaml"))
        raise ConfigError(f"unknown {kind} {ref!r}; allowed: {allowed} (or a path to a .yaml file)",
                          source=source, field=field)
    return path


def display_path(p: Path) -> str:
    """A path as results show it: relative to the repository when inside it."""
    p = Path(p).absolute()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)
