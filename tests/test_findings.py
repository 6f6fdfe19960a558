"""The seed paper's findings (moesd-theory.md), as tests that fail when they are not reproduced.

Expectations come from the physics, not from the curves: the MoE peak must sit past the batch at
which plain decoding already activates (almost) every expert, t_thres / 1, divided by the k+1
tokens verification routes per sequence; a dense model has no such threshold, so its speedup can
only fall with batch.
"""

import numpy as np
import pandas as pd
import pytest

from simulator.serving import theory
from simulator.cost.routing import full_activation_threshold
from simulator.config.scenario import load_scenario
from simulator.serving.simulation import build
from simulator.analysis.sweep import fixed_batch_point, peak, sparsity, sweep, waves_for

BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
ACC = ["speculative_config.acceptance={rate: 0.8}"]
DENSE = ACC + ["hardware.gpu=h100_sxm", "hardware.tensor_parallel_size=2", "workload.random_input_len=512",
               "workload.random_output_len=256"]


def test_expected_tokens_and_sigma_closed_forms():
    assert theory.expected_tokens(0.0, 5) == 1.0
    assert theory.expected_tokens(1.0, 3) == 4.0
    assert theory.expected_tokens(0.8, 3) == pytest.approx(1 + 0.8 + 0.64 + 0.512)
    assert theory.sigma(0.8, 3) == pytest.approx(2.952 / 4)
    # zero acceptance: one token per round at the price of k drafts + a wider verification
    assert theory.speedup(1.0, 10.0, 11.0, 0.5, 3) == pytest.approx(10 / 12.5)


@pytest.fixture(scope="module")
def moe():
    return sweep("quickstart", ACC, BATCHES, [1, 2, 3, 4, 5, 6], engine=False)


@pytest.fixture(scope="module")
def dense():
    return sweep("opt_dense_pair", DENSE, BATCHES, [1, 2, 3, 4, 5, 6], engine=False)


def _curve(t, k=3):
    return t[(t.k == k) & ~t.adaptive].set_index("batch_size").speedup_closed


def test_moe_speedup_rises_then_falls_with_an_interior_peak(moe):
    s = _curve(moe)
    b, v = int(s.idxmax()), float(s.max())
    t_thres = full_activation_threshold(64, 8)          # 23 tokens for Qwen2-57B-A14B
    assert 4 <= b <= 128
    assert b >= t_thres / (3 + 1)                       # past the batch where verification stops loading new experts
    assert v > 1.15 * s.loc[1] and v > 1.15 * s.loc[256]
    assert (np.diff(s.loc[b:].values) < 0.03).all()     # past the peak it only falls


def test_dense_speedup_never_rises(dense):
    for k in (1, 3, 6):
        s = _curve(dense, k)
        s = s[dense[(dense.k == k)].set_index("batch_size").fits_kv_cache]
        assert s.max() <= s.loc[1] * 1.02


def test_moe_beats_dense_at_medium_batch_and_eta_explains_it(moe, dense):
    m, d = moe[moe.k == 3].set_index("batch_size"), dense[dense.k == 3].set_index("batch_size")
    assert m.speedup_closed.loc[32] > d.speedup_closed.loc[32]
    # eta is what differs: MoE eta climbs from its batch-1 value toward 1; dense eta only falls
    assert m.eta_closed.loc[32] > m.eta_closed.loc[1] + 0.15
    assert d.eta_closed.loc[1] >= d.eta_closed.max() - 0.02


def test_sparser_moe_peaks_at_equal_or_larger_batch():
    sp = sparsity("quickstart", ACC, BATCHES, 3, [2, 4, 8, 16])
    peaks = [int(g.set_index("batch_size").speedup_closed.idxmax()) for _, g in sp.groupby("topk")]
    assert peaks == sorted(peaks, reverse=True), peaks     # topk ascending -> peak batch descending
    assert peaks[0] > peaks[-1]


@pytest.mark.parametrize("batch", [1, 32, 256])
def test_engine_agrees_with_closed_form_offline(batch):
    """No queueing, full batch: the SimPy engine and theory.py within 5% on speedup."""
    job = lambda k, ad=False: {"scenario": "quickstart", "overrides": ACC, "batch": batch, "k": k,  # noqa: E731
                               "adaptive": ad, "waves": waves_for(batch)}
    base, sd = fixed_batch_point(job(0)), fixed_batch_point(job(3))
    setup = build(load_scenario("quickstart", ACC))
    st = theory.step_times(setup, 512 + 128)
    closed = st.speedup(batch, 3, setup.acceptance)
    assert sd["decode_tok_s"] / base["decode_tok_s"] == pytest.approx(closed, rel=0.05)
    assert sd["acceptance_length"] == pytest.approx(theory.expected_tokens(0.8, 3), rel=0.03)


def test_adaptive_k_within_3pct_of_best_fixed_k_and_beats_k4():
    t = sweep("quickstart", ACC, [1, 4, 32, 256], [1, 2, 3, 4, 5, 6], engine=True, workers=2, progress=False)
    fixed = t[~t.adaptive & (t.k > 0)]
    best = fixed.groupby("batch_size").speedup_sim.max()
    ad = t[t.adaptive].set_index("batch_size").speedup_sim
    k4 = fixed[fixed.k == 4].set_index("batch_size").speedup_sim
    # Each run's acceptance sampling carries ~0.5-0.7% error (about 5,000 rounds at batch 1), the
    # best of six fixed-k runs is biased up by it, and at batch 1 k = 3 and k = 4 are within 0.3% in
    # closed form: the adaptive run is compared within a 3% band.
    assert (ad >= 0.97 * best).all(), pd.DataFrame({"adaptive": ad, "best": best})
    # "beats k=4 over the load range": higher on average, never more than the band below it
    assert ad.mean() > k4.mean() and (ad >= k4 * 0.97).all()
    assert peak(t, "speedup_sim")[0] in (4, 32)
