"""Bandit methods ``pg_kl`` and ``pg_kl_sampled``: policy gradient with the KL to π_ref through any
registered estimator, in the reward or in the loss (the estimator × placement question of issue 23).

With δ = log π_θ(y|x) − log π_ref(y|x) and k = `kltrust.kl.estimate` (``Setup.kl_estimator``; on
policy, so ``k3_is``'s ratio is π_θ/sg(π_θ)), each update descends

    placement "reward":  −E[sg(r − β·k − b(x))·log π_θ]        (k held constant in the advantage)
    placement "loss":    −E[sg(r − b(x))·log π_θ] + β·E[k]       (k differentiated directly)

with a baseline b(x). ``pg_kl`` takes the expectation exactly: every (x, y) weighted by
ρ(x)·sg(π_θ(y|x)) and b(x) = Σ_y sg(π_θ(y|x))·(shaped reward), so each step is the expected
gradient itself and the fixed point is deterministic given the initial policy. ``pg_kl_sampled``
draws ``batch_size`` contexts x ~ ρ and ``group_size`` actions y ~ π_θ(·|x) each, with the
leave-one-out baseline of `pg_reinforce` (none when ``group_size`` is 1).

Fixed points. The expected gradient of the reward term is −∇E_π[r]; that of the KL term is
β·(a·∇KL(π‖π_ref) + b·∇KL(π_ref‖π)), with (a, b) the estimator's ``loss_gradient`` (placement
"loss") or ``reward_gradient`` (placement "reward", `kltrust.kl.EstimatorInfo`). So training
converges to a stationary point of, per context,

    J_{a,b}(π) = E_π[r] − β·(a·KL(π‖π_ref) + b·KL(π_ref‖π))

(`kltrust.tasks.fixed_points.stationary_policy`), which for b ≥ 0 is its maximum:

* (1, 0): k2, k1+, k3+, k3_is in the loss and k1 in the reward: the Gibbs policy
  π*_β ∝ π_ref·e^{r/β}, the optimum of the reverse-KL-regularised objective.
* (0, 1): k3 in the loss: the forward-KL optimum π(y) = β·π_ref(y)/(λ − r(y)), λ > max r fixing
  Σπ = 1 (`fixed_points.forward_kl_optimum`); (0, ½), k_half in the loss: the same at β/2.
* (0, 0): k1 in the loss: its expected gradient is zero, nothing regularises, and the policy heads
  for the unregularised argmax (a vertex, reached only in the limit: the logits grow without bound
  and the step count decides how close it gets).
* b < 0: k3 (1, −1) and k_half (1, −½) in the reward. −b·β·KL(π_ref‖π) is a bonus unbounded above
  as any π(y) → 0, while KL(π‖π_ref) stays bounded, so there is no interior maximum: the policy
  collapses towards a vertex, not always the argmax's (measured by ``make kl-matrix``:
  docs/kl_matrix.md); in ``pg_kl`` k's value π_ref/π − ... then overflows float32 once log π(y)
  nears −90 and the run goes non-finite.
* k2 in the reward has no (a, b): E_π[½δ²·∇log π] = ∇E_π[½δ²] − ∇KL(π‖π_ref), so it ascends
  E_π[r] − β·(E_π[½δ²] − KL(π‖π_ref)), which is not one of the above.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from kltrust import kl
from kltrust.tasks.bandit import Bandit
from kltrust.train.bandit import HParams, Method, Setup, register

sg = jax.lax.stop_gradient

__all__ = ["exact_loss", "gradient_coefficient", "sampled_loss"]


def gradient_coefficient(estimator: str, placement: str, delta: jax.Array) -> jax.Array:
    """Liu et al.'s (arXiv 2510.01555) per-sample coefficient c(δ) of ∇log π_θ in the KL term's
    gradient (per unit β), at log-ratios δ = log π_θ − log π_ref (any shape), from kltrust's own
    estimator by autodiff: placement "loss": c = dk/d log π_θ (at π_ref fixed, on-policy); placement
    "reward": c = k(δ) itself (the score function's weight, k held constant)."""
    delta = jnp.asarray(delta, jnp.float32)
    k = lambda d: kl.estimate(d, jnp.zeros_like(d), estimator)  # noqa: E731 (log π_ref = 0)
    if placement == "reward":
        return k(delta)
    return jax.vmap(jax.grad(k))(delta.reshape(-1)).reshape(delta.shape)


def _expect(weight: jax.Array | None, values: jax.Array, axis=None, keepdims: bool = False
            ) -> jax.Array:
    """Σ weight·values with terms of weight 0 exactly 0: an action π_θ gives probability 0 (it
    underflowed) is outside the expectation even where its k overflowed to inf (k3 = π_ref/π − ...).
    ``weight`` None: the plain mean (samples)."""
    if weight is None:
        return jnp.mean(values, axis=axis, keepdims=keepdims)
    return jnp.sum(jnp.where(weight > 0, weight * values, 0.0), axis=axis, keepdims=keepdims)


def _policy_gradient_loss(
    logp: jax.Array, logp_ref: jax.Array, reward: jax.Array, weight: jax.Array | None,
    baseline: Callable[[jax.Array], jax.Array], beta: jax.Array, estimator: str, placement: str,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss of the module docstring on per-(x, y) arrays of one shape; ``weight`` (constant)
    sums to 1 (None: uniform) and ``baseline(shaped)`` is b(x) broadcast against them."""
    k = kl.estimate(logp, logp_ref, estimator)
    shaped = reward - beta * sg(k) if placement == "reward" else reward
    advantage = sg(shaped - baseline(shaped))
    loss = -_expect(weight, advantage * logp)
    if placement == "loss":
        loss = loss + beta * _expect(weight, k)
    return loss, {"kl_estimate": _expect(weight, sg(k))}


def exact_loss(logits: jax.Array, bandit: Bandit, beta: jax.Array, estimator: str,
               placement: str) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``pg_kl``'s loss at logits [C, A] on exact expectations; its gradient is the expected
    gradient (module docstring), so its norm at a fixed point is 0 up to rounding."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    probs = sg(jnp.exp(logp))
    weight = bandit.context_probs[:, None] * probs
    baseline = lambda shaped: _expect(probs, shaped, axis=-1, keepdims=True)  # noqa: E731
    return _policy_gradient_loss(logp, jax.nn.log_softmax(bandit.ref_logits, axis=-1),
                                 bandit.rewards, weight, baseline, beta, estimator, placement)


def sampled_loss(logits: jax.Array, key: jax.Array, bandit: Bandit, beta: jax.Array,
                 estimator: str, placement: str, batch: int, group: int
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``pg_kl_sampled``'s loss: ``batch`` contexts × ``group`` actions from π_θ (with k1 in the
    reward, `pg_reinforce`'s). Metrics: the KL estimate and the sampled reward's mean."""
    k_context, k_action = jax.random.split(key)
    context = jax.random.categorical(k_context, jnp.log(bandit.context_probs), shape=(batch,))
    logp = jax.nn.log_softmax(logits, axis=-1)[context]  # [B, A]
    action = jax.random.categorical(k_action, sg(logp), shape=(group, batch)).T  # [B, G]
    logp_ref = jax.nn.log_softmax(bandit.ref_logits, axis=-1)[context]

    def baseline(shaped):  # leave-one-out mean of the group's other actions
        if group == 1:
            return jnp.zeros_like(shaped)
        return (shaped.sum(axis=-1, keepdims=True) - shaped) / (group - 1)

    take = lambda table: jnp.take_along_axis(table, action, axis=-1)  # noqa: E731
    reward = bandit.rewards[context[:, None], action]
    loss, metrics = _policy_gradient_loss(take(logp), take(logp_ref), reward, None, baseline, beta,
                                          estimator, placement)
    return loss, {**metrics, "sampled_reward": reward.mean()}


@register("pg_kl")
def _pg_kl(setup: Setup) -> Method:
    """Policy gradient, exact expectations, KL through Setup.kl_estimator in Setup.kl_placement"""
    from kltrust.train.bandit_methods import _gradient_method  # it imports this module

    def loss_fn(logits, key, data, bandit, hp: HParams):
        del key, data
        return exact_loss(logits, bandit, hp.beta, setup.kl_estimator, setup.kl_placement)

    return _gradient_method(setup, loss_fn)


@register("pg_kl_sampled")
def _pg_kl_sampled(setup: Setup) -> Method:
    """Policy gradient on sampled actions, KL through Setup.kl_estimator in Setup.kl_placement"""
    from kltrust.train.bandit_methods import _gradient_method

    def loss_fn(logits, key, data, bandit, hp: HParams):
        del data
        return sampled_loss(logits, key, bandit, hp.beta, setup.kl_estimator, setup.kl_placement,
                            setup.batch_size, setup.group_size)

    return _gradient_method(setup, loss_fn)
