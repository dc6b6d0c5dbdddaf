"""Shared numerics of the KL core: shape checks and k3's accurate e^x − 1 − x."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np


def _check_same_shape(fn: str, **arrays: jax.Array) -> None:
    """chex's equal-shape check, re-raised as this public API's ``ValueError`` naming each argument
    (chex raises ``AssertionError`` and numbers the arrays). Shapes are static, so this runs once at
    trace time and costs nothing under jit."""
    # chex reads ``.shape``, which Python numbers and lists lack: give them one.
    shaped = {name: a if hasattr(a, "shape") else np.asarray(a) for name, a in arrays.items()}
    try:
        chex.assert_equal_shape(list(shaped.values()))
    except AssertionError:
        listed = ", ".join(f"{name} {tuple(a.shape)}" for name, a in shaped.items())
        raise ValueError(
            f"kltrust.kl.{fn}: arguments must have identical shapes, got {listed}."
        ) from None


# Taylor coefficients of (e^x − 1 − x)/(x²/2) = Σ_k 2xᵏ/(k + 2)!, k = 0..9 (terms up to x¹¹/11!).
_K3_SERIES = tuple(2.0 / math.factorial(k + 2) for k in range(10))


def _expm1_minus_identity(x: jax.Array) -> jax.Array:
    """e^x − 1 − x, accurate to a few ulps for every x (k3 with x = log r).

    ``expm1(x) − x`` cancels: its relative error is expm1's amplified by |expm1(x)|/(e^x − 1 − x) ≈ 4/|x|
    for small |x| (the result is x²/2 but the ulp is that of x). So |x| < 1 uses the Taylor series
    x²/2·Σ_k 2xᵏ/(k + 2)! through x¹¹/11! (truncation < 6e-9 relative). Switching at |x| = 0.1, as
    this function once did, leaves a cancellation factor ≈ 40 just above the switch (≈ 46U measured,
    U = 2⁻²⁴; tests/test_properties.py::test_k3_relative_accuracy); from |x| = 1 on the factor is
    ≤ 2.4. Measured worst case now: ≈ 4U, about 2 float32 ulps. The series input is zeroed on the other
    branch so that huge x cannot produce inf·0 = NaN in the gradient of the unselected branch.
    """
    small = jnp.abs(x) < 1.0
    xs = jnp.where(small, x, 0.0)
    poly = _K3_SERIES[-1]
    for coef in reversed(_K3_SERIES[:-1]):
        poly = coef + xs * poly
    series = 0.5 * xs * xs * poly
    return jnp.where(small, series, jnp.expm1(x) - x)


