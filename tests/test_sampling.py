"""The VAS target and samplers: hand-computed cases, invariances, and sampler exactness."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from vas_proxy import sampling

LP = np.log([0.5, 0.3, 0.15, 0.05])


def test_beta_zero_reproduces_upstream_topk():
    lp = np.log([0.4, 0.2, 0.1])  # a top-3 that misses 0.3 of the mass
    q = sampling.target_probs(lp, values=[5.0, -3.0, 1.0], beta=0.0, temperature=1.0)
    np.testing.assert_allclose(q, [0.4 / 0.7, 0.2 / 0.7, 0.1 / 0.7], rtol=1e-12)


def test_hand_computed_tilt():
    v = sampling.combine_values({"a": [1.0, 0.0, -1.0, 0.0]}, None, 4)
    q = sampling.target_probs(LP, v, beta=2.0)
    # v has mean 0: weights 0.5e^2, 0.3, 0.15e^-2, 0.05
    raw = np.array([0.5 * math.e ** 2, 0.3, 0.15 * math.e ** -2, 0.05])
    np.testing.assert_allclose(q, raw / raw.sum(), rtol=1e-12)


def test_temperature_divides_the_tilted_logits():
    v = np.array([0.2, -0.1, 0.4, -0.5])
    q = sampling.target_probs(LP, v, beta=1.5, temperature=0.7)
    raw = np.exp((LP + 1.5 * v) / 0.7)
    np.testing.assert_allclose(q, raw / raw.sum(), rtol=1e-12)
    greedy = sampling.target_probs(LP, v, beta=1.5, temperature=0.0)
    assert greedy.tolist() == [1.0, 0.0, 0.0, 0.0]
    flipped = sampling.target_probs(LP, [0.0, 3.0, 0.0, 0.0], beta=1.0, temperature=0.0)
    assert int(np.argmax(flipped)) == 1


def test_centring_and_constant_shift_do_not_change_target():
    v = np.array([3.0, 1.0, 2.0, 7.0])
    a = sampling.target_probs(LP, sampling.combine_values({"x": v}, None, 4), beta=1.0)
    b = sampling.target_probs(LP, sampling.combine_values({"x": v + 100}, None, 4), beta=1.0)
    c = sampling.target_probs(LP, v, beta=1.0)  # uncentred values give the same softmax
    np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(a, c, rtol=1e-12)


def test_weights_compose_linearly():
    va, vb = np.array([0.3, -0.2, 0.9, 0.1]), np.array([-1.0, 0.5, 0.0, 0.2])
    combined = sampling.combine_values({"a": va, "b": vb}, {"a": 0.7, "b": -1.3}, 4)
    expected = 0.7 * (va - va.mean()) - 1.3 * (vb - vb.mean())
    np.testing.assert_allclose(combined, expected, rtol=1e-12)
    # weight 2 on one model == beta doubled on that model alone
    two = sampling.target_probs(LP, sampling.combine_values({"a": va}, {"a": 2.0}, 4), beta=1.0)
    doubled = sampling.target_probs(LP, sampling.combine_values({"a": va}, None, 4), beta=2.0)
    np.testing.assert_allclose(two, doubled, rtol=1e-12)
    # a model with weight 0 (or absent from the weights) has no effect
    only_a = sampling.combine_values({"a": va, "b": vb}, {"a": 1.0}, 4)
    np.testing.assert_allclose(only_a, va - va.mean(), rtol=1e-12)


def test_binary_tilt_is_the_soft_value_of_a_zero_one_reward():
    """log E[exp(b·r)] for r ~ Bernoulli(P), by hand; no overflow at a huge b; P clipped."""
    p = np.array([0.0, 0.1, 0.5, 1.0])
    for b in (0.3, 2.0, -1.5):
        assert sampling.binary_tilt(p, b) == pytest.approx(np.log(1 - p + p * math.exp(b)))
    big = sampling.binary_tilt(np.array([0.0, 1e-3, 1.0]), 1000.0)
    assert np.all(np.isfinite(big[1:])) and big[0] == 0.0
    assert big[2] == pytest.approx(1000.0) and big[1] == pytest.approx(1000 + math.log(1e-3))
    assert sampling.binary_tilt(np.array([-0.2, 1.3]), 2.0) == pytest.approx(
        sampling.binary_tilt(np.array([0.0, 1.0]), 2.0))


def test_binary_values_give_the_exact_soft_target():
    """A `binary:` model (scale s: it scores P·s) at weight w and beta: q ∝ p·(1 + (e^b − 1)·P)
    with b = beta·w·s, not p·exp(b·P); other models still add linearly; beta 0 is the base."""
    lp = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    prob = np.array([0.05, 0.6, 0.2, 0.9])
    lin = np.array([0.3, -0.1, 0.4, 0.0])
    s, w, beta = 2.5, 0.8, 1.7
    b = beta * w * s
    v = sampling.combine_values({"bin": prob * s, "lin": lin}, {"bin": w, "lin": 0.5}, 4,
                                beta=beta, binary={"bin": s})
    want = np.exp(lp) * (1 + math.expm1(b) * prob) * np.exp(beta * 0.5 * lin)
    assert sampling.target_probs(lp, v, beta) == pytest.approx(want / want.sum())
    linear = np.exp(lp + b * prob + beta * 0.5 * lin)
    assert not np.allclose(sampling.target_probs(lp, v, beta), linear / linear.sum(), atol=1e-3)
    v0 = sampling.combine_values({"bin": prob * s}, None, 4, beta=0.0, binary={"bin": s})
    assert sampling.target_probs(lp, v0, 0.0) == pytest.approx(np.exp(lp) / np.exp(lp).sum())


def test_bad_values_are_rejected():
    with pytest.raises(ValueError, match="3 candidates"):
        sampling.combine_values({"a": [1.0, 2.0]}, None, 3)
    with pytest.raises(ValueError, match="non-finite"):
        sampling.combine_values({"a": [1.0, float("nan"), 0.0]}, None, 3)


def test_top_p_truncates_the_target():
    q = np.array([0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(sampling.apply_top_p(q, 0.8), [0.5 / 0.8, 0.3 / 0.8, 0, 0])
    np.testing.assert_allclose(sampling.apply_top_p(q, 0.81), [0.5, 0.3, 0.15, 0] / np.float64(0.95))
    assert sampling.apply_top_p(q, 1.0) is q


def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    return stats.chisquare(counts, probs * counts.sum()).pvalue


ALPHA = 1e-3  # significance level of every exactness test in this file


def test_sample_index_follows_q():
    q = sampling.target_probs(LP, [0.5, -0.5, 1.0, 0.0], beta=1.0)
    rng = np.random.default_rng(1234)
    counts = np.bincount([sampling.sample_index(q, rng) for _ in range(20000)], minlength=4)
    assert _chi2_pvalue(counts, q) > ALPHA


@pytest.mark.parametrize("draft_kind", ["greedy", "base"])
def test_speculative_acceptance_is_exact(draft_kind):
    p = sampling.target_probs(LP)
    q = sampling.target_probs(LP, [0.0, 1.0, 2.0, -1.0], beta=1.0)
    d = np.eye(4)[0] if draft_kind == "greedy" else p
    rng = np.random.default_rng(99)
    out = []
    for _ in range(20000):
        draft = 0 if draft_kind == "greedy" else sampling.sample_index(d, rng)
        out.append(sampling.speculative_accept(q, d, draft, rng)[1])
    counts = np.bincount(out, minlength=4)
    assert _chi2_pvalue(counts, q) > ALPHA
    # power: the same counts are far from the draft law itself
    assert _chi2_pvalue(counts, p if draft_kind == "base" else np.full(4, 0.25)) < ALPHA


def test_kl_step_matches_definition():
    q = sampling.target_probs(LP, [1.0, 0.0, 0.0, 0.0], beta=1.0)
    p = np.exp(LP) / np.exp(LP).sum()
    assert sampling.kl_step(q, LP, 0) == pytest.approx(math.log(q[0] / p[0]))


def test_kl_to_base_is_the_chosen_tokens_estimate_in_expectation():
    """calibrate's check sums KL(q ‖ p) along a path: the expectation of `kl_step` under q
    (not KL(p ‖ q), which differs for these laws), and 0 where q is the base."""
    rng = np.random.default_rng(3)
    lp = np.log(rng.dirichlet(np.ones(6)))
    q = sampling.target_probs(lp, rng.normal(size=6), 2.0)
    q[5] = 0.0  # a candidate the prompt cannot carry: no mass, no term
    q /= q.sum()
    expected = sum(q[i] * sampling.kl_step(q, lp, i) for i in range(5))
    assert sampling.kl_to_base(q, lp) == pytest.approx(expected, rel=1e-12)
    p = sampling.target_probs(lp)
    assert abs(sampling.kl_to_base(q, lp) - sampling.kl(p[:5] / p[:5].sum(), q[:5])) > 0.01
    assert sampling.kl_to_base(p, lp) == pytest.approx(0.0, abs=1e-12)


def test_a_tiny_temperature_is_the_greedy_limit_not_nan():
    """Found by the 500-example fuzz run's warnings: a temperature of about 1e-300 divided the
    logits to inf, and inf - inf made the target NaN."""
    v = [0.0, 3.0, 0.0, 0.0]
    for t in (1e-300, 5e-324):
        q = sampling.target_probs(LP, v, beta=1.0, temperature=t)
        assert np.all(np.isfinite(q)) and q.sum() == 1.0
        assert np.array_equal(q, sampling.target_probs(LP, v, beta=1.0, temperature=0.0))
