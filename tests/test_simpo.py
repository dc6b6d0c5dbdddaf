"""SimPO against a float64 NumPy restatement of the paper's loss, and its reference-freeness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust import components
from kltrust.objectives import preference, simpo

RNG = np.random.default_rng(0)
LOGP_W, LOGP_L = RNG.normal(-8.0, 3.0, 16), RNG.normal(-9.0, 3.0, 16)
LEN_W, LEN_L = RNG.integers(1, 13, 16), RNG.integers(1, 13, 16)


def _numpy_simpo(beta, gamma):
    """−log σ(β(logπ_w/|y_w| − logπ_l/|y_l|) − γ) in float64: log(1 + e^{−z})."""
    z = beta * (LOGP_W / LEN_W - LOGP_L / LEN_L) - gamma
    return np.mean(np.logaddexp(0.0, -z))


@pytest.mark.parametrize("beta, gamma", [(2.0, 1.0), (0.1, 0.0), (2.5, 1.6)])
def test_value_matches_the_paper(beta, gamma):
    hp = components.create(simpo.HParams, gamma=gamma)
    value, metrics = preference.loss(jnp.float32(LOGP_W), jnp.float32(LOGP_L), None, None, beta,
                                     "simpo", hp, chosen_lengths=jnp.asarray(LEN_W),
                                     rejected_lengths=jnp.asarray(LEN_L))
    # float32 inputs of size ~10 carry ~1e-6 relative rounding; the loss is O(1): 1e-5 covers it.
    np.testing.assert_allclose(value, _numpy_simpo(beta, gamma), rtol=1e-5)
    np.testing.assert_allclose(metrics["rewards_chosen"], beta * np.mean(LOGP_W / LEN_W), rtol=1e-5)
    assert "logratio_mean" not in metrics  # no reference was given: no log-ratio is claimed


def test_gradient_matches_finite_differences_and_ignores_the_reference():
    hp = components.create(simpo.HParams, gamma=1.0)
    lw, ll = jnp.asarray(LOGP_W), jnp.asarray(LOGP_L)

    def f(w, ref_shift):
        ref = jnp.full_like(w, ref_shift)
        return preference.loss(w, ll, ref, ref, 2.0, "simpo", hp,
                               chosen_lengths=jnp.asarray(LEN_W),
                               rejected_lengths=jnp.asarray(LEN_L))[0]

    with jax.enable_x64():
        w64 = jnp.asarray(LOGP_W, jnp.float64)
        grad = jax.grad(f)(w64, 0.0)
        # Central differences in float64 with step 1e-6: truncation O(h²) ~ 1e-12, rounding
        # ~ 1e-16/1e-6 = 1e-10, far below the 1e-7 tolerance.
        eps = 1e-6
        fd = np.array([(f(w64.at[i].add(eps), 0.0) - f(w64.at[i].add(-eps), 0.0)) / (2 * eps)
                       for i in range(4)])
        np.testing.assert_allclose(grad[:4], fd, atol=1e-7)
        # Reference-free: moving the reference log-probabilities changes nothing.
        assert float(f(w64, 0.0)) == float(f(w64, -5.0))
    del lw


def test_registered_with_presets_and_refuses_a_negative_margin():
    entry = preference.LOSSES.get("simpo")
    assert entry.reference_free and entry.length_normalised
    assert "simpo" in entry.token_presets and "simpo_exact" in entry.bandit_runs
    with pytest.raises(ValueError, match=r"gamma = -1.0: must be in \[0, inf\)"):
        components.create(simpo.HParams, gamma=-1.0)
