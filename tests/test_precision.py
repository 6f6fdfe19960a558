"""Weight/KV precisions, MLA and sliding-window architectures, per-framework kernels."""

import json
import subprocess
import sys

import numpy as np
import pytest

from simulator.common.errors import ConfigError
from simulator.config import gpu, model, precision
from simulator.config.scenario import parse
from simulator.cost.costmodel import CostModel
from simulator.cost.forward import Batch, ForwardModel, Parallel
from simulator.serving import memory
from simulator.serving.simulation import build

from .conftest import shared_or_skip


def scen(**kw):
    base = {"model": "Llama-3.1-8B", "hardware": {"gpu": "h100_sxm"},
            "workload": {"num_prompts": 4, "random_input_len": 64, "random_output_len": 8}}
    for k, v in kw.items():
        base.setdefault(k, {}).update(v) if isinstance(v, dict) else base.__setitem__(k, v)
    return parse(base, "test")


def test_weight_bytes_closed_form_per_precision():
    m = model.load("Llama-3.1-8B")
    c = m.parameter_count()
    lin = c["attention"] + c["dense_ffn"]
    fp8 = m.weight_bytes(model.Quantization(gemm="fp8", moe="fp8"))
    assert fp8 == pytest.approx(lin * 1.0 + 2.0 * c["embeddings"])
    assert m.weight_bytes() == pytest.approx(2.0 * sum(c.values()))
    # routed experts take the moe precision, the rest the gemm precision
    oss = model.load("gpt-oss-120b")
    oc = oss.parameter_count()
    mx = precision.get("mxfp4").weight_bytes
    assert oss.weight_bytes() == pytest.approx(mx * oc["experts"] + 2.0 * (oc["attention"] + oc["embeddings"] + oc["router"]))


def test_int4_scale_group_sizes_the_weights_and_carries_to_the_run():
    """An int4_wo checkpoint's scale group sets its bytes (0.5 + 2/group a weight: Kimi-K2.5's group 32
    holds 9% more than group 128), a run at the checkpoint's int4 keeps its group and says so, and a
    group that no Marlin kernel runs, or one on no int4 weights, is a one-line error."""
    k = model.load("Kimi-K2.5")
    c = k.parameter_count()
    assert k.expert_weight_bytes() == pytest.approx((0.5 + 2 / 32) * c["experts"])
    g128 = model.Quantization(gemm="bf16", moe="int4_wo")
    assert k.expert_weight_bytes(g128) == pytest.approx((0.5 + 2 / 128) * c["experts"])
    assert precision.int4_grouped(128) is precision.get("int4_wo") and precision.int4_grouped(32) is precision.int4_grouped(32)
    sc = {"model": "Kimi-K2.5", "hardware": {"gpu": "b200_sxm", "tensor_parallel_size": 8},
          "workload": {"num_prompts": 2, "random_input_len": 64, "random_output_len": 4}}
    s = build(parse(sc, "t"))
    assert s.files["quantization"] == {"gemm": "bf16", "moe": "int4_wo", "group_size": 32}
    assert s.target_fm.moe_prec.weight_bytes == pytest.approx(0.5625) and s.target_fm.moe_prec.name == "int4_wo"
    s128 = build(parse({**sc, "engine": {"quantization": {"moe": "int4_wo", "group_size": 128}}}, "t"))
    assert s128.files["quantization"] == {"gemm": "bf16", "moe": "int4_wo", "group_size": 128}
    one = Batch(8, 1, 512.0)
    assert s.target_fm.forward(one).total_s > s128.target_fm.forward(one).total_s      # more scale bytes read
    assert build(parse({**sc, "engine": {"quantization": "nvfp4"}}, "t")).files["quantization"] == {"gemm": "nvfp4", "moe": "nvfp4"}
    for q, why in (({"moe": "int4_wo", "group_size": 48}, "group_size 48 not supported; allowed: 32, 64, 128"),
                   ({"gemm": "bf16", "moe": "fp8", "group_size": 32}, "group_size applies to int4_wo weights only")):
        with pytest.raises(ConfigError, match=why):
            build(parse({**sc, "engine": {"quantization": q}}, "t"))


def test_fp8_checkpoint_is_sized_and_priced_as_fp8():
    ds = model.load("DeepSeek-V3")
    assert ds.quantization.gemm == "fp8_block" and ds.quantization.moe == "fp8_block"
    # ~671B parameters at ~1 byte: fits 8x H200, where bf16 would not
    assert 600 < ds.weight_bytes() / 2**30 < 640
    s = build(parse({"model": "DeepSeek-V3", "hardware": {"gpu": "h200_sxm", "tensor_parallel_size": 8},
                     "workload": {"num_prompts": 2}}, "t"))
    assert s.files["quantization"] == {"gemm": "fp8_block", "moe": "fp8_block"}
    assert s.target_fm.gemm_prec.name == "fp8_block" and s.target_fm.moe_prec.name == "fp8_block"
    with pytest.raises(ConfigError, match="bf16 weights per GPU"):
        build(parse({"model": "DeepSeek-V3", "hardware": {"gpu": "h200_sxm", "tensor_parallel_size": 8},
                     "engine": {"quantization": "bf16"}}, "t"))


def test_quantization_changes_the_cost_and_uses_its_own_fit():
    cm = CostModel("h100_sxm")
    bf, f8 = cm.gemm(8, 4096, 4096), cm.gemm(8, 4096, 4096, precision.get("fp8"))
    assert f8.extra["precision"] == "fp8" and bf.extra["precision"] == "bf16"
    assert f8.bytes < bf.bytes                     # half the weight bytes
    # fp8 kernels are corrected by the fp8 table (fitted on the fp8 rows), never by the bf16 one
    own = float(np.exp(cm.tables[("gemm", "fp8")].lookup((4096, 4096), (), 8)[0]))
    other = float(np.exp(cm.tables["gemm"].lookup((4096, 4096), (), 8)[0]))
    assert f8.extra["table_factor"] == pytest.approx(own) and abs(own / other - 1) > 0.01
    big_bf, big_f8 = cm.gemm(8192, 8192, 8192), cm.gemm(8192, 8192, 8192, precision.get("fp8"))
    assert big_f8.latency_s < big_bf.latency_s    # compute-bound: FP8 tensor cores are twice as fast


def test_bad_precisions_are_one_line_errors():
    with pytest.raises(ConfigError, match="nvfp4 needs FP4 tensor cores.*h100_sxm.*allowed on it: bf16, fp8"):
        build(scen(engine={"quantization": "nvfp4"}))
    with pytest.raises(ConfigError, match="unknown precision 'fp3'"):
        build(scen(engine={"quantization": "fp3"}))
    with pytest.raises(ConfigError, match="fp8 needs FP8 tensor cores.*a100_sxm"):
        build(scen(engine={"quantization": "fp8"}, hardware={"gpu": "a100_sxm"}))
    with pytest.raises(ConfigError, match="unknown keys"):
        build(scen(engine={"quantization": {"attention": "fp8"}}))


def test_uncalibrated_precision_is_refused_not_priced_as_bf16():
    # l40s has no nvfp4 hardware; a GPU with FP4 units but no fp4 fit must refuse, naming what exists
    hw = gpu.load("h100_sxm")
    cal = hw.calibration.model_copy(update={"precisions": {}})
    cm = CostModel(hw.model_copy(update={"calibration": cal}))
    with pytest.raises(ConfigError, match="no fp8 gemm calibration.*calibrated: bf16"):
        cm.gemm(8, 4096, 4096, precision.get("fp8"))


def test_fp8_kv_cache_halves_kv_bytes_and_decode_reads():
    m = model.load("Llama-3.1-8B")
    assert memory.kv_bytes_per_token(m, 1, 1.0) * 2 == memory.kv_bytes_per_token(m, 1, 2.0)
    a = build(scen(engine={"kv_cache_dtype": "fp8"}))
    b = build(scen())
    assert a.cfg.num_blocks > 1.9 * b.cfg.num_blocks
    assert a.files["kv_cache_dtype"] == "fp8"
    batch = Batch(64, 1, 8192.0)
    assert a.target_fm.forward(batch).attention_s < 0.8 * b.target_fm.forward(batch).attention_s


def test_mla_latent_cache_and_params():
    ds = model.load("DeepSeek-V3")
    # 576 latent elements per token and layer, not split by TP
    assert memory.kv_bytes_per_token(ds, 8, 2.0) == memory.kv_bytes_per_token(ds, 1, 2.0) == 576 * 61 * 2.0
    a, h, H = ds.mla, ds.hidden_size, ds.num_attention_heads
    expect = (h * a.q_lora_rank + a.q_lora_rank * H * 192 + h * 576 + a.kv_lora_rank * H * (128 + 128)
              + H * 128 * h)
    assert ds.attention_params_per_layer() == expect
    with pytest.raises(ConfigError, match="mla or kv_cache_dim_per_token"):
        model.parse({**ds.model_dump(exclude_none=True), "kv_cache_dim_per_token": 576}, "t")


def test_sliding_window_layers_read_only_the_window():
    oss = model.load("gpt-oss-120b")
    full = oss.model_copy(update={"num_sliding_window_layers": 0, "sliding_window": None})
    cm = CostModel("h100_sxm")
    par = Parallel(tensor_parallel_size=2)
    fw, ff = ForwardModel(oss, cm, par), ForwardModel(full, cm, par)
    short, long_ = Batch(32, 1, 100.0), Batch(32, 1, 32768.0)
    assert fw.forward(short).attention_s == pytest.approx(ff.forward(short).attention_s)  # inside the window
    assert fw.forward(long_).attention_s < 0.6 * ff.forward(long_).attention_s
    # half the layers keep no long-context KV
    assert memory.kv_bytes_per_token(oss, 1) == pytest.approx(memory.kv_bytes_per_token(full, 1) / 2)


def test_gated_deltanet_layers_keep_a_fixed_state_instead_of_kv_and_are_priced_over_it():
    """Qwen3.5-397B-A17B: 45 of its 60 layers are Gated DeltaNet. They hold no KV cache but a fixed
    float32 state per sequence, reserved for the batch limit as SGLang's state pool is, and a decode
    step reads and writes that state once per sequence; the sizes add up to the published 397B."""
    from simulator.cost import linear_attention
    q = model.load("Qwen3.5-397B-A17B")
    la = q.linear_attention
    assert q.num_linear_attention_layers == 45 and 396e9 < sum(q.parameter_count().values()) < 398e9
    # KV of the 15 full-attention layers only: 2 KV heads of 256 (one per rank at TP 4), K and V, bf16
    assert memory.kv_bytes_per_token(q, 4) == 15 * 2 * 256 * 2
    per_seq = 45 * (16 * 128 * 128 * 4.0 + (2 * 4 * 128 + 16 * 128) * 3 * 2.0)      # TP 4: 16 value heads a rank
    assert q.linear_state_bytes_per_seq(4) == pytest.approx(per_seq)
    # past one head a rank (TP 32 of 16 key heads) each rank still holds one: the pool sizes what the kernel reads
    assert la.per_gpu(32) == (2, 128, 128, 2 * 128 + 2 * 128) and q.linear_state_bytes_per_seq(32) == pytest.approx(
        45 * (2 * 128 * 128 * 4.0 + 512 * 3 * 2.0))
    hw = gpu.load("b200_sxm")
    args = (q, None, hw, 4, 0.9, 64, 2.0, "t", model.Quantization(gemm="fp8_block", moe="fp8_block"))
    free_blocks, reserved = memory.kv_blocks(*args), memory.kv_blocks(*args, state_seqs=128)
    assert free_blocks - reserved == pytest.approx(128 * per_seq / (15 * 2 * 256 * 2 * 64), abs=1)
    cm = CostModel("b200_sxm", framework="sglang")
    p = cm.fit_params("attention_generation")
    t = linear_attention.decode(hw, p, la, 64, 1, tp=4)
    assert t["bytes"] == pytest.approx(2 * 64 * (16 * 128 * 128 * 4.0 + 3072 * 3 * 2.0) + 64 * (3072 + 2048) * 4.0)
    fm = ForwardModel(q, cm, Parallel(tensor_parallel_size=4), model.Quantization(gemm="fp8_block", moe="fp8_block"))
    attn = fm.forward(Batch(64, 1, 2000.0)).attention_s
    assert attn == pytest.approx(15 * fm._decode_attention(64, 1, 2000.0) + 45 * float(t["latency_s"]))
    with pytest.raises(ConfigError, match="linear_attention"):
        model.parse({**q.model_dump(exclude_none=True), "sliding_window": 128, "num_sliding_window_layers": 2}, "t")


def test_deepseek_sparse_attention_reads_the_top_k_keys_and_indexes_every_one():
    """GLM-5 (MLA + DSA): the MLA attention reads at most index_topk keys a query, the indexer
    scores every cached key (so only it grows with the context past top-k), and each token caches
    the indexer's FP8 key beside the latent; the sizes add up to the published 744B."""
    from simulator.cost import sparse_attention
    glm = model.load("GLM-5")
    sa = glm.sparse_attention
    assert 742e9 < sum(glm.parameter_count().values()) < 746e9
    assert memory.kv_bytes_per_token(glm, 8) == 78 * (576 * 2 + 128 + 4)
    assert sparse_attention.keys_per_query(2048, 1024, 0) == pytest.approx(512.5)
    assert sparse_attention.keys_per_query(2048, 1024, 4096) == 2048
    assert sparse_attention.keys_per_query(2048, 4096, 0) == pytest.approx((2048 * 2049 / 2 + 2048 * 2048) / 4096)
    cm = CostModel("b200_sxm", framework="sglang")
    fm = ForwardModel(glm, cm, Parallel(tensor_parallel_size=8), model.Quantization(gemm="fp8_block", moe="fp8_block"))
    p = cm.fit_params("attention_generation")
    for ctx in (1000.0, 8000.0, 32000.0):
        want = fm._decode_attention(16, 1, min(ctx, 2048)) + sparse_attention.indexer_decode(cm.hw, p, sa, 16, 1, ctx)
        assert fm._full_attention(16, 1, ctx, ()) == pytest.approx(want)
    idx = [sparse_attention.indexer_decode(cm.hw, p, sa, 16, 1, c) for c in (8000.0, 32000.0)]
    assert idx[1] > idx[0] and fm._decode_attention(16, 1, 2048) < fm._decode_attention(16, 1, 32000)
    with pytest.raises(ConfigError, match="sparse_attention"):
        model.parse({**glm.model_dump(exclude_none=True, exclude={"mla"})}, "t")


def test_framework_tables_are_named_and_unknown_ones_refused():
    s = build(scen())
    assert s.files["framework"] == "vllm" and s.files["kernel_tables"].startswith("vllm ")
    hw = gpu.load("h100_sxm")
    if "sglang" in hw.calibration.frameworks:
        t = build(scen(engine={"framework": "sglang"}))
        assert t.files["kernel_tables"].startswith("sglang ")
        assert t.cost.gemm(8, 4096, 4096).latency_s != s.cost.gemm(8, 4096, 4096).latency_s
    stripped = hw.model_copy(update={"calibration": hw.calibration.model_copy(update={"frameworks": {}})})
    with pytest.raises(ConfigError, match="no trtllm kernel calibration"):
        CostModel(stripped, framework="trtllm")


def test_precision_fit_on_measured_fp8_rows():
    from simulator.cost import calibration, tablerows, traces
    d = shared_or_skip()
    hw = gpu.load("h100_sxm")
    p8 = precision.get("fp8_block")
    df = tablerows.sample_rows(calibration.select_rows("moe", traces.load(d, "h100_sxm", "moe"), p8), 1500)
    assert set(df.dtype) == {"fp8_block"}
    params = calibration.fit("moe", hw, df, p8)
    err = calibration.errors(calibration.predict_rows("moe", hw, params, df, prec=p8), df)
    assert float(sorted(err)[len(err) // 2]) < 0.12


SILICON_HEADER = ("id,model_path,backend,backend_version,system,precision,mode,isl,osl,gemm_quant_mode,moe_quant_mode,"
                  "batch_size,tp_size,pp_size,attention_dp_size,moe_tp_size,moe_ep_size,silicon_ttft_ms,silicon_tpot_ms\n")


def test_validate_silicon_classifies_and_simulates(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text(SILICON_HEADER
                 + "a,meta-llama/Llama-3.1-8B-Instruct,vllm,0.19.0,h100_sxm,bf16,agg,128,16,,,2,1,1,1,1,1,30,8\n"
                 + "b,deepseek-ai/DeepSeek-R1,sglang,0.5.9,b200_sxm,fp8,disagg,1024,1024,fp8,fp8,8,8,1,1,8,1,50,10\n"
                 + "c,deepseek-ai/DeepSeek-R1,sglang,0.5.9,b200_sxm,fp8,agg,1024,1024,fp8,fp8_block,8,36,1,1,36,1,50,10\n"
                 + "d,some/unknown-model,vllm,0.19.0,b200_sxm,fp8,agg,1024,1024,fp8,fp8,8,8,1,1,8,1,50,10\n"
                 + "e,meta-llama/Llama-3.1-8B-Instruct,vllm,0.19.0,h100_sxm,fp4,agg,128,16,nvfp4,nvfp4,2,1,1,1,1,1,30,8\n"
                 + "f,openai/gpt-oss-120b,vllm,0.19.0,h100_sxm,fp4,agg,128,16,nvfp4,nvfp4,2,2,1,1,2,1,30,8\n")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "simulator", "validate", "--silicon", str(f), "--out", str(out),
                        "--json", "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["rows"] == 6 and s["expressible"] == 2 and s["coverage"] == pytest.approx(2 / 6)
    by = {row["id"]: row for row in s["per_row"]}
    assert by["a"]["expressible"] and by["a"]["sim_tpot_ms"] > 0 and by["a"]["sim_ttft_ms"] > 0
    assert by["b"]["blocked_by"] == "ambiguous layout: disagg row states no worker counts"   # no prefill_/decode_ columns
    assert "not divisible by tensor_parallel_size 36" in by["c"]["blocked_by"]
    assert by["d"]["blocked_by"] == "no catalog architecture for some/unknown-model"
    assert by["e"]["blocked_by"].startswith("nvfp4 gemm kernels on h100_sxm")
    # gpt-oss exists only in MXFP4: the sample's generic 4-bit label is read as its checkpoint
    assert by["f"]["expressible"] and by["f"]["precision"] == "bf16/mxfp4"
    # each row states whose kernel tables priced it: vLLM 0.19.0 on H100 has its own fit
    want = "vllm 0.19.0" if "vllm@0.19.0" in gpu.load("h100_sxm").calibration.frameworks else "vllm "
    assert by["a"]["kernel_tables"].startswith(want) and by["c"]["kernel_tables"] == ""
    errs = sorted(abs(by[i]["sim_tpot_ms"] / 8 - 1) for i in "af")
    assert s["tpot_median_abs_error"] == pytest.approx(sum(errs) / 2)
    assert (out / "silicon.csv").exists() and (out / "summary.json").exists()


def test_kimi_k25_int4_release_runs_as_its_checkpoint_on_the_served_marlin_kernel():
    """Kimi-K2.5's INT4 release quantises the routed experts alone: a silicon row recording int4_wo for
    GEMM and MoE is that checkpoint (bf16 GEMMs), its NVFP4 runs keep what they state, and a row is
    checked for MLA kernels at its own precisions. The collector's Triton W4A16 rows, labelled
    vllm_marlin_int4_moe, never enter a fit: vLLM serves these experts with Marlin."""
    import pandas as pd
    from simulator.analysis import silicon
    from simulator.cost import tablerows
    k = model.load("Kimi-K2.5")
    assert k.quantization == model.Quantization(gemm="bf16", moe="int4_wo", group_size=32)
    assert 1.02e12 < sum(k.parameter_count().values()) < 1.04e12     # 1.04T published, with its vision encoder
    row = {"id": "k", "model_path": "moonshotai/Kimi-K2.5", "backend": "vllm", "backend_version": "0.15.1",
           "system": "b200_sxm", "mode": "agg", "isl": 1024, "osl": 1024, "batch_size": 8, "tp_size": 8,
           "pp_size": 1, "attention_dp_size": 1, "moe_tp_size": 8, "moe_ep_size": 1, "gemm_quant_mode": "int4_wo",
           "moe_quant_mode": "int4_wo", "silicon_ttft_ms": 50, "silicon_tpot_ms": 10}
    assert silicon.quant_modes(row) == ("bf16", "int4_wo") and silicon.classify(row) == ""
    assert "recorded int4_wo/int4_wo, run as the checkpoint's bf16/int4_wo" in silicon.assumption(row)
    assert silicon.quant_modes({**row, "gemm_quant_mode": "nvfp4", "moe_quant_mode": "nvfp4"}) == ("nvfp4", "nvfp4")
    assert silicon.assumption({**row, "gemm_quant_mode": "nvfp4", "moe_quant_mode": "nvfp4"}) == ""
    assert silicon.quant_modes({**row, "moe_quant_mode": "bf16"}) == ("int4_wo", "bf16")    # not the release: as stated
    # TensorRT-LLM times no int4_wo experts on GB200; the NVFP4 run needs none
    nv = {**row, "backend": "trtllm", "backend_version": "1.3.0rc20", "system": "gb200", "tp_size": 4, "moe_tp_size": 1,
          "moe_ep_size": 4, "gemm_quant_mode": "nvfp4", "moe_quant_mode": "nvfp4"}
    assert silicon.classify(nv) == ""
    triton, marlin = "vllm_marlin_int4_moe", "vllm_compressedtensorswna16marlinmoe_marlin_marlinexperts"
    t = pd.DataFrame({"dtype": "int4_wo", "num_tokens": [1, 2, 4, 1, 2], "latency_ms": 1.0,
                      "kernel_source": [triton] * 3 + [marlin] * 2})
    assert set(tablerows.select_rows("moe", t, precision.get("int4_wo")).kernel_source) == {marlin}
    assert tablerows.select_rows("moe", t[t.kernel_source == triton], precision.get("int4_wo")).empty


def test_silicon_rows_with_bad_numbers_are_blocked_with_what_is_wrong():
    """A typed cell that is no count blocks its row, named; never read as 1, truncated or run."""
    from simulator.analysis import silicon
    ok = {"id": "r", "model_path": "meta-llama/Llama-3.1-8B-Instruct", "backend": "vllm", "backend_version": "0.19.0",
          "system": "h100_sxm", "mode": "agg", "isl": 128, "osl": 16, "batch_size": 2, "tp_size": 1,
          "attention_dp_size": 1, "moe_tp_size": 1, "moe_ep_size": 1, "silicon_ttft_ms": 30, "silicon_tpot_ms": 8}
    assert silicon.classify(ok) == ""
    for col, v, why in (("isl", -5, "isl -5 is not a whole number >= 1"), ("osl", 2.5, "osl 2.5 is not a whole number >= 1"),
                        ("tp_size", 0, "tp_size 0 is not a whole number >= 1"), ("batch_size", "abc", "batch_size 'abc' is not a number"),
                        ("isl", float("nan"), "isl not stated"), ("silicon_tpot_ms", "n/a", "silicon_tpot_ms 'n/a' is not a number"),
                        ("osl", "inf", "osl 'inf' is not a number")):
        assert silicon.classify({**ok, col: v}) == why
    assert silicon.classify({**ok, "moe_ep_size": float("nan")}) == ""        # a dense row states no MoE sizes


def test_validate_silicon_bad_file_is_one_line(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("id,model_path\nx,y\n")
    r = subprocess.run([sys.executable, "-m", "simulator", "validate", "--silicon", str(f), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "missing columns" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_mla_model_needs_mla_kernels_and_uses_them():
    from simulator.serving.simulation import missing_kernels
    hw = gpu.load("h200_sxm")
    ds = model.load("DeepSeek-V3")
    stripped = hw.model_copy(update={"calibration": hw.calibration.model_copy(update={"precisions": {}})})
    assert "no MLA decode calibration" in missing_kernels(CostModel(stripped), ds, model.Quantization())
    cm = CostModel(hw)
    assert missing_kernels(cm, ds, ds.quantization) == ""
    # the step's decode attention is the MLA kernel's: 128 heads / TP8 = 16 per GPU
    fm = ForwardModel(ds, cm, Parallel(tensor_parallel_size=8))
    one_layer = fm.forward(Batch(64, 1, 32767.0)).attention_s / ds.num_hidden_layers
    assert one_layer == pytest.approx(float(cm.mla_decode_latency_s(64, [32767.0], 16, 576)[0]), rel=0.02)


def test_mla_decode_agrees_with_measured_table():
    """vLLM's MLA decode is priced on SGLang's table (vLLM's own are host-bound: tablerows.MLA_STANDINS),
    and agrees with it; the run says whose table it was."""
    from simulator.cost import calibration, traces
    d = shared_or_skip()
    df = calibration.select_rows("mla_generation", traces.load(d, "h200_sxm", "mla_generation", "sglang"))
    for b, ctx in ((64, 32767), (16, 1023)):
        row = df[(df.num_heads == 16) & (df.batch_size == b) & (df.step == ctx) & (df.kv_cache_dtype == "bfloat16")]
        assert len(row)
        sim = float(CostModel("h200_sxm").mla_decode_latency_s(b, [float(ctx)], 16, 576)[0]) * 1e3
        assert sim == pytest.approx(float(row.latency_ms.mean()), rel=0.15)
    assert gpu.mla_tables_label(gpu.load("h200_sxm").calibration, "vllm") == "sglang 0.5.14"
    assert gpu.mla_tables_label(gpu.load("h200_sxm").calibration, "trtllm").startswith("trtllm ")


# --- framework step model -------------------------------------------------------------------

def test_step_model_closed_forms():
    from simulator.cost.framework import FrameworkStep
    serial = FrameworkStep(1e-3, 1e-5, 2e-3, False, 1e-4)
    assert serial.overhead_s(5e-3, 10) == pytest.approx(1e-3 + 1e-4 + 1e-4)            # CPU + sync, whatever the GPU
    assert serial.overhead_s(5e-3, 10, spec_round=True) == pytest.approx(1e-3 + 1e-4 + 2e-3 + 1e-4)
    ov = FrameworkStep(1e-3, 1e-5, 0.0, True, 1e-4)
    assert ov.overhead_s(5e-3, 10) == pytest.approx(1e-4)                              # GPU-bound: CPU hidden
    assert ov.overhead_s(2e-4, 10) == pytest.approx(1.1e-3 - 2e-4 + 1e-4)              # CPU-bound: step = CPU + sync
    # a step never takes less than its GPU time or its CPU time
    for g in (1e-5, 1e-3, 1e-1):
        assert g + ov.overhead_s(g, 10) >= max(g, ov.cpu_s(10))


def test_rank_skew_waits_for_the_slowest_rank_in_closed_form():
    """TP/EP worker synchronisation: a step over n ranks whose GPU time between collectives spreads by
    s (relative) waits s * sqrt(2 ln n) of its GPU time, overlapped CPU or not; one GPU waits for
    nobody; an EP worker synchronises its whole EP group, a TP worker its TP group, attention DP
    all its ranks (their MoE layers run over the whole group)."""
    import math
    from simulator.cost.framework import FrameworkStep
    from simulator.serving.simulation import sync_fraction
    assert sync_fraction(0.05, 1) == 0.0
    assert sync_fraction(0.05, 8) == pytest.approx(0.05 * math.sqrt(2 * math.log(8)))
    for overlap in (False, True):
        plain = FrameworkStep(1e-3, 0.0, 0.0, overlap, 1e-4)
        skewed = FrameworkStep(1e-3, 0.0, 0.0, overlap, 1e-4, 0.0, 0.1)
        for g in (1e-4, 5e-3):
            assert skewed.overhead_s(g, 4) - plain.overhead_s(g, 4) == pytest.approx(0.1 * g)
    cases = [("Llama-3.1-8B", {"tensor_parallel_size": 1}, 1), ("Llama-3.1-8B", {"tensor_parallel_size": 4}, 4),
             ("Qwen3-30B-A3B", {"tensor_parallel_size": 1, "data_parallel_size": 4, "enable_expert_parallel": True}, 4),
             # attention DP with the experts tensor-parallel over all 4 x 2 GPUs: one MoE all-reduce ties them all
             ("Qwen3-30B-A3B", {"tensor_parallel_size": 2, "data_parallel_size": 4}, 8),
             ("Qwen3-30B-A3B", {"tensor_parallel_size": 2}, 2)]
    for name, lay, ranks in cases:
        s = build(scen(model=name, hardware={"gpu": "h100_sxm", **lay}, engine={"framework": "vllm", "rank_skew": 0.05}))
        assert s.cfg.step_model.sync_frac == pytest.approx(sync_fraction(0.05, ranks))
    from simulator.config import framework
    hopper = framework.step_entry("vllm").skew("hopper")
    assert hopper > 0 and build(scen(hardware={"gpu": "h100_sxm", "tensor_parallel_size": 2})).files["rank_skew"] == hopper


def test_step_model_fit_recovers_known_parameters():
    from simulator.analysis import stepfit
    from simulator.cost.framework import FrameworkStep
    rng = np.random.default_rng(1)
    for overlap in (False, True):
        true = FrameworkStep(8e-4, 2e-5, 0.0, overlap, 3e-4)
        rows = []
        for i in range(60):
            by = [(int(b), int(rng.integers(50, 500)), float(g)) for b, g in
                  zip(rng.choice([1, 4, 16, 64, 256], 3), rng.uniform(2e-4, 3e-2, 3))]
            tpot0 = float(rng.uniform(5, 50))
            rows.append({"tpot0": tpot0, "by_batch": by, "measured_tpot": stepfit.predict_tpot(true, tpot0, by),
                         "model": i % 5})
        got = stepfit.fit(rows, overlap)
        assert got.per_seq_cpu_s == pytest.approx(true.per_seq_cpu_s, rel=0.05)
        if overlap:     # the CPU and what never overlaps are told apart by GPU-bound vs CPU-bound steps
            assert got.step_cpu_s == pytest.approx(true.step_cpu_s, rel=0.05)
            assert got.sync_s == pytest.approx(true.sync_s, rel=0.1)
        else:           # serial: only CPU + sync is identifiable, and it is recovered
            assert got.step_cpu_s + got.sync_s == pytest.approx(true.step_cpu_s + true.sync_s, rel=0.05)
        assert stepfit.leave_one_group_out(rows, "model", overlap).max() < 0.01


def test_framework_entries_pick_by_version_and_scenario_terms_win():
    from simulator.config import framework
    from simulator.serving.simulation import step_model
    e = framework.step_entry("vllm")
    assert framework.step_entry("vllm", "0.1.0").since == framework.entries("vllm")[0].since
    assert framework.step_entry("vllm", "nightly-dev") == e
    s = build(scen(engine={"framework": "vllm", "step_overhead_ms": 0.25, "cpu_overlap": True}))
    fm = step_model(s.scenario.engine)
    assert fm.step_cpu_s == pytest.approx(0.25e-3) and fm.cpu_overlap
    assert fm.per_seq_cpu_s == pytest.approx(e.per_seq_cpu_ms / 1e3)
    assert s.cfg.step_model == fm


def test_a_version_is_a_release_a_date_or_a_dev_build_and_a_docker_v_prefix_is_dropped():
    """vLLM's Docker tags read v0.11.2: the same release as 0.11.2 (same step entry, same kernel
    tables), never a nightly priced as the newest; a string that is no version is a one-line error,
    not a silent "newest". The summary states the step-model entry a run used."""
    from simulator.common.versions import normalise
    for ok, want in (("v0.11.2", "0.11.2"), ("1.2.0rc6.post2", "1.2.0rc6.post2"), ("0.5.1-rc0.pre1", "0.5.1-rc0.pre1"),
                     ("2025-07-01", "2025-07-01"), ("nightly-dev-20260216-d3bae71e", "nightly-dev-20260216-d3bae71e"),
                     (" main ", "main")):
        assert normalise(ok) == want
    for bad in ("banana", "V1 engine", "", "0.8 final"):
        with pytest.raises(ValueError):
            normalise(bad)
    a = build(scen(engine={"framework": "vllm", "framework_version": "v0.11.2"}))
    b = build(scen(engine={"framework": "vllm", "framework_version": "0.11.2"}))
    assert a.files["step_model"] == b.files["step_model"] == "vllm 0.8.0"
    assert a.files["kernel_tables"] == b.files["kernel_tables"] and a.cfg.step_model == b.cfg.step_model
    with pytest.raises(ConfigError, match="engine.framework_version: 'banana' is not a version"):
        build(scen(engine={"framework": "vllm", "framework_version": "banana"}))


def test_a_build_known_by_its_date_takes_the_entry_released_by_then():
    from simulator.analysis.sdtable import _version
    from simulator.config import framework
    dated = [e for e in framework.entries("vllm") if e.released]
    assert len(dated) >= 2
    first, last = dated[0], dated[-1]
    assert framework.step_entry("vllm", first.released).since == first.since
    assert framework.step_entry("vllm", last.released).since == last.since
    day_before = f"{int(last.released[:4]) - 1}{last.released[4:]}"
    assert framework.step_entry("vllm", day_before).since != last.since
    assert _version("V1 engine (main, 2025-04)") == "2025-04-01"
    assert _version("V1 engine (main, mid-2025)") == "2025-07-01"
    assert _version("0.1.dev1+g9 (main 2026-02-04, async scheduling)") == "2026-02-04"
    assert _version("v0.9.2") == "0.9.2" and _version("PR branch") is None


def test_older_versions_are_priced_with_their_own_kernel_tables():
    """A run on an older release uses the fits of the nearest collected version (the version's own
    tables), the newest for a newer, unset, nightly or pre-collection release; a
    kernel the older tables do not time comes from the newest fits."""
    hw = gpu.load("h100_sxm")
    older = sorted(k.split("@")[1] for k in hw.calibration.frameworks if k.startswith("vllm@"))
    if not older:
        pytest.skip("no per-version vLLM calibration on h100_sxm")
    newest = CostModel(hw, framework="vllm")
    lo = older[0]
    assert gpu.versioned_key(hw.calibration, "vllm", lo) == f"vllm@{lo}"
    assert gpu.versioned_key(hw.calibration, "vllm", lo + ".post9") == f"vllm@{lo}"
    for v in (None, "0.1.0", "nightly", "2025-07-01", hw.calibration.framework.split()[1]):
        assert gpu.versioned_key(hw.calibration, "vllm", v) is None
    old = CostModel(hw, framework="vllm", version=lo)
    assert old.tables_label == f"vllm {lo}" and newest.tables_label.startswith("vllm ")
    fp8 = precision.get("fp8")
    a = old.moe(64, 4096, 1536, 128, 8, distribution="balanced", prec=fp8).latency_s
    b = newest.moe(64, 4096, 1536, 128, 8, distribution="balanced", prec=fp8).latency_s
    assert a != b                                    # its own MoE fit
    mine = hw.calibration.frameworks[f"vllm@{lo}"]["precisions"]
    missing = [p for p, ops in newest._by_precision.items() if "moe" in ops and "moe" not in mine.get(p, {})]
    for p in missing:                                # what it never timed: the newest fit, not a refusal
        assert old.fit_params("moe", precision.get(p)) == newest.fit_params("moe", precision.get(p))
    s = build(scen(engine={"framework": "vllm", "framework_version": lo}))
    assert s.files["kernel_tables"] == f"vllm {lo}"


def test_a_release_between_two_collections_takes_the_nearer_one():
    """Between two collected versions, the nearer release's tables price a run, either side (ties
    to the older); newer than every collection, the newest fits (None)."""
    from types import SimpleNamespace
    cal = SimpleNamespace(framework="vllm 0.24.0", frameworks={"vllm@0.14.0": {}, "vllm@0.18.0": {}})
    assert gpu.versioned_key(cal, "vllm", "0.17.1") == "vllm@0.18.0"      # newer, one minor away
    assert gpu.versioned_key(cal, "vllm", "0.15.2") == "vllm@0.14.0"
    assert gpu.versioned_key(cal, "vllm", "0.16.0") == "vllm@0.14.0"      # a tie: the older
    assert gpu.versioned_key(cal, "vllm", "0.18.0.post1") == "vllm@0.18.0"
    assert gpu.versioned_key(cal, "vllm", "0.22.0") is None               # the newest (0.24) is nearer
    assert gpu.versioned_key(cal, "vllm", "0.20.0") == "vllm@0.18.0"
    assert gpu.versioned_key(cal, "vllm", "1.0.0") is None
    assert gpu.versioned_key(cal, "vllm", "0.9.0") is None                # before all: the newest
    assert gpu.versioned_key(cal, "vllm", "0.9.0", "oldest") == "vllm@0.14.0"


def test_v1_releases_older_than_every_collection_take_the_oldest_tables():
    """A vLLM V1 release older than every collected table version is priced on the oldest collection
    (the nearest in time); a V0 release keeps the newest fits, which V0's step terms were fitted with."""
    from simulator.common.versions import version_key
    from simulator.config import framework
    hw = gpu.load("h100_sxm")
    older = sorted((k.split("@")[1] for k in hw.calibration.frameworks if k.startswith("vllm@")), key=version_key)
    if not older:
        pytest.skip("no per-version vLLM calibration on h100_sxm")
    v1, v0 = "0.8.5", "0.5.3"
    assert version_key(v1) < version_key(older[0])
    assert gpu.versioned_key(hw.calibration, "vllm", v1, "oldest") == f"vllm@{older[0]}"
    assert gpu.versioned_key(hw.calibration, "vllm", v1) is None
    assert framework.step_entry("vllm", v1).kernels_before_collections == "oldest"
    assert framework.step_entry("vllm", v0).kernels_before_collections == "newest"
    newest = CostModel(hw, framework="vllm").tables_label
    assert build(scen(engine={"framework": "vllm", "framework_version": v1})).files["kernel_tables"] == f"vllm {older[0]}"
    assert build(scen(engine={"framework": "vllm", "framework_version": v0})).files["kernel_tables"] == newest
    assert newest != f"vllm {older[0]}"


def test_kernel_time_scale_comes_from_the_framework_entry_per_architecture_and_a_scenario_wins():
    from simulator.config import framework
    oss = {"model": "gpt-oss-120b", "hardware": {"gpu": "b200_sxm", "tensor_parallel_size": 1}}
    entry = framework.step_entry("trtllm")
    s = build(scen(**oss, engine={"framework": "trtllm"}))
    assert s.cost.kernel_time_scale == entry.kernel_scale("blackwell") == s.files["kernel_time_scale"]
    assert entry.kernel_scale("cdna3") == 1.0                     # no entry for the architecture: the tables'
    mine = build(scen(**oss, engine={"framework": "trtllm", "kernel_time_scale": 0.5}))
    assert mine.cost.kernel_time_scale == 0.5
    # the step's GEMM and MoE time doubles from the tables' (scale 1) at scale 2; at 0.5 it shrinks,
    # by at most half (a kernel stops at the datasheet peak); attention does not move
    one = build(scen(**oss, engine={"framework": "trtllm", "kernel_time_scale": 1.0}))
    two = build(scen(**oss, engine={"framework": "trtllm", "kernel_time_scale": 2.0}))
    b = Batch(num_decode=8, decode_ctx_mean=1024.0)
    c1, c2, c5 = one.target_fm.forward(b), two.target_fm.forward(b), mine.target_fm.forward(b)
    assert c2.gemm_s == pytest.approx(2 * c1.gemm_s) and c2.moe_s == pytest.approx(2 * c1.moe_s)
    assert 0.5 * c1.gemm_s <= c5.gemm_s < c1.gemm_s and 0.5 * c1.moe_s <= c5.moe_s < c1.moe_s
    assert c5.attention_s == pytest.approx(c1.attention_s) == pytest.approx(c2.attention_s)
    with pytest.raises(ConfigError, match="kernel_time_scale"):
        build(scen(**oss, engine={"framework": "trtllm", "kernel_time_scale": 0}))
    # the fixed terms: the entry's per architecture, a scenario's time scale carries them, its own wins
    assert s.cost.kernel_fixed_scale == entry.kernel_fixed("blackwell") == s.files["kernel_fixed_scale"]
    assert mine.cost.kernel_fixed_scale == 0.5
    own = build(scen(**oss, engine={"framework": "trtllm", "kernel_time_scale": 0.5, "kernel_fixed_scale": 0.2}))
    assert (own.cost.kernel_time_scale, own.cost.kernel_fixed_scale) == (0.5, 0.2)
    assert own.target_fm.forward(b).gemm_s < c5.gemm_s


def test_tensorrt_llm_cutlass_and_deepgemm_experts_are_calibrated_with_the_ranks_own_slots():
    """The committed TensorRT-LLM MoE fits whose tables its CUTLASS or DeepGEMM experts timed carry
    ``local_slots`` into serving; its min-latency, MXFP4 and A100 (unfused) kernels and every vLLM
    and SGLang fit do not (kernels.LOCAL_SLOT_MOE). A recalibration that lost the switch, or set it
    on a kernel that runs every slot, fails here."""
    flags = {g: {k: v["moe"].get("local_slots") for k, v in CostModel(gpu.load(g), framework=fw)._by_precision.items()
                 if "moe" in v}
             for g, fw in (("h100_sxm", "trtllm"), ("b200_sxm", "trtllm"), ("a100_sxm", "trtllm"))}
    assert flags["h100_sxm"] == {"bf16": 1.0, "fp8": 1.0, "fp8_block": 1.0, "mxfp4": None}
    assert {k: flags["b200_sxm"][k] for k in ("nvfp4", "nvfp4@min_latency", "mxfp4_mxfp8")} == \
        {"nvfp4": 1.0, "nvfp4@min_latency": None, "mxfp4_mxfp8": None}
    assert flags["a100_sxm"] == {"bf16": None}
    for fw in ("vllm", "sglang"):
        fits = CostModel(gpu.load("h100_sxm"), framework=fw)._by_precision.values()
        assert not any("local_slots" in v.get("moe", {}) for v in fits)


def test_mxfp4_experts_run_with_mxfp8_activations_on_blackwell():
    """TensorRT-LLM's default MoE backend on Blackwell, and vLLM's GPT-OSS recipe there, run gpt-oss's
    MXFP4 experts as W4A8 (each framework's own kernel table, w4a8_mxfp4_mxfp8); on Hopper they stay
    W4A16. A scenario's explicit precision wins, and W4A8 MXFP4 off Blackwell is a one-line error."""
    oss = {"model": "gpt-oss-120b", "hardware": {"gpu": "b200_sxm", "tensor_parallel_size": 1}}
    runs = lambda **kw: build(scen(**{**oss, **kw})).files["quantization"]  # noqa: E731
    assert runs(engine={"framework": "trtllm"}) == {"gemm": "bf16", "moe": "mxfp4_mxfp8"}
    assert runs(engine={"framework": "vllm"}) == {"gemm": "bf16", "moe": "mxfp4_mxfp8"}
    assert runs(engine={"framework": "vllm"}, hardware={"gpu": "h100_sxm", "tensor_parallel_size": 2}) == \
        {"gemm": "bf16", "moe": "mxfp4"}
    assert runs(engine={"framework": "trtllm"}, hardware={"gpu": "h100_sxm", "tensor_parallel_size": 2}) == \
        {"gemm": "bf16", "moe": "mxfp4"}
    assert runs(engine={"framework": "trtllm", "quantization": {"moe": "mxfp4"}}) == {"gemm": "bf16", "moe": "mxfp4"}
    w4a8 = build(scen(**oss, engine={"framework": "trtllm"}))
    w4a16 = build(scen(**oss, engine={"framework": "trtllm", "quantization": {"moe": "mxfp4"}}))
    b = Batch(32, 1, 1024.0)
    assert w4a8.pools[0].target_fm.forward(b).moe_s != w4a16.pools[0].target_fm.forward(b).moe_s
    with pytest.raises(ConfigError, match="mxfp4_mxfp8 needs FP4 tensor cores"):
        build(scen(**{**oss, "hardware": {"gpu": "h100_sxm", "tensor_parallel_size": 2}},
                   engine={"framework": "trtllm", "quantization": {"moe": "w4a8_mxfp4_mxfp8"}}))


def test_silicon_rows_average_as_the_benchmark_does():
    """A row's TTFT/TPOT is the benchmark's average over 10 rounds: the first round (all users at
    once) counts once, the steady rounds nine times; with no steady round, the first alone; after
    a warm-up, the steady rounds alone."""
    from simulator.analysis import silicon
    from simulator.analysis.silicon import REQUESTS_PER_USER, protocol_means
    from simulator.serving.metrics import prompts_per_prefill
    from simulator.serving.simulation import simulate
    row = {"model": "Qwen3-30B-A3B", "hardware": {"gpu": "h100_sxm"},
           "workload": {"dataset_name": "fixed", "random_input_len": 2048, "random_output_len": 32,
                        "concurrency": 8, "num_prompts": 24, "measurement": "steady"}}
    _, req, _ = simulate(build(parse(row, "t")))
    first = req.groupby("user").start_s.transform("min") == req.start_s
    assert first.sum() == 8 and req.start_s[first].max() == 0.0        # every user's first leaves at t=0
    steady = req.measured & ~first
    got = protocol_means(req)
    for m in ("ttft", "tpot"):
        f, r = req[f"{m}_s"][first].mean(), req[f"{m}_s"][steady].mean()
        assert got[f"sim_{m}_ms"] == pytest.approx((f + (REQUESTS_PER_USER - 1) * r) / REQUESTS_PER_USER * 1e3)
    # the burst queues: 8 prompts of 2048 tokens share 8192-token steps, so the first round waits longer
    assert req.ttft_s[first].mean() > req.ttft_s[steady].mean()
    alone = protocol_means(req.assign(measured=False))
    assert alone["sim_ttft_ms"] == pytest.approx(req.ttft_s[first].mean() * 1e3)
    # after a warm-up (genai-perf's, in AIConfigurator's gap-analysis runs) the steady rounds alone
    warm = protocol_means(req, warm_up=True)
    assert warm["sim_ttft_ms"] == pytest.approx(req.ttft_s[steady].mean() * 1e3)
    # a row also says how many prompts shared each steady-round prompt's prefill step: at most the four
    # 2048-token prompts an 8192-token step holds
    sim = silicon.simulate_row({"id": "t", "scenario": row})
    assert sim["sim_ttft_ms"] == pytest.approx(got["sim_ttft_ms"])
    assert sim["sim_prompts_per_prefill"] == prompts_per_prefill(req[steady & req.completed])
    assert 1.0 <= sim["sim_prompts_per_prefill"] <= 4.0
    assert silicon.warmed_up({"silicon_data_source": "source_file=/x/aic-auto-gap-analysis/data/a.csv"})
    assert not silicon.warmed_up({"silicon_data_source": "db-dump/2026-04-27; config_id=759"})


def test_silicon_rows_take_the_generators_token_budget():
    """AIConfigurator's generator launches vLLM with max_batch_size + isl + 1500 tokens a step (agg);
    TensorRT-LLM rows keep the simulator's 8,192 (see silicon.GENERATOR_TOKEN_BUDGET); SGLang rows, for
    which it passes no --chunked-prefill-size, SGLang's own default by GPU memory."""
    import csv
    import io
    from simulator.analysis import silicon
    rows = list(csv.DictReader(io.StringIO(
        SILICON_HEADER
        + "a,Qwen/Qwen3-32B,vllm,0.12.0,h100_sxm,bf16,agg,1024,1024,,,8,2,1,1,1,1,154,15.9\n"
        + "b,Qwen/Qwen3-32B,trtllm,1.2.0rc5,h100_sxm,bf16,agg,4096,512,,,16,2,1,1,1,1,700,20\n"
        + "c,Qwen/Qwen3-32B,sglang,0.5.9,h100_sxm,bf16,agg,1024,128,bf16,bf16,16,2,1,1,1,1,841,17\n"
        + "d,Qwen/Qwen3-32B,sglang,0.5.9,b200_sxm,bf16,agg,1024,128,bf16,bf16,16,2,1,1,1,1,841,17\n")))
    for r in rows:
        r["silicon_data_source"] = f"x; silicon_concurrency={r['batch_size']}"
    eng = {r["id"]: silicon.scenario(r)["engine"] for r in rows}
    assert eng["a"]["max_num_seqs"] == 8 and eng["a"]["max_num_batched_tokens"] == 8 + 1024 + 1500
    assert eng["b"]["max_num_batched_tokens"] == 8192
    assert "max_num_batched_tokens" not in eng["c"]
    sglang = {r["id"]: build(parse(silicon.scenario(r), "row")).cfg.max_num_batched_tokens for r in rows[2:]}
    assert sglang == {"c": 8192, "d": 16384}


def test_rows_of_a_campaign_that_ran_mtp_draft_with_it_and_say_so():
    """AIConfigurator's TensorRT-LLM DeepSeek-R1 campaigns of 2026-01-14 and 2026-02-05/06 ran MTP (the
    same release measured the same configurations at about half the TPOT on another date:
    silicon_campaigns.MTP_CAMPAIGNS): their rows draft one token with the MTP layer at 0.85 acceptance,
    and their assumption says so. The same configuration measured on another date, and a model with no
    MTP layer in the same campaign, run without a draft; and the draft makes the simulated TPOT lower."""
    import csv
    import io
    from simulator.analysis import silicon
    base = "trtllm,1.2.0rc6.post3,b200_sxm,fp8,agg,1024,1024,fp8,fp8,8,8,1,1,8,1,200,5"
    rows = list(csv.DictReader(io.StringIO(
        SILICON_HEADER + f"mtp,deepseek-ai/DeepSeek-R1,{base}\nlater,deepseek-ai/DeepSeek-R1,{base}\n"
        + "oss,openai/gpt-oss-120b,trtllm,1.2.0rc6.post3,b200_sxm,fp8,agg,1024,1024,,,8,8,1,1,8,1,200,5\n")))
    for r, day in zip(rows, ("2026-02-05T17:21:58Z", "2026-02-07T10:00:00Z", "2026-02-05T17:21:58Z")):
        r["silicon_data_source"] = f"source_file=x.csv; silicon_concurrency=8; measured={day}; wip=False"
    by = {r["id"]: r for r in rows}
    sc = {k: silicon.scenario(r) for k, r in by.items()}
    assert sc["mtp"]["speculative_config"] == {"method": "mtp", "num_speculative_tokens": 1, "acceptance": {"rate": 0.85}}
    assert "speculative_config" not in sc["later"] and "speculative_config" not in sc["oss"]
    assert "MTP layer" in silicon.assumption(by["mtp"]) and "2026-02-05" in silicon.assumption(by["mtp"])
    assert silicon.assumption(by["later"]) == "" and silicon.assumption(by["oss"]) == ""
    tpot = {k: silicon.simulate_row({"id": k, "scenario": sc[k]})["sim_tpot_ms"] for k in ("mtp", "later")}
    assert tpot["mtp"] < 0.8 * tpot["later"]


def test_tensorrt_llm_sizes_kv_from_the_memory_left_free():
    """vLLM/SGLang: utilization x GPU memory, less activations and weights; TensorRT-LLM
    (kv_memory: free): utilization x (GPU memory less activations and weights)."""
    from simulator.config.framework import step_entry
    from simulator.config.model import load as load_model
    from simulator.serving import memory
    hw, m = gpu.load("h100_sxm"), load_model("Qwen3-32B")
    assert step_entry("trtllm").kv_memory == "free" and step_entry("vllm").kv_memory == "total"
    w = m.weight_bytes() / 2
    per_block = memory.kv_bytes_per_token(m, 2) * 16
    total = memory.kv_blocks(m, None, hw, 2, 0.8, 16)
    free = memory.kv_blocks(m, None, hw, 2, 0.8, 16, of_free=True)
    assert total == int((hw.memory_bytes * 0.8 - memory.ACTIVATION_RESERVE_BYTES - w) // per_block)
    assert free == int(((hw.memory_bytes - memory.ACTIVATION_RESERVE_BYTES - w) * 0.8) // per_block)
    assert free > total


def test_sglang_takes_its_own_token_budget_by_gpu_memory_when_a_scenario_sets_none():
    """SGLang's chunked_prefill_size default: 8,192 below 160 GiB (H100, H200), 16,384 above (B200,
    GB200). vLLM keeps 8,192; a scenario's own engine.max_num_batched_tokens always wins; the summary
    states the budget used."""
    got = {}
    for g in ("h100_sxm", "h200_sxm", "b200_sxm", "gb200"):
        for fw in ("sglang", "vllm"):
            got[g, fw] = build(scen(hardware={"gpu": g}, engine={"framework": fw})).files["max_num_batched_tokens"]
    assert got == {("h100_sxm", "sglang"): 8192, ("h200_sxm", "sglang"): 8192, ("b200_sxm", "sglang"): 16384,
                   ("gb200", "sglang"): 16384, **{(g, "vllm"): 8192 for g in ("h100_sxm", "h200_sxm", "b200_sxm", "gb200")}}
    mine = build(scen(hardware={"gpu": "b200_sxm"}, engine={"framework": "sglang", "max_num_batched_tokens": 4096}))
    assert mine.cfg.max_num_batched_tokens == 4096


def test_interleaved_moe_layers_alternate_with_dense_ones():
    """Llama-4-Maverick: every second layer MoE (interleave_moe_layer_step 2), the others dense FFNs of
    16384. Its MoE time is half that of the same model with every layer MoE; its dense layers add GEMM
    time the all-MoE copy lacks; a step that leaves no MoE layer is refused."""
    mav = model.load("Llama-4-Maverick-17B-128E")
    assert mav.num_moe_layers == 24 and [i for i in range(6) if mav.is_moe_layer(i)] == [1, 3, 5]
    assert round(sum(mav.parameter_count().values()) / 1e9) == 401       # Meta: ~400B in all, 17B active
    every = mav.model_copy(update={"moe": mav.moe.model_copy(update={"moe_layer_step": 1})})
    cm = CostModel("h200_sxm")
    a = ForwardModel(mav, cm, Parallel(tensor_parallel_size=8)).forward(Batch(16, 1, 1000.0))
    b = ForwardModel(every, cm, Parallel(tensor_parallel_size=8)).forward(Batch(16, 1, 1000.0))
    assert a.moe_s == pytest.approx(b.moe_s / 2, rel=1e-9) and a.gemm_s > b.gemm_s
    ds = model.load("DeepSeek-V3")
    assert ds.num_moe_layers == 58 and not ds.is_moe_layer(2) and ds.is_moe_layer(3)
    with pytest.raises(Exception, match="leave no MoE layer"):
        model.ModelArch(**{**mav.model_dump(), "moe": {**mav.moe.model_dump(), "moe_layer_step": 49}})


def test_mxfp4_experts_are_priced_and_sized_at_the_frameworks_padded_widths():
    """vLLM pads gpt-oss's MXFP4 experts to multiples of 256 on Blackwell (width per rank and hidden),
    TensorRT-LLM to 128 and 512, vLLM on Hopper to 64 (width only): the kernel runs and the GPU holds
    the padded matrices. At TP 8 gpt-oss-120b's 360-wide experts run 512 wide, as 4096-wide ones would."""
    oss = model.load("gpt-oss-120b")
    assert (oss.hidden_size, oss.moe.moe_intermediate_size) == (2880, 2880)
    mx = precision.get("mxfp4_mxfp8")
    assert precision.expert_padding("mxfp4_mxfp8", "vllm", "blackwell") == (256, 256)
    assert precision.expert_padding("mxfp4", "vllm", "hopper") == (64, 1)
    assert precision.expert_padding("fp8", "vllm", "blackwell") == (1, 1)
    cm = CostModel("b200_sxm", framework="vllm", use_tables=False)
    counts = np.full(128, 4)
    assert cm.moe_latency_s(counts, 2880, 2880, 4, tp=8, prec=mx) == cm.moe_latency_s(counts, 3072, 4096, 4, tp=8, prec=mx)
    trt = CostModel("b200_sxm", framework="trtllm", use_tables=False)
    assert trt.expert_pad(mx) == (128, 512)
    assert memory.padded_growth(oss, 8, (256, 256)) == pytest.approx(512 * 3072 / (360 * 2880))
    assert memory.padded_growth(oss, 1, (64, 1)) == pytest.approx(2880 / 2880 * 1.0) == 1.0   # 2880 = 45 x 64
    # the padded experts take their room from the KV cache, exactly the extra bytes
    hw = gpu.load("b200_sxm")
    args = (oss, None, hw, 8, 0.9, 16, 2.0, "test", None)
    extra = oss.expert_weight_bytes() * (memory.padded_growth(oss, 8, (256, 256)) - 1.0) / 8
    per_block = memory.kv_bytes_per_token(oss, 8) * 16
    lost = memory.kv_blocks(*args) - memory.kv_blocks(*args, expert_pad=memory.padded_growth(oss, 8, (256, 256)))
    assert abs(lost - extra / per_block) <= 1
    run = build(scen(model="gpt-oss-120b", hardware={"gpu": "b200_sxm", "tensor_parallel_size": 8},
                     engine={"framework": "vllm"}))
    eng = run.scenario.engine
    sized = lambda pad: memory.kv_blocks(oss, None, hw, 8, eng.gpu_memory_utilization, eng.block_size, 2.0,  # noqa: E731
                                         expert_pad=pad)
    assert run.cfg.num_blocks == sized(memory.padded_growth(oss, 8, (256, 256))) < sized(1.0)


def test_block_fp8_experts_split_into_partial_scale_blocks_are_refused():
    """vLLM and SGLang refuse FP8 block-scaled experts whose width per rank is not a multiple of the
    128-wide scale blocks ("The output_size of gate's and up's weight = 192 is not divisible by weight
    quantization block_n = 128"): Qwen3-235B-A22B-FP8 (1536 wide) at TP 8. Expert parallel keeps each
    expert whole and runs; TP 4 (384 wide) runs too."""
    q = {"model": "Qwen3-235B-A22B", "hardware": {"gpu": "h200_sxm", "tensor_parallel_size": 8}}
    for fw in ("vllm", "sglang"):
        with pytest.raises(ConfigError, match="192 wide per rank at MoE TP 8, not a multiple of the 128-wide") as e:
            build(scen(**q, engine={"framework": fw, "quantization": "fp8_block"}))
        assert e.value.field == "hardware.tensor_parallel_size" and "\n" not in str(e.value)
        build(scen(**{**q, "hardware": {**q["hardware"], "enable_expert_parallel": True}},
                   engine={"framework": fw, "quantization": "fp8_block"}))
    build(scen(**{**q, "hardware": {"gpu": "h200_sxm", "tensor_parallel_size": 4}},
               engine={"framework": "vllm", "quantization": "fp8_block"}))
    build(scen(**q, engine={"framework": "vllm", "quantization": "fp8"}))     # per-tensor scales: no blocks


def test_fp8_asked_of_a_block_scaled_checkpoint_is_priced_as_asked_and_says_what_the_frameworks_run():
    """DeepSeek-V3's checkpoint stores 128x128 block-scaled FP8, which vLLM, SGLang and TensorRT-LLM run
    block-scaled whatever the flag. `fp8` is still priced per tensor, as documented, but the run says
    so; its own precision (unset, or fp8_block) and a model stored in bf16 carry no note."""
    base = {"name": "q", "model": "DeepSeek-V3", "hardware": {"gpu": "h200_sxm", "tensor_parallel_size": 8},
            "workload": {"random_input_len": 128, "random_output_len": 16, "num_prompts": 4}}
    def note(q, m="DeepSeek-V3"):
        eng = {} if q is None else {"quantization": q}
        return build(parse({**base, "model": m, "engine": eng}, "q")).files["quantization_note"]
    assert "gemm and moe priced as per-tensor fp8" in note("fp8") and "fp8_block" in note("fp8")
    assert "moe priced as per-tensor fp8" in note({"gemm": "fp8_block", "moe": "fp8"})
    assert note(None) is None and note("fp8_block") is None
    assert note("fp8", "Qwen3-30B-A3B") is None
