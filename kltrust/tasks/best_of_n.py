"""The exact best-of-n policy and its KL to the reference, for categorical references with ties.

Best-of-n draws n i.i.d. samples y_1 … y_n from π_ref and keeps one of maximal reward. Let
F(v) = P_{π_ref}(r(y) ≤ v) be the reward CDF, G(v) = P_{π_ref}(r(y) < v) = F(v⁻) and
C_v = {y : r(y) = v} the tie class of v, of mass m(v) = F(v) − G(v). The kept sample has reward v
exactly when all n rewards are ≤ v and not all are < v: probability F(v)^n − G(v)^n. Inside a tie
class the kept outcome is distributed ∝ π_ref, for any tie-break that does not look at which outcome
a sample is (e.g. the lowest sample index, `kltrust.objectives.grpo.best_of_n_select`): the samples
are exchangeable, so conditioned on the class, the kept one is a draw of π_ref restricted to it.
Hence

    π_bon(y) = π_ref(y) / m(r(y)) · [F(r(y))^n − G(r(y))^n],

and without ties (m(r(y)) = π_ref(y)) this is Beirami et al.'s F(y)^n − F(y⁻)^n. Its KL to π_ref is
at most log n − (n − 1)/n (`kltrust.objectives.grpo.best_of_n_kl_bound`; Beirami et al. 2024,
"Theoretical guarantees on the best-of-n alignment policy", arXiv 2401.01879), with equality only in
the limit of a continuous, untied reward distribution; with ties or a concentrated π_ref it is well
below (all rewards equal: π_bon = π_ref and the KL is 0 for every n).

Numerics (float32, n up to thousands, probabilities down to the float32 range), all in log space:

* log m is a segmented log-sum-exp over each tie class, not F − G (which cancels for a light class
  next to a heavy CDF);
* log F = log1p(−S) with S = P(r > v) from a reverse cumulative log-sum-exp where S < ½ (so the
  top classes, F ≈ 1, keep full relative precision in n·log F), the forward cumulative sum otherwise;
* F^n − G^n = F^n · (−expm1(−n·d)) with d = log F − log G = softplus(log m − log G) > 0, accurate
  for a class much lighter than the mass below it.

Outcomes with π_ref(y) = 0 (log-probability −inf) get π_bon(y) = 0. n = 1 returns π_ref itself, so
its KL is exactly 0. Every function is pure and safe under ``jit`` and ``vmap``; the KL comes from
`kltrust.kl.categorical`.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from kltrust import kl

if TYPE_CHECKING:
    from kltrust.tasks.bandit import Bandit

__all__ = ["bandit_best_of_n_kl", "best_of_n_kl", "best_of_n_policy"]

_WHERE = "kltrust.tasks.best_of_n"


def _check(logp_ref: jax.Array, reward: jax.Array, n) -> None:
    """Shape and n checks on concrete values (a traced n is not checked)."""
    if logp_ref.ndim < 1 or logp_ref.shape[-1] < 1:
        raise ValueError(f"{_WHERE}: logp_ref must have shape [..., A] with A >= 1, got shape "
                         f"{logp_ref.shape}.")
    if reward.shape != logp_ref.shape:
        raise ValueError(f"{_WHERE}: reward must have the shape of logp_ref {logp_ref.shape}, got "
                         f"shape {reward.shape}.")
    if isinstance(n, jax.core.Tracer):
        return
    if isinstance(n, numbers.Number) and not isinstance(n, bool):
        ok = isinstance(n, numbers.Integral) or (isinstance(n, numbers.Real) and float(n).is_integer())
        if not (ok and n >= 1):
            raise ValueError(f"{_WHERE}: n must be an integer >= 1, got {n!r}.")
        return
    values = np.asarray(n)
    if values.dtype == bool or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{_WHERE}: n must be an integer >= 1 or an array of them, got {n!r}.")
    if not (np.all(values >= 1) and np.all(np.mod(values, 1) == 0)):
        raise ValueError(f"{_WHERE}: n must hold integers >= 1, got {values!r}.")
    lead = logp_ref.shape[:-1]
    try:
        fits = np.broadcast_shapes(values.shape, lead) == lead
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{_WHERE}: n must be a scalar or broadcast to the context shape {lead} of "
                         f"logp_ref, got shape {values.shape}.")


def _segment_logsumexp(values: jax.Array, starts: jax.Array) -> jax.Array:
    """Running log-sum-exp along the last axis, restarted where ``starts`` is True."""

    def combine(a, b):
        (start_a, acc_a), (start_b, acc_b) = a, b
        return start_a | start_b, jnp.where(start_b, acc_b, jnp.logaddexp(acc_a, acc_b))

    return jax.lax.associative_scan(combine, (starts, values), axis=-1)[1]


def best_of_n_policy(logp_ref: jax.Array, reward: jax.Array, n: int | jax.Array) -> jax.Array:
    """log π_bon, the exact law of best-of-n sampling from π_ref (module docstring), ties included.

    Args:
      logp_ref: log π_ref, shape [..., A] (leading axes are contexts). Normalised here with
        ``log_softmax``, so logits do too; −inf marks an outcome of probability 0.
      reward: r, same shape. Outcomes of equal reward (exactly equal floats) form a tie class.
      n: number of samples, an integer >= 1, or an array of them broadcasting to the context shape
        ``logp_ref.shape[:-1]``.

    Returns:
      log π_bon, shape [..., A], in the dtype of ``logp_ref`` (−inf where π_ref is 0).

    Raises:
      ValueError: ``reward``'s shape differs from ``logp_ref``'s, A = 0, or a concrete ``n`` is not
        integers >= 1 broadcasting to the context shape.
    """
    return _checked(logp_ref, reward, n)[0]


def _checked(logp_ref, reward, n) -> tuple[jax.Array, jax.Array]:
    """(log π_bon, the normalised log π_ref it was computed from), after the checks."""
    logp_ref, reward = jnp.asarray(logp_ref), jnp.asarray(reward)
    if not jnp.issubdtype(logp_ref.dtype, jnp.floating):
        logp_ref = logp_ref.astype(jnp.float32)
    _check(logp_ref, reward, n)
    return _log_best_of_n(logp_ref, reward, jnp.asarray(n, logp_ref.dtype))


@jax.jit  # one compilation per shape and dtype, n included as an array (not per value of n)
def _log_best_of_n(logp_ref: jax.Array, reward: jax.Array, n: jax.Array) -> tuple:
    logp_ref = jax.nn.log_softmax(logp_ref, axis=-1)
    size = logp_ref.shape[-1]

    order = jnp.argsort(reward, axis=-1, stable=True)
    r = jnp.take_along_axis(reward, order, axis=-1)
    lp = jnp.take_along_axis(logp_ref, order, axis=-1)
    index = jnp.broadcast_to(jnp.arange(size), r.shape)
    new_class = jnp.concatenate([jnp.ones_like(r[..., :1], bool), r[..., 1:] != r[..., :-1]], -1)
    class_end = jnp.concatenate([new_class[..., 1:], jnp.ones_like(r[..., :1], bool)], -1)
    first = jax.lax.cummax(jnp.where(new_class, index, 0), axis=r.ndim - 1)
    last = jax.lax.cummin(jnp.where(class_end, index, size - 1), axis=r.ndim - 1, reverse=True)

    neg_inf = jnp.full_like(lp[..., :1], -jnp.inf)
    below = jnp.concatenate([neg_inf, jax.lax.cumlogsumexp(lp, axis=lp.ndim - 1)], -1)  # log P(<i)
    above = jnp.concatenate([jax.lax.cumlogsumexp(lp, axis=lp.ndim - 1, reverse=True), neg_inf], -1)
    log_g = jnp.take_along_axis(below, first, axis=-1)  # log G: mass strictly below the class
    log_s = jnp.take_along_axis(above, last + 1, axis=-1)  # log S: mass strictly above the class
    running = _segment_logsumexp(lp, new_class)
    log_m = jnp.take_along_axis(running, last, axis=-1)  # log m: the class's mass
    log_f = jnp.where(log_s < np.log(0.5), jnp.log1p(-jnp.exp(log_s)), jnp.logaddexp(log_g, log_m))

    n = n[..., None]
    d = jax.nn.softplus(log_m - log_g)  # log F − log G > 0; +inf where G = 0
    log_class = n * log_f + jnp.log(-jnp.expm1(-n * d))  # log(F^n − G^n)
    present = lp > -jnp.inf
    safe_m = jnp.where(present, log_m, 0.0)
    log_bon = jnp.where(present, lp - safe_m + log_class, -jnp.inf)
    log_bon = jnp.where(n == 1, lp, log_bon)  # n = 1 is π_ref exactly (KL exactly 0)
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(log_bon, inverse, axis=-1), logp_ref


def best_of_n_kl(logp_ref: jax.Array, reward: jax.Array, n: int | jax.Array) -> jax.Array:
    """Exact KL(π_bon ‖ π_ref) of best-of-n sampling per context, ties included.

    ≤ log n − (n − 1)/n (`kltrust.objectives.grpo.best_of_n_kl_bound`), approaching it only for
    a large support of untied, individually light outcomes.

    Args, Raises: as `best_of_n_policy`.

    Returns:
      KL per context, shape ``logp_ref.shape[:-1]``; exactly 0 where n = 1.
    """
    log_bon, logp_ref = _checked(logp_ref, reward, n)
    # The reference exactly as normalised for log_bon, so that n = 1 (log_bon is that reference)
    # compares two identical arrays: KL exactly 0.
    return kl.categorical(log_bon, jnp.broadcast_to(logp_ref, log_bon.shape))


def bandit_best_of_n_kl(bandit: Bandit, n: int | jax.Array) -> jax.Array:
    """E_{x~ρ} KL(π_bon(·|x) ‖ π_ref(·|x)) of best-of-n from a bandit's reference on its reward."""
    per_context = best_of_n_kl(bandit.ref_logits, bandit.rewards, n)
    return jnp.sum(bandit.context_probs * per_context, axis=-1)
