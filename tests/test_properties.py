"""Property-based tests (hypothesis) of the numerical core: `kltrust.kl`, `kltrust.distributions`, the
preference losses of `kltrust.objectives.dpo`, the group advantages and loss of
`kltrust.objectives.grpo`, and every β controller registered in `kltrust.controllers`.

Determinism. Every test uses ``derandomize=True`` (examples seeded from the test's name: the same numbers
on every run), ``database=None`` (no example database: a failure seen in an earlier run is not replayed,
so what runs depends only on the code) and ``deadline=None`` (a JAX compile or a loaded CPU can make one
example slow; that is not a failure). Hypothesis also mixes in, now and then, numeric constants it finds
in the project's imported source (cached under ``.hypothesis/constants``, which hypothesis git-ignores
itself), so the examples are fixed for a given checkout and set of collected test files, and may change
when either changes.
Shapes are drawn from small fixed sets (at most 3 axes of size ≤ 6) and the functions under test are
jitted once at module level, so each compiles once per shape.

Tolerances. U = 2⁻²⁴ is float32's unit round-off: a correctly rounded +, −, ×, ÷ or sqrt has relative
error ≤ U. XLA's CPU exp, log and expm1 are not correctly rounded; measured on dense float32 grids
(2·10⁶ points over their whole finite range) their relative errors are ≤ 1.4U, 2.0U and 6.1U, so every
bound below charges C_FN = 8U per transcendental call. Each bound is first order in U; the neglected
higher-order terms are products of first-order ones, at most ~3e-3 of them for the inputs drawn here
(the largest first-order relative error is U·(2·2·10⁴ + 100) ≈ 2.4e-3), and SECOND_ORDER = 2 covers
them. XLA may flush results below the smallest normal float32 to zero, hence an absolute FLT_MIN per
term wherever a result can be that small. The float64 NumPy restatements carry errors ~1e-12 at worst,
far below every float32 tolerance.
"""

from __future__ import annotations

import functools
import warnings

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kltrust import components, controllers, distributions, kl
from kltrust.objectives import dpo, grpo

U = 2.0**-24  # float32 unit round-off
C_FN = 8.0  # relative error of XLA's float32 exp / log / expm1, in units of U (measured ≤ 6.1, see above)
SECOND_ORDER = 2.0
FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)  # smallest normal float32


def _settings(max_examples: int):
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None)


# ---------------------------------------------------------------- strategies

# [..., K] shapes: K = 1 (a point mass) up to 6, one to three axes.
DIST_SHAPES = [(1,), (6,), (3, 2), (2, 3, 4)]
# Any shape for the sample estimators, including a scalar.
EST_SHAPES = [(), (5,), (2, 3), (2, 3, 4)]


def _f32(lo: float, hi: float):
    """float32 values in [lo, hi], the bounds rounded to the nearest float32 (hypothesis needs them exact)."""
    return st.floats(float(np.float32(lo)), float(np.float32(hi)), width=32)


# Logits: moderate values, the whole ±1e4 range, and the extremes themselves (a gap of 2·10⁴ makes
# float32 probabilities underflow to exactly 0 while the logit is finite).
LOGIT = st.one_of(_f32(-5.0, 5.0), _f32(-1e4, 1e4), st.sampled_from([-1e4, 1e4, -100.0, 0.0, 100.0]))
# Log-probabilities of sampled points: ordinary ones, and the underflow range −100 .. −1e4.
LOGP = st.one_of(
    _f32(-20.0, 0.0), _f32(-1e4, -100.0), _f32(-1e4, 0.0), st.sampled_from([0.0, -100.0, -1e4])
)
ANY_FINITE_F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


def _masks(draw, shape):
    """A −inf mask (True = probability 0) with at least one finite entry per distribution."""
    mask = draw(hnp.arrays(np.bool_, shape))
    keep = draw(st.integers(0, shape[-1] - 1))
    mask[..., keep] &= ~mask.all(axis=-1)
    return mask


@st.composite
def categorical_pairs(draw, support: str = "contained", shapes=DIST_SHAPES):
    """(logits, logits_ref) float32 with −inf masks in either argument.

    support: "contained" (p_i > 0 ⇒ q_i > 0: the KL is finite), "violated" (every distribution has an
    entry with p_i > 0 = q_i: the KL is +inf) or "any".
    """
    shape = draw(st.sampled_from(shapes))
    logits = draw(hnp.arrays(np.float32, shape, elements=LOGIT))
    ref = draw(hnp.arrays(np.float32, shape, elements=LOGIT))
    mask_p, mask_q = _masks(draw, shape), _masks(draw, shape)
    if support == "contained":
        mask_q &= mask_p  # q may be 0 only where p is
    elif support == "violated":
        j = draw(st.integers(0, shape[-1] - 1))
        mask_p[..., j], mask_q[..., j] = False, True
        mask_q[..., (j + 1) % shape[-1]] = False  # q keeps one finite entry
    logits[mask_p] = -np.inf
    ref[mask_q] = -np.inf
    return logits, ref


# ---------------------------------------------------------------- float64 restatements and bounds


def _np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)  # at least one finite entry: the max is finite
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _np_categorical(logits, ref):
    """Exact KL(p‖q) in float64: Σ over p_i > 0 (finite logit) of p_i·(log p_i − log q_i); +inf where
    some p_i > 0 has q_i = 0. Also returns the pieces the tolerance needs."""
    logp, logq = _np_log_softmax(logits), _np_log_softmax(ref)
    present = np.isfinite(np.asarray(logits))
    ok = present & np.isfinite(logq)
    p = np.where(present, np.exp(logp), 0.0)
    d = np.where(ok, logp - np.where(ok, logq, 0.0), 0.0)
    value = np.where((present & ~ok).any(axis=-1), np.inf, np.sum(p * d, axis=-1))
    return value, p, d, np.where(present, logp, 0.0), np.where(ok, logq, 0.0)


def _categorical_tol(p, d, logp, logq):
    """Round-off bound of `kl.categorical` (log_softmax, then Σ exp(logp)·(logp − logq)) in float32.

    log_softmax(z)_i = s_i − L with s_i = fl(z_i − max z) (error ≤ U|s_i|), L = log Σ_j exp(s_j). The sum
    S ≥ 1 (its largest term is e⁰); each term has relative error ≤ C_FN·U + U|s_j| and x·e^{−x} ≤ 1/e, so
    S has relative error ≤ (K − 1 + C_FN + K/e)·U, and L = log S absolute error ≤ that + C_FN·U·ln K.
    With |s_i| ≤ |log p_i| + ln K, the error of log p_i is at most
        E_i = U·(2|log p_i| + 10K + 8)        (1.37K + 8 + 9·ln K ≤ 10K + 8 for every K ≥ 1).
    A term exp(log p_i)·(log p_i − log q_i) then has error ≤ p_i·|d_i|·(E_p,i + (C_FN + 2)·U) + p_i·(E_p,i +
    E_q,i), the K-term sum adds (K − 1)·U·Σ|terms|, and probabilities below FLT_MIN may be flushed to 0
    (≤ K·FLT_MIN·(1 + max|d|)).
    """
    k = p.shape[-1]
    e_p = U * (2 * np.abs(logp) + 10 * k + 8)
    e_q = U * (2 * np.abs(logq) + 10 * k + 8)
    first = np.sum(p * (np.abs(d) * (e_p + (C_FN + k + 1) * U) + e_p + e_q), axis=-1)
    flushed = k * FLT_MIN * (1 + np.max(np.abs(d), axis=-1))
    return SECOND_ORDER * first + flushed


def _np_expm1_minus_identity(x):
    """e^x − 1 − x in float64 without cancellation: the Taylor series x²/2 + x³/6 + x⁴/24 below
    |x| = 1e-3 (the first omitted term x⁵/120 is < 2e-11 of x²/2), expm1(x) − x above (float64 round-off
    amplified by the cancellation factor ≤ 4/|x| ≤ 4000: < 1e-12 relative)."""
    x = np.asarray(x, np.float64)
    series = x * x * (0.5 + x * (1 / 6 + x / 24))
    return np.where(np.abs(x) < 1e-3, series, np.expm1(x) - x)


# Relative error of kl._expm1_minus_identity (k3), derived for its two branches:
#   |x| < 1: x²/2 · P(x), P = Σ_{k=0}^{9} 2xᵏ/(k+2)! by Horner. Horner of degree 9 with rounded
#     coefficients errs by ≤ 19U·Σ|c_k||x|ᵏ, and Σ|c_k||x|ᵏ / |P(x)| ≤ 2(e − 2)/(2e⁻¹) = 1.95 (worst at
#     x = −1), i.e. ≤ 37.1U; x·x and the last product add 2U: 39.1U. Truncation (x¹²/12! onwards) is
#     < 6e-9 relative, 0.1U.
#   |x| ≥ 1: fl(expm1(x)) − x, where expm1's C_FN·U is amplified by |expm1(x)|/(e^x − 1 − x) ≤ 2.39
#     (worst at x = 1), plus U for the subtraction: 20.2U.
K3_REL = 40 * U


# ---------------------------------------------------------------- jitted programs (compiled per shape)


@jax.jit
def _categorical_and_grads(logits, ref):
    value, vjp = jax.vjp(kl.categorical, logits, ref)
    g_logits, g_ref = vjp(jnp.ones_like(value))
    return value, g_logits, g_ref


@jax.jit
def _gaussian_and_grads(mean, log_std, mean_ref, log_std_ref):
    value, vjp = jax.vjp(kl.gaussian, mean, log_std, mean_ref, log_std_ref)
    return (value, *vjp(jnp.ones_like(value)))


@functools.partial(jax.jit, static_argnames="estimator")
def _estimate_and_grads(logp, logp_ref, estimator):
    value, vjp = jax.vjp(lambda a, b: kl.estimate(a, b, estimator), logp, logp_ref)
    return (value, *vjp(jnp.ones_like(value)))


@jax.jit
def _entropy_and_grad(logits):
    value, vjp = jax.vjp(lambda z: distributions.Categorical(z).entropy(), logits)
    return value, vjp(jnp.ones_like(value))[0]


@functools.partial(jax.jit, static_argnames="variant")
def _dpo_pairs_and_grad(h, beta, eps, variant):
    losses, vjp = jax.vjp(lambda x: dpo.per_pair_loss(x, beta, variant, eps), h)
    return losses, vjp(jnp.ones_like(losses))[0]


@functools.partial(jax.jit, static_argnames="variant")
def _dpo_loss_and_grads(pc, pr, rc, rr, beta, eps, weights, variant):
    def f(pc, pr):
        return dpo.loss(pc, pr, rc, rr, beta, variant, eps, weights)

    (value, metrics), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(pc, pr)
    return value, metrics, grads


@functools.partial(jax.jit, static_argnames="variant")
def _grpo_loss_and_grad(new, old, adv, mask, clip_eps, beta, ref, variant):
    def f(n):
        return grpo.loss(n, old, adv, mask, grpo.LossCoefs(clip_eps, beta), variant=variant, ref_logp=ref)

    (value, metrics), grad = jax.value_and_grad(f, has_aux=True)(new)
    return value, metrics, grad


def _finite(*arrays) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(a)))) for a in arrays)


# ---------------------------------------------------------------- kl.categorical


@_settings(120)
@given(pair=categorical_pairs("any"))
def test_categorical_nonnegative_up_to_derived_roundoff(pair):
    """Gibbs' inequality: KL ≥ 0. The float32 sum Σ p_i(log p_i − log q_i) may land below the true value
    by its round-off, so the computed value must be ≥ −tol with tol from `_categorical_tol` (true KL ≥ 0
    and |computed − true| ≤ tol give computed ≥ −tol); and it must never be NaN."""
    logits, ref = pair
    value = np.asarray(_categorical_and_grads(logits, ref)[0], np.float64)
    _, p, d, logp, logq = _np_categorical(logits, ref)
    assert not np.any(np.isnan(value)), (logits, ref, value)
    assert np.all(value >= -_categorical_tol(p, d, logp, logq)), (logits, ref, value)


@_settings(120)
@given(pair=categorical_pairs("any"))
def test_categorical_matches_float64_restatement(pair):
    """The exact KL against a float64 NumPy restatement (sum over the support of p only), within the
    derived float32 round-off bound; +inf exactly where some p_i > 0 has q_i = 0 (the true value, as the
    docstring promises), including where p_i is so small that it underflows float32."""
    logits, ref = pair
    value = np.asarray(_categorical_and_grads(logits, ref)[0], np.float64)
    expected, p, d, logp, logq = _np_categorical(logits, ref)
    assert value.shape == expected.shape
    infinite = np.isinf(expected)
    np.testing.assert_array_equal(value[infinite], expected[infinite])
    finite = ~infinite
    tol = _categorical_tol(p, d, logp, logq)[finite]
    assert np.all(np.abs(value[finite] - expected[finite]) <= tol), (logits, ref, value, expected, tol)


@_settings(80)
@given(pair=categorical_pairs("violated", shapes=[s for s in DIST_SHAPES if s[-1] >= 2]))
def test_categorical_is_inf_not_nan_where_q_misses_support_of_p(pair):
    """p_i > 0 (finite logit) with q_i = 0 (−inf logit) makes the true KL +inf. A p_i that underflows
    float32 (its logit 2·10⁴ below the largest) is still > 0 in the model, so the answer is +inf there
    too — never the NaN of 0·inf."""
    logits, ref = pair
    value = np.asarray(_categorical_and_grads(logits, ref)[0])
    assert np.all(value == np.inf), (logits, ref, value)


@_settings(120)
@given(pair=categorical_pairs("contained"))
def test_categorical_finite_value_and_gradient_where_true_value_finite(pair):
    """With supp p ⊆ supp q the KL is finite (≤ 4·10⁴ for logits in ±1e4), and so is its gradient
    (∂/∂z = p⊙(d − KL), ∂/∂z_ref = q − p): both must be finite for every mask and extreme logit; the
    double `where` in `kl.categorical` exists so that no −inf − −inf leaks a NaN into the gradient."""
    logits, ref = pair
    value, g_logits, g_ref = _categorical_and_grads(logits, ref)
    assert _finite(value, g_logits, g_ref), (logits, ref, value, g_logits, g_ref)


@_settings(100)
@given(pair=categorical_pairs("contained"))
def test_categorical_masked_entries_contribute_nothing(pair):
    """Entries with p_i = 0 contribute exactly 0 and get a zero gradient (docstring): the gradient with
    respect to a −inf logit of p is exactly 0, and with respect to logits_ref there only the normaliser
    of q acts, ∂KL/∂z_ref,i = q_i − p_i = q_i. The VJP computes it as exp(s_i)/S · Σ_j exp(log p_j): the
    first factor errs by ≤ E_q,i + (C_FN + 2)·U (E as in `_categorical_tol`), the sum by
    ≤ Σ_j p_j·(E_p,j + C_FN·U) + (K − 1)·U ≤ (12K + C_FN + 8)·U (p·|log p| ≤ 1/e), so the relative error
    is ≤ U·(2|log q_i| + 22K + 2·C_FN + 18)."""
    logits, ref = pair
    _, g_logits, g_ref = _categorical_and_grads(logits, ref)
    masked = np.isneginf(logits)
    np.testing.assert_array_equal(np.asarray(g_logits)[masked], 0.0)
    logq = _np_log_softmax(ref)
    q = np.exp(logq)
    k = logits.shape[-1]
    rel = SECOND_ORDER * U * (2 * np.abs(np.where(np.isfinite(logq), logq, 0.0)) + 22 * k + 2 * C_FN + 18)
    err = np.abs(np.asarray(g_ref, np.float64) - q)
    assert np.all(err[masked] <= (q * rel + FLT_MIN)[masked]), (logits, ref, g_ref, q)


@st.composite
def _shifted_logits(draw):
    """Logits on a 1/64 grid within ±1e4 with −inf masks, and a shift c = ±2^j (j ≤ 10): z + c is exact
    in float32 (|z + c| < 2¹⁵ needs 15 + 6 < 24 bits), so softmax(z + c) = softmax(z) exactly."""
    shape = draw(st.sampled_from(DIST_SHAPES))
    grid = draw(hnp.arrays(np.int32, shape, elements=st.integers(-640_000, 640_000)))
    logits = (grid / 64).astype(np.float32)
    logits[_masks(draw, shape)] = -np.inf
    shift = draw(st.sampled_from([0.0] + [s * 2.0**j for s in (1, -1) for j in range(11)]))
    return logits, np.float32(shift)


@_settings(80)
@given(case=_shifted_logits())
def test_categorical_of_identical_distributions_is_zero(case):
    """KL(p‖p) = 0, for identical logits and for logits shifted by a constant (the same distribution), to
    the round-off bound of `_categorical_tol` with d = 0; with zero gradient with respect to p's logits,
    ∂KL/∂z_j = p_j·(d_j − KL) = 0. The VJP computes it as p̂_j − σ̂_j·Σ_i p̂_i with p̂ = exp(log p) and
    σ̂ = exp(s)/S, each within E_j + C_FN·U of p_j relative, and Σ_i p̂_i within (12K + C_FN + 8)·U of 1
    (see the masked-entries test), so |∂KL/∂z_j| ≤ p_j·(2E_j + (12K + 3·C_FN + 9)·U)."""
    logits, shift = case
    value, g_logits, _ = _categorical_and_grads(logits, logits + shift)
    _, p, d, logp, logq = _np_categorical(logits, logits + shift)
    np.testing.assert_array_equal(d, 0.0)  # the float64 restatement agrees that they are identical
    tol = _categorical_tol(p, d, logp, logq)
    assert np.all(np.abs(np.asarray(value, np.float64)) <= tol), (logits, shift, value, tol)
    k = logits.shape[-1]
    e = U * (2 * np.abs(logp) + 10 * k + 8)
    g_tol = SECOND_ORDER * p * (2 * e + (12 * k + 3 * C_FN + 9) * U) + FLT_MIN
    assert np.all(np.abs(np.asarray(g_logits, np.float64)) <= g_tol), (logits, shift, g_logits, g_tol)


@_settings(30)
@given(shape=st.sampled_from(DIST_SHAPES), extra=st.sampled_from(["append", "prepend"]))
def test_categorical_and_gaussian_shapes(shape, extra):
    """KL over the last axis: [..., K] → [...]. Shapes that differ but would broadcast ([B] vs [B, 1]) must
    raise ValueError naming the arguments, in either argument position, rather than broadcast silently."""
    a = np.zeros(shape, np.float32)
    b = np.zeros(shape + (1,) if extra == "append" else (1,) + shape, np.float32)
    assert _categorical_and_grads(a, a)[0].shape == shape[:-1]
    assert _gaussian_and_grads(a, a, a, a)[0].shape == shape[:-1]
    for args in [(a, b), (b, a)]:
        with pytest.raises(ValueError, match="identical shapes"):
            kl.categorical(*args)
    for i in range(4):
        args = [a, a, a, a]
        args[i] = b
        with pytest.raises(ValueError, match="identical shapes"):
            kl.gaussian(*args)


# ---------------------------------------------------------------- kl.gaussian

# Parameters for which every quantity of the KL and its gradient fits float32: |log σ| ≤ 10 and
# |μ| ≤ 1e4 give at most ½e⁴⁰ ≈ 1.2e17 (scale term) and ½(2·10⁴·e¹⁰)² ≈ 1e17 (mean term).
MEAN = st.one_of(_f32(-3.0, 3.0), _f32(-1e4, 1e4), st.sampled_from([0.0, 1e4, -1e4]))
LOG_STD = st.one_of(_f32(-2.0, 2.0), _f32(-10.0, 10.0), st.sampled_from([0.0, 10.0, -10.0]))


@st.composite
def gaussian_pairs(draw):
    shape = draw(st.sampled_from(DIST_SHAPES))
    arrays = [draw(hnp.arrays(np.float32, shape, elements=el)) for el in (MEAN, LOG_STD, MEAN, LOG_STD)]
    if draw(st.booleans()):  # nearly identical log-stds, where e^{2d} − 1 − 2d cancels naively
        arrays[3] = (arrays[1] + draw(_f32(-1e-3, 1e-3))).astype(np.float32)
    return arrays


def _np_gaussian(mean, log_std, mean_ref, log_std_ref):
    """Per-dimension scale term ½(e^x − 1 − x), x = 2(log σ − log σ_ref), and mean term ½((μ − μ_ref)/σ_ref)²
    in float64 (the textbook log(σ_ref/σ) + (σ² + Δμ²)/(2σ_ref²) − ½, regrouped)."""
    f = lambda a: np.asarray(a, np.float64)  # noqa: E731
    x = 2 * (f(log_std) - f(log_std_ref))
    scale = 0.5 * _np_expm1_minus_identity(x)
    mean_term = 0.5 * ((f(mean) - f(mean_ref)) * np.exp(-f(log_std_ref))) ** 2
    return scale, mean_term, x


def _gaussian_tol(scale, mean_term, x):
    """Round-off of `kl.gaussian` in float32, per dimension then summed over the D dimensions:
    d = fl(log σ − log σ_ref) errs by ≤ U|d|, which moves e^x − 1 − x by ≤ |e^x − 1|·|x|·U; k3 itself errs
    by ≤ K3_REL; the mean term ½(fl(Δμ)·exp(−log σ_ref))² errs by ≤ 2·(U + C_FN·U + U) + U = 21U relative
    (−log σ_ref is exact); the two terms' sum adds U, the D-term sum (D − 1)·U·Σ; either term may be
    flushed to zero below FLT_MIN."""
    dims = scale.shape[-1]
    per_dim = (
        scale * K3_REL
        + 0.5 * np.abs(np.expm1(x)) * np.abs(x) * U
        + mean_term * 21 * U
        + (scale + mean_term) * dims * U
        + 2 * FLT_MIN
    )
    return SECOND_ORDER * np.sum(per_dim, axis=-1)


@_settings(100)
@given(params=gaussian_pairs())
def test_gaussian_nonnegative(params):
    """KL ≥ 0 exactly: both per-dimension terms are computed as non-negative quantities (½·k3 ≥ 0 and a
    square), so unlike the categorical sum no round-off allowance is needed."""
    value = np.asarray(_gaussian_and_grads(*params)[0])
    assert np.all(value >= 0.0), (params, value)


@_settings(100)
@given(params=gaussian_pairs())
def test_gaussian_matches_float64_restatement(params):
    """The analytic diagonal-Gaussian KL against float64, within the derived bound `_gaussian_tol`
    (relative, so nearly identical distributions must keep their full relative precision)."""
    scale, mean_term, x = _np_gaussian(*params)
    expected = np.sum(scale + mean_term, axis=-1)
    value = np.asarray(_gaussian_and_grads(*params)[0], np.float64)
    tol = _gaussian_tol(scale, mean_term, x)
    assert np.all(np.abs(value - expected) <= tol), (params, value, expected, tol)


@_settings(100)
@given(params=gaussian_pairs())
def test_gaussian_finite_value_and_gradient(params):
    """In the drawn range the KL and all four partial derivatives are far below FLT_MAX (see MEAN and
    LOG_STD), so value and gradient must be finite."""
    outputs = _gaussian_and_grads(*params)
    assert _finite(*outputs), (params, outputs)


@_settings(80)
@given(
    shape=st.sampled_from(DIST_SHAPES),
    data=st.data(),
)
def test_gaussian_of_identical_distributions_is_exactly_zero(shape, data):
    """KL(p‖p) = 0 exactly, with an exactly zero gradient, for every parameter where 1/σ fits float32
    (the docstring's domain: |log σ| < 88.7), up to |μ| = 1e30. Beyond it e^{−log σ} is inf and
    Δμ·inf = 0·inf; masking that case would zero the Fisher curvature TRPO differentiates there
    (tests/test_kl.py::test_gaussian_hessian_at_coincidence_is_the_fisher_information)."""
    mean = data.draw(hnp.arrays(np.float32, shape, elements=st.one_of(MEAN, _f32(-1e30, 1e30))))
    log_std = data.draw(
        hnp.arrays(
            np.float32, shape, elements=st.one_of(LOG_STD, _f32(-88.0, 88.0), st.sampled_from([-88.0, 88.0]))
        )
    )
    value, *grads = _gaussian_and_grads(mean, log_std, mean, log_std)
    np.testing.assert_array_equal(value, 0.0)
    for g in grads:
        np.testing.assert_array_equal(g, 0.0)


# ---------------------------------------------------------------- sample estimators


@_settings(100)
@given(
    shape=st.sampled_from(EST_SHAPES),
    data=st.data(),
)
def test_nonnegative_estimators_for_every_log_ratio(shape, data):
    """Every estimator registered as nonnegative (k2 = ½δ², k3 = (r − 1) − log r, ...) is ≥ 0 for every
    log-ratio δ, from 0 to ±FLT_MAX (it may overflow to +inf where its true value does not fit, but is
    never negative and never NaN)."""
    delta = data.draw(
        hnp.arrays(
            np.float32,
            shape,
            elements=st.one_of(
                _f32(-1.0, 1.0), _f32(-100.0, 100.0), ANY_FINITE_F32
            ),
        )
    )
    zeros = np.zeros_like(delta)
    for estimator in kl.estimators(nonnegative=True):
        value = np.asarray(_estimate_and_grads(delta, zeros, estimator)[0])
        assert not np.any(np.isnan(value)) and np.all(value >= 0.0), (estimator, delta, value)


@st.composite
def _log_prob_pairs(draw):
    """log p and log p_ref at the same sampled points, both anywhere in [−1e4, 0], or log p_ref within
    ±100 of log p (so log r = log p_ref − log p straddles k3's float32 overflow at ≈ 88.72)."""
    shape = draw(st.sampled_from(EST_SHAPES))
    logp = draw(hnp.arrays(np.float32, shape, elements=LOGP))
    if draw(st.booleans()):
        near_overflow = st.one_of(_f32(-100.0, 100.0), _f32(85.0, 92.0))
        offset = draw(hnp.arrays(np.float32, shape, elements=near_overflow))
        logp_ref = np.minimum(logp + offset, 0.0).astype(np.float32)
    else:
        logp_ref = draw(hnp.arrays(np.float32, shape, elements=LOGP))
    return logp, logp_ref


@_settings(120)
@given(pair=_log_prob_pairs())
def test_k3_finite_where_true_value_fits_float32(pair):
    """k3 is finite wherever its true value fits in float32 (docstring), with a finite gradient there; +inf
    (never NaN) where it does not. With x = log r (float64 from the float32 inputs), fl(log p − log p_ref)
    errs by ≤ U|x|, expm1 by C_FN·U and the last subtraction by U, so the computed value is at most
    true·(1 + U·(|x| + C_FN + 2)); it must be finite when that is ≤ FLT_MAX. The gradient −(e^x − 1) is
    below the value plus 1 + |x| there, so it fits too."""
    logp, logp_ref = pair
    value, g_logp, g_ref = (np.asarray(a) for a in _estimate_and_grads(logp, logp_ref, "k3"))
    x = np.asarray(logp_ref, np.float64) - np.asarray(logp, np.float64)
    with np.errstate(over="ignore"):
        true = _np_expm1_minus_identity(x)
    fits = true * (1 + U * (np.abs(x) + C_FN + 2)) <= FLT_MAX
    assert value.shape == logp.shape
    assert not np.any(np.isnan(value)) and np.all(value >= 0.0), (pair, value)
    assert np.all(np.isfinite(value[fits])), (x[fits], value[fits])
    assert np.all(np.isfinite(g_logp[fits])) and np.all(np.isfinite(g_ref[fits])), (x, g_logp, g_ref)
    overflow = true * (1 - U * (np.abs(x) + C_FN + 2)) > FLT_MAX  # certainly beyond float32
    assert np.all(value[overflow] == np.inf)


@_settings(120)
@given(
    x=hnp.arrays(
        np.float32,
        (64,),
        elements=st.one_of(
            _f32(-1.5, 1.5),
            _f32(-80.0, 80.0),
            _f32(1e-30, 1e-3),
            _f32(-1e-3, -1e-30),
            st.sampled_from([0.0, 0.1, -0.1, 1.0, -1.0, 0.99999994, -0.99999994]),
        ),
    )
)
def test_k3_relative_accuracy(x):
    """The docstring promises k3 'to a few ulps of relative accuracy for every log-ratio'. Against float64,
    the relative error must be within K3_REL = 40U, the bound derived for the implementation (Horner
    series below |log r| = 1, expm1 above); plus FLT_MIN absolute where x²/2 is flushed to zero. log r is
    passed as log p_ref with log p = 0, so δ = −log r is exact."""
    value = np.asarray(_estimate_and_grads(np.zeros_like(x), x, "k3")[0], np.float64)
    true = _np_expm1_minus_identity(x)
    err = np.abs(value - true)
    worst = np.argmax(err / (K3_REL * true + FLT_MIN))
    assert np.all(err <= K3_REL * true + FLT_MIN), (x[worst], err[worst] / true[worst] / U)


@_settings(40)
@given(
    shape=st.sampled_from(EST_SHAPES), pair=_log_prob_pairs(), extra=st.sampled_from(["append", "prepend"])
)
def test_estimator_shapes(shape, pair, extra):
    """Every estimator returns one estimate per sample, shaped like its inputs; inputs of different but
    broadcastable shapes ([B] vs [B, 1]) raise ValueError in either argument position."""
    logp, logp_ref = pair
    other = np.zeros(shape + (1,) if extra == "append" else (1,) + shape, np.float32)
    a = np.zeros(shape, np.float32)
    for estimator in kl.estimators():
        assert _estimate_and_grads(logp, logp_ref, estimator)[0].shape == logp.shape
        for args in [(a, other), (other, a)]:
            with pytest.raises(ValueError, match="identical shapes"):
                kl.estimate(*args, estimator)


# ---------------------------------------------------------------- distributions


@_settings(100)
@given(pair=categorical_pairs("any"))
def test_categorical_entropy_bounds_and_finite_gradient(pair):
    """0 ≤ H(p) ≤ log(#entries with p_i > 0), and H and ∂H/∂z are finite, with −inf masks (zero gradient
    at masked entries) and extreme logits. The upper bound carries the round-off of Σ p_i log p_i, which is
    `_categorical_tol`'s analysis with d_i = log p_i and no q:
    Σ p_i·(|log p_i|·(E_i + (C_FN + K + 1)U) + E_i)."""
    logits, _ = pair
    value, grad = (np.asarray(a, np.float64) for a in _entropy_and_grad(logits))
    assert _finite(value, grad), (logits, value, grad)
    np.testing.assert_array_equal(grad[np.isneginf(logits)], 0.0)
    logp = _np_log_softmax(logits)
    present = np.isfinite(logits)
    p = np.where(present, np.exp(logp), 0.0)
    lp = np.where(present, logp, 0.0)
    k = logits.shape[-1]
    e = U * (2 * np.abs(lp) + 10 * k + 8)
    tol = SECOND_ORDER * np.sum(p * (np.abs(lp) * (e + (C_FN + k + 1) * U) + e), axis=-1)
    tol += k * FLT_MIN * (1 + np.max(np.abs(lp), axis=-1))
    assert np.all(value >= 0.0)
    assert np.all(value <= np.log(present.sum(axis=-1)) + tol), (logits, value)


@_settings(20)
@given(pair=categorical_pairs("any"), params=gaussian_pairs())
def test_distribution_kls_are_the_kl_core(pair, params):
    """`Categorical.kl` and `DiagGaussian.kl` delegate to `kltrust.kl` (the module docstring: nothing in
    distributions computes a KL), with the same argument order: bitwise the same values."""
    logits, ref = pair
    got = distributions.Categorical(jnp.asarray(logits)).kl(distributions.Categorical(jnp.asarray(ref)))
    np.testing.assert_array_equal(got, kl.categorical(logits, ref))
    mean, log_std, mean_ref, log_std_ref = params
    got = distributions.DiagGaussian(mean, log_std).kl(distributions.DiagGaussian(mean_ref, log_std_ref))
    np.testing.assert_array_equal(got, kl.gaussian(mean, log_std, mean_ref, log_std_ref))


# ---------------------------------------------------------------- DPO-family losses

BETA = st.one_of(_f32(1e-3, 10.0), st.sampled_from([1e-3, 0.1, 1.0, 10.0]))
SMOOTHING = st.one_of(_f32(0.0, 0.5), st.sampled_from([0.0, 0.5]))
PAIR_SHAPES = [(1,), (4,), (2, 3)]
# h of log-probabilities in [−1e4, 0]: |h| ≤ 2·10⁴.
LOGRATIO_DIFF = st.one_of(_f32(-5.0, 5.0), _f32(-2e4, 2e4), st.sampled_from([0.0, 2e4, -2e4]))


@_settings(100)
@given(
    variant=st.sampled_from(["sigmoid", "ipo", "hinge"]),
    shape=st.sampled_from(PAIR_SHAPES),
    beta=BETA,
    eps=SMOOTHING,
    data=st.data(),
)
def test_preference_losses_nonnegative_and_finite(variant, shape, beta, eps, data):
    """DPO/cDPO (cross-entropy), IPO (squares) and SLiC (hinges) are non-negative mixtures (weights 1 − ε
    and ε ≥ 0) of non-negative terms, so ℓ ≥ 0 exactly; for |βh| up to 2·10⁵ value and dℓ/dh are finite
    (log σ is evaluated stably, no exp(βh) is formed). Output shape = input shape."""
    h = data.draw(hnp.arrays(np.float32, shape, elements=LOGRATIO_DIFF))
    losses, grad = _dpo_pairs_and_grad(h, np.float32(beta), np.float32(eps), variant)
    assert losses.shape == h.shape and grad.shape == h.shape
    assert _finite(losses, grad), (variant, h, beta, eps, losses, grad)
    assert np.all(np.asarray(losses) >= 0.0), (variant, h, beta, eps, losses)


@_settings(100)
@given(
    shape=st.sampled_from(PAIR_SHAPES),
    beta=BETA,
    eps=st.one_of(_f32(0.0, 0.45), st.just(0.0)),
    data=st.data(),
)
def test_robust_dpo_lower_bound(shape, beta, eps, data):
    """rDPO is unbounded below but only linearly: ℓ = softplus(−z) − ε·z/(1 − 2ε) ≥ −ε·max(z, 0)/(1 − 2ε)
    with z = βh (the docstring's −ε/(1−2ε)·βh as h → ∞). Computed as ((1−ε)·softplus(−z) − ε·softplus(z))
    /(1 − 2ε): each softplus (max + log1p∘exp) errs by ≤ (C_FN + 3)U relative, the products, difference,
    1 − 2ε and division add ≤ 5U, so the bound holds to 16U·((1−ε)·softplus(−z) + ε·softplus(z))/(1 − 2ε),
    evaluated at the float32 z = fl(β·h) the loss sees. Value and gradient are finite."""
    h = data.draw(hnp.arrays(np.float32, shape, elements=LOGRATIO_DIFF))
    beta32, eps32 = np.float32(beta), np.float32(eps)
    losses, grad = (np.asarray(a, np.float64) for a in _dpo_pairs_and_grad(h, beta32, eps32, "robust"))
    assert _finite(losses, grad)
    z = (beta32 * h).astype(np.float64)
    e = float(eps32)
    won, lost = np.logaddexp(0.0, -z), np.logaddexp(0.0, z)
    bound = -e * np.maximum(z, 0.0) / (1 - 2 * e)
    tol = SECOND_ORDER * 16 * U * ((1 - e) * won + e * lost) / (1 - 2 * e)
    assert np.all(losses >= bound - tol), (h, beta, eps, losses, bound, tol)


@_settings(80)
@given(
    variant=st.sampled_from(dpo.VARIANTS),
    batch=st.sampled_from([1, 6]),
    beta=BETA,
    eps=st.one_of(_f32(0.0, 0.45), st.just(0.0)),
    weighted=st.booleans(),
    data=st.data(),
)
def test_dpo_loss_finite_for_underflowed_log_probs(variant, batch, beta, eps, weighted, data):
    """Sequence log-probabilities down to −1e4 (probabilities that underflow float32): the batch loss, its
    gradient with respect to the policy log-probs and every metric are finite, and the loss is ≥ 0 for
    every variant but "robust" (a weighted mean of non-negative losses with weights ≥ 0)."""
    pc, pr, rc, rr = (data.draw(hnp.arrays(np.float32, (batch,), elements=LOGP)) for _ in range(4))
    weights = data.draw(hnp.arrays(np.float32, (batch,), elements=_f32(0.0, 1.0))) if weighted else None
    value, metrics, grads = _dpo_loss_and_grads(
        pc, pr, rc, rr, np.float32(beta), np.float32(eps), weights, variant
    )
    assert _finite(value, *grads, *metrics.values()), (variant, value, grads, metrics)
    if variant != "robust":
        assert float(value) >= 0.0


@_settings(20)
@given(batch=st.sampled_from([1, 3, 6]), which=st.integers(0, 4))
def test_dpo_loss_mismatched_shapes_raise(batch, which):
    """dpo.loss takes [B] arrays; one argument of shape [B, 1] (which would broadcast to [B, B]) raises
    ValueError instead."""
    args = [np.zeros(batch, np.float32) for _ in range(5)]
    args[which] = args[which][:, None]
    with pytest.raises(ValueError, match="identical shapes"):
        dpo.loss(*args[:4], 0.1, weights=args[4])


# ---------------------------------------------------------------- GRPO group advantages

GROUP_LAYOUTS = [(1, 2), (2, 3), (3, 5)]  # (number of groups, group size G)
BASELINE_OPTIONS = st.sampled_from(
    [("grpo", None), ("grpo", False), ("rloo", None), ("rloo", True)]
)


def _advantage_tol(rewards64, group_size, baseline, scale_by_std, eps):
    """Round-off of group_advantages, relative to each group's spread S = max_i |r_i − r_0| (a reward
    offset common to the group must cost no precision; |r_i − r_j| ≤ 2S, so every centred value |c_i| ≤ 2S).
    s_i = fl(r_i − r_0) errs by ≤ U·S; their mean m by ≤ (G + 1)·U·S (G-term sum, division); a centred
    value c_i = fl(s_i − m) by ≤ (G + 4)·U·S, by f·(G + 6)·U·S after RLOO's factor f = G/(G − 1) (f = 1 for
    GRPO). The population std σ (squares of the c_i: 2|c|·(G + 4)US + U·c², their mean adds G·U·4S², the
    square root halves the relative error) errs by ≤ (4G + 14)·U·S²/σ. With den = σ + eps (or 1 without
    std scaling), S ≤ √(2G)·σ (S = |c_k − c_0| ≤ √2·(c_k² + c_0²)^½ ≤ √(2G)·σ) and the final division's U:
        |error of an advantage| ≤ f·U·S/den·((G + 10) + [scale_by_std]·(16G + 56)·G).
    The sum of a group's c_i is off by ≤ |Σ s_i − G·m| + U·Σ|c_i| ≤ (G² + 2G)·U·S; RLOO's factor and the
    divisions add U·Σ|advantage| ≤ 4G·U·S·f/den: the group's advantages sum to within
    f·U·S·(G² + 6G)/den of 0 (a relative change of den is a second-order effect here).
    Returns (per-advantage bound broadcast to the rewards' [num_groups, G], per-group sum bound)."""
    groups = rewards64.reshape(-1, group_size)
    spread = np.max(np.abs(groups - groups[:, :1]), axis=1, keepdims=True)
    factor = group_size / (group_size - 1) if baseline == "rloo" else 1.0
    den = groups.std(axis=1, keepdims=True) + eps if scale_by_std else np.ones_like(spread)
    g = group_size
    per = np.broadcast_to(factor * U * spread * ((g + 10) + (16 * g + 56) * g * scale_by_std), groups.shape)
    total = factor * U * spread * (g * g + 6 * g)
    with np.errstate(divide="ignore", invalid="ignore"):
        per, total = (np.where(spread > 0, SECOND_ORDER * t / den, 0.0) for t in (per, total))
    return per, total[:, 0]


@_settings(100)
@given(
    layout=st.sampled_from(GROUP_LAYOUTS),
    options=BASELINE_OPTIONS,
    eps=st.sampled_from([1e-6, 0.0]),
    data=st.data(),
)
def test_group_advantages_have_zero_mean_per_group(layout, options, eps, data):
    """GRPO and RLOO advantages are (a multiple of) rewards minus their group mean, so each group's
    advantages sum to 0, to round-off relative to the group's spread (`_advantage_tol`) — also when the
    rewards sit on a large common offset. Output shape = input shape."""
    n_groups, g = layout
    baseline, scale_by_std = options
    offset = data.draw(st.sampled_from([0.0, 1e3, -1e5, 1e6]))
    rewards = data.draw(
        hnp.arrays(np.float32, (n_groups * g,), elements=st.one_of(_f32(-1e6, 1e6), _f32(-2.0, 2.0)))
    )
    rewards = (rewards + np.float32(offset)).astype(np.float32)
    adv = np.asarray(grpo.group_advantages(rewards, g, baseline=baseline, scale_by_std=scale_by_std, eps=eps))
    assert adv.shape == rewards.shape and _finite(adv)
    scaled = scale_by_std if scale_by_std is not None else baseline == "grpo"
    _, tol = _advantage_tol(rewards.astype(np.float64), g, baseline, scaled, eps)
    sums = adv.astype(np.float64).reshape(n_groups, g).sum(axis=1)
    assert np.all(np.abs(sums) <= tol), (rewards, adv, sums, tol)


@_settings(100)
@given(
    layout=st.sampled_from(GROUP_LAYOUTS),
    options=BASELINE_OPTIONS,
    data=st.data(),
)
def test_group_advantages_invariant_to_a_constant_per_group(layout, options, data):
    """Adding a constant c_g to every reward of group g changes no advantage (mean and std are
    shift-invariant). Rewards on a 1/8 grid in ±16 and integer c with |c| ≤ 2²⁰ keep r + c exact in float32
    (< 2²¹ needs 21 + 3 = 24 bits), so the inputs really are shifted copies; the two results may then differ
    only by twice `_advantage_tol`'s per-advantage bound, which is relative to the spread, not to c."""
    n_groups, g = layout
    baseline, scale_by_std = options
    grid = data.draw(hnp.arrays(np.int32, (n_groups * g,), elements=st.integers(-128, 128)))
    rewards = (grid / 8).astype(np.float32)
    shifts = data.draw(
        hnp.arrays(
            np.int32,
            (n_groups,),
            elements=st.one_of(st.integers(-(2**20), 2**20), st.sampled_from([2**20, -(2**20)])),
        )
    )
    shifted = (rewards + np.repeat(shifts, g).astype(np.float32)).astype(np.float32)
    np.testing.assert_array_equal(shifted.astype(np.float64) - np.repeat(shifts, g), rewards)  # exact
    kwargs = dict(baseline=baseline, scale_by_std=scale_by_std)
    a = np.asarray(grpo.group_advantages(rewards, g, **kwargs), np.float64)
    b = np.asarray(grpo.group_advantages(shifted, g, **kwargs), np.float64)
    scaled = scale_by_std if scale_by_std is not None else baseline == "grpo"
    per, _ = _advantage_tol(rewards.astype(np.float64), g, baseline, scaled, 1e-6)
    assert np.all(np.abs(a - b) <= 2 * per.reshape(-1)), (rewards, shifts, a, b)


@_settings(100)
@given(
    layout=st.sampled_from(GROUP_LAYOUTS),
    options=BASELINE_OPTIONS,
    eps=st.sampled_from([1e-6, 0.0]),
    data=st.data(),
)
def test_group_advantages_of_identical_rewards_are_zero(layout, options, eps, data):
    """A group whose rewards are all equal has std 0: its advantages are exactly 0 and finite (docstring:
    'A group of equal rewards gets 0'), for any reward value in float32's finite range and also with
    eps = 0 (no 0/0)."""
    n_groups, g = layout
    baseline, scale_by_std = options
    values = data.draw(
        hnp.arrays(
            np.float32,
            (n_groups,),
            elements=st.one_of(_f32(-10.0, 10.0), ANY_FINITE_F32),
        )
    )
    rewards = np.repeat(values, g)
    adv = np.asarray(grpo.group_advantages(rewards, g, baseline=baseline, scale_by_std=scale_by_std, eps=eps))
    np.testing.assert_array_equal(adv, 0.0)


# ---------------------------------------------------------------- GRPO loss

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    GRPO_VARIANTS = [
        grpo.Variant(),
        grpo.Variant(kl_estimator="k2", token_average="token"),
        grpo.Variant(clip=False),
    ]


@_settings(60)
@given(
    variant=st.sampled_from(GRPO_VARIANTS),
    shape=st.sampled_from([(2, 3), (4, 5)]),
    clip_eps=_f32(0.05, 0.5),
    beta=st.one_of(_f32(0.0, 1.0), st.just(0.0)),
    data=st.data(),
)
def test_grpo_loss_finite_for_underflowed_log_probs(variant, shape, clip_eps, beta, data):
    """Token log-probabilities down to −1e4 (probabilities that underflow float32), π_old and π_ref within
    e^{±20} of π_θ at each token (so the ratio and k3 fit float32), any mask (all-padding sequences
    included), advantages up to ±1e3: loss, gradient and metrics are finite (no probability is formed),
    and the gradient is exactly 0 at padded tokens."""
    new = data.draw(hnp.arrays(np.float32, shape, elements=LOGP))
    near = lambda: np.minimum(  # noqa: E731
        new + data.draw(hnp.arrays(np.float32, shape, elements=_f32(-20.0, 20.0))), 0.0
    ).astype(np.float32)
    old, ref = near(), near()
    mask = data.draw(hnp.arrays(np.bool_, shape)).astype(np.float32)
    adv = data.draw(hnp.arrays(np.float32, shape[:1], elements=_f32(-1e3, 1e3)))
    value, metrics, grad = _grpo_loss_and_grad(
        new, old, adv, mask, np.float32(clip_eps), np.float32(beta), ref, variant
    )
    assert _finite(value, grad, *metrics.values()), (variant, value, grad, metrics)
    np.testing.assert_array_equal(np.asarray(grad)[mask == 0], 0.0)


@_settings(20)
@given(
    layout=st.sampled_from(GROUP_LAYOUTS),
    which=st.sampled_from(["old_logp", "mask", "ref_logp", "advantage"]),
)
def test_grpo_mismatched_shapes_raise(layout, which):
    """grpo.loss takes [B, T] token arrays and a [B] advantage; an argument of another shape that would
    broadcast ([B, 1] tokens, [B, 1] advantage) raises ValueError; group_advantages keeps the [B] shape of
    its input and refuses a 2-D reward array."""
    n_groups, g = layout
    b, t = n_groups * g, 3
    rewards = np.arange(b, dtype=np.float32)
    assert grpo.group_advantages(rewards, g).shape == (b,)
    with pytest.raises(ValueError, match="1-D"):
        grpo.group_advantages(rewards.reshape(n_groups, g), g)
    arrays = dict(old_logp=np.zeros((b, t), np.float32), mask=np.ones((b, t), np.float32),
                  ref_logp=np.zeros((b, t), np.float32), advantage=np.zeros(b, np.float32))
    arrays[which] = arrays[which][:, :1] if which != "advantage" else arrays[which][:, None]
    with pytest.raises(ValueError, match="shape"):
        grpo.loss(
            np.zeros((b, t), np.float32),
            coefs=grpo.LossCoefs(0.2, 0.1),
            variant=GRPO_VARIANTS[0],
            **arrays,
        )


# ---------------------------------------------------------------- β controllers (every registered kind)

CONTROLLER_STEPS = 12  # one KL sequence length, so each kind compiles once


def _controller_run(kind):
    controller = controllers.get(kind)

    def run(state, kls, ns):
        return jax.lax.scan(lambda s, x: (controller.update(s, *x),) * 2, state, (kls, ns))

    return jax.jit(run)


CONTROLLER_RUNS = {kind: _controller_run(kind) for kind in controllers.kinds()}


def _knob_values(spec: components.Knob):
    """Values inside the knob's interval, in the band the knobs are meant for: from its closed lower
    end (else 10⁻³ × its default) up to 10 × max(default, 1). Far outside it (a horizon of 10⁻⁴⁵
    makes n/H overflow to inf) float32 arithmetic, not the rule, decides."""
    closed_low = spec.low > -np.inf and not spec.low_open
    lo = spec.low if closed_low else max(spec.low, 1e-3 * (abs(spec.default) or 1.0))
    hi = min(spec.high, 10 * max(abs(spec.default), 1.0))
    return _f32(lo, hi).filter(lambda v: bool(spec.ok(np.asarray(v))))


@st.composite
def controller_cases(draw):
    """(kind, β₀, knobs, KLs, ns): any registered kind with knobs drawn inside their declared
    intervals, β₀ inside the kind's allowed range, KLs ≥ 0 (exactly 0 and the knobs' own values
    included) and batch sizes n ≥ 1."""
    kind = draw(st.sampled_from(controllers.kinds()))
    controller = controllers.get(kind)
    knobs = {name: draw(_knob_values(spec))
             for name, spec in components.knobs(controller.hparams).items()}
    beta = draw(_f32(1e-3, 10.0) if controller.beta_positive else
                st.one_of(st.just(0.0), _f32(0.0, 10.0)))
    kl_value = st.one_of(_f32(0.0, 100.0), st.sampled_from([0.0, *knobs.values()]))
    kls = draw(hnp.arrays(np.float32, CONTROLLER_STEPS, elements=kl_value))
    ns = draw(hnp.arrays(np.float32, CONTROLLER_STEPS, elements=st.sampled_from([1.0, 64.0, 4096.0])))
    return kind, beta, knobs, kls, ns


@_settings(150)
@given(case=controller_cases())
def test_controller_beta_stays_finite_nonnegative_and_float32(case):
    """For every registered controller, with knobs anywhere in their declared intervals: β stays
    finite and ≥ 0 along any sequence of KLs ≥ 0 (a negative β would reward the KL it is meant to
    penalise), and every leaf of the state keeps its float32 dtype and shape (a lax.scan carry)."""
    kind, beta, knobs, kls, ns = case
    state = controllers.get(kind).init(beta, **knobs)
    final, trace = CONTROLLER_RUNS[kind](state, kls, ns)
    betas = np.asarray(trace.beta)
    assert np.all(np.isfinite(betas)) and np.all(betas >= 0.0), (kind, knobs, betas)
    for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(final)):
        assert after.dtype == before.dtype == jnp.float32 and after.shape == before.shape
