import numpy as np
import pytest

from simulator.costmodel import CostModel
from simulator.errors import ConfigError
from simulator.routing import expected_count_vector


@pytest.fixture(scope="module")
def cm():
    return CostModel("h100_sxm")


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
    c = CostModel("h200_sxm").gemm(16, 4096, 4096)
    assert c.as_dict()["calibration"] == "uncalibrated, transferred from h100_sxm"
    # H200 has more HBM bandwidth than H100: a memory-bound GEMM is faster
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
