"""Hostile and careless input at every boundary: scenarios, plans, --set values, CLI flags, trace
and kernel-trace files, output paths.

Every case runs ``moesd`` in-process (``main(argv)``) in a scratch folder and asserts what a user
is promised: exit 2 with exactly one line on stderr naming the file or field (no traceback), or a
normal run; nothing written outside the chosen output folder; no file that was already there
touched. The cases of the output-safety issue are explicit examples.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings, strategies as st

from simulator.commands.cli import main
from simulator.common.paths import REPO_ROOT

BASE = {"name": "fz", "model": "Qwen2-7B", "speculative_config": {"method": "ngram", "num_speculative_tokens": 2},
        "hardware": {"gpu": "h100_sxm"}, "workload": {"num_prompts": 8, "random_input_len": 64,
                                                      "random_output_len": 8, "request_rate": 50.0}}


def _tree(root: Path) -> dict:
    """Every file under root (hidden ones too) with its content hash."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            try:
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
            except OSError:
                out[str(p.relative_to(root))] = "unreadable"
    return out


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str]:
    err = io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except SystemExit as exc:          # argparse usage errors
                rc = exc.code
    finally:
        os.chdir(old)
    return rc, err.getvalue()


def check(argv: list[str], root: Path, out: Path | None = None, needle: str | None = None) -> int:
    """Run and assert the promises; returns the exit code."""
    before_repo = _tree(REPO_ROOT / "reports")
    before = _tree(root)
    rc, err = run_cli(argv, root)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        assert len(lines) == 1 and lines[0].startswith(("moesd: error:", "moesd ")), err
        if needle:
            assert needle in err, err
    after = _tree(root)
    for f, h in before.items():                       # nothing that was there is changed or gone
        assert after.get(f) == h, f"{f} touched by {argv}"
    new = set(after) - set(before)
    allowed = str(out.relative_to(root)) + os.sep if out is not None else None
    assert all(allowed and f.startswith(allowed) for f in new), (argv, sorted(new)[:5])
    if rc == 2 and out is not None:
        assert not any(f.startswith(allowed) for f in new), "a failed run left output"
    assert _tree(REPO_ROOT / "reports") == before_repo
    return rc


@pytest.fixture
def root(tmp_path):
    (tmp_path / "keep.txt").write_text("a user's file\n")
    (tmp_path / "userdir").mkdir()
    (tmp_path / "userdir" / "notes.md").write_text("mine\n")
    return tmp_path


def _scenario(root: Path, data, name="s.yaml") -> Path:
    p = root / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


# --- explicit cases from the output-safety issue ------------------------------------------------

@pytest.mark.parametrize("sets,needle", [
    (["workload.request_rate=.nan"], "workload.request_rate"),
    (["workload.burstiness=.inf"], "workload.burstiness"),
    (["engine.step_overhead_ms=.inf"], "engine.step_overhead_ms"),
    (["workload.request_rate=1.0e-300"], "workload"),
    (["workload.num_prompts=true"], "workload.num_prompts"),
    (["workload.num_prompts=1000000000000"], "workload.num_prompts"),
    (["workload.seed=-1"], "workload.seed"),
    (["hardware.tensor_parallel_size=3", "model=Qwen2-57B-A14B"], "hardware.tensor_parallel_size"),
    (["speculative_config={method: draft_model, model: OPT-350M}"], "speculative_config.model"),
    (["speculative_config={method: draft_model, model: Qwen2-57B-A14B}"], "speculative_config.model"),
    (["speculative_config.acceptance={per_position: [.nan, 0.5]}"], "per_position"),
    (["speculative_config.acceptance={histogram: [.nan, 1.0]}"], "histogram"),
    (["name=''"], "name"), (["name=../../x"], "name"), (["name=/abs"], "name"),
    (["hardware.gpu=../../somewhere/evil"], "hardware.gpu"),
    (["model=/dev/null/x.yaml"], "model"),
    (["model=/dev/zero"], "model"),
    ([f"model={REPO_ROOT / 'workloads' / 'models'}/"], "model"),
    (["workload.max_concurrency=0"], "workload.max_concurrency"),
    (["nope=1"], "nope"),
    (["workload=3"], "workload"),
])
def test_bad_scenario_values(root, sets, needle):
    s = _scenario(root, BASE)
    argv = ["simulate", str(s), "--out", str(root / "o"), "--quiet", "--no-report"]
    for x in sets:
        argv += ["--set", x]
    assert check(argv, root, root / "o", needle) == 2


@pytest.mark.parametrize("text,needle", [
    (b"\xff\xfe model: x", "UTF-8"),
    (b"[" * 100 + b"]" * 100, "nests deeper"),
    (b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
     b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
     "expands"),
    (b"model: [unclosed\n", "invalid YAML"),
    (b"- a list\n", "mapping"),
    (b"", "mapping"),
])
def test_hostile_scenario_files(root, text, needle):
    p = root / "h.yaml"
    p.write_bytes(text)
    assert check(["simulate", str(p), "--out", str(root / "o"), "--quiet"], root, root / "o", needle) == 2


def test_scenario_paths_that_are_not_files(root):
    assert check(["simulate", str(root / "userdir"), "--quiet"], root, None, "not a regular file") == 2
    assert check(["simulate", "/dev/null", "--quiet"], root, None) == 2
    big = root / "big.yaml"
    big.write_text("description: '" + "x" * (2 << 20) + "'\n")
    assert check(["simulate", str(big), "--quiet"], root, None, "at most") == 2


@pytest.mark.parametrize("out,needle", [
    ("userdir", "did not write"),          # a user's folder: refused, its files kept
    ("keep.txt", "not a folder"),          # a file: refused, not renamed away
    (".", "current folder"),
    ("keep.txt/sub", "is a file"),
])
def test_output_paths_never_lose_files(root, out, needle):
    s = _scenario(root, BASE)
    assert check(["simulate", str(s), "--out", out, "--quiet", "--no-report"], root, None, needle) == 2


def test_output_replaces_only_its_own_results(root):
    s = _scenario(root, BASE)
    out = root / "res"
    assert check(["simulate", str(s), "--out", str(out), "--quiet", "--no-report"], root, out) == 0
    assert (out / ".moesd-output.json").exists() and (out / "summary.json").exists()
    first = _tree(out)
    # a previous result is replaced by a new one ...
    assert run_cli(["simulate", str(s), "--out", str(out), "--quiet", "--no-report"], root)[0] == 0
    assert _tree(out) == first                                     # deterministic: same bytes
    # ... but not once the user has put a file of their own in it
    (out / "my_notes.txt").write_text("keep me")
    assert check(["simulate", str(s), "--out", str(out), "--quiet", "--no-report"], root, None, "did not write") == 2


def test_stale_temporary_folders_are_removed(root):
    s = _scenario(root, BASE)
    stale = root / ".res.999999999.abcd.tmp"          # a killed run's (no such process)
    stale.mkdir()
    (stale / "summary.json").write_text("{}")
    rc, _ = run_cli(["simulate", str(s), "--out", str(root / "res"), "--quiet", "--no-report"], root)
    assert rc == 0 and not stale.exists()


def test_results_follow_the_umask(root):
    s = _scenario(root, BASE)
    old = os.umask(0o022)
    try:
        assert run_cli(["simulate", str(s), "--out", str(root / "res"), "--quiet", "--no-report"], root)[0] == 0
    finally:
        os.umask(old)
    assert (root / "res").stat().st_mode & 0o777 == 0o755
    assert (root / "res" / "summary.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("argv,needle", [
    (["kernel", "allreduce", "--gpu", "h100_sxm", "--num-gpus", "0"], "--num-gpus"),
    (["kernel", "moe", "--gpu", "h100_sxm", "--moe-ep-size", "0"], "--moe-ep-size"),
    (["kernel", "moe", "--gpu", "h100_sxm", "--topk", "0"], "--topk"),
    (["kernel", "moe", "--gpu", "h100_sxm", "--topk", "9", "--num-experts", "8"], "topk"),
    (["kernel", "moe", "--gpu", "h100_sxm", "--moe-ep-size", "3"], "expert-parallel"),
    (["kernel", "moe", "--gpu", "h100_sxm", "--distribution", "zipf"], "--distribution"),
    (["kernel", "gemm", "--gpu", "nope"], "unknown gpu"),
    (["sweep", "quickstart", "--topk-sweep", "0"], "--topk-sweep"),
    (["sweep", "quickstart", "--batch-sizes", "1..100000000"], "--batch-sizes"),
    (["sweep", "quickstart", "--num-speculative-tokens", "x"], "--num-speculative-tokens"),
    (["validate", "--cases", ","], "--cases"),
    (["validate", "--cases", "nope"], "unknown case"),
    (["calibrate", "--gpu", "h100_sxm", "--traces", "/nonexistent"], "--traces"),
    (["calibrate", "--gpu", "../etc", "--traces", "."], "--gpu"),
    (["plan", "--model", "Qwen2-7B"], "plan"),
    (["simulate"], "scenario"),
    (["bogus"], "invalid choice"),
])
def test_bad_flags(root, argv, needle):
    assert check(argv, root, None, needle) == 2


@pytest.mark.parametrize("patch,needle", [
    ({"search": {"tensor_parallel_size": [0]}}, "search.tensor_parallel_size"),
    ({"costs": {"h100_sxm": -1.0}}, "costs"),
    ({"costs": {"h100_sxm": float("nan")}}, "costs"),
    ({"bisection": {"rate_min": 10.0, "rate_max": 1.0}}, "rate_min"),
    ({"load_levels": [float("nan")]}, "load_levels"),
    ({"name": "../up"}, "name"),
    ({"slo": {}}, "slo"),
])
def test_bad_plans(root, patch, needle):
    plan = {"name": "p", "model": "Qwen2-7B", "slo": {"tpot_ms": 50.0},
            "search": {"gpus": ["h100_sxm"], "total_gpus": [1], "tensor_parallel_size": [1],
                       "max_num_seqs": [8], "num_speculative_tokens": [0]}}
    for k, v in patch.items():
        plan[k] = {**plan[k], **v} if isinstance(v, dict) and k in plan and k != "slo" else v
    p = _scenario(root, plan, "plan.yaml")
    assert check(["plan", str(p), "--out", str(root / "o"), "--quiet", "--workers", "1",
                  "--cache-dir", str(root / "cache")], root, root / "o", needle) == 2


@pytest.mark.parametrize("content,needle", [
    ("", "empty"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n", "no requests"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n0,10,5\nnan,10,5\n", "row 2"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n0,-10,5\n", "row 1"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n0,10.5,5\n", "row 1"),
    ("a,b\n1,2\n", "missing columns"),
    ('{"arrived_at": 0, "num_prefill_tokens": 3\n', "unreadable"),
])
def test_bad_trace_files(root, content, needle):
    ext = ".jsonl" if content.startswith("{") else ".csv"
    tr = root / f"trace{ext}"
    tr.write_text(content)
    data = {**BASE, "workload": {"dataset_name": "trace", "trace_file": str(tr), "trace_format": "vidur",
                                 "num_prompts": 8}}
    s = _scenario(root, data)
    assert check(["simulate", str(s), "--out", str(root / "o"), "--quiet"], root, root / "o", needle) == 2


def _tidy_gemm(latencies) -> str:
    rows = "".join(f"gemm,h100_sxm,H100,torch,2.5,cublas,bfloat16,{lat},test,{64 * (i + 1)},4096,4096\n"
                   for i, lat in enumerate(latencies))
    return "op,gpu,device,framework,framework_version,kernel_source,dtype,latency_ms,source,m,n,k\n" + rows


@pytest.mark.parametrize("make,needle", [
    (lambda d: (d / "h100_sxm").mkdir(), "traces"),
    (lambda d: ((d / "h100_sxm").mkdir(), (d / "h100_sxm" / "gemm.csv").write_text("")), "empty"),
    (lambda d: ((d / "h100_sxm").mkdir(), (d / "h100_sxm" / "gemm.parquet").write_bytes(b"PAR1garbage")),
     "not a readable table"),
    (lambda d: ((d / "h100_sxm").mkdir(), (d / "h100_sxm" / "gemm.csv").write_text("op,gpu\ngemm,h100_sxm\n")),
     "missing columns"),
    (lambda d: ((d / "h100_sxm").mkdir(), (d / "h100_sxm" / "gemm.csv").write_text(_tidy_gemm(["nan"]))), "row 1"),
    (lambda d: ((d / "h100_sxm").mkdir(), (d / "h100_sxm" / "gemm.csv").write_text(_tidy_gemm(["0.5", "-1"]))),
     "row 2"),
    (lambda d: ((d / "h100_sxm").mkdir(), (d / "h100_sxm" / "gemm.csv").write_text(_tidy_gemm(["0.5"]))),
     "at least 10"),                                                   # one row: no fit, not "0.0%"
])
def test_bad_kernel_traces(root, make, needle):
    d = root / "traces"
    d.mkdir()
    make(d)
    report = root / "cal.html"
    assert check(["calibrate", "--gpu", "h100_sxm", "--traces", str(d), "--dry-run", "--report", str(report)],
                 root, None, needle) == 2


# --- random malformed scenarios ------------------------------------------------------------------

PATHS = [("name",), ("model",), ("seed",), ("hardware", "gpu"), ("hardware", "tensor_parallel_size"),
         ("hardware", "data_parallel_size"), ("engine", "max_num_seqs"), ("engine", "max_num_batched_tokens"),
         ("engine", "block_size"), ("engine", "gpu_memory_utilization"), ("engine", "step_overhead_ms"),
         ("engine", "max_model_len"), ("engine", "kv_cache_dtype"), ("routing", "distribution"),
         ("routing", "exponent"), ("workload", "num_prompts"), ("workload", "request_rate"),
         ("workload", "random_input_len"), ("workload", "random_output_len"), ("workload", "random_range_ratio"),
         ("workload", "burstiness"), ("workload", "seed"), ("workload", "dataset_name"),
         ("speculative_config", "num_speculative_tokens"), ("speculative_config", "method"),
         ("speculative_config", "acceptance")]
BAD = st.one_of(st.sampled_from([float("nan"), float("inf"), -float("inf"), -1, 0, -1e300, 1e300, 10**18, True,
                                 "", "..", "../../etc/passwd", "/tmp", None, [], {}, [1, [2]], {"a": {"b": 1}},
                                 "inf", "0x10", "1e3"]),
                st.integers(-10, 10), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), value=BAD)
@example(path=("workload", "request_rate"), value=float("nan"))
@example(path=("name",), value="")
@example(path=("hardware", "gpu"), value="../../somewhere/evil")
def test_random_malformed_scenarios(root, path, value):
    data = yaml.safe_load(yaml.safe_dump(BASE))
    cur = data
    for k in path[:-1]:
        cur = cur.setdefault(k, {})
    cur[path[-1]] = value
    s = _scenario(root, yaml.safe_dump(data, allow_unicode=True))
    out = root / "o"
    rc = check(["simulate", str(s), "--out", str(out), "--quiet", "--no-report"], root, out)
    if rc == 0:       # a value that happened to be valid: a normal result, and it cleans up for the next one
        assert (out / "summary.json").exists()
        import shutil
        shutil.rmtree(out)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from([".".join(p) for p in PATHS] + ["a..b", "", "=", "workload.", ".x"]),
       raw=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12))
def test_random_set_overrides(root, key, raw):
    s = _scenario(root, BASE)
    out = root / "o"
    rc = check(["simulate", str(s), "--out", str(out), "--quiet", "--no-report", "--set", f"{key}={raw}"], root, out)
    if rc == 0:
        import shutil
        shutil.rmtree(out)


def test_a_closed_pipe_ends_quietly():
    """`moesd ... | head`: the reader goes away; no traceback, the shell's SIGPIPE status."""
    import subprocess
    import sys
    p = subprocess.run(["sh", "-c", f"{sys.executable} -m simulator kernel moe --gpu h100_sxm --json | true"],
                       capture_output=True, text=True, cwd=REPO_ROOT)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr
