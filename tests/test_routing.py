import numpy as np
import pytest

from simulator.cost import routing


def test_paper_worked_values():
    assert routing.expected_distinct_experts(1, 64, 8) == pytest.approx(8.0)
    assert routing.expected_distinct_experts(4, 64, 8) == pytest.approx(26.5, abs=0.05)
    assert routing.expected_distinct_experts(32, 64, 8) == pytest.approx(63.1, abs=0.05)
    assert routing.full_activation_threshold(64, 8) == 23
    assert routing.expected_distinct_experts(4, 8, 2) == pytest.approx(5.5, abs=0.05)
    assert routing.full_activation_threshold(8, 2) == 11


@pytest.mark.parametrize("T", [1, 3, 8, 20, 64])
def test_uniform_sampling_matches_closed_form(T):
    rng = np.random.default_rng(1)
    r = routing.Routing()
    distinct = [np.count_nonzero(r.sample_counts([T], 64, 8, rng)) for _ in range(400)]
    assert np.mean(distinct) == pytest.approx(routing.expected_distinct_experts(T, 64, 8), rel=0.03)


def test_each_token_gets_k_distinct_experts_and_slots_are_conserved():
    rng = np.random.default_rng(0)
    for kind in ("uniform", "power_law", "locality"):
        r = routing.Routing(kind, exponent=1.2, locality=0.7)
        c = r.sample_counts([5, 1, 7], 16, 4, rng)
        assert c.sum() == 13 * 4
        assert c.max() <= 13


def test_skew_and_locality_activate_fewer_experts():
    rng = np.random.default_rng(0)
    def mean_active(r):
        return np.mean([np.count_nonzero(r.sample_counts([4] * 4, 64, 8, rng)) for _ in range(300)])
    uni = mean_active(routing.Routing())
    assert mean_active(routing.Routing("power_law", exponent=1.2)) < uni
    assert mean_active(routing.Routing("locality", locality=0.8)) < uni


def test_collector_balanced_activates_min_e_tk():
    for T, E, K in [(1, 64, 8), (3, 128, 8), (4, 8, 2), (100, 128, 8)]:
        c = routing.collector_counts(T, E, K, 1, "balanced")
        assert np.count_nonzero(c) == min(E, T * K)
        assert c.sum() == T * K


def test_collector_power_law_is_capped_and_conserved():
    c = routing.collector_counts(64, 128, 8, 1, "power_law_1.2", np.random.default_rng(0))
    assert c.sum() == 64 * 8 and c.max() <= 64
    ep = routing.collector_counts(64, 128, 8, 4, "power_law_1.2", np.random.default_rng(0))
    assert len(ep) == 32 and ep.sum() >= 64 * 8 / 4


@pytest.mark.parametrize("model", [routing.Routing("uniform"), routing.Routing("power_law", exponent=1.2)])
def test_many_steps_of_keys_route_as_step_by_step(model):
    """The engine's coast draws several steps' routing keys in one call: the counts, and the
    generator's state after the steps used, must be those of one draw per step."""
    T, E, K, n = 6, 64, 4, 5
    one = np.random.default_rng(7)
    per_step = np.array([model.sample_counts([T], E, K, one) for _ in range(n)])
    many = np.random.default_rng(7)
    assert model.keys_only(T, E, K)
    np.testing.assert_array_equal(model.counts_from_keys(many.random((n * T, E)), n, K), per_step)
    assert many.random() == one.random()
    # a tie straddling the K-th smallest key falls back to argpartition: still K experts per token
    keys = np.tile(np.linspace(0.1, 0.9, E), (T, 1))
    keys[:, K] = keys[:, K - 1]
    assert model.counts_from_keys(keys, 1, K).sum() == T * K


def test_collector_power_law_few_tokens_fill_the_first_experts_of_each_rank():
    """At T*K << E every power-law load rounds to 0; the collector hands the T*K slots out one per
    EP rank in turn, least-loaded expert first: the first experts of each rank, whatever the draw."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        one = routing.collector_counts(1, 128, 8, 1, "power_law_1.01", rng)
        assert one[:8].tolist() == [1] * 8 and one.sum() == 8
        # 16 ranks of 8 experts: 8 slots go to ranks 0..7, one each; the timed rank holds one
        ep16 = routing.collector_counts(1, 128, 8, 16, "power_law_1.2", rng)
        assert ep16.tolist() == [1] + [0] * 7


def test_collector_power_law_ep_rank_is_the_busiest():
    """The timed rank is the busiest: it holds at least the average share of the T*K slots."""
    for T, ep in [(3, 4), (16, 8), (300, 8)]:
        c = routing.collector_counts(T, 128, 8, ep, "power_law_1.01", np.random.default_rng(T))
        assert len(c) == 128 // ep and c.sum() >= T * 8 / ep and c.max() <= T


def test_expected_count_vector():
    c = routing.expected_count_vector(4, 64, 8)
    assert c.sum() == 32 and np.count_nonzero(c) == round(26.5)
    dense = routing.expected_count_vector(4, 8, 8)
    assert np.count_nonzero(dense) == 8
