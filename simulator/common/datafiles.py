"""Reading YAML: the bundled data files (GPU specs, model cards), parsed once per file version, and
user files (scenarios, plans, --set values) with limits, so a hostile file is a one-line error.

A plan builds hundreds of scenarios in one process; parsing the same GPU spec each time cost more
than simulating. The cache key includes the file's modification time and size, so a spec that
``moesd calibrate`` rewrites is read again. User files are read with the C loader where PyYAML has
it, at most ``MAX_FILE_BYTES``, and refused when aliases would expand them past ``MAX_NODES``
nodes (a "billion laughs" file) or they nest deeper than ``MAX_DEPTH``.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml

from .errors import ConfigError

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_FILE_BYTES = 1 << 20
MAX_NODES = 200_000
MAX_DEPTH = 64


def _check_nodes(node, source: str) -> None:
    """Expanded node count and depth of a composed document, each shared (aliased) node counted
    every time it is used, in time linear in the distinct nodes."""
    sizes: dict = {}
    depths: dict = {}
    stack = [(node, False)]
    while stack:
        n, done = stack.pop()
        if id(n) in sizes:
            continue
        kids = []
        if isinstance(n, yaml.SequenceNode):
            kids = n.value
        elif isinstance(n, yaml.MappingNode):
            kids = [x for kv in n.value for x in kv]
        if not done:
            stack.append((n, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
            continue
        sizes[id(n)] = 1 + sum(sizes.get(id(k), 1) for k in kids)
        depths[id(n)] = 1 + max((depths.get(id(k), 1) for k in kids), default=0)
        if sizes[id(n)] > MAX_NODES:
            raise ConfigError(f"YAML expands to more than {MAX_NODES:,} nodes (aliases?); refusing it", source=source)
        if depths[id(n)] > MAX_DEPTH:
            raise ConfigError(f"YAML nests deeper than {MAX_DEPTH} levels", source=source)


def load_text(text: str, source: str):
    """Parse one YAML document from a user (limits above); errors are one-line ConfigErrors."""
    try:
        depth = 0           # the event stream first: composing is recursive (the C one can crash)
        for ev in yaml.parse(text, Loader=Loader):
            if isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ConfigError(f"YAML nests deeper than {MAX_DEPTH} levels", source=source)
            elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
        node = yaml.compose(text, Loader=Loader)
        if node is None:
            return None
        _check_nodes(node, source)
        return yaml.load(text, Loader=Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"invalid YAML{where}", source=source) from None
    except RecursionError:
        raise ConfigError(f"YAML nests deeper than {MAX_DEPTH} levels", source=source) from None


def read_user_yaml(path: Path, what: str = "file"):
    """A user's YAML file: must be a readable regular file of at most MAX_FILE_BYTES, UTF-8."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise ConfigError(f"no such {what}", source=source)
    if not path.is_file():
        raise ConfigError(f"not a regular file (a folder or device?); give a {what}", source=source)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{size:,} bytes; a {what} may be at most {MAX_FILE_BYTES:,}", source=source)
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot be read ({exc.strerror})", source=source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", source=source) from None
    return load_text(text, source)


@functools.lru_cache(maxsize=256)
def _parsed(path: str, mtime_ns: int, size: int):
    return read_user_yaml(Path(path))


def read_yaml(path: Path):
    """A data file (GPU spec, model card), cached per version: a private copy (callers may change
    it); errors are one-line ConfigErrors naming the file."""
    try:
        st = Path(path).stat()
    except OSError as exc:
        raise ConfigError(f"cannot be read ({exc.strerror})", source=str(path)) from None
    return copy.deepcopy(_parsed(str(path), st.st_mtime_ns, st.st_size))


