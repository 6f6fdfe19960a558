"""Atomic, non-destructive writes: readers never see a half-written result, and nothing the tool did
not write is ever deleted or replaced.

A results folder carries a manifest (``.moesd-output.json``: the command and the files it wrote).
An existing folder may be replaced only when it is such a result and holds nothing else; any other
non-empty folder, or a file, at the output path is a one-line error. Temporary folders carry the
writing process's id, so the next run removes those left by a killed one. Modes follow the umask.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError

MANIFEST = ".moesd-output.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chmod(path: Path, mode: int) -> None:
    os.chmod(path, mode & ~_umask())


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        _chmod(Path(tmp), 0o666)          # mkstemp makes 0600; a plain file follows the umask
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _manifest(path: Path) -> dict | None:
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "moesd" and isinstance(data.get("files"), list) else None


def check_output_dir(path: Path, field: str = "--out") -> Path:
    """Refuse an output path that would lose a user's files; return it absolute. Called before the
    work starts, so a bad path fails at once."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError("exists and is not a folder; give a new or empty folder", source=str(path), field=field)
    cwd = Path.cwd().resolve()
    if path.resolve() == cwd or path.resolve() in cwd.parents:
        raise ConfigError("is the current folder or holds it; give a new folder", source=str(path), field=field)
    if path.is_dir():
        try:
            names = {p.name for p in path.iterdir()}
        except OSError as exc:
            raise ConfigError(f"cannot be read ({exc.strerror})", source=str(path), field=field) from None
        if names:
            man = _manifest(path)
            others = sorted(names - set(man["files"]) - {MANIFEST}) if man else sorted(names)
            if others:
                raise ConfigError(f"holds files moesd did not write ({', '.join(others[:3])}"
                                  f"{', ...' if len(others) > 3 else ''}); give a new or empty folder",
                                  source=str(path), field=field)
    anc = path.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"{anc} is a file, not a folder", source=str(path), field=field)
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write in {anc} (permission denied)", source=str(path), field=field)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(parent: Path, name: str) -> None:
    """Remove the temporary folders of earlier runs on ``parent/name`` whose process is gone."""
    for p in parent.glob(f".{name}.*"):
        rest = p.name[len(name) + 2:]
        pid = rest.split(".")[1] if rest.startswith("old.") else rest.split(".")[0]
        if p.is_dir() and not p.is_symlink() and pid.isdigit() and (rest.endswith(".tmp") or rest.startswith("old.")) \
                and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def output_dir(path: Path, command: str = "moesd"):
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename, with a
    manifest of what was written. ``path`` is checked first (:func:`check_output_dir`)."""
    path = check_output_dir(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"))
    _chmod(tmp, 0o777)                    # mkdtemp makes 0700; a plain folder follows the umask
    try:
        yield tmp
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / MANIFEST).write_text(json.dumps({"tool": "moesd", "command": command, "files": files}, indent=1) + "\n")
        check_output_dir(path)            # still nothing of the user's there
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old.{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
