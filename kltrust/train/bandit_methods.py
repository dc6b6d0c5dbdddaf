"""The bandit testbed's training methods, each registered in `kltrust.train.bandit.METHODS`.

A method is ``build(setup) -> Method`` (two pure functions, ``init`` and ``update``, traced inside
`kltrust.train.bandit.make_train`'s jit) registered with ``@bandit.register(NAME, ...)``; a new
method is one more function here, or a module that registers itself the same way and is imported
from here. The maths of each is in `kltrust.train.bandit`'s docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from kltrust.distributions import Categorical
from kltrust.objectives import ppo, preference, trpo
from kltrust.tasks import bandit as bandit_lib
from kltrust.tasks.bandit import Bandit, Preferences
from kltrust.train.bandit import HParams, Method, Setup, TrainState, register


# loss(logits [C, A], key, data, bandit, hparams) -> (scalar loss, metrics)
LossFn = Callable[[jax.Array, jax.Array, Any, Bandit, HParams], tuple[jax.Array, dict[str, jax.Array]]]


def _optimizer(setup: Setup, hp: HParams, steps_per_update: int = 1) -> optax.GradientTransformation:
    learning_rate = hp.learning_rate
    if setup.lr_schedule == "cosine":
        learning_rate = optax.cosine_decay_schedule(hp.learning_rate, setup.num_steps * steps_per_update)
    return optax.adam(learning_rate)


def _gradient_method(
    setup: Setup,
    loss_fn: LossFn,
    make_data: Callable[[jax.Array, Bandit, HParams], Preferences] | None = None,
) -> Method:
    """A method that takes one Adam step on ``loss_fn`` of the policy's logits per update."""
    policy = bandit_lib.make_policy(setup.policy)

    def init(key: jax.Array, bandit: Bandit, hp: HParams) -> TrainState:
        k_params, k_data, k_run = jax.random.split(key, 3)
        params = policy.init(k_params, bandit)
        data = None if make_data is None else make_data(k_data, bandit, hp)
        return TrainState(params=params, opt_state=_optimizer(setup, hp).init(params), key=k_run,
                          step=jnp.zeros((), jnp.int32), data=data)

    def update(state: TrainState, bandit: Bandit, hp: HParams) -> tuple[TrainState, dict]:
        key, k_step = jax.random.split(state.key)
        objective = lambda params: loss_fn(policy.apply(params, bandit), k_step, state.data, bandit, hp)
        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = _optimizer(setup, hp).update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        state = state.replace(params=params, opt_state=opt_state, key=key, step=state.step + 1)
        return state, {"loss": loss, **metrics}

    return Method(init, update)


@register("pg_exact")
def _pg_exact(setup: Setup) -> Method:
    """Gradient ascent on the exact E[r] − β·KL(π‖π_ref)"""
    def loss_fn(logits, key, data, bandit, hp):
        del key, data
        return -bandit_lib.regularised_objective(bandit, logits, hp.beta), {}

    return _gradient_method(setup, loss_fn)


@register("pg_reinforce")
def _pg_reinforce(setup: Setup) -> Method:
    """REINFORCE with the k1 KL penalty in the reward, leave-one-out baseline"""
    def loss_fn(logits, key, data, bandit, hp):
        del data  # pg_kl_sampled with k1 in the reward (bandit_kl.sampled_loss)
        loss, metrics = bandit_kl.sampled_loss(logits, key, bandit, hp.beta, "k1", "reward",
                                               setup.batch_size, setup.group_size)
        return loss, {"sampled_reward": metrics["sampled_reward"],
                      "sampled_kl_k1": metrics["kl_estimate"]}

    return _gradient_method(setup, loss_fn)


def _preference_loss(setup: Setup, logits: jax.Array, pairs: Preferences, bandit: Bandit,
                     hp: HParams) -> tuple[jax.Array, dict[str, jax.Array]]:
    logp = jax.nn.log_softmax(logits, axis=-1)
    logp_ref = jax.nn.log_softmax(bandit.ref_logits, axis=-1)
    c, w, l = pairs.context, pairs.chosen, pairs.rejected
    # One action is a response of length 1: length normalisation changes nothing here.
    return preference.loss(logp[c, w], logp[c, l], logp_ref[c, w], logp_ref[c, l], hp.beta,
                           setup.preference_loss, hp.preference, weights=pairs.weight)


@register("dpo", offline_pairs=True, preference_loss=True)
def _dpo_offline(setup: Setup) -> Method:
    """Offline preference optimisation on pairs drawn once from π_ref"""
    full_batch = setup.preferences == "exact" or setup.batch_size == 0

    def make_data(key, bandit, hp):
        if setup.preferences == "exact":
            return bandit_lib.exact_preferences(bandit, hp.label_noise)
        return bandit_lib.sample_preferences(key, bandit, setup.num_pairs, hp.label_noise)

    def loss_fn(logits, key, data, bandit, hp):
        pairs = data
        if not full_batch:
            index = jax.random.randint(key, (setup.batch_size,), 0, setup.num_pairs)
            pairs = jax.tree.map(lambda v: v[index], data)
        return _preference_loss(setup, logits, pairs, bandit, hp)

    return _gradient_method(setup, loss_fn, make_data)


@register("dpo_online", preference_loss=True)
def _dpo_online(setup: Setup) -> Method:
    """Preference optimisation on pairs drawn from the current policy every step"""
    def loss_fn(logits, key, data, bandit, hp):
        del data
        pairs = bandit_lib.sample_preferences(key, bandit, setup.batch_size, hp.label_noise,
                                              policy_logits=jax.lax.stop_gradient(logits))
        return _preference_loss(setup, logits, pairs, bandit, hp)

    return _gradient_method(setup, loss_fn)


@register("ppo")
def _ppo(setup: Setup) -> Method:
    """PPO's clipped surrogate with a fixed-β exact KL(π_θ‖π_ref) penalty in the loss.

    The loss is `kltrust.objectives.ppo.loss` itself (variant clip + fixed penalty anchored to the
    reference, advantages *not* normalised: rescaling them would change the regularised objective
    and so its optimum). Each update samples ``batch_size`` contexts × ``group_size`` actions from
    π_old, takes the leave-one-out baseline of the raw reward, and runs ``ppo_epochs`` full-batch Adam
    steps. At θ = θ_old the loss gradient is −∇(E[r] − β·KL(π‖π_ref)), so π*_β is its fixed point.
    """
    policy = bandit_lib.make_policy(setup.policy)
    batch, group, epochs = setup.batch_size, setup.group_size, setup.ppo_epochs
    variant = ppo.Variant(clip=True, kl_penalty="fixed", kl_anchor="reference",
                          normalize_advantages=False)

    def init(key: jax.Array, bandit: Bandit, hp: HParams) -> TrainState:
        k_params, k_run = jax.random.split(key)
        params = policy.init(k_params, bandit)
        return TrainState(params=params, opt_state=_optimizer(setup, hp, epochs).init(params),
                          key=k_run, step=jnp.zeros((), jnp.int32), data=None)

    def update(state: TrainState, bandit: Bandit, hp: HParams) -> tuple[TrainState, dict]:
        key, k_context, k_action = jax.random.split(state.key, 3)
        old_logits = policy.apply(state.params, bandit)
        context = jax.random.categorical(k_context, jnp.log(bandit.context_probs), shape=(batch,))
        action = jax.random.categorical(k_action, old_logits[context], shape=(group, batch)).T
        reward = bandit.rewards[context[:, None], action]  # [B, G]
        baseline = (reward.sum(-1, keepdims=True) - reward) / max(group - 1, 1) if group > 1 else 0.0
        context, action = jnp.repeat(context, group), action.reshape(-1)
        old = Categorical(old_logits[context])
        samples = ppo.Batch(
            obs=context, action=action, log_prob=old.log_prob(action), policy=old,
            advantage=(reward - baseline).reshape(-1), target=jnp.zeros(batch * group),
            reference=Categorical(bandit.ref_logits[context]),
        )
        apply_fn = lambda params, ctx: (Categorical(policy.apply(params, bandit)[ctx]),
                                        jnp.zeros(ctx.shape))
        coefs = ppo.LossCoefs(clip_eps=hp.clip_eps, beta=hp.beta, vf_coef=jnp.zeros(()),
                              ent_coef=jnp.zeros(()))
        optimizer = _optimizer(setup, hp, epochs)

        def epoch(carry, _):
            params, opt_state = carry
            (loss, metrics), grads = jax.value_and_grad(ppo.loss, has_aux=True)(
                params, samples, coefs, apply_fn=apply_fn, variant=variant)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), (loss, metrics)

        (params, opt_state), (losses, metrics) = jax.lax.scan(
            epoch, (state.params, state.opt_state), None, length=epochs)
        state = state.replace(params=params, opt_state=opt_state, key=key, step=state.step + 1)
        return state, {"loss": losses[-1], "clip_frac": metrics["clip_frac"][-1],
                       "sampled_reward": reward.mean()}

    return Method(init, update)


@register("trpo")
def _trpo(setup: Setup) -> Method:
    """TRPO with a hard budget on E_x KL(π_θ‖π_ref), on exact expectations (no sampling).

    `kltrust.objectives.trpo.step` with the reference anchor, on the batch of every (x, y) weighted by
    ρ(x)·π_old(y|x) (so the surrogate, its gradient, the Fisher and both KLs are exact), advantages
    r(x, y) − V_old(x). The budget is ``kl_budget_ratio`` × KL(π*_β‖π_ref): at 1 the constrained optimum
    max E[r] s.t. KL ≤ budget is π*_β itself, which puts TRPO on the same footing as the penalty
    methods. Each update is one trust-region step of size δ; no optimiser state.
    """
    policy = bandit_lib.make_policy(setup.policy)
    variant = trpo.Variant(line_search=True, kl_anchor="reference", normalize_advantages=False)

    def init(key: jax.Array, bandit: Bandit, hp: HParams) -> TrainState:
        k_params, k_run = jax.random.split(key)
        return TrainState(params=policy.init(k_params, bandit), opt_state=(), key=k_run,
                          step=jnp.zeros((), jnp.int32), data=None)

    def update(state: TrainState, bandit: Bandit, hp: HParams) -> tuple[TrainState, dict]:
        num_contexts, num_actions = bandit.rewards.shape
        context = jnp.repeat(jnp.arange(num_contexts), num_actions)
        action = jnp.tile(jnp.arange(num_actions), num_contexts)
        flat, unravel = ravel_pytree(state.params)
        policy_fn = lambda f, ctx: Categorical(policy.apply(unravel(f), bandit)[ctx])
        old_logp = jax.nn.log_softmax(policy.apply(state.params, bandit), axis=-1)
        value = jnp.sum(jnp.exp(old_logp) * bandit.rewards, axis=-1, keepdims=True)
        batch = trpo.Batch(
            obs=context, action=action, log_prob=old_logp.reshape(-1),
            policy=Categorical(old_logp[context]), advantage=(bandit.rewards - value).reshape(-1),
            reference=Categorical(bandit.ref_logits[context]),
            weight=(bandit.context_probs[:, None] * jnp.exp(old_logp)).reshape(-1),
        )
        budget = hp.kl_budget_ratio * bandit_lib.kl_to_reference(
            bandit, bandit_lib.optimal_policy(bandit, hp.beta))
        coefs = trpo.StepCoefs(delta=hp.delta, kl_budget=budget, damping=hp.damping,
                               backtrack_factor=jnp.float32(0.8), cg_residual_tol=jnp.float32(1e-10))
        new_flat, metrics = trpo.step(policy_fn, flat, batch, coefs, variant=variant)
        state = state.replace(params=unravel(new_flat), step=state.step + 1)
        keep = ("accepted", "backtracks", "kl_old", "kl_ref", "kl_budget", "cg_relative_residual")
        return state, {name: metrics[name] for name in keep}

    return Method(init, update)




# Methods in modules of their own register themselves on import (after the ones above, so the
# registry's order is unchanged); pg_reinforce reads bandit_kl.sampled_loss at trace time.
from kltrust.train import bandit_kl  # noqa: E402  (pg_kl, pg_kl_sampled)
