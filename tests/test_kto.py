"""KTO (kltrust/objectives/kto.py) against a float64 NumPy statement of its eq. 8."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust.objectives import kto, preference


def _np_kto(u_w, u_l, weights, beta, lambda_d, lambda_u):
    z0 = max(0.0, float(np.sum(weights * 0.5 * (u_w + u_l)) / np.sum(weights)))
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    per = lambda_d * (1 - sig(beta * (u_w - z0))) + lambda_u * (1 - sig(beta * (z0 - u_l)))
    return float(np.sum(weights * per) / np.sum(weights)), z0


@pytest.mark.parametrize("shift", [-1.0, 0.8])  # z0 clipped at 0, and z0 > 0
def test_value_and_gradient_match_numpy(shift):
    rng = np.random.default_rng(0)
    u_w = rng.normal(size=8) + shift
    u_l = rng.normal(size=8) + shift
    weights = rng.uniform(0.5, 1.5, size=8)
    hp = kto.HParams(lambda_d=jnp.float32(1.0), lambda_u=jnp.float32(1.3))
    ref = jnp.zeros(8, jnp.float32)

    def f(uw, ul):
        return preference.loss(uw, ul, ref, ref, 0.5, "kto", hp,
                               weights=jnp.asarray(weights, jnp.float32))[0]

    got = f(jnp.asarray(u_w, jnp.float32), jnp.asarray(u_l, jnp.float32))
    want, z0 = _np_kto(u_w, u_l, weights, 0.5, 1.0, 1.3)
    assert (z0 > 0) == (shift > 0)
    np.testing.assert_allclose(got, want, rtol=1e-5)  # float32 sums of 8 terms of order 1
    # z0 is a constant: the gradient is the float64 statement's with z0 held fixed, by central
    # differences (h = 1e-6; the float64 FD error is ~1e-10, the float32 gradient's ~1e-7).
    grad_w = np.asarray(jax.grad(f)(jnp.asarray(u_w, jnp.float32), jnp.asarray(u_l, jnp.float32)))
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    for i in (0, 5):
        def fixed(x):
            uw = u_w.copy()
            uw[i] = x
            per = 1.0 * (1 - sig(0.5 * (uw - z0))) + 1.3 * (1 - sig(0.5 * (z0 - u_l)))
            return np.sum(weights * per) / np.sum(weights)
        fd = (fixed(u_w[i] + 1e-6) - fixed(u_w[i] - 1e-6)) / 2e-6
        np.testing.assert_allclose(grad_w[i], fd, atol=1e-6)


def test_bounded_and_registered():
    """Each term lies in [0, λ]: a pair far apart contributes (almost) nothing more."""
    entry = preference.LOSSES.get("kto")
    assert entry.per_response is not None and entry.per_pair is None and not entry.reference_free
    assert entry.doc.startswith("KTO, Ethayarajh et al. 2024")
    big = jnp.array([50.0], jnp.float32)
    zero = jnp.zeros(1, jnp.float32)
    value, _ = preference.loss(big, -big, zero, zero, 1.0, "kto")
    assert 0.0 <= float(value) < 1e-6
