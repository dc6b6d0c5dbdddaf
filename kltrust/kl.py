"""The KL core: every KL divergence in kltrust is computed here.

Direction. Every function computes the *reverse* KL used in RLHF and trust-region methods,

    KL(p ‖ p_ref) = E_{x~p}[log p(x) − log p_ref(x)],

where ``p`` is the distribution being optimised (the policy) and ``p_ref`` is the anchor (the old
policy, or a frozen reference). The argument order is the direction: the first argument is the
distribution the expectation is taken under. For the forward KL(p_ref ‖ p) swap the arguments
(and, for sample estimators, draw the samples from ``p_ref``).

Exact forms. ``categorical`` and ``gaussian`` return the exact KL from full distributions. Use them
wherever the full distribution is available (all control tasks, full-vocabulary token logits).

Sample estimators (Schulman, "Approximating KL divergence", 2020). With x ~ p and
log-ratio ``δ = log p(x) − log p_ref(x)`` and ``r = p_ref(x)/p(x) = exp(−δ)``:

    k1 = δ                 value: unbiased for KL(p‖p_ref); high variance; can be negative.
    k2 = ½ δ²              value: biased (bias grows with the KL: for p=N(0,1), p_ref=N(μ,1) it is
                           μ⁴/8 against KL = μ²/2); always ≥ 0; low variance.
    k3 = (r − 1) − log r   value: unbiased for KL(p‖p_ref); always ≥ 0; low variance near p = p_ref.
    k_half = ½(r − 1) − log r = ½(k1 + k3)
                           value: unbiased; ≥ ½ − log 2 ≈ −0.19, so it can be negative; less variance
                           than k3 where r has a heavy right tail, far more near p = p_ref (`_k_half`).

Registry. The estimators live in a registry: ``@kl.estimator(name, unbiased=..., nonnegative=...,
loss_gradient=...)`` registers a function ``(logp, logp_ref) -> per-sample estimate`` together with
what programs need to know about it (`EstimatorInfo`); `estimate` dispatches on the name and
`estimators` lists the names (filtered by that metadata, e.g. ``estimators(loss_term=True)``), so
an estimator is one function and its registration, and every program that offers a choice of
estimator reads it from here.

Gradient semantics, on-policy (samples drawn from p_θ and treated as constants, as every
policy-gradient implementation does). These are the facts users of other frameworks get wrong;
``tests/test_kl.py`` and ``tests/test_kl_half.py`` check each one exactly on a categorical distribution.

* As a **reward** (the estimate enters the return and is differentiated through log p_θ by the
  score function, REINFORCE-style): k1 gives an unbiased gradient of KL(p_θ‖p_ref). k3 and k_half
  do not, although their values are unbiased: k_λ = δ + λ(r − 1) gives E[k_λ ∇log p_θ] =
  ∇KL(p_θ‖p_ref) − λ∇KL(p_ref‖p_θ), because r − 1 has mean 0 but is correlated with the score.
* As a **loss** term differentiated directly, ``mean(k(x))``:
    - k1: E[∇δ] = E[∇ log p_θ] = 0. The gradient is zero in expectation: k1 in a loss does nothing
      but add noise.
    - k2: E[δ ∇ log p_θ] = ∇ KL(p_θ‖p_ref). The *value* is biased but the *gradient* is exactly the
      reverse-KL gradient.
    - k3: E[(1 − r) ∇ log p_θ] = −Σ_x p_ref(x) ∇ log p_θ(x) = ∇ KL(p_ref‖p_θ). The value estimates the
      reverse KL but the gradient is that of the **forward** KL (as used by GRPO's loss).
    - k_half: E[(1 − r/2) ∇ log p_θ] = ½∇ KL(p_ref‖p_θ), k3's direction at half the weight.

Numerics. Estimators work from log-probabilities only (no ratio of probabilities is ever formed),
k3 is evaluated to a few ulps of relative accuracy for every log-ratio (a series below |log r| = 1,
``expm1`` above) and is finite wherever its true value fits in the dtype. ``categorical`` treats entries that are −inf in ``logits`` as absent (probability 0,
contributing exactly 0 with zero gradient), so action or vocabulary masks are safe. optax's
``kl_divergence_with_log_targets`` returns NaN for such masked entries, which is why this module does
not delegate to it.

Shapes are checked at trace time (with chex): mismatched shapes raise ``ValueError`` naming both
arguments rather than broadcasting silently (a [B] vs [B, 1] broadcast is a classic silent KL bug).
``chex.disable_asserts()`` turns these checks off too; they cost nothing at run time, so leave them on.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from kltrust import components

Estimator = str  # the name of a registered estimator: one of `estimators()`

__all__ = [
    "Estimator",
    "EstimatorInfo",
    "categorical",
    "estimate",
    "estimator",
    "estimator_info",
    "estimators",
    "gaussian",
    "mean_per_sequence",
    "mean_per_token",
    "sum_per_sequence",
]


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


# ---------------------------------------------------------------- sample estimators: the registry


@dataclasses.dataclass(frozen=True)
class EstimatorInfo:
    """A registered sample estimator and what programs need to know about it.

    Attributes:
      name: its name, the ``estimator`` argument of `estimate`.
      fn: ``fn(logp, logp_ref)``, one estimate per sample, shaped like ``logp`` (`estimate` has
        checked the shapes and the name before calling it).
      unbiased: E_{x~p}[fn] = KL(p ‖ p_ref) for every pair (p, p_ref).
      nonnegative: every value is ≥ 0, so no mean of it is ever a "negative KL".
      loss_gradient: (a, b) such that, on-policy (x ~ p_θ held fixed),
            E_{x~p_θ}[∇_θ fn(x)] = a·∇KL(p_θ ‖ p_ref) + b·∇KL(p_ref ‖ p_θ),
        the expected gradient of ``mean(fn)`` as a loss term. With δ = log p_θ − log p_ref and
        r = e^{−δ}, ∇fn = f′(δ)·∇log p_θ, and E_p[∇log p_θ] = 0, E_p[δ·∇log p_θ] = ∇KL(p_θ‖p_ref),
        E_p[r·∇log p_θ] = Σ_x p_ref(x)∇log p_θ(x) = −∇KL(p_ref‖p_θ); so every estimator with
        f′(δ) = c + a·δ − b·r (k1, k2, k3 and their combinations) has this form.
    """

    name: str
    fn: Callable[[jax.Array, jax.Array], jax.Array]
    unbiased: bool
    nonnegative: bool
    loss_gradient: tuple[float, float]

    @property
    def loss_term(self) -> bool:
        """Whether it belongs in a loss at all: its expected gradient there is not zero (k1's is)."""
        return self.loss_gradient != (0.0, 0.0)


_REGISTRY: components.Registry[EstimatorInfo] = components.Registry("KL estimator")


def estimator(
    name: str, *, unbiased: bool, nonnegative: bool, loss_gradient: tuple[float, float]
) -> Callable[[Callable], Callable]:
    """Decorator: registers ``fn(logp, logp_ref) -> per-sample estimate`` as estimator ``name``
    with its metadata (`EstimatorInfo`; ``tests/test_kl.py`` checks every registered estimator's
    metadata exactly). Returns ``fn`` unchanged. A name registered twice raises ``ValueError``."""

    def register(fn: Callable) -> Callable:
        a, b = (float(c) for c in loss_gradient)
        _REGISTRY.register(name, EstimatorInfo(name, fn, bool(unbiased), bool(nonnegative), (a, b)))
        return fn

    return register


def estimators(
    *, unbiased: bool | None = None, nonnegative: bool | None = None, loss_term: bool | None = None
) -> tuple[str, ...]:
    """Names of the registered estimators, in registration order (read at call time, so an
    estimator registered later is included). A filter that is not None keeps the estimators whose
    `EstimatorInfo` field has that value: ``estimators(loss_term=True)`` are those a loss may use."""
    wanted = {"unbiased": unbiased, "nonnegative": nonnegative, "loss_term": loss_term}
    return tuple(
        name for name, info in _REGISTRY.items()
        if all(value is None or getattr(info, field) == value for field, value in wanted.items())
    )


def estimator_info(name: str) -> EstimatorInfo:
    """The registered estimator ``name`` and its metadata; ``ValueError`` naming the choices if
    there is none."""
    if name not in _REGISTRY:
        raise ValueError(
            f"kltrust.kl.estimate: estimator must be one of {estimators()}, got {name!r}."
        )
    return _REGISTRY.get(name)


def __getattr__(name: str):
    # `ESTIMATORS` was a tuple fixed at import time, which an estimator registered later was missing
    # from; it stays as a deprecated view of `estimators()`.
    if name == "ESTIMATORS":
        warnings.warn(
            "kltrust.kl.ESTIMATORS is deprecated; use kltrust.kl.estimators().",
            DeprecationWarning,
            stacklevel=2,
        )
        return estimators()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def estimate(logp: jax.Array, logp_ref: jax.Array, estimator: Estimator = "k3") -> jax.Array:
    """Per-sample estimates of KL(p ‖ p_ref) from samples x ~ p.

    Args:
      logp: log p(x) at the sampled points, any shape.
      logp_ref: log p_ref(x) at the same points, same shape as ``logp``.
      estimator: the name of a registered estimator (`estimators()`): ``"k1"`` (δ), ``"k2"``
        (½δ²), ``"k3"`` ((r−1) − log r), ..., with δ = log p − log p_ref and r = exp(−δ). See the
        module docstring for which is unbiased in value and which gives which gradient.

    Returns:
      An array shaped like ``logp``: one estimate per sample. Average it (or use the masked
      reductions below) to estimate the KL.

    Raises:
      ValueError: unknown ``estimator`` or mismatched shapes.
    """
    info = estimator_info(estimator)
    _check_same_shape("estimate", logp=logp, logp_ref=logp_ref)
    return info.fn(logp, logp_ref)


@estimator("k1", unbiased=True, nonnegative=False, loss_gradient=(0, 0))
def _k1(logp: jax.Array, logp_ref: jax.Array) -> jax.Array:
    """k1 = δ = log p − log p_ref."""
    return logp - logp_ref


@estimator("k2", unbiased=False, nonnegative=True, loss_gradient=(1, 0))
def _k2(logp: jax.Array, logp_ref: jax.Array) -> jax.Array:
    """k2 = ½δ²."""
    return 0.5 * jnp.square(logp - logp_ref)


@estimator("k3", unbiased=True, nonnegative=True, loss_gradient=(0, 1))
def _k3(logp: jax.Array, logp_ref: jax.Array) -> jax.Array:
    """k3 = (r − 1) − log r = e^{−δ} − 1 + δ, as e^x − 1 − x at x = log r = −δ."""
    return _expm1_minus_identity(-(logp - logp_ref))


@estimator("k_half", unbiased=True, nonnegative=False, loss_gradient=(0, 0.5))
def _k_half(logp: jax.Array, logp_ref: jax.Array) -> jax.Array:
    """k_half = ½(r − 1) − log r = ½(k1 + k3): the control-variate estimator k_λ at λ = ½.

    The family. k_λ = λ(r − 1) − log r = (1 − λ)·k1 + λ·k3 is unbiased for every λ, because
    E_p[r − 1] = Σ_x p_ref(x) − 1 = 0 (λ = 0 is k1, λ = 1 is k3). Its variance
    Var[δ] + 2λ·Cov[δ, r] + λ²·Var[r] is least at λ* = −Cov[δ, r]/Var[r], which → 1 as p → p_ref
    (r − 1 ≈ −δ) and falls as r = p_ref/p grows a heavy right tail (p_ref has mass where p has
    little, as for a policy sharper than its reference): for p = N(0, 1), p_ref = N(μ, 1),
    λ* = μ²/(e^{μ²} − 1) with KL = μ²/2. No fixed λ is best everywhere. (The textbook fix, λ̂ from the
    batch's own covariances, is not a per-sample function of (logp, logp_ref): it couples the samples
    and the padding mask and is biased by O(1/N), so it is not offered.)

    Why ½: the midpoint hedge, which needs no knowledge of the regime. Var[k_half] =
    ½(Var[k1] + Var[k3]) − ¼Var[r], always below the mean of k1's and k3's variances. For the
    Gaussian shift it has the least variance of the three for 0.28 < KL < 1.17 nats (λ* = ½ at
    KL = 0.63): std/KL 1.31 at KL = 0.5, against 1.70 for k3 and 2 for k1. The price:
    - near p = p_ref it is much worse than k3: k_half ≈ ½δ to first order, so std/KL ≈ 1/√(2·KL)
      (10.0 at KL = 0.005, where k3 has 1.42). Per-token KLs near the reference live there: use k3.
    - it is not ≥ 0: its minimum is ½ − log 2 ≈ −0.19, at r = 2, so a batch mean can come out
      negative where k3's cannot (unlike k1, it is bounded below).
    - where Var[r] = ∞ (p_ref wider than √2 times p) its variance is infinite, as k3's is; only k1
      is safe there.
    On random categoricals k3 is usually the least variable of the three and k_half wins only where
    r's tail is heavy (``tests/test_kl_half.py`` has one pair of each); ``make kl-table`` measures
    them side by side.

    Gradients (module docstring): as a loss term, ½∇KL(p_ref‖p_θ): β·k_half is β/2·k3 in
    expectation, with other noise (the per-sample gradients differ by the zero-mean ½∇log p_θ); as a
    reward, ∇KL(p_θ‖p_ref) − ½∇KL(p_ref‖p_θ): biased, where k1 is not.

    Numerics: ½(k1 + k3) on k3's accurate e^x − 1 − x, so the absolute error is a few ulps of
    |δ| + k3; finite wherever k3 is.
    """
    return 0.5 * (_k1(logp, logp_ref) + _k3(logp, logp_ref))


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


def categorical(logits: jax.Array, logits_ref: jax.Array) -> jax.Array:
    """Exact KL(softmax(logits) ‖ softmax(logits_ref)) over the last axis.

    KL = Σ_i p_i (log p_i − log q_i), p = softmax(logits), q = softmax(logits_ref), computed from
    ``log_softmax`` so that large logits do not overflow.

    Entries with p_i = 0 (logit −inf, e.g. masked actions or tokens) contribute exactly 0 and get a
    zero gradient, whatever ``logits_ref`` holds there. An entry with p_i > 0 and q_i = 0 gives +inf,
    which is the true value.

    Args:
      logits: unnormalised log-probabilities of p, shape [..., K].
      logits_ref: unnormalised log-probabilities of p_ref, same shape.

    Returns:
      KL per distribution, shape [...]. Differentiable in both arguments.
    """
    _check_same_shape("categorical", logits=logits, logits_ref=logits_ref)
    logp = jax.nn.log_softmax(logits, axis=-1)
    logq = jax.nn.log_softmax(logits_ref, axis=-1)
    present = logp > -jnp.inf
    # Double `where`: masking only the product would still send NaN gradients through the
    # (−inf) − (−inf) branch, so the inputs of the subtraction are made finite first.
    safe_logp = jnp.where(present, logp, 0.0)
    safe_logq = jnp.where(present, logq, 0.0)
    terms = jnp.where(present, jnp.exp(safe_logp) * (safe_logp - safe_logq), 0.0)
    # p_i > 0 (finite logit) with q_i = 0 is +inf even where p_i underflows float32 to 0 (a logit ~104
    # below the largest): the product above is then 0·inf = NaN, not the true +inf.
    terms = jnp.where(present & (logq == -jnp.inf), jnp.inf, terms)
    return jnp.sum(terms, axis=-1)


def gaussian(
    mean: jax.Array, log_std: jax.Array, mean_ref: jax.Array, log_std_ref: jax.Array
) -> jax.Array:
    """Analytic KL(N(mean, std²) ‖ N(mean_ref, std_ref²)) for diagonal Gaussians, summed over the last axis.

    Per dimension, with d = log σ − log σ_ref:
        KL = log(σ_ref/σ) + (σ² + (μ − μ_ref)²)/(2σ_ref²) − ½ = ½(e^{2d} − 1 − 2d) + ½((μ − μ_ref)/σ_ref)²,
    the second form evaluated like k3 (e^x − 1 − x, with x = 2d), so identical distributions give
    exactly 0 and nearby ones keep full relative precision, wherever 1/σ_ref fits the dtype
    (|log σ_ref| < 88.7 in float32). At identical distributions the Hessian in (μ, log σ) of either
    argument is the Fisher information, diag(1/σ², 2) per dimension.

    Args:
      mean, log_std: parameters of p, shape [..., D] (``log_std`` may be broadcast to ``mean``'s
        shape by the caller, e.g. a state-independent log-std).
      mean_ref, log_std_ref: parameters of p_ref, same shape.

    Returns:
      KL per distribution, shape [...].
    """
    _check_same_shape(
        "gaussian", mean=mean, log_std=log_std, mean_ref=mean_ref, log_std_ref=log_std_ref
    )
    d = log_std - log_std_ref
    scale_term = 0.5 * _expm1_minus_identity(2.0 * d)
    # No `where` on μ = μ_ref here: the mean term's curvature there, 1/σ_ref², is the Fisher
    # information that TRPO's Fisher-vector product differentiates at exactly that point, and a
    # masked branch would make it 0. (A NaN at identical distributions needs σ_ref < e^{−88.7}, where
    # 1/σ_ref overflows float32.)
    mean_term = 0.5 * jnp.square((mean - mean_ref) * jnp.exp(-log_std_ref))
    return jnp.sum(scale_term + mean_term, axis=-1)


# Masked reductions for token-level KLs: `values` and `mask` are [..., T] with mask 1 for real tokens.


def sum_per_sequence(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Σ_t mask_t · values_t over the last (time) axis: the sequence-level KL, shape [...]."""
    _check_same_shape("sum_per_sequence", values=values, mask=mask)
    return jnp.sum(jnp.where(mask > 0, values, 0.0), axis=-1)


def mean_per_sequence(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-sequence average over its real tokens, shape [...]; 0 for an all-padding sequence."""
    counts = jnp.sum(mask > 0, axis=-1)
    return sum_per_sequence(values, mask) / jnp.maximum(counts, 1)


def mean_per_token(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Average over every real token in the batch (long sequences weigh more), a scalar."""
    total = jnp.sum(sum_per_sequence(values, mask))
    return total / jnp.maximum(jnp.sum(mask > 0), 1)
