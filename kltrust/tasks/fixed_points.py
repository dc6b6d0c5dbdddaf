"""Fixed points of KL-regularised policy gradients on the bandit, beside `bandit.optimal_policy`.

A KL term whose expected gradient is a·∇KL(π‖π_ref) + b·∇KL(π_ref‖π) (`kltrust.kl.EstimatorInfo`'s
``loss_gradient`` / ``reward_gradient``) makes policy-gradient training ascend, per context,

    J_{a,b}(π) = E_π[r] − β·(a·KL(π‖π_ref) + b·KL(π_ref‖π)),

so its fixed points are J_{a,b}'s stationary points on the simplex:

* (a, 0), a > 0: the Gibbs policy π*_{aβ} ∝ π_ref·e^{r/(aβ)} (`bandit.optimal_policy`).
* (0, b), b > 0: the forward-KL optimum (`forward_kl_optimum` at βb): maximising
  Σ_y π(y)r(y) + βb·Σ_y π_ref(y)·log π(y) on the simplex, the Lagrange condition
  r(y) + βb·π_ref(y)/π(y) = λ gives π(y) = βb·π_ref(y)/(λ − r(y)) with λ > max r fixed by Σπ = 1
  (summing π(y)(λ − r(y)) = βb·π_ref(y) gives λ = E_π[r] + βb). J is strictly concave, so this is
  its unique maximum. Unlike π*_β it keeps a heavy tail: π(y) ≥ βb·π_ref(y)/(λ − min r), only
  polynomially small in 1/β where Gibbs is exponentially small.
* (0, 0): no regularisation, the unregularised argmax (`argmax_policy`; a vertex, reached only in
  the limit).
* b < 0 (k3 or k_half used as a *reward*: (1, −1), (1, −½)): −b·β·KL(π_ref‖π) is a *bonus* that
  grows without bound as any π(y) → 0 where π_ref(y) > 0, while KL(π‖π_ref) stays bounded there
  (≤ −log min π_ref), so J has no maximum in the interior: training runs off to the boundary.
  `stationary_policy` returns None for it (and for a > 0, b > 0, which no registered estimator has).

Every function takes log-probabilities and is pure and ``jit``/``vmap``-safe; KLs of these policies
come from ``kltrust.kl.categorical`` (`bandit.kl_to_optimum` and friends).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kltrust.tasks import bandit as bandit_lib
from kltrust.tasks.bandit import Bandit

# Halvings of λ's bracket [max r + β·π_ref(argmax), max r + β]: its width is at most β, so 100
# halvings reach the spacing of floats near λ in float64 (and float32).
_BISECTION_STEPS = 100

__all__ = ["argmax_policy", "forward_kl_optimum", "stationary_policy"]


def forward_kl_optimum(logp_ref: jax.Array, reward: jax.Array, beta: jax.Array | float) -> jax.Array:
    """log π of argmax_π E_π[r] − β·KL(π_ref‖π) over the simplex, per row: shape of ``logp_ref``.

    π(y) = β·π_ref(y)/(λ − r(y)), λ by bisection on the decreasing Σ_y β·π_ref(y)/(λ − r(y)) = 1
    over [m + β·π_ref(y_m), m + β], m = max r over π_ref's support (π_ref(y) = 0, i.e. −inf, gives
    π(y) = 0); the bracket holds because the y_m term alone is 1 at its left end and the whole sum is
    ≤ β/(λ − m) = 1 at its right end. Computed in ``logp_ref``'s dtype (float64 under
    ``jax.enable_x64``); the result is renormalised in log space. β > 0, a scalar or broadcasting
    against the rows (e.g. [C, 1]).
    """
    logp_ref = jnp.asarray(logp_ref)
    reward = jnp.asarray(reward, logp_ref.dtype)
    beta = jnp.asarray(beta, logp_ref.dtype)
    beta = beta[..., None] if beta.ndim else beta
    support = logp_ref > -jnp.inf
    r = jnp.where(support, reward, -jnp.inf)
    m = jnp.max(r, axis=-1, keepdims=True)
    p_top = jnp.max(jnp.where(r == m, jnp.exp(logp_ref), 0.0), axis=-1, keepdims=True)
    gap = lambda lam: jnp.where(support, lam - reward, 1.0)  # noqa: E731 (λ − r > 0 on the support)

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        total = jnp.sum(jnp.where(support, beta * jnp.exp(logp_ref) / gap(mid), 0.0), axis=-1,
                        keepdims=True)
        return jnp.where(total > 1, mid, lo), jnp.where(total > 1, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, halve,
                               (m + beta * p_top, jnp.broadcast_to(m + beta, m.shape)))
    lam = 0.5 * (lo + hi)
    logp = jnp.where(support, jnp.log(beta) + logp_ref - jnp.log(gap(lam)), -jnp.inf)
    return jax.nn.log_softmax(logp, axis=-1)


def argmax_policy(logp_ref: jax.Array, reward: jax.Array) -> jax.Array:
    """log π of the unregularised optimum: π_ref restricted to the maximisers of r on its support
    (any mixture of them is optimal; this one is the β → 0 limit of both π*_β and the forward-KL
    optimum). Entries off the argmax are −inf."""
    r = jnp.where(logp_ref > -jnp.inf, reward, -jnp.inf)
    top = r == jnp.max(r, axis=-1, keepdims=True)
    return jax.nn.log_softmax(jnp.where(top, logp_ref, -jnp.inf), axis=-1)


def stationary_policy(bandit: Bandit, beta: jax.Array | float,
                      gradient: tuple[float, float]) -> jax.Array | None:
    """log π [C, A] that policy-gradient training converges to when the KL term's expected
    gradient is ``gradient`` = (a, b) (module docstring): π*_{aβ} for (a > 0, 0), the forward-KL
    optimum at βb for (0, b > 0), the argmax for (0, 0); None where J_{a,b} has no interior
    maximum or no closed form here (b < 0, or a > 0 and b > 0)."""
    a, b = (float(c) for c in gradient)
    logp_ref = jax.nn.log_softmax(bandit.ref_logits, axis=-1)
    if a > 0 and b == 0:
        return bandit_lib.optimal_policy(bandit, a * jnp.asarray(beta))
    if a == 0 and b > 0:
        return forward_kl_optimum(logp_ref, bandit.rewards, b * jnp.asarray(beta))
    if a == 0 and b == 0:
        return argmax_policy(logp_ref, bandit.rewards)
    return None
