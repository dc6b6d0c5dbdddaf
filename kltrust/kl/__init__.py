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
loss_gradient=..., reward_gradient=...)`` registers a function ``(logp, logp_ref) -> per-sample
estimate`` together with what programs need to know about it (`EstimatorInfo`); `estimate`
dispatches on the name and `estimators` lists the names (filtered by that metadata, e.g.
``estimators(loss_term=True)``), so an estimator is one function and its registration, and every
program that offers a choice of estimator reads it from here.

Corrections (`corrected` registers one, with its metadata derived from the base's):
    k1+, k3+   straight-through (verl): the value of k1/k3, the gradient of k2, i.e.
               stop_gradient(k) + ½δ² − stop_gradient(½δ²). As a loss: ∇KL(p_θ‖p_ref), whatever
               k's own gradient.
    k3_is      importance-corrected (DeepSeek-V3.2; TRL's ``use_bias_correction_kl``): ρ·k3 with the
               differentiable ρ = p_θ/p_old for samples from p_old (``estimate(..., logp_old=)``).
               Value unbiased for KL(p_θ‖p_ref) off-policy; as a loss, ∇KL(p_θ‖p_ref).
They change a loss term's gradient only, so programs refuse them as rewards (``reward_term``).
Clamps, for every estimator (``estimate(..., log_ratio_clamp=c, value_clamp=v)``, numbers or swept
arrays; inf is exactly no clamp): δ clipped to [−c, c] before the estimator; the final term clipped
to [−v, v]. A clamped sample gives no gradient through what was clipped.

Gradient semantics, on-policy (samples drawn from p_θ and treated as constants, as every
policy-gradient implementation does). These are the facts users of other frameworks get wrong;
``tests/test_kl.py``, ``tests/test_kl_half.py`` and ``tests/test_kl_corrections.py``
check each one exactly on a categorical distribution.

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
    - k1+, k3+, k3_is: ∇ KL(p_θ‖p_ref), k2's gradient (the corrections above).

Numerics. Estimators work from log-probabilities only (no ratio of probabilities is ever formed),
k3 is evaluated to a few ulps of relative accuracy for every log-ratio (a series below |log r| = 1,
``expm1`` above) and is finite wherever its true value fits in the dtype. ``categorical`` treats entries that are −inf in ``logits`` as absent (probability 0,
contributing exactly 0 with zero gradient), so action or vocabulary masks are safe. optax's
``kl_divergence_with_log_targets`` returns NaN for such masked entries, which is why this module does
not delegate to it.

Layout: ``estimators.py`` (the registry, the estimators, corrections and clamps), ``exact.py``
(categorical, gaussian, the masked reductions), ``_numerics.py`` (shape checks, e^x − 1 − x); this
module re-exports their public names, so ``from kltrust import kl`` is the whole API.

Shapes are checked at trace time (with chex): mismatched shapes raise ``ValueError`` naming both
arguments rather than broadcasting silently (a [B] vs [B, 1] broadcast is a classic silent KL bug).
``chex.disable_asserts()`` turns these checks off too; they cost nothing at run time, so leave them on.
"""

from __future__ import annotations

import warnings

from kltrust.kl._numerics import _check_same_shape, _expm1_minus_identity  # noqa: F401 (tests)
from kltrust.kl.estimators import (  # noqa: F401 (_REGISTRY, _k*: tests and docstrings)
    _REGISTRY,
    CORRECTIONS,
    Estimator,
    EstimatorInfo,
    _k1,
    _k2,
    _k3,
    _k_half,
    corrected,
    estimate,
    estimator,
    estimator_info,
    estimators,
)
from kltrust.kl.exact import (
    categorical,
    gaussian,
    mean_per_sequence,
    mean_per_token,
    sum_per_sequence,
)

__all__ = [
    "CORRECTIONS",
    "Estimator",
    "EstimatorInfo",
    "categorical",
    "corrected",
    "estimate",
    "estimator",
    "estimator_info",
    "estimators",
    "gaussian",
    "mean_per_sequence",
    "mean_per_token",
    "sum_per_sequence",
]


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
