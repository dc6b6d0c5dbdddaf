"""Corrected estimators (k1+, k3+, k3_is) and clamps, exactly on a categorical distribution.

The registry-wide checks (on-policy values, loss and reward gradients against closed forms) are in
tests/test_kl.py::test_registered_metadata_is_exact and cover the corrected estimators too. Here:
what only corrections and clamps have — bit-exact values, the off-policy importance correction,
clamps against a float64 NumPy restatement, swept clamp values, refusals.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kl_reference import numpy_estimate
from kltrust import kl

THETA = jnp.array([0.3, -1.0, 2.0, 0.0, 0.7], jnp.float32)
THETA_OLD = jnp.array([0.0, -0.4, 1.2, 0.5, 0.1], jnp.float32)
LOGITS_REF = jnp.array([1.0, 0.5, -0.5, 0.2, -1.2], jnp.float32)
PLAIN = kl.estimators(reward_term=True)


def _np_log_softmax(z):
    z = np.asarray(z, np.float64)
    return z - z.max() - np.log(np.exp(z - z.max()).sum())


def _log_ratio_grid():
    lp = jnp.linspace(-6.0, -0.1, 41)
    return lp, jnp.flip(lp)  # log-ratios from −5.9 to 5.9, through 0


@pytest.mark.parametrize("name", ["k1+", "k3+", "k3_is"])
def test_corrected_value_is_the_base_value_bit_for_bit_on_policy(name):
    logp, logp_ref = _log_ratio_grid()
    base = kl.estimator_info(name).base
    np.testing.assert_array_equal(kl.estimate(logp, logp_ref, name), kl.estimate(logp, logp_ref, base))


@pytest.mark.parametrize("name", ["k1+", "k3+", "k3_is"])
def test_per_sample_gradient_is_k2s_on_policy(name):
    """Not only in expectation: per sample, d/dlogp of k1+/k3+ is δ (k2's), and of k3_is on-policy
    it is k3 + (1 − r) = δ + (r − 1) + 1 − r = δ as well."""
    logp, logp_ref = _log_ratio_grid()
    grad = jax.grad(lambda lp: kl.estimate(lp, logp_ref, name).sum())(logp)
    delta = np.asarray(logp, np.float64) - np.asarray(logp_ref, np.float64)
    # Float32 inputs are exact, so δ rounds once (≤ U|δ|); k3_is's gradient k3 + (1 − r) sums terms
    # of size ≤ r + |δ| + 1, each within a few ulps: 8U(r + |δ| + 1) per entry bounds both.
    bound = 8 * 2.0**-24 * (np.exp(-delta) + np.abs(delta) + 1)
    assert np.all(np.abs(np.asarray(grad, np.float64) - delta) <= bound)


def _off_policy(name, theta, theta_old):
    """E_{x~p_old}[k(x)] and ∇_θ of it, summed exactly; p_old's weights and log p_old constant."""

    def expectation(t):
        logp = jax.nn.log_softmax(t)
        logp_old = jax.nn.log_softmax(theta_old)
        logq = jax.nn.log_softmax(LOGITS_REF)
        return jnp.sum(jnp.exp(logp_old) * kl.estimate(logp, logq, name, logp_old=logp_old))

    value, grad = jax.value_and_grad(expectation)(theta)
    return float(value), np.asarray(grad, np.float64)


def test_importance_corrected_k3_is_unbiased_off_policy_and_descends_the_reverse_kl():
    logp, logq = _np_log_softmax(THETA), _np_log_softmax(LOGITS_REF)
    p, q = np.exp(logp), np.exp(logq)
    reverse_kl = (p * (logp - logq)).sum()
    grad_reverse = p * (logp - logq - reverse_kl)  # closed form ∇_θ KL(p_θ ‖ q)
    value, grad = _off_policy("k3_is", THETA, THETA_OLD)
    # Sums of 5 float32 terms of size ≤ 3: 1e-5 is ~30 ulps of the largest, far below the gap the
    # uncorrected k3 shows below.
    np.testing.assert_allclose(value, reverse_kl, atol=1e-5)
    np.testing.assert_allclose(grad, grad_reverse, atol=1e-5)
    # Uncorrected k3 from p_old samples estimates E_{p_old}[k3] ≠ KL(p_θ‖q): the correction matters.
    plain_value, plain_grad = _off_policy("k3", THETA, THETA_OLD)
    assert abs(plain_value - reverse_kl) > 0.05
    assert np.abs(plain_grad - grad_reverse).max() > 0.05


def test_straight_through_is_not_unbiased_off_policy_in_gradient():
    """k3+ off-policy (no ratio) gives E_{p_old}[δ∇log p_θ], not ∇KL(p_θ‖q): only k3_is corrects for
    the sampling distribution. The exact value of that expectation, in closed form."""
    logp, logq = _np_log_softmax(THETA), _np_log_softmax(LOGITS_REF)
    p_old = np.exp(_np_log_softmax(THETA_OLD))
    delta = logp - logq
    # ∇_θ log p_θ(x) = e_x − p, so Σ_x p_old(x) δ(x) (e_x − p) = p_old·δ − p·(Σ p_old δ).
    expected = p_old * delta - np.exp(logp) * (p_old * delta).sum()
    _, grad = _off_policy("k3+", THETA, THETA_OLD)
    np.testing.assert_allclose(grad, expected, atol=1e-5)


@pytest.mark.parametrize("name", kl.estimators())
def test_infinite_clamps_are_bit_identical_to_none(name):
    logp, logp_ref = _log_ratio_grid()

    def f(lp, **clamps):
        return kl.estimate(lp, logp_ref, name, **clamps).sum()

    inf = dict(log_ratio_clamp=jnp.inf, value_clamp=jnp.inf)
    np.testing.assert_array_equal(kl.estimate(logp, logp_ref, name, **inf),
                                  kl.estimate(logp, logp_ref, name))
    np.testing.assert_array_equal(jax.grad(lambda lp: f(lp, **inf))(logp), jax.grad(f)(logp))


@pytest.mark.parametrize("name", PLAIN)
def test_clamps_against_numpy(name):
    logp, logp_ref = _log_ratio_grid()
    c, v = 2.0, 1.5
    delta = np.asarray(logp, np.float64) - np.asarray(logp_ref, np.float64)
    expected = np.clip(numpy_estimate(name, np.clip(delta, -c, c), 0.0), -v, v)
    got = kl.estimate(logp, logp_ref, name, log_ratio_clamp=c, value_clamp=v)
    # float32 δ and exp: a few ulps of values ≤ e^2 + 2; 1e-5 absolute is ≥ 10 ulps of them.
    np.testing.assert_allclose(got, expected, atol=1e-5)
    grad = np.asarray(jax.grad(
        lambda lp: kl.estimate(lp, logp_ref, name, log_ratio_clamp=c, value_clamp=v).sum())(logp))
    free = jax.grad(lambda lp: kl.estimate(lp, logp_ref, name).sum())(logp)
    inside = (np.abs(delta) < c) & (np.abs(expected) < v)
    np.testing.assert_array_equal(grad[~inside], 0.0)  # no gradient through what was clipped
    np.testing.assert_array_equal(grad[inside], np.asarray(free)[inside])
    assert inside.any() and (~inside).any()


def test_swept_clamps_are_traced_arrays_one_program():
    """Clamp values travel as arrays: a vmap over them is one compiled program whose rows equal
    the calls with each value as a Python number."""
    logp, logp_ref = _log_ratio_grid()
    clamps = jnp.array([0.5, 2.0, jnp.inf], jnp.float32)
    traces = []

    @jax.jit
    def sweep(cs):
        traces.append(1)
        return jax.vmap(lambda c: kl.estimate(logp, logp_ref, "k3", log_ratio_clamp=c))(cs)

    rows = sweep(clamps)
    for row, c in zip(rows, (0.5, 2.0, None)):
        np.testing.assert_array_equal(row, kl.estimate(logp, logp_ref, "k3", log_ratio_clamp=c))
    sweep(clamps + 0.25)
    assert len(traces) == 1


def test_importance_needs_matching_shapes_and_corrections_are_checked():
    logp, logp_ref = _log_ratio_grid()
    with pytest.raises(ValueError, match="logp_old"):
        kl.estimate(logp, logp_ref, "k3_is", logp_old=logp[:3])
    with pytest.raises(ValueError, match="unbiased base"):
        kl.corrected("k2_is", "k2", "importance")
    with pytest.raises(ValueError, match="correction must be one of"):
        kl.corrected("k3_x", "k3", "reweight")
    with pytest.raises(ValueError, match="correction must be one of"):
        kl.corrected("k3++", "k3+", "straight_through")
    assert "k2_is" not in kl.estimators() and "k3_x" not in kl.estimators()


def test_ppo_refuses_a_correction_where_the_policy_is_the_second_argument():
    """kl_anchor='old' penalises KL(π_old‖π_θ): π_θ is the reference argument, which corrections do
    not describe; with the frozen reference as anchor, π_θ is the first argument and they apply."""
    from kltrust.objectives import ppo

    with pytest.raises(ValueError, match="kl_anchor='reference'"):
        ppo.Variant(kl_penalty="fixed", kl_anchor="old", kl_estimator="k3+")
    ppo.Variant(kl_penalty="fixed", kl_anchor="reference", kl_estimator="k3_is")
