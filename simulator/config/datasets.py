"""Benchmark datasets' prompt/answer lengths (``workloads/datasets.yaml``): a workload with
``dataset_name: sharegpt`` draws its lengths from the entry, and an SD table row that names a dataset
but no lengths takes them from it."""

from __future__ import annotations

from ..common.datafiles import read_yaml
from ..common.errors import ConfigError
from ..common.paths import REPO_ROOT

DATASETS_FILE = REPO_ROOT / "workloads" / "datasets.yaml"
FIELDS = ("match", "input_len", "output_len", "spread", "source")


def all_datasets() -> dict[str, dict]:
    data = read_yaml(DATASETS_FILE) if DATASETS_FILE.is_file() else {}
    for name, e in data.items():
        missing = [f for f in FIELDS if f not in (e or {})]
        if missing:
            raise ConfigError(f"dataset {name}: missing {missing}", source=str(DATASETS_FILE))
    return data


def matching(text: str) -> dict | None:
    """The entry whose ``match`` text a free-form dataset description contains."""
    return next((e for e in all_datasets().values() if text and e["match"].lower() in text.lower()), None)
