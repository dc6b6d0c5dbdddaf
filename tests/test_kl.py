"""Tests of the KL core against closed forms, float64 NumPy, exact sums and Monte Carlo.

Monte Carlo tolerances: a mean of N i.i.d. samples with sample stdev s is within Z·s/√N of its
expectation except with probability ≤ 2·Φ(−Z); Z = 5 gives < 1e-6 per check, and the seeds are
fixed, so these tests are deterministic.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kl_reference import NUMPY_ESTIMATORS, numpy_estimate
from kltrust import kl

Z = 5.0
U = 2.0**-24  # float32 unit round-off
N_MC = 200_000


def _np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _np_categorical_kl(logits, logits_ref):
    logp, logq = _np_log_softmax(logits), _np_log_softmax(logits_ref)
    return (np.exp(logp) * (logp - logq)).sum(axis=-1)


def _assert_within_mc_error(samples, expected, name):
    samples = np.asarray(samples, np.float64)
    mean, sem = samples.mean(), samples.std() / np.sqrt(samples.size)
    assert abs(mean - expected) < Z * sem, f"{name}: mean {mean} vs {expected} (±{Z}·{sem:.3g})"


@functools.partial(jax.jit, static_argnums=3)
def _gaussian_samples(key, mean_ref, std_ref, n):
    """Samples x ~ N(0, 1) with log p and log p_ref for p_ref = N(mean_ref, std_ref²)."""
    x = jax.random.normal(key, (n,))
    return (
        jax.scipy.stats.norm.logpdf(x, 0.0, 1.0),
        jax.scipy.stats.norm.logpdf(x, mean_ref, std_ref),
    )


# ---------------------------------------------------------------- sample estimators, Monte Carlo


@pytest.mark.parametrize("mean_ref,std_ref", [(0.3, 1.0), (1.0, 1.0), (0.5, 1.2)])
@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_k1_k3_unbiased_for_gaussian(estimator, mean_ref, std_ref):
    logp, logp_ref = _gaussian_samples(jax.random.key(1), mean_ref, std_ref, N_MC)
    # Closed form KL(N(0,1) ‖ N(m, s²)) = log s + (1 + m²)/(2s²) − ½, independent of kl.gaussian.
    true_kl = np.log(std_ref) + (1 + mean_ref**2) / (2 * std_ref**2) - 0.5
    _assert_within_mc_error(kl.estimate(logp, logp_ref, estimator), true_kl, estimator)


def test_k2_bias_matches_closed_form_and_grows_with_kl():
    # For p = N(0,1), p_ref = N(μ,1): δ = μ²/2 − μx, so E[½δ²] = μ⁴/8 + μ²/2 while KL = μ²/2.
    relative_bias = []
    for mu in (0.3, 1.0, 2.0):
        logp, logp_ref = _gaussian_samples(jax.random.key(2), mu, 1.0, N_MC)
        k2 = np.asarray(kl.estimate(logp, logp_ref, "k2"), np.float64)
        _assert_within_mc_error(k2, mu**4 / 8 + mu**2 / 2, f"k2 mu={mu}")
        bias = k2.mean() - mu**2 / 2
        if mu >= 1.0:  # large enough to be resolved by N_MC samples
            assert bias > Z * k2.std() / np.sqrt(k2.size), f"k2 bias not significant at mu={mu}"
        relative_bias.append(bias / (mu**2 / 2))
    assert relative_bias[0] < relative_bias[1] < relative_bias[2]
    np.testing.assert_allclose(relative_bias, [0.3**2 / 4, 0.25, 1.0], atol=0.03)


@pytest.mark.parametrize("scale", [0.3, 2.0])
def test_estimators_on_categorical_against_exact_kl(scale):
    k_logits, k_shift, k_samples = jax.random.split(jax.random.key(3), 3)
    logits = jax.random.normal(k_logits, (12,))
    logits_ref = logits + scale * jax.random.normal(k_shift, (12,))
    x = jax.random.categorical(k_samples, logits, shape=(N_MC,))
    logp = jax.nn.log_softmax(logits)[x]
    logp_ref = jax.nn.log_softmax(logits_ref)[x]

    np_logp, np_logq = _np_log_softmax(logits), _np_log_softmax(logits_ref)
    p = np.exp(np_logp)
    true_kl = _np_categorical_kl(logits, logits_ref)
    exact_expectation = {  # E_p[k] by summing over all 12 outcomes, in float64.
        name: (p * numpy_estimate(name, np_logp, np_logq)).sum() for name in kl.estimators()
    }
    for name in kl.estimators():
        if kl.estimator_info(name).unbiased:
            np.testing.assert_allclose(exact_expectation[name], true_kl, rtol=1e-12)
        _assert_within_mc_error(kl.estimate(logp, logp_ref, name), exact_expectation[name], name)
    assert exact_expectation["k2"] != pytest.approx(true_kl, rel=1e-3)


# ---------------------------------------------------------------- sample estimators, numerics


def test_k3_nonnegative_everywhere():
    log_ratio = jnp.concatenate(
        [
            jnp.linspace(-80.0, 80.0, 20001),
            jnp.logspace(-12, 1, 500),
            -jnp.logspace(-12, 1, 500),
            jnp.array([0.0, 1e-30, -1e-30]),
        ]
    )
    k3 = kl.estimate(log_ratio, jnp.zeros_like(log_ratio), "k3")
    assert bool(jnp.all(k3 >= 0.0)), np.asarray(log_ratio)[np.asarray(k3) < 0]
    assert bool(jnp.all(jnp.isfinite(k3)))


def test_k3_stable_where_the_probability_form_is_not():
    # p and p_ref both underflow float32 in probability space, but their log-ratio is moderate.
    logp = jnp.array([-200.0, -150.0, -1.0, -1.0])
    logp_ref = jnp.array([-190.0, -200.0, -1.0 + 1e-4, -1.0 - 3e-6])
    naive = (jnp.exp(logp_ref) / jnp.exp(logp) - 1.0) - (logp_ref - logp)
    assert not bool(jnp.all(jnp.isfinite(naive)))  # the form this module avoids
    log_r = np.asarray(logp_ref, np.float64) - np.asarray(logp, np.float64)
    expected = np.expm1(log_r) - log_r
    np.testing.assert_allclose(kl.estimate(logp, logp_ref, "k3"), expected, rtol=1e-5)


def test_k3_relative_accuracy_across_scales():
    # Both signs, from 1e-8 to 30, straddling the series/expm1 switch at |log r| = 0.1.
    magnitudes = np.logspace(-8, np.log10(30.0), 400).astype(np.float32)
    log_r = np.concatenate([magnitudes, -magnitudes])
    got = kl.estimate(jnp.zeros_like(log_r), jnp.asarray(log_r), "k3")
    exact = np.expm1(log_r.astype(np.float64)) - log_r.astype(np.float64)
    np.testing.assert_allclose(got, exact, rtol=1e-5)
    # Large ratios: finite value and gradient (e^80 still fits in float32).
    value, grad = jax.value_and_grad(lambda a: kl.estimate(a, jnp.zeros(1), "k3").sum())(
        jnp.array([-80.0])
    )
    assert np.isfinite(float(value)) and np.isfinite(float(grad[0]))


def test_k1_k2_formulas():
    logp = jnp.array([-0.5, -2.0, -1.0])
    logp_ref = jnp.array([-1.5, -1.0, -1.0])
    np.testing.assert_allclose(kl.estimate(logp, logp_ref, "k1"), [1.0, -1.0, 0.0])
    np.testing.assert_allclose(kl.estimate(logp, logp_ref, "k2"), [0.5, 0.5, 0.0])


def test_estimate_under_jit_vmap_and_grad():
    logp = jnp.linspace(-3.0, -0.1, 8).reshape(2, 4)
    logp_ref = logp[::-1]
    eager = kl.estimate(logp, logp_ref, "k3")
    jitted = jax.jit(kl.estimate, static_argnames="estimator")(logp, logp_ref, estimator="k3")
    mapped = jax.vmap(lambda a, b: kl.estimate(a, b, "k3"))(logp, logp_ref)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    np.testing.assert_allclose(mapped, eager, rtol=1e-6)
    # d k3 / d logp = 1 − r, zero at identical log-probabilities.
    grad = jax.grad(lambda a: kl.estimate(a, a * 0 + logp_ref, "k3").sum())(logp)
    np.testing.assert_allclose(grad, 1 - np.exp(np.asarray(logp_ref - logp)), rtol=1e-5)
    zero_grad = jax.grad(lambda a: kl.estimate(a, logp, "k3").sum())(logp)
    np.testing.assert_array_equal(zero_grad, np.zeros_like(zero_grad))


# ---------------------------------------------------------------- gradient semantics (exact)


def _expected_loss_gradient(estimator, theta, logits_ref):
    """∇_θ E_{x~p_θ}[k(x)] as an on-policy loss: samples (weights p) held fixed, summed exactly."""

    def surrogate(t):
        logp = jax.nn.log_softmax(t)
        logq = jax.nn.log_softmax(logits_ref)
        weights = jax.lax.stop_gradient(jnp.exp(logp))
        return jnp.sum(weights * kl.estimate(logp, logq, estimator))

    return np.asarray(jax.grad(surrogate)(theta), np.float64)


def _expected_reward_gradient(estimator, theta, logits_ref):
    """E_{x~p_θ}[k(x)·∇_θ log p_θ(x)]: k held constant as a reward, summed exactly over the support."""

    def surrogate(t):
        logp = jax.nn.log_softmax(t)
        logq = jax.nn.log_softmax(logits_ref)
        weights = jax.lax.stop_gradient(jnp.exp(logp))
        reward = jax.lax.stop_gradient(kl.estimate(logp, logq, estimator))
        return jnp.sum(weights * reward * logp)

    return np.asarray(jax.grad(surrogate)(theta), np.float64)


def test_gradient_semantics_of_estimators_match_docstring():
    theta = jnp.array([0.3, -1.0, 2.0, 0.0, 0.7], jnp.float32)
    logits_ref = jnp.array([1.0, 0.5, -0.5, 0.2, -1.2], jnp.float32)
    logp, logq = _np_log_softmax(theta), _np_log_softmax(logits_ref)
    p, q = np.exp(logp), np.exp(logq)
    reverse_kl = (p * (logp - logq)).sum()
    # Closed-form logit gradients, independent of JAX autodiff:
    grad_reverse = p * (logp - logq - reverse_kl)  # ∇_θ KL(p_θ ‖ q)
    grad_forward = p - q  # ∇_θ KL(q ‖ p_θ)

    np.testing.assert_allclose(_expected_loss_gradient("k1", theta, logits_ref), 0.0, atol=1e-6)
    np.testing.assert_allclose(
        _expected_loss_gradient("k2", theta, logits_ref), grad_reverse, atol=1e-6
    )
    np.testing.assert_allclose(
        _expected_loss_gradient("k3", theta, logits_ref), grad_forward, atol=1e-6
    )

    # k1 as a reward (score function): E[k1 · ∇ log p_θ] = ∇ KL(p_θ ‖ q).
    def reinforce(t):
        logp_t = jax.nn.log_softmax(t)
        reward = jax.lax.stop_gradient(kl.estimate(logp_t, jnp.asarray(logq, jnp.float32), "k1"))
        return jnp.sum(jax.lax.stop_gradient(jnp.exp(logp_t)) * reward * logp_t)

    np.testing.assert_allclose(jax.grad(reinforce)(theta), grad_reverse, atol=1e-6)
    # The library's exact KLs have those gradients in each direction.
    np.testing.assert_allclose(jax.grad(kl.categorical)(theta, logits_ref), grad_reverse, atol=1e-6)
    np.testing.assert_allclose(
        jax.grad(kl.categorical, argnums=1)(logits_ref, theta), grad_forward, atol=1e-6
    )


# ---------------------------------------------------------------- the registry and its metadata


def test_every_registered_estimator_has_a_numpy_restatement():
    assert set(NUMPY_ESTIMATORS) == set(kl.estimators()), "add the new estimator to kl_reference.py"


@pytest.mark.parametrize("name", kl.estimators())
def test_registered_metadata_is_exact(name):
    """What `EstimatorInfo` declares, checked on a categorical pair by summing over its support:
    unbiased ⇔ E_p[k] = KL(p‖q); the expected loss gradient is a·∇KL(p‖q) + b·∇KL(q‖p), against
    closed-form logit gradients; nonnegative ⇔ no value below 0 on a grid of log-ratios."""
    info = kl.estimator_info(name)
    theta = jnp.array([0.3, -1.0, 2.0, 0.0, 0.7], jnp.float32)
    logits_ref = jnp.array([1.0, 0.5, -0.5, 0.2, -1.2], jnp.float32)
    logp, logq = _np_log_softmax(theta), _np_log_softmax(logits_ref)
    p, q = np.exp(logp), np.exp(logq)
    reverse_kl = (p * (logp - logq)).sum()

    values = kl.estimate(jnp.asarray(logp, jnp.float32), jnp.asarray(logq, jnp.float32), name)
    expectation = (p * np.asarray(values, np.float64)).sum()
    # Float32 inputs (relative error U each) move δ by ≤ U(|log p| + |log q|); an estimator's slope in
    # δ is ≤ 1 + |δ| + r here (k1, k2, k3 and their combinations), and its evaluation adds a few ulps
    # of its value (≤ 1 + |δ| + r too): 64U·Σ p(1 + |δ| + r)(1 + |log p| + |log q|) covers both.
    delta, r = logp - logq, q / p
    tol = 64 * U * (p * (1 + np.abs(delta) + r) * (1 + np.abs(logp) + np.abs(logq))).sum()
    assert tol < 1e-3 < abs((p * 0.5 * delta**2).sum() - reverse_kl)  # k2's bias is resolved
    assert (abs(expectation - reverse_kl) <= tol) == info.unbiased, (expectation, reverse_kl, tol)

    a, b = info.loss_gradient
    grad_reverse = p * (logp - logq - reverse_kl)  # ∇_θ KL(p_θ ‖ q)
    grad_forward = p - q  # ∇_θ KL(q ‖ p_θ)
    np.testing.assert_allclose(
        _expected_loss_gradient(name, theta, logits_ref), a * grad_reverse + b * grad_forward,
        atol=1e-6,
    )
    assert info.loss_term == (name in kl.estimators(loss_term=True)) == bool(a or b)
    if info.reward_gradient is not None:  # E_p[k·∇log p_θ], the score-function (reward) gradient
        a, b = info.reward_gradient
        np.testing.assert_allclose(
            _expected_reward_gradient(name, theta, logits_ref), a * grad_reverse + b * grad_forward,
            atol=1e-6,
        )
    else:  # k2: ½δ² is not c + aδ − b(r − 1), so no pair may claim to describe it
        assert name == "k2" or info.base == "k2"
    assert info.reward_term == (info.correction is None)

    log_ratio = jnp.concatenate([jnp.linspace(-80.0, 80.0, 16001), jnp.array([0.0, 1e-30, -1e-30])])
    grid = kl.estimate(log_ratio, jnp.zeros_like(log_ratio), name)
    assert bool(jnp.all(grid >= 0.0)) == info.nonnegative


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry is process-global: whatever a test registers is gone after it."""
    monkeypatch.setattr(kl._REGISTRY, "_entries", dict(kl._REGISTRY._entries))


def test_a_new_estimator_is_one_function_and_its_registration(scratch_registry):
    before = kl.estimators()

    @kl.estimator("k_test", unbiased=True, nonnegative=False, loss_gradient=(0, 0.25))
    def k_quarter(logp, logp_ref):  # k_λ = δ + λ(r − 1) at λ = ¼
        return (logp - logp_ref) + 0.25 * jnp.expm1(logp_ref - logp)

    assert kl.estimators() == before + ("k_test",)
    assert "k_test" in kl.estimators(unbiased=True, loss_term=True)
    assert "k_test" not in kl.estimators(nonnegative=True)
    logp, logp_ref = jnp.array([-1.0, -0.5]), jnp.array([-0.5, -2.0])
    np.testing.assert_array_equal(kl.estimate(logp, logp_ref, "k_test"), k_quarter(logp, logp_ref))
    with pytest.raises(ValueError, match="identical shapes"):
        kl.estimate(jnp.zeros(3), jnp.zeros((3, 1)), "k_test")
    with pytest.warns(DeprecationWarning, match=r"kl\.estimators\(\)"):
        assert kl.ESTIMATORS == kl.estimators()  # the deprecated alias follows the registry
    with pytest.raises(ValueError, match="'k3' is registered twice"):
        kl.estimator("k3", unbiased=True, nonnegative=True, loss_gradient=(0, 1))(k_quarter)


# ---------------------------------------------------------------- exact categorical


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_categorical_matches_numpy(scale):
    k1, k2 = jax.random.split(jax.random.key(4))
    logits = scale * jax.random.normal(k1, (3, 5, 7))
    logits_ref = scale * jax.random.normal(k2, (3, 5, 7))
    got = kl.categorical(logits, logits_ref)
    assert got.shape == (3, 5)
    expected = _np_categorical_kl(logits, logits_ref)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


def test_categorical_masked_entries():
    inf = jnp.inf
    logits = jnp.array([[0.0, 1.0, -inf, 2.0], [0.5, -inf, -inf, 0.0]])
    logits_ref = jnp.array([[1.0, 0.0, -inf, 0.0], [0.0, -inf, -inf, 0.0]])
    got = kl.categorical(logits, logits_ref)
    expected = _np_categorical_kl(
        [[0.0, 1.0, 2.0], [0.5, 0.0, -40.0]], [[1.0, 0.0, 0.0], [0.0, 0.0, -40.0]]
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)

    grads = jax.grad(lambda a, b: kl.categorical(a, b).sum(), argnums=(0, 1))(logits, logits_ref)
    for g in grads:
        assert bool(jnp.all(jnp.isfinite(g)))
        np.testing.assert_array_equal(np.asarray(g)[np.isinf(np.asarray(logits))], 0.0)

    # Mass where the reference has none: the KL is truly infinite.
    assert jnp.isposinf(kl.categorical(jnp.array([0.0, 0.0]), jnp.array([0.0, -inf])))


def test_categorical_gradients_finite_at_edges():
    same = jnp.array([0.2, -0.4, 1.0])
    value, grads = jax.value_and_grad(kl.categorical, argnums=(0, 1))(same, same)
    assert float(value) == pytest.approx(0.0, abs=1e-7)
    for g in grads:
        np.testing.assert_allclose(g, 0.0, atol=1e-7)
    # Near-zero probabilities (p ≈ e^-80 underflows float32 to 0): finite values and gradients.
    tiny = jnp.array([0.0, -80.0, -200.0])
    ref = jnp.array([-100.0, 0.0, 0.0])
    value, grads = jax.value_and_grad(kl.categorical, argnums=(0, 1))(tiny, ref)
    np.testing.assert_allclose(value, _np_categorical_kl(tiny, ref), rtol=1e-5)
    for g in grads:
        assert bool(jnp.all(jnp.isfinite(g)))


# ---------------------------------------------------------------- analytic Gaussian


def test_gaussian_matches_textbook_formula():
    rng = np.random.default_rng(5)
    mean, mean_ref = rng.normal(size=(2, 4, 3))
    log_std, log_std_ref = rng.normal(scale=0.5, size=(2, 4, 3))
    got = kl.gaussian(*(jnp.asarray(a, jnp.float32) for a in (mean, log_std, mean_ref, log_std_ref)))
    var, var_ref = np.exp(2 * log_std), np.exp(2 * log_std_ref)
    textbook = (
        log_std_ref - log_std + (var + (mean - mean_ref) ** 2) / (2 * var_ref) - 0.5
    ).sum(-1)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, textbook, rtol=1e-5)


def test_gaussian_near_identical_and_gradients():
    zeros = jnp.zeros(3)
    value, grads = jax.value_and_grad(kl.gaussian, argnums=(0, 1, 2, 3))(zeros, zeros, zeros, zeros)
    assert float(value) == 0.0
    for g in grads:
        np.testing.assert_array_equal(g, 0.0)
    # A 1e-4 shift in log-std: KL = ½(e^{2d} − 1 − 2d) ≈ d², which the naive form loses in float32.
    d = 1e-4
    got = kl.gaussian(zeros[:1], jnp.array([d]), zeros[:1], zeros[:1])
    d32 = float(np.float32(d))
    np.testing.assert_allclose(got, np.expm1(2 * d32) / 2 - d32, rtol=1e-5)


def test_gaussian_agrees_with_sample_estimate():
    # The analytic value and the Monte Carlo k3 estimate from the same pair must agree.
    logp, logp_ref = _gaussian_samples(jax.random.key(6), 0.7, 1.3, N_MC)
    analytic = kl.gaussian(jnp.zeros(1), jnp.zeros(1), jnp.array([0.7]), jnp.log(jnp.array([1.3])))
    _assert_within_mc_error(kl.estimate(logp, logp_ref, "k3"), float(analytic), "k3 vs analytic")


# ---------------------------------------------------------------- masked reductions


def test_masked_reductions_against_loops():
    values = np.array([[1.0, 2.0, 3.0, np.nan], [4.0, np.nan, np.nan, np.nan], [5, 6, 7, 8.0]])
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    sums = [sum(v for v, m in zip(row, mrow) if m) for row, mrow in zip(values, mask)]
    counts = mask.sum(-1)
    np.testing.assert_allclose(kl.sum_per_sequence(jnp.asarray(values), jnp.asarray(mask)), sums)
    np.testing.assert_allclose(
        kl.mean_per_sequence(jnp.asarray(values), jnp.asarray(mask)), [2.0, 4.0, 0.0]
    )
    np.testing.assert_allclose(
        kl.mean_per_token(jnp.asarray(values), jnp.asarray(mask)), sum(sums) / counts.sum()
    )
    # NaN under padding must not leak into gradients either.
    grad = jax.grad(lambda v: kl.mean_per_token(v, jnp.asarray(mask)))(jnp.asarray(values))
    np.testing.assert_allclose(grad, mask / counts.sum())


# ---------------------------------------------------------------- errors


def test_unknown_estimator_is_named():
    choices = re.escape(repr(kl.estimators()))
    assert kl.estimators()[:3] == ("k1", "k2", "k3")
    with pytest.raises(ValueError, match=rf"estimator must be one of {choices}, got 'k4'"):
        kl.estimate(jnp.zeros(3), jnp.zeros(3), "k4")
    with pytest.raises(ValueError, match=rf"one of {choices}, got 'k4'"):
        kl.estimator_info("k4")


@pytest.mark.parametrize(
    "call",
    [
        lambda: kl.estimate(jnp.zeros(3), jnp.zeros((3, 1)), "k1"),
        lambda: kl.categorical(jnp.zeros((2, 4)), jnp.zeros((2, 5))),
        lambda: kl.gaussian(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), jnp.zeros(3)),
        lambda: kl.sum_per_sequence(jnp.zeros((2, 4)), jnp.zeros((4,))),
        lambda: jax.jit(kl.categorical)(jnp.zeros((2, 4)), jnp.zeros((4,))),
    ],
)
def test_mismatched_shapes_raise_naming_arguments(call):
    with pytest.raises(ValueError, match=r"must have identical shapes, got \w+ \(.*\), \w+ \("):
        call()


def test_python_numbers_and_lists_are_shape_checked_too():
    # chex reads `.shape`; inputs without one must still work, and still be checked.
    np.testing.assert_allclose(kl.estimate(-1.0, -2.0, "k1"), 1.0)
    with pytest.raises(ValueError, match=r"got logp \(2,\), logp_ref \(1,\)"):
        kl.estimate([-1.0, 0.0], [-2.0], "k3")


def test_gaussian_hessian_at_coincidence_is_the_fisher_information():
    """TRPO's Fisher-vector product is the Hessian of the KL at p = p_ref, which must be the Fisher
    information of N(μ, σ²) in (μ, log σ): diag(1/σ², 2) per dimension, for either argument. (A
    `where` masking μ = μ_ref once zeroed the 1/σ² block and TRPO's steps went wrong.) Float32
    second derivatives of a closed form: rtol 1e-5."""
    mean = jnp.array([0.3, -1.2, 2.0])
    log_std = jnp.array([-0.5, 0.0, 0.7])
    params = jnp.concatenate([mean, log_std])

    def kl_first(p):  # KL(p_θ ‖ p_ref) around θ = ref
        return kl.gaussian(p[:3], p[3:], mean, log_std)

    def kl_second(p):  # KL(p_ref ‖ p_θ)
        return kl.gaussian(mean, log_std, p[:3], p[3:])

    fisher = np.diag(np.concatenate([np.exp(-2 * np.asarray(log_std, np.float64)), [2.0] * 3]))
    for fn in (kl_first, kl_second):
        np.testing.assert_allclose(jax.hessian(fn)(params), fisher, rtol=1e-5, atol=1e-6)
