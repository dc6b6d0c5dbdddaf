"""k_half = ½(r − 1) − log r, the control-variate estimator k_λ at λ = ½, against float64 NumPy.

With δ = log p − log p_ref and r = e^{−δ}, k_λ = λ(r − 1) − log r = δ + λ·expm1(−δ) (restated here
from that definition, in float64). Monte Carlo checks allow Z = 5 standard errors (< 1e-6 per check
for a Gaussian error) and use fixed seeds, so they are deterministic.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust import kl

NAME, LAM = "k_half", 0.5
Z = 5.0
N_MC = 200_000
U = 2.0**-24  # float32 unit round-off
FLT_MIN = float(np.finfo(np.float32).tiny)


def _np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _k_lambda(delta, lam):
    """λ(r − 1) − log r in float64; expm1 keeps full relative accuracy near δ = 0."""
    return lam * np.expm1(-delta) + delta


def _pair(seed, k, scale):
    """float32 logits of p and of p_ref (p's shifted by scale·N(0, I)), and their float64 log-probs."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=k).astype(np.float32)
    z_ref = (z + scale * rng.normal(size=k)).astype(np.float32)
    return z, z_ref, _np_log_softmax(z), _np_log_softmax(z_ref)


def test_registered_as_documented():
    info = kl.estimator_info(NAME)
    assert (info.unbiased, info.nonnegative, info.loss_gradient) == (True, False, (0.0, LAM))
    assert NAME in kl.estimators(unbiased=True, loss_term=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 8, 50])
@pytest.mark.parametrize("scale", [0.1, 1.0, 3.0])
def test_exact_expectation_is_the_kl(seed, k, scale):
    """E_p[k_half] = KL(p‖p_ref), summing over the whole support: the float64 restatement equals the
    float64 KL to round-off, and both equal `kl.categorical` and the library's own k_half values
    (float32) within float32 round-off."""
    z, z_ref, logp, logq = _pair(seed, k, scale)
    p, delta = np.exp(logp), logp - logq
    true_kl = (p * delta).sum()
    np.testing.assert_allclose((p * _k_lambda(delta, LAM)).sum(), true_kl, rtol=1e-12)
    # Float32 log-softmax errs by a few U·(1 + |log p|) per entry, and each term p·(…) inherits it:
    # 16U·Σ p(1 + |log p| + |log p_ref| + r) bounds both float32 sums (r: k_half's slope in log p_ref).
    tol = 16 * U * (p * (1 + np.abs(logp) + np.abs(logq) + np.exp(-delta))).sum()
    np.testing.assert_allclose(float(kl.categorical(z, z_ref)), true_kl, rtol=0, atol=tol)
    values = kl.estimate(jnp.asarray(logp, jnp.float32), jnp.asarray(logq, jnp.float32), NAME)
    np.testing.assert_allclose((p * np.asarray(values, np.float64)).sum(), true_kl, rtol=0, atol=tol)


def test_values_against_float64_and_the_lower_bound():
    """Elementwise against the restatement, both signs of δ from 1e-12 to 80: computed as ½(k1 + k3),
    k3 within 40U relative (tests/test_properties.py's bound K3_REL) and one rounding for the sum, so
    |error| ≤ 21U·(|δ| + k3) (+ FLT_MIN where a tiny result is flushed); 32U is asserted. The minimum
    of δ + ½(e^{−δ} − 1) is at e^{−δ} = 2: ½ − log 2 < 0, so k_half is not ≥ 0 but is bounded below."""
    delta = np.concatenate([
        np.linspace(-80.0, 80.0, 16001), np.logspace(-12, 1.9, 500), -np.logspace(-12, 1.9, 500),
        [0.0, -np.log(2.0)],
    ]).astype(np.float32)
    got = np.asarray(kl.estimate(jnp.asarray(delta), jnp.zeros_like(delta), NAME), np.float64)
    d = delta.astype(np.float64)
    k3 = np.expm1(-d) + d
    np.testing.assert_array_less(np.abs(got - _k_lambda(d, LAM)), 32 * U * (np.abs(d) + k3) + FLT_MIN)
    floor = 0.5 - np.log(2.0)
    assert got.min() >= floor - 32 * U and got[-1] == pytest.approx(floor, abs=32 * U)
    assert got[-2] == 0.0


def _moments(p, values):
    mean = (p * values).sum()
    centred = values - mean
    return (p * centred**2).sum(), (p * centred**4).sum()


@pytest.mark.parametrize(
    "seed,k,scale,least",
    [
        (0, 16, 0.1, "k3"),  # KL ≈ 0.004, near p_ref: k3's std/KL ≈ 1.2, k_half's ≈ 11
        (1, 16, 1.0, "k_half"),  # KL ≈ 0.19 with a heavy r tail: k_half 1.7, k1 2.9, k3 3.3
    ],
)
def test_variance_exact_and_monte_carlo(seed, k, scale, least):
    """Exact variances by summing over the support obey the docstring's identity
    Var[k_half] = ½(Var[k1] + Var[k3]) − ¼Var[r] and rank the estimators; Monte Carlo variances of
    the library's values agree. Tolerance: for N i.i.d. samples the sample variance s² has
    Var[s²] = (m4 − σ⁴(N − 3)/(N − 1))/N with m4 the fourth central moment (exact here, by summation),
    and Z = 5 of its standard deviations are allowed."""
    z, z_ref, logp, logq = _pair(seed, k, scale)
    p, delta = np.exp(logp), logp - logq
    restated = {"k1": delta, "k3": _k_lambda(delta, 1.0), NAME: _k_lambda(delta, LAM)}
    exact = {name: _moments(p, v) for name, v in restated.items()}
    var_r = _moments(p, np.exp(-delta))[0]
    np.testing.assert_allclose(
        exact[NAME][0], 0.5 * (exact["k1"][0] + exact["k3"][0]) - 0.25 * var_r, rtol=1e-10
    )
    assert min(exact, key=lambda name: exact[name][0]) == least

    x = jax.random.categorical(jax.random.key(seed), jnp.asarray(z), shape=(N_MC,))
    lp, lq = jax.nn.log_softmax(jnp.asarray(z))[x], jax.nn.log_softmax(jnp.asarray(z_ref))[x]
    sample_var = {}
    for name, (var, m4) in exact.items():
        sample_var[name] = np.asarray(kl.estimate(lp, lq, name), np.float64).var(ddof=1)
        se = np.sqrt((m4 - var**2 * (N_MC - 3) / (N_MC - 1)) / N_MC)
        assert abs(sample_var[name] - var) < Z * se, (name, sample_var[name], var, se)
    assert sorted(sample_var, key=sample_var.get) == sorted(exact, key=lambda n: exact[n][0])


def test_gaussian_shift_numbers_of_the_docstring():
    """p = N(0, 1), p_ref = N(μ, 1): δ = μ²/2 − μx and r = e^{μx − μ²/2}, x ~ N(0, 1), KL = μ²/2.
    Var[δ] = μ², Cov[δ, r] = −μ·E[x e^{μx − μ²/2}] = −μ², Var[r] = e^{μ²} − 1, so
    Var[k_λ] = μ²(1 − 2λ) + λ²(e^{μ²} − 1) and λ* = μ²/(e^{μ²} − 1). The closed form is checked by
    Gauss–Hermite quadrature (200 nodes: exact for polynomials of degree < 400, ample for e^{2μx} at
    μ ≤ 2); the numbers quoted in `kl._k_half`'s docstring follow from it."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    weights = weights / weights.sum()  # expectation under N(0, 1)

    def closed(mu, lam):
        return mu**2 * (1 - 2 * lam) + lam**2 * np.expm1(mu**2)

    for mu in (0.1, 1.0, 2.0):
        for lam in (0.0, 0.5, 1.0):
            k = _k_lambda(mu**2 / 2 - mu * nodes, lam)
            quad = (weights * (k - (weights * k).sum()) ** 2).sum()
            np.testing.assert_allclose(quad, closed(mu, lam), rtol=1e-9)

    def std_over_kl(kl_value, lam):
        return np.sqrt(closed(np.sqrt(2 * kl_value), lam)) / kl_value

    assert std_over_kl(0.5, LAM) == pytest.approx(1.31, abs=0.005)
    assert std_over_kl(0.5, 1.0) == pytest.approx(1.70, abs=0.005)
    assert std_over_kl(0.5, 0.0) == pytest.approx(2.0, abs=1e-12)
    assert std_over_kl(0.005, LAM) == pytest.approx(10.0, abs=0.05)
    assert std_over_kl(0.005, 1.0) == pytest.approx(1.42, abs=0.005)
    kls = np.linspace(0.01, 3.0, 29_901)  # steps of 1e-4
    least = np.array([std_over_kl(v, LAM) < min(std_over_kl(v, 0.0), std_over_kl(v, 1.0)) for v in kls])
    inside = kls[least]
    assert np.all(np.diff(np.flatnonzero(least)) == 1)  # one interval
    assert inside[0] == pytest.approx(0.28, abs=0.005) and inside[-1] == pytest.approx(1.17, abs=0.005)
    mus = np.sqrt(2 * kls)
    lam_star = mus**2 / np.expm1(mus**2)
    assert kls[np.argmin(np.abs(lam_star - 0.5))] == pytest.approx(0.63, abs=0.005)


def _exact_gradients(theta, logits_ref, name):
    """On-policy expected gradients of a categorical p_θ = softmax(θ) with its samples held fixed,
    summed exactly over the support: of the loss term E[k], and of the reward surrogate E[k·log p_θ]
    (k a constant: the score-function gradient E[k·∇log p_θ])."""
    logq = jax.nn.log_softmax(logits_ref)

    def loss(t):
        logp = jax.nn.log_softmax(t)
        return jnp.sum(jax.lax.stop_gradient(jnp.exp(logp)) * kl.estimate(logp, logq, name))

    def reward(t):
        logp = jax.nn.log_softmax(t)
        k = jax.lax.stop_gradient(kl.estimate(logp, logq, name))
        return jnp.sum(jax.lax.stop_gradient(jnp.exp(logp)) * k * logp)

    return (np.asarray(jax.grad(f)(theta), np.float64) for f in (loss, reward))


def test_gradients_as_a_loss_and_as_a_reward():
    """∇k_λ = (1 − λr)∇log p_θ, and E_p[∇log p_θ] = 0, E_p[δ∇log p_θ] = ∇KL(p_θ‖q),
    E_p[r∇log p_θ] = Σ_x q(x)∇log p_θ(x) = −∇KL(q‖p_θ). So as a loss E[∇k_λ] = λ∇KL(q‖p_θ), and as a
    reward E[k_λ∇log p_θ] = ∇KL(p_θ‖q) − λ∇KL(q‖p_θ): unbiased only for λ = 0 (k1). In logits,
    ∇KL(q‖p_θ) = p − q and ∇KL(p_θ‖q) = p ⊙ (log p − log q − KL(p‖q)). Float32 sums of 5 terms of
    order 1: atol 1e-6."""
    theta = jnp.array([0.3, -1.0, 2.0, 0.0, 0.7], jnp.float32)
    logits_ref = jnp.array([1.0, 0.5, -0.5, 0.2, -1.2], jnp.float32)
    logp, logq = _np_log_softmax(theta), _np_log_softmax(logits_ref)
    p, q = np.exp(logp), np.exp(logq)
    grad_forward = p - q
    grad_reverse = p * (logp - logq - (p * (logp - logq)).sum())
    for name, lam in (("k1", 0.0), (NAME, LAM), ("k3", 1.0)):
        as_loss, as_reward = _exact_gradients(theta, logits_ref, name)
        np.testing.assert_allclose(as_loss, lam * grad_forward, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(as_reward, grad_reverse - lam * grad_forward, atol=1e-6,
                                   err_msg=name)
    assert np.abs(grad_forward).max() > 0.1  # the biases above are not vanishingly small
