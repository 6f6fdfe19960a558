"""Run many independent simulations: inline, on a local process pool, or on a Ray cluster, with an
on-disk cache keyed by the job and the code version (an interrupted sweep or plan resumes).

A job is a JSON-able dict; ``fn(job) -> dict`` must be a module-level function (picklable) whose
result depends only on the job, so every executor gives the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import lru_cache
from pathlib import Path

from ..common.atomic import write_text
from ..common.errors import ConfigError
from ..common.paths import REPO_ROOT

EXECUTORS = ("local", "ray")


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of everything a result depends on: the package, GPU specs and model catalog."""
    h = hashlib.sha256()
    for folder, pattern in (("simulator", "*.py"), ("gpu_specs", "*.yaml"), ("gpu_specs", "*.parquet"),
                            ("workloads", "*.yaml")):
        for p in sorted((REPO_ROOT / folder).rglob(pattern)):
            h.update(str(p.relative_to(REPO_ROOT)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def job_key(fn, job: dict) -> str:
    blob = json.dumps({"fn": f"{fn.__module__}.{fn.__qualname__}", "job": job, "code": code_version()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _digest(result) -> str:
    return hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()


def _entry(key: str, result) -> str:
    """A cache entry: the result with its key, the code version and a checksum, so a damaged or
    hand-edited entry is recognised (and recomputed) rather than trusted."""
    return json.dumps({"key": key, "code": code_version(), "sha256": _digest(result), "result": result},
                      sort_keys=True)


def _read_entry(path: Path, key: str):
    """The cached result at ``path``, or None (missing; or invalid: warned about by name)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        ok = (isinstance(data, dict) and data.get("key") == key and data.get("code") == code_version()
              and "result" in data and data.get("sha256") == _digest(data["result"]))
    except (OSError, ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        print(f"moesd: warning: {path}: damaged or edited cache entry, computing it again", file=sys.stderr)
        return None
    return data["result"]


def _die_with_parent() -> None:
    """Pool worker start-up: end this worker when the parent process dies (even by kill -9)."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass                                  # not Linux: the pool's own shutdown still applies


def run_many(fn, jobs: list[dict], workers: int | None = None, executor: str = "local", address: str | None = None,
             cache_dir: Path | None = None, desc: str = "runs", progress: bool = True) -> list[dict]:
    """Results of ``fn`` over ``jobs``, in order. Cached results are reused, new ones stored."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; allowed: {list(EXECUTORS)}", field="--executor")
    results: list = [None] * len(jobs)
    keys = [job_key(fn, j) for j in jobs]
    todo = []
    for i, k in enumerate(keys):
        hit = _read_entry(Path(cache_dir) / f"{k}.json", k) if cache_dir else None
        if hit is not None:
            results[i] = hit
        else:
            todo.append(i)
    bar = None
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc=desc, unit="run", file=sys.stderr, leave=False, delay=1.0)

    def done(i, res):
        results[i] = res
        if cache_dir:
            write_text(Path(cache_dir) / f"{keys[i]}.json", _entry(keys[i], res))
        if bar:
            bar.update(1)

    workers = workers or os.cpu_count() or 1
    try:
        if executor == "ray":
            _run_ray(fn, jobs, todo, done, address)
        elif workers <= 1 or len(todo) <= 1:
            for i in todo:
                done(i, fn(jobs[i]))
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)), initializer=_die_with_parent) as pool:
                futures = {pool.submit(fn, jobs[i]): i for i in todo}
                for fut in as_completed(futures):
                    done(futures[fut], fut.result())
    finally:
        if bar:
            bar.close()
    return results


def _run_ray(fn, jobs, todo, done, address):
    try:
        import ray
    except ImportError:
        raise ConfigError("needs Ray: pip install -e '.[ray]'", field="--executor") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"working_dir": None} if address else None, ignore_reinit_error=True)
    try:
        remote = ray.remote(fn)
        refs = {remote.remote(jobs[i]): i for i in todo}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for r in ready:
                done(refs[r], ray.get(r))
    finally:
        if started:
            ray.shutdown()
