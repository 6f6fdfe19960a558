import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from simulator.common.errors import ConfigError
from simulator.config.scenario import parse
from simulator.serving.simulation import build


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "simulator", *args], capture_output=True, text=True, cwd=cwd)


def test_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match="engine.max_num_seq: unknown key"):
        parse({"model": "Qwen2-7B", "engine": {"max_num_seq": 3}}, "x.yaml")


def test_sglang_aliases():
    sc = parse({"model": "Qwen3-30B-A3B", "speculative_algorithm": "EAGLE3", "speculative_num_steps": 3,
                "speculative_eagle_topk": 1, "speculative_num_draft_tokens": 4,
                "speculative_draft_model_path": "EAGLE3-Qwen3-30B-A3B"}, "x")
    assert sc.speculative_config.method == "eagle3" and sc.speculative_config.k == 3
    assert sc.speculative_config.verify_tokens == 4


def test_mean_acceptance_length_roundtrip():
    from simulator.serving import acceptance
    a = acceptance.build(parse({"model": "Qwen2-7B", "speculative_config": {
        "method": "ngram", "num_speculative_tokens": 4, "acceptance": {"mean_acceptance_length": 2.5}}}, "x")
        .speculative_config.acceptance, 4)
    assert 1 + a.expected_accepted(4) == pytest.approx(2.5)


def test_the_summary_says_which_acceptance_the_sd_run_assumed_and_whether_it_was_a_default():
    """The SD verdict rests on the acceptance: a scenario that states none runs the schema's rate 0.8,
    and the summary says so, with the mean length it implies (1 + 0.8 + 0.64 + 0.512 at k 3)."""
    from simulator.serving.simulation import simulate
    base = {"model": "Qwen3-30B-A3B", "hardware": {"gpu": "h100_sxm", "tensor_parallel_size": 2},
            "workload": {"num_prompts": 8, "random_input_len": 64, "random_output_len": 16},
            "speculative_config": {"method": "eagle3", "model": "EAGLE3-Qwen3-30B-A3B", "num_speculative_tokens": 3}}
    summary = simulate(build(parse(base, "x")))[0]
    assert summary["acceptance_model"] == ("rate 0.8 per draft token (length 2.95 at k 3); "
                                           "a default: speculative_config.acceptance is not set")
    base["speculative_config"]["acceptance"] = {"mean_acceptance_length": 2.2, "measured_at_k": 2}
    text = simulate(build(parse(base, "x")))[0]["acceptance_model"]
    # measured at k 2, run at k 3: the per-token rate holds, so the length at k 3 is longer
    assert text.startswith("mean acceptance length 2.2 at k 2 (length 2.") and "default" not in text
    assert float(text.split("(length ")[1].split()[0]) > 2.2
    base["speculative_config"]["num_speculative_tokens"] = 0
    assert simulate(build(parse(base, "x")))[0].get("acceptance_model") is None


@pytest.mark.parametrize("sets,needle", [
    (["model=NoSuchModel"], "unknown model 'NoSuchModel'"),
    (["hardware.gpu=h999"], "unknown gpu 'h999'"),
    (["model=OPT-30B", "speculative_config=null", "hardware.gpu=l40s", "hardware.tensor_parallel_size=1"],
     "hardware.tensor_parallel_size"),
    (["speculative_config.method=medusa"], "speculative_config.method"),
    (["workload.request_rate=-3"], "request_rate"),
])
def test_bad_input_one_line_errors(tmp_path, sets, needle):
    out = tmp_path / "out"
    args = ["simulate", "quickstart", "--out", str(out), "--quiet", "--no-report"]
    for s in sets:
        args += ["--set", s]
    p = cli(*args)
    assert p.returncode == 2
    assert needle in p.stderr and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert not out.exists()


def test_malformed_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model: [unclosed\n")
    p = cli("simulate", str(f), "--quiet")
    assert p.returncode == 2 and "invalid YAML" in p.stderr and "Traceback" not in p.stderr


def test_cli_simulate_writes_outputs(tmp_path):
    p = cli("simulate", "quickstart", "--out", str(tmp_path / "r"), "--set", "workload.num_prompts=20", "--quiet")
    assert p.returncode == 0, p.stderr
    for f in ("summary.json", "requests.csv", "steps.csv", "report.html", "scenario.yaml"):
        assert (tmp_path / "r" / f).exists()
    html = (tmp_path / "r" / "report.html").read_text()
    # what priced the run and what its SD verdict rests on, in the report as in summary.json
    assert "kernel tables (GEMM, MoE)</td><td>vllm " in html and "acceptance assumed</td><td>rate 0.8" in html


def test_cli_simulate_notes_a_closed_loops_cohorts(tmp_path):
    """A closed loop with identical lengths whose users' prompts fit one step prefills them together
    every round: the console says its TTFT rests on those cohorts; an open loop does not get the note."""
    closed = ["--set", "workload.concurrency=4", "--set", "workload.request_rate=inf", "--set",
              "workload.dataset_name=fixed", "--set", "workload.num_prompts=12", "--set", "speculative_config=null"]
    p = cli("simulate", "quickstart", "--out", str(tmp_path / "c"), *closed)
    assert p.returncode == 0, p.stderr
    assert "note: prompts prefilled 4.0 at a time" in p.stdout
    p = cli("simulate", "quickstart", "--out", str(tmp_path / "o"), "--set", "workload.num_prompts=12")
    assert p.returncode == 0 and "TTFT mean" in p.stdout and "note: prompts prefilled" not in p.stdout


def test_kernel_cli_json():
    import json
    p = cli("kernel", "moe", "--gpu", "h200_sxm", "--num-tokens", "64", "--hidden-size", "3584", "--inter-size",
            "2560", "--num-experts", "64", "--topk", "8", "--moe-tp-size", "2", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["latency_ms"] > 0 and d["calibration"] == "calibrated on h200_sxm" and d["weight_bytes"] > 0


def test_kernel_cli_prices_gemm_and_moe_at_a_stated_framework_and_precision():
    """moesd kernel gemm priced its weights as a bare byte count and failed; a precision now picks
    the fit (never bf16 in place of FP8), a framework its tables, and a precision the GPU lacks is a
    one-line error."""
    import json
    got = {}
    for flags in ([], ["--dtype", "fp8"], ["--precision", "fp8"]):
        p = cli("kernel", "gemm", "--gpu", "h100_sxm", "--m", "16", "--n", "4096", "--k", "4096", "--json", *flags)
        assert p.returncode == 0, p.stderr
        d = json.loads(p.stdout)
        got[" ".join(flags)] = (d["precision"], d["latency_ms"])
    assert got[""][0] == "bf16" and got["--dtype fp8"] == got["--precision fp8"] and got["--precision fp8"][0] == "fp8"
    assert got["--precision fp8"][1] < got[""][1]                 # half the weight bytes at 16 tokens
    p = cli("kernel", "moe", "--gpu", "h200_sxm", "--framework", "sglang", "--precision", "fp8_block", "--num-tokens", "64",
            "--hidden-size", "7168", "--inter-size", "2048", "--num-experts", "256", "--topk", "8", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["precision"] == "fp8_block"
    p = cli("kernel", "gemm", "--gpu", "h100_sxm", "--precision", "nvfp4")
    assert p.returncode == 2 and "--precision: nvfp4 needs FP4 tensor cores" in p.stderr and "Traceback" not in p.stderr


values = st.one_of(st.none(), st.booleans(), st.integers(-5, 100000), st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.integers(), max_size=3))
keys = st.sampled_from(["model", "engine", "hardware", "workload", "speculative_config", "routing", "slo", "bogus",
                        "max_num_seqs", "gpu", "tensor_parallel_size", "request_rate", "num_prompts", "method",
                        "num_speculative_tokens", "acceptance", "rate"])
trees = st.recursive(values, lambda c: st.dictionaries(keys, c, max_size=4), max_leaves=10)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(keys, trees, max_size=6))
def test_loader_fuzz_only_config_errors(data):
    base = {"model": "Qwen2-7B"}
    base.update(data)
    try:
        sc = parse(base, "fuzz.yaml")
        build(sc, "fuzz.yaml")
    except ConfigError as e:
        assert "\n" not in str(e)


def test_model_and_gpu_files_by_path_resolve_from_the_scenario_folder(tmp_path):
    """A path is taken relative to the scenario file, whatever the current folder; a name only
    from the catalog; the summary names the files used."""
    import json
    import shutil
    from simulator.common.paths import GPU_SPECS_DIR, MODELS_DIR
    (tmp_path / "m").mkdir()
    shutil.copy(MODELS_DIR / "Qwen2-7B.yaml", tmp_path / "m" / "my-model.yaml")
    shutil.copy(GPU_SPECS_DIR / "h100_sxm.yaml", tmp_path / "my_gpu.yaml")
    s = tmp_path / "s.yaml"
    s.write_text("name: bypath\nmodel: m/my-model.yaml\nhardware: {gpu: ./my_gpu.yaml}\n"
                 "workload: {num_prompts: 5, random_input_len: 32, random_output_len: 4}\n")
    out = tmp_path / "out"
    p = cli("simulate", str(s), "--out", str(out), "--quiet", "--no-report", cwd="/")
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_file"] == str(tmp_path / "m" / "my-model.yaml")
    assert summary["gpu_spec_file"] == str(tmp_path / "my_gpu.yaml")
    # a bare name never reaches outside the catalog
    s.write_text("name: bypath\nmodel: my-model\nworkload: {num_prompts: 5}\n")
    p = cli("simulate", str(s), "--out", str(out), "--quiet", cwd=str(tmp_path / "m"))
    assert p.returncode == 2 and "unknown model 'my-model'" in p.stderr


def test_calibrate_ops_names_the_allowed_ops_in_one_line():
    r = cli("calibrate", "--gpu", "h100_sxm", "--ops", "allreduce,bogus", "--dry-run")
    assert r.returncode == 2 and "unknown op 'bogus'" in r.stderr and "attention_context" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = cli("calibrate", "--gpu", "h100_sxm", "--ops", "gemm", "--framework", "sglang", "--dry-run")
    assert r.returncode == 2 and "--ops" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_calibrate_version_needs_a_framework_and_a_collected_table(tmp_path):
    r = cli("calibrate", "--gpu", "h100_sxm", "--version", "0.19.0")
    assert r.returncode != 0 and "--version" in r.stderr and "--framework" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    (tmp_path / "h100_sxm").mkdir()       # a trace folder with no table of that version
    r = cli("calibrate", "--gpu", "h100_sxm", "--framework", "vllm", "--version", "9.9.9", "--dry-run",
            "--traces", str(tmp_path))
    assert r.returncode != 0 and "no vllm 9.9.9 GEMM or MoE tables" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
