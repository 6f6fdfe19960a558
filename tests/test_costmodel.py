import numpy as np
import pytest

from simulator.cost.costmodel import CostModel
from simulator.common.errors import ConfigError
from simulator.cost.routing import expected_count_vector


@pytest.fixture(scope="module")
def cm():
    return CostModel("h100_sxm")


def _benchmark(name: str):
    """A script of benchmarks/ loaded as a module (they are scripts, not a package)."""
    import importlib.util
    from simulator.common.paths import REPO_ROOT
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gemm_monotone_in_tokens(cm):
    lat = [cm.gemm(m, 4096, 4096).latency_s for m in (1, 64, 512, 2048, 8192)]
    assert lat[-1] > lat[0] * 5
    roof = [cm.gemm(m, 4096, 4096).compute_s for m in (256, 1024, 4096)]
    assert roof == sorted(roof)


def test_moe_bytes_grow_with_active_experts(cm):
    costs = [cm.moe_from_counts(expected_count_vector(t, 64, 8), 3584, 2560, 8, tp=2) for t in (1, 2, 4, 8, 32)]
    active = [c.extra["active_experts"] for c in costs]
    wbytes = [c.extra["weight_bytes"] for c in costs]
    assert active == sorted(active) and wbytes == sorted(wbytes)
    assert costs[-1].latency_s > 3 * costs[0].latency_s


def test_l2_residency_follows_the_timed_working_set(cm):
    """Under benchmark conditions (L2 warm) a GEMM whose weights fit in L2 runs faster than HBM
    allows, unless the timed loop cycles through enough copies to spill it; same for MoE experts."""
    from simulator.cost import kernels
    hw, p = cm.hw, cm.params["gemm"]
    one = kernels.gemm(hw, p, 1, 2048, 2048, l2_warm=True)["latency_s"]            # 8 MB of weights
    six = kernels.gemm(hw, p, 1, 2048, 2048, l2_warm=True, l2_weight_copies=30)["latency_s"]
    cold = kernels.gemm(hw, p, 1, 2048, 2048, l2_warm=False)["latency_s"]
    assert one < six <= cold * (1 + 1e-9)
    pm = cm.params["moe"]
    args = (8, 8, 128, 1, 8, 2048, 768)
    hot = kernels.moe(hw, pm, *args, l2_warm=True)["latency_s"]
    spilled = kernels.moe(hw, pm, *args, l2_warm=True, l2_experts=40)["latency_s"]
    assert hot < spilled


def test_local_slot_kernels_pass_only_the_ranks_own_slots_through_their_elementwise_kernels(cm):
    """TensorRT-LLM's fused MoE permutes, activates and finalizes only the token-slots routed to the
    rank's experts; the Triton fused MoE every slot. Under expert parallel (64 of 512 slots local) the
    first's elementwise term is 1/8 of the second's; without it (all slots local) the two agree. A fit
    switches it on only when every row's kernel is one of those."""
    import pandas as pd
    from simulator.cost import calibration, kernels
    hw, pm = cm.hw, dict(cm.params["moe"])
    args = (8, 64, 64, 64, 8, 4096, 1024)          # 8 active experts, 64 slots, 64 tokens x top-8
    every = kernels.moe(hw, pm, *args, ep_size=8)
    own = kernels.moe(hw, {**pm, "local_slots": 1.0}, *args, ep_size=8)
    assert own["elementwise_s"] == pytest.approx(every["elementwise_s"] / 8)
    assert own["latency_s"] < every["latency_s"]
    alone = (8, 512, 512, 64, 8, 4096, 1024)        # every slot on the rank
    assert kernels.moe(hw, {**pm, "local_slots": 1.0}, *alone)["latency_s"] == \
        pytest.approx(kernels.moe(hw, pm, *alone)["latency_s"])
    rows = pd.DataFrame({"kernel_source": ["moe_torch_flow_cutlass", "deepgemm"]})
    assert calibration.kernel_structure("moe", rows) == {"local_slots": 1.0}
    assert calibration.kernel_structure("moe", rows.assign(kernel_source=["moe_torch_flow_cutlass",
                                                                          "sglang_fused_moe_triton"])) == {}
    assert calibration.kernel_structure("gemm", rows) == {}


def test_dense_ffn_is_the_e_equals_k_case(cm):
    c = cm.moe_from_counts(np.full(4, 16), 4096, 4096, 4)
    assert c.extra["active_experts"] == 4
    assert c.extra["tokens_per_active_expert"] == 16
    assert c.extra["weight_bytes"] == 4 * 3 * 4096 * 4096 * 2


def test_moe_tokens_monotone_past_full_activation(cm):
    lat = [cm.moe(t, 2048, 768, 128, 8, distribution="uniform").latency_s for t in (64, 512, 4096)]
    assert lat == sorted(lat)


def test_qwen2_57b_unmeasured_shape_is_predicted(cm):
    c = cm.moe(16, 3584, 2560, 64, 8, tp=2)
    assert c.path in ("roofline+neighbours", "roofline")
    # memory bound: ~all 64 experts' weights (3 x 3584 x 1280 x 2 B each) over ~3 TB/s
    lower = 60 * 3 * 3584 * 1280 * 2 / 3.35e12
    assert lower < c.latency_s < 4 * lower


def test_verification_attention_costs_more_than_decode(cm):
    d1 = cm.attention_decode(32, 2048, 16, 2, 128, q_len=1).latency_s
    d4 = cm.attention_decode(32, 2048, 16, 2, 128, q_len=4).latency_s
    assert d4 >= d1


def test_transferred_gpu_says_so():
    c = CostModel("h20").gemm(16, 4096, 4096)
    assert c.as_dict()["calibration"] == "uncalibrated, transferred from h100_sxm"
    assert CostModel("h200_sxm").gemm(16, 4096, 4096).as_dict()["calibration"] == "calibrated on h200_sxm"   # own tables
    # H20 has more HBM bandwidth than H100 (4.0 vs 3.35 TB/s): a memory-bound GEMM is faster
    assert c.latency_s < CostModel("h100_sxm").gemm(16, 4096, 4096).latency_s


@pytest.mark.parametrize("call,field", [
    (lambda cm: cm.gemm(0, 10, 10), "m"),
    (lambda cm: cm.gemm(4, -1, 10), "n"),
    (lambda cm: cm.moe(4, 4096, 1024, 8, 9), "topk"),
    (lambda cm: cm.attention_decode(0, 10, 8, 8, 128), "batch_size"),
])
def test_bad_input_names_the_field(cm, call, field):
    with pytest.raises(ConfigError) as e:
        call(cm)
    assert field in str(e.value) and "\n" not in str(e.value)


def test_unknown_gpu():
    with pytest.raises(ConfigError, match="unknown gpu 'h999'.*allowed"):
        CostModel("h999")


def test_cached_lookup_does_not_depend_on_what_ran_before():
    """Residual corrections are cached per 1/64-octave size bucket; the value must be the bucket's,
    not that of whichever size happened to fill the cache first."""
    sizes = [m for m in range(590, 640) if round(np.log2(m) * 64) == round(np.log2(600) * 64)]
    assert len(sizes) >= 2
    a, b = CostModel("h100_sxm"), CostModel("h100_sxm")
    a.gemm(sizes[0], 4096, 3584)
    assert a.gemm(sizes[-1], 4096, 3584).latency_s == b.gemm(sizes[-1], 4096, 3584).latency_s


def test_tabulated_paths_equal_the_per_call_api(cm):
    """The engine prices steps through vectorised tables; they must equal the per-call API."""
    from simulator.cost.routing import Routing
    ms = np.arange(1, 3000, 7)
    per_call = np.array([cm.gemm(int(m), 4096, 3584).latency_s for m in ms])
    np.testing.assert_allclose(cm.gemm_latency_s(ms, 4096, 3584), per_call, rtol=1e-12)
    ctx = 2.0 ** (np.arange(60) / 4)
    per_call = np.array([cm.attention_decode(37, float(c), 14, 2, 128, 4).latency_s for c in ctx])
    np.testing.assert_allclose(cm.attention_decode_latency_s(37, ctx, 14, 2, 128, 4), per_call, rtol=1e-12)
    msg = np.array([1e3, 1e5, 3e6])
    per_call = np.array([cm.allreduce(float(b), 2).latency_s for b in msg])
    np.testing.assert_allclose(cm.allreduce_latency_s(msg, 2), per_call, rtol=1e-12)
    rng = np.random.default_rng(0)
    for T in (1, 3, 17, 130, 527):
        for ep in (1, 2, 4):
            c = Routing("power_law", exponent=1.0).sample_counts([T], 64, 8, rng)
            assert cm.moe_latency_s(c, 3584, 2560, 8, 2, ep) == pytest.approx(
                cm.moe_from_counts(c, 3584, 2560, 8, 2, ep).latency_s, rel=1e-12)


def test_scalar_and_vector_twins_agree():
    """The two kept twins (see CostModel._factor and CostModel._moe_loads) give the same numbers."""
    import numpy as np
    cm = CostModel("h100_sxm")
    rng = np.random.default_rng(3)
    counts = rng.multinomial(64 * 8, np.ones(64) / 64, size=20)
    counts[3] = 0
    counts[4, :8] = 8                              # ties across ranks
    for ep in (1, 2, 4, 8):
        many = cm.moe_loads_many(counts, 8, ep)
        assert [m[0] for m in many] == [cm._moe_loads(c, 8, ep) for c in counts]
        assert [m[1] for m in many] == np.count_nonzero(counts, axis=1).tolist()
    sizes = np.array([1, 3, 17, 100, 1000, 4097])
    vec = cm._factors("gemm", (4096, 4096), (), sizes)
    assert vec.tolist() == [cm._factor("gemm", (4096, 4096), (), s)[0] for s in sizes]
    assert len(set(vec.tolist())) > 1               # residuals are in play (not all 1.0)


@pytest.mark.parametrize("gpu,src", [("b300_sxm", "b200_sxm"), ("gb300", "gb200"), ("h100_pcie", "h100_sxm")])
def test_new_transferred_specs_say_where_their_efficiencies_come_from(gpu, src):
    """Datasheet-only GPUs price with a calibrated neighbour's efficiencies and say so; their own
    bandwidth still counts (H100 PCIe's 2.0 TB/s against the SXM's 3.35 makes a memory-bound GEMM slower)."""
    c = CostModel(gpu).gemm(16, 8192, 8192)
    assert c.as_dict()["calibration"] == f"uncalibrated, transferred from {src}"
    if gpu == "h100_pcie":
        assert c.latency_s > CostModel("h100_sxm").gemm(16, 8192, 8192).latency_s * 1.3


def test_kernel_time_scale_scales_gemm_and_moe_only():
    """The serving-path scale is exact at every shape (the formulas are homogeneous in their times and
    rates), on the scalar and the tabulated paths; attention and all-reduce are untouched."""
    from simulator.config import precision
    a = CostModel("b200_sxm", framework="trtllm")
    b = CostModel("b200_sxm", framework="trtllm", kernel_time_scale=1.6)
    fp4 = precision.get("nvfp4")
    for m in (1, 64, 8192):
        assert b.gemm(m, 8192, 8192, fp4).latency_s == pytest.approx(1.6 * a.gemm(m, 8192, 8192, fp4).latency_s)
    ms = np.array([1, 32, 4096])
    np.testing.assert_allclose(b.gemm_latency_s(ms, 7168, 2048, fp4), 1.6 * a.gemm_latency_s(ms, 7168, 2048, fp4))
    for T in (1, 256):
        assert b.moe(T, 7168, 2048, 256, 8, 1, 8, prec=fp4).latency_s == pytest.approx(
            1.6 * a.moe(T, 7168, 2048, 256, 8, 1, 8, prec=fp4).latency_s)
    assert b.attention_decode(16, 2048, 64, 8, 128).latency_s == a.attention_decode(16, 2048, 64, 8, 128).latency_s
    assert b.allreduce(1e6, 8).latency_s == a.allreduce(1e6, 8).latency_s


def test_kernel_fixed_scale_scales_the_fixed_terms_apart():
    """With the fixed terms on their own scale f and the rest on s, a kernel takes f x its fixed part
    + s x the rest, at every shape: the fixed part is what is left at f = 0 taken from f = 1."""
    from simulator.config import precision
    fp4 = precision.get("nvfp4")
    cm = lambda s, f: CostModel("b200_sxm", framework="trtllm", kernel_time_scale=s, kernel_fixed_scale=f)  # noqa: E731
    one, rest, mix = cm(1.0, 1.0), cm(1.0, 0.0), cm(1.6, 0.7)
    for m in (1, 64, 8192):
        full, var = one.gemm(m, 7168, 2048, fp4).latency_s, rest.gemm(m, 7168, 2048, fp4).latency_s
        assert 0 < var < full
        assert mix.gemm(m, 7168, 2048, fp4).latency_s == pytest.approx(0.7 * (full - var) + 1.6 * var)
    for T in (1, 256):
        full, var = (c.moe(T, 7168, 2048, 256, 8, 1, 8, prec=fp4).latency_s for c in (one, rest))
        assert mix.moe(T, 7168, 2048, 256, 8, 1, 8, prec=fp4).latency_s == pytest.approx(0.7 * (full - var) + 1.6 * var)
    # unset, the fixed terms follow the time scale
    assert CostModel("b200_sxm", framework="trtllm", kernel_time_scale=0.4).kernel_fixed_scale == 0.4


def test_a_time_scale_below_one_stops_at_the_datasheet():
    """A scale below 1 shortens a kernel until its compute or memory term would beat the tensor cores'
    or HBM's peak: an FP8 expert batch that reads every local expert's weights (DeepSeek, EP 8, 256
    tokens) stays at or above those bytes over HBM bandwidth however small the scale, and a large
    GEMM at or above its FLOPs over the tensor-core peak."""
    from simulator.config import precision
    from simulator.cost import kernels
    fp8b = precision.get("fp8_block")
    one = CostModel("b200_sxm", framework="trtllm")
    hbm = one.hw.hbm_bytes_per_s
    for s in (0.53, 0.2):
        cm = CostModel("b200_sxm", framework="trtllm", kernel_time_scale=s)
        big = cm.moe(256, 7168, 2048, 256, 8, 1, 8, prec=fp8b)
        assert big.memory_s >= 32 * 3 * 7168 * 2048 * fp8b.weight_bytes / hbm
        assert big.latency_s > s * one.moe(256, 7168, 2048, 256, 8, 1, 8, prec=fp8b).latency_s
        assert cm.gemm(1, 24576, 7168, fp8b).memory_s >= 24576 * 7168 * fp8b.weight_bytes / hbm
        dense = cm.gemm(8192, 8192, 8192, fp8b)
        assert dense.compute_s >= 2 * 8192 ** 3 / cm.hw.peak_flops_per_s(fp8b.tensor_core)
    # the efficiencies themselves: raised by 1 / scale up to 1, never lowered, kept where fitted above 1
    p = {"eff_compute": 0.4, "eff_memory": 0.9, "eff_elementwise": 2.0, "overhead_s": 1e-5, "k_loop_s": 1e-9}
    q = kernels.time_scaled("gemm", p, 0.5)
    assert (q["eff_compute"], q["eff_memory"], q["overhead_s"]) == (0.8, 1.0, 5e-6)
    assert kernels.time_scaled("gemm", {**p, "eff_memory": 1.1}, 0.5)["eff_memory"] == 1.1


def test_the_scale_fit_reads_one_scale_below_1_from_its_simulated_points():
    """benchmarks/fit_kernel_scale.py: a row's TPOT is linear in (time, fixed) scales from 1 up and
    piecewise linear below (a kernel stops at the datasheet peak): a TPOT of 5 + 10 max(s, 0.6) + 2 f
    comes back exactly at and above 1 and at the simulated points, within the kink's segment between."""
    fks = _benchmark("fit_kernel_scale")
    tpot = lambda s, f: 5 + 10 * max(s, 0.6) + 2 * f       # noqa: E731
    import pandas as pd
    t = pd.DataFrame({f"{m}_{k}": [tpot(*sf)] for k, sf in fks.RUNS.items() for m in ("tpot", "ttft")})
    for s in (1.3, 1.0, 0.8, 0.65, 0.5, 0.4, 0.3):
        assert fks.at_one(t, "tpot", s)[0] == pytest.approx(tpot(s, s))
    assert tpot(0.6, 0.6) <= fks.at_one(t, "tpot", 0.6)[0] <= tpot(0.6, 0.6) + 0.5
    assert fks.at(t, "tpot", 1.2, 0.5)[0] == pytest.approx(tpot(1.2, 0.5))
    assert fks.APART.min() >= 1.0


def test_unmeasured_moe_shape_takes_three_quarters_of_its_neighbours_weighted_median_correction():
    """A measured shape gets its own residual back; an unmeasured MoE shape 3/4 of the inverse-
    distance-weighted median of its neighbours' (one far-off neighbour cannot drag it), GEMM their mean."""
    import pandas as pd
    from simulator.cost.residuals import ResidualTable
    shapes = [2048, 8192, 16384]
    rows = pd.DataFrame({"hidden_size": shapes, "inter_size": [1024] * 3, "num_experts": [64] * 3,
                         "topk": [8] * 3, "moe_tp_size": [1] * 3, "moe_ep_size": [1] * 3,
                         "distribution": ["balanced"] * 3, "num_tokens": [64] * 3,
                         "log_residual": [0.2, 0.6, 1.5]})
    t = ResidualTable.build("moe", rows)
    key = (1, 1, "balanced")
    assert t.lookup((2048, 1024, 64, 8), key, 64) == (pytest.approx(0.2), "table")
    # 4096 sits 1 (log2) from 2048 and 8192, 2 from 16384: weights 1/(1.05)^2 twice and 1/(4.05)^2;
    # the half-weight point falls on 0.6 (sorted 0.2, 0.6, 1.5), where a mean would give ~0.44
    corr, path = t.lookup((4096, 1024, 64, 8), key, 64)
    assert path == "roofline+neighbours" and corr == pytest.approx(0.75 * 0.6)
    # nearest to 2048 (1024 sits 1 below it), the median is 2048's own 0.2
    assert t.lookup((1024, 1024, 64, 8), key, 64)[0] == pytest.approx(0.75 * 0.2)
    g = ResidualTable.build("gemm", pd.DataFrame({"n": [1024, 4096], "k": [1024, 1024], "m": [8, 8],
                                                  "log_residual": [0.2, 0.6]}))
    assert g.lookup((2048, 1024), (), 8)[0] == pytest.approx(0.4)


def test_unmeasured_triton_moe_shape_takes_the_correction_of_series_with_its_tile_config():
    """Triton fused-MoE kernels pick tiles per (experts per rank, width per rank): an unmeasured shape
    takes the median correction of the measured series with that key and its routing, at any layout,
    not its neighbours' at its own layout. Other kernels, and the stored calibration, keep the rule."""
    import pandas as pd
    from simulator.cost import calibration
    from simulator.cost.residuals import ResidualTable
    def series(h, i, e, k, tp, res, dist="balanced"):
        return dict(hidden_size=h, inter_size=i, num_experts=e, topk=k, moe_tp_size=tp, moe_ep_size=1,
                    distribution=dist, num_tokens=1024, log_residual=res)
    rows = pd.DataFrame([series(4096, 1536, 128, 8, 1, 0.0), series(6144, 3072, 128, 4, 1, 0.1),
                         series(4096, 1536, 128, 8, 2, -0.7), series(6144, 3072, 128, 4, 4, -0.5),
                         series(6144, 3072, 128, 4, 4, 0.9, "power_law_1.2")])    # E 128 / N 768 at TP 2 and 4
    qwen3_30b, key = (2048, 768, 128, 8), (1, 1, "balanced")                      # E 128 / N 768 at TP 1
    tiled = ResidualTable.build("moe", rows.assign(tile_keyed=True))
    assert tiled.lookup(qwen3_30b, key, 1024) == (pytest.approx(-0.6), "roofline+same-tiles")
    assert tiled.lookup((4096, 1536, 128, 8), key, 1024) == (pytest.approx(0.0), "table")
    # no series shares E 64 / N 768: the neighbours' rule, as for every other kernel
    assert tiled.lookup((2048, 768, 64, 8), key, 1024)[1] == "roofline+neighbours"
    plain = ResidualTable.build("moe", rows)
    corr, path = plain.lookup(qwen3_30b, key, 1024)
    assert path == "roofline+neighbours" and corr == pytest.approx(0.0)    # the nearest shape's, 4096/1536
    # the stored calibration: MoE and GEMM rows in one file, the GEMM rows reading NaN for the flag
    gemm = ResidualTable.build("gemm", pd.DataFrame({"n": [1024], "k": [1024], "m": [8], "log_residual": [0.2]}))
    stored = pd.concat([tiled.to_frame(), gemm.to_frame()], ignore_index=True)
    assert ResidualTable.from_frame("moe", stored).lookup(qwen3_30b, key, 1024) == \
        (pytest.approx(-0.6), "roofline+same-tiles")
    assert ResidualTable.from_frame("gemm", stored).lookup((2048, 1024), (), 8) == \
        (pytest.approx(0.2), "roofline+neighbours")
    kernels = pd.DataFrame([dict(rows.iloc[0].drop("log_residual"), latency_ms=1.0, kernel_source=k)
                            for k in ("sglang_fused_moe_triton", "moe_torch_flow_cutlass")])
    assert calibration.residual_rows("moe", kernels, np.array([1e-3, 1e-3])).tile_keyed.tolist() == [True, False]


def test_table_noise_scores_a_cell_against_its_shapes_level_and_the_shared_departure():
    """benchmarks/table_noise.py: in the flat region (<= 16 tokens) a cell is read as its shape's
    level times the departure every shape shares at its token count, so a 1.5x bump all three shapes
    make is predicted exactly, and one shape's lone 2x spike is off by exactly half."""
    import pandas as pd
    tn = _benchmark("table_noise")
    rows = [dict(n=n, k=1024, m=m, latency_ms=level * (1.5 if m == 8 else 1.0) * (2.0 if (n, m) == (1024, 4) else 1.0))
            for n, level in ((1024, 0.010), (2048, 0.020), (4096, 0.040)) for m in [*range(1, 17), 32]]
    rel = tn.levels(pd.DataFrame(rows))
    err = pd.Series(tn.own_scatter(rel), index=rel.index)
    assert len(err) == 48 and err[(1024, 1024, 4)] == pytest.approx(0.5)
    assert err.drop((1024, 1024, 4)).abs().max() < 1e-12


def test_moe_layout_noise_leaves_only_what_neither_the_shape_nor_the_layout_explains():
    """benchmarks/moe_layout_noise.py: a table whose log ratio is a shape level plus a layout effect
    has no interaction; one shape timed 3x at one layout (at every token count, as TensorRT-LLM's
    Hopper MoE tables do) is that cell's interaction alone, and recurs only where it is repeated."""
    import pandas as pd
    mln = _benchmark("moe_layout_noise")
    shapes = [(2048, 768, 128, 8), (4096, 1536, 128, 8), (7168, 2048, 256, 8), (6144, 2560, 160, 8)]
    layouts = [(1, 1), (2, 1), (1, 8), (4, 4)]
    rows = [dict(zip(mln.SHAPE + mln.LAYOUT, s + lay), num_tokens=t, distribution="balanced",
                 lr=0.1 * i + 0.3 * j + 0.01 * np.log2(t) + (np.log(3.0) if (i, j) == (2, 3) else 0.0))
            for i, s in enumerate(shapes) for j, lay in enumerate(layouts) for t in (1, 64, 4096)]
    df = pd.DataFrame(rows)
    e = mln.interactions(df.drop(columns="lr"), df.lr.values)
    assert len(e) == 48
    cells = e.index.to_frame(index=False)
    odd = ((cells.hidden_size == 7168) & (cells.moe_tp_size == 4)).values
    assert odd.sum() == 3 and (e[odd] > np.log(2.0)).all() and e[~odd].abs().max() < np.log(1.25)
    mln.MIN_SHARED = 10
    assert mln.recurrence(e, e).endswith(", 3 of 3") and mln.recurrence(e, -e).endswith(", 0 of 3")


def test_gemm_corrections_are_read_without_isolated_spikes(monkeypatch):
    """A shape timed 2.7x slow at one token count between two that agree (a collector glitch, as in
    vLLM 0.24's FP8 GEMMs on B200) is read as the mean of those two there, by itself and by its
    unmeasured neighbours; a departure every shape shares at that token count is read as measured."""
    import pandas as pd
    from simulator.cost import residuals
    from simulator.cost.residuals import ResidualTable
    ms, spike = [16, 32, 48, 64, 80], float(np.log(2.7))
    def shape(n, k, res):
        return pd.DataFrame({"n": n, "k": k, "m": ms, "log_residual": res})
    flat = [0.1] * 5
    t = ResidualTable.build("gemm", pd.concat([shape(1024, 1024, [0, 0, spike, 0, 0]), shape(4096, 1024, flat),
                                               shape(1024, 4096, flat)]))
    assert t.lookup((1024, 1024), (), 48) == (pytest.approx(0.0), "table")
    assert t.lookup((4096, 1024), (), 48) == (pytest.approx(0.1), "table")
    corr, path = t.lookup((2048, 1024), (), 48)
    assert path == "roofline+neighbours" and corr == pytest.approx(t.lookup((2048, 1024), (), 32)[0])
    # a bump of about 1.8x at 48 tokens in every shape is structure (a kernel switch), lent as measured
    rows = pd.concat([shape(1024, 1024, [0, 0, 0.5, 0, 0]), shape(4096, 1024, [0.1, 0.1, 0.7, 0.1, 0.1]),
                      shape(1024, 4096, [0.1, 0.1, 0.8, 0.1, 0.1])])
    monkeypatch.setattr(residuals, "_DESPIKE", {})
    raw = ResidualTable.build("gemm", rows).lookup((2048, 1024), (), 48)[0]
    monkeypatch.undo()
    assert ResidualTable.build("gemm", rows).lookup((2048, 1024), (), 48)[0] == pytest.approx(raw)


def test_eagle3_head_qkv_reads_twice_the_hidden_width(cm):
    """An EAGLE-3 head's decoder layer projects [token embedding; fused hidden state] to q/k/v: its
    weights and its GEMM are 2 x hidden deep, and nothing else about the layer changes."""
    from simulator.config import model
    from simulator.cost.forward import ForwardModel, Parallel
    head = model.load("EAGLE3-Llama-3.1-8B")
    flat = head.model_copy(update={"qkv_in_multiplier": 1})
    h, d, H, kv = head.hidden_size, head.head_dim_, head.num_attention_heads, head.num_key_value_heads
    assert head.qkv_in_multiplier == 2
    assert head.attention_params_per_layer() - flat.attention_params_per_layer() == h * d * (H + 2 * kv)
    qkv_out = (H + 2 * kv) * d
    for n in (1, 8, 512):
        deep = ForwardModel(head, cm, Parallel())._token_part(n, n)[0]
        shallow = ForwardModel(flat, cm, Parallel())._token_part(n, n)[0]
        extra = float(cm.gemm_latency_s(np.array([n]), qkv_out, 2 * h)[0] - cm.gemm_latency_s(np.array([n]), qkv_out, h)[0])
        assert deep - shallow == pytest.approx(extra, rel=1e-9)
        assert extra > 0


def test_table_repeatability_compares_two_gemm_tables_within_each_token_range():
    """benchmarks/table_repeatability.py: a table uniformly 1.2x another repeats it exactly (a
    faster release is not noise); one cell timed 1.5x is that range's error alone; a range the two
    share too few cells of says nothing."""
    import pandas as pd
    rp = _benchmark("table_repeatability")
    rp.MIN_SHARED = 8
    a = pd.DataFrame([dict(m=m, n=n, k=1024, latency_ms=0.01 * m * n / 1024) for n in (1024, 2048, 4096, 8192)
                      for m in (1, 8, 64, 128, 256, 512, 2048, 4096)])
    ranges = ((1, 128), (129, 1024), (1025, 8192), (8193, 65536))
    same = rp.by_tokens(a, a.assign(latency_ms=a.latency_ms * 1.2), ranges)
    assert [got[1] for got in same[:3]] == [pytest.approx(1.2)] * 3 and all(got[2].max() < 1e-12 for got in same[:3])
    bump = a.latency_ms * np.where((a.m == 256) & (a.n == 2048), 1.5, 1.0)
    few, mid, big, none = rp.by_tokens(a, a.assign(latency_ms=bump), ranges)
    assert mid[0] == 8 and sorted(mid[2])[-1] == pytest.approx(0.5) and sorted(mid[2])[-2] < 1e-12
    assert few[2].max() < 1e-12 and big[2].max() < 1e-12 and none is None
