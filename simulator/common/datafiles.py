"""Reading the bundled YAML data files (GPU specs, model cards), parsed once per file version.

A plan builds hundreds of scenarios in one process; parsing the same GPU spec each time cost more
than simulating. The cache key includes the file's modification time and size, so a spec that
``moesd calibrate`` rewrites is read again.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml


@functools.lru_cache(maxsize=256)
def _parsed(path: str, mtime_ns: int, size: int):
    return yaml.safe_load(Path(path).read_text())


def read_yaml(path: Path):
    """``yaml.safe_load`` of the file (a private copy: callers may change it); raises yaml.YAMLError."""
    st = Path(path).stat()
    return copy.deepcopy(_parsed(str(path), st.st_mtime_ns, st.st_size))
