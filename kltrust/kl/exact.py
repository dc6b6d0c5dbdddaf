"""Exact KLs from full distributions (categorical, diagonal Gaussian) and masked token reductions."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kltrust.kl._numerics import _check_same_shape, _expm1_minus_identity


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
      mean: mean of p, shape [..., D].
      log_std: log standard deviation of p, shape [..., D] (may be broadcast to ``mean``'s
        shape by the caller, e.g. a state-independent log-std).
      mean_ref: mean of p_ref, same shape.
      log_std_ref: log standard deviation of p_ref, same shape.

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
