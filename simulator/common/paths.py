"""Where the project's data lives: bundled (inside the repo) and shared (beside it, optional)."""

from __future__ import annotations

import os
from pathlib import Path

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
