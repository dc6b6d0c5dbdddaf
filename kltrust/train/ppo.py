"""The PPO training program: rollout → GAE → epochs × minibatches → β controller, in one jit.

A run splits into a static part (`Static`: shapes, variant, environment) and `HParams`, a pytree of
float32 arrays; the config layer (`kltrust.train.control_config`) builds both from a config, and
nothing here reads the config. `Trainer.update` is one PPO iteration as a pure function of
(TrainState, HParams); `Trainer.run_chunk` scans it ``updates_per_chunk`` times inside one
compiled program. Because every number a sweep varies is an array, `jax.vmap` over seeds and
hyperparameters reuses one compilation.

The β controller is a component (`kltrust.controllers`): ``variant.kl_penalty`` chooses the kind
(static) and ``hparams.controller`` holds one knob group per registered kind
(`kltrust.components.group_defaults`); the chosen kind's knobs travel into the program as
``HParams.controller``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from kltrust import components, controllers, guards, rollout, sharding, shuffle
from kltrust.objectives import ppo
from kltrust.train import common

ENV_NAMES = common.ENV_NAMES


@components.hparams
class HParams:
    """Every numeric hyperparameter of a PPO run, as arrays (vmappable, never baked into the trace).

    Each knob declares its config default and allowed range once; the config layer
    (`kltrust.train.control_config`) derives ``defaults()``, the range checks and the parsing from
    these declarations. The field order is the pytree's leaf order: keep it.
    """

    learning_rate: jax.Array = components.knob(
        2.5e-4, "Adam's step size (annealed linearly to 0 if anneal_lr)", low=0, low_open=True)
    clip_eps: jax.Array = components.knob(
        0.2, "ε of the clipped ratio 1 ± ε (read if variant.clip; inf: the unclipped surrogate "
        "exactly)", low=0, low_open=True, allow_inf=True)
    beta: jax.Array = components.knob(
        1.0, "fixed β, or the initial β of a controller (read if variant.kl_penalty != 'none'; "
        "> 0 for a multiplicative controller)", low=0)
    gamma: jax.Array = components.knob(0.99, "discount γ", low=0, high=1)
    gae_lambda: jax.Array = components.knob(0.95, "GAE λ", low=0, high=1)
    vf_coef: jax.Array = components.knob(0.5, "weight of the value loss", low=0)
    ent_coef: jax.Array = components.knob(0.01, "weight of the entropy bonus", low=0)
    max_grad_norm: jax.Array = components.knob(
        0.5, "global-norm gradient clipping (inf: none)", low=0, low_open=True, allow_inf=True)
    target_kl: jax.Array = components.knob(
        0.015, "early stopping of the epoch loop at 1.5·target_kl (read if early_stop)", low=0,
        low_open=True)
    reward_scale: jax.Array = components.knob(1.0, "rewards are multiplied by this", low=0,
                                              low_open=True)
    obs_clip: jax.Array = components.knob(
        5.0, "normalised observations are clipped to ±obs_clip (read if normalize_observations; "
        "inf: no clipping)", low=0, low_open=True, allow_inf=True)
    vf_clip_eps: jax.Array = components.knob(
        0.2, "the value prediction may move by at most this from the rollout's (read if "
        "variant.clip_value)", low=0, low_open=True)
    # The knobs of the β controller ``variant.controller`` (its module's HParams); in the config
    # every registered controller's group, so --config.hparams.controller.pid.kp=1 always parses.
    controller: Any = components.group(controllers.REGISTRY, "the β controller's knobs")


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything that changes shapes or code paths."""

    env_name: str
    num_envs: int
    num_steps: int
    num_epochs: int
    num_minibatches: int
    num_updates: int
    updates_per_chunk: int
    hidden: tuple[int, ...]
    activation: str
    anneal_lr: bool
    early_stop: bool
    variant: ppo.Variant
    normalize_observations: bool = False

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps


@flax.struct.dataclass
class TrainState:
    params: Any
    opt_state: optax.OptState
    controller: controllers.ControllerState
    runner: rollout.RunnerState
    episodes: rollout.EpisodeStats
    key: jax.Array  # raw uint32 key data, so checkpoints hold plain arrays
    update_step: jax.Array
    ref_params: Any  # frozen reference policy, None unless the variant penalises KL to it
    bad_updates: jax.Array  # consecutive updates skipped as non-finite (`kltrust.guards`)
    # Running observation statistics (`kltrust.envs.normalize`), None unless normalised.
    obs_stats: Any = None


def unread_knobs(variant: ppo.Variant, early_stop: bool,
                 normalize_observations: bool = False) -> tuple[str, ...]:
    """The knobs of `HParams` a run of ``variant`` never reads (their range is not checked, only
    that they are finite numbers)."""
    unread = []
    if not normalize_observations:
        unread.append("obs_clip")
    if not variant.clip_value:
        unread.append("vf_clip_eps")
    if not variant.clip:
        unread.append("clip_eps")
    if variant.kl_penalty == "none":
        unread.append("beta")
    if not early_stop:
        unread.append("target_kl")
    return tuple(unread)


def _make_optimizer(learning_rate: jax.Array, max_grad_norm: jax.Array) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(learning_rate, eps=1e-5))


@dataclasses.dataclass(frozen=True)
class Trainer(common.ControlTrainer):
    """Pure PPO training functions for one static configuration."""

    static: Static

    def _optimizer(self, hp: HParams) -> optax.GradientTransformation:
        # max_grad_norm = inf (no clipping) is injected as float32's largest finite value: the
        # same optimiser (a finite norm never exceeds it), but the optimiser state stays finite,
        # which the non-finite guard checks every update (an inf there skipped every update).
        max_grad_norm = jnp.minimum(hp.max_grad_norm, jnp.finfo(jnp.float32).max)
        return optax.inject_hyperparams(_make_optimizer)(
            learning_rate=hp.learning_rate, max_grad_norm=max_grad_norm
        )

    def init(self, seed: jax.Array, hp: HParams, params: Any) -> TrainState:
        """A fresh run for integer ``seed`` from ``initial_params`` (vmappable over seeds, hparams)."""
        _, env, env_params = self._model_and_env
        key = jax.random.PRNGKey(seed)
        key, _, key_env = jax.random.split(key, 3)
        params = sharding.param_constraint(self.mesh)(params)
        variant = self.static.variant
        controller_state = controllers.get(variant.controller).init(hp.beta, hp.controller)
        runner = rollout.init_runner(key_env, env, env_params, self.static.num_envs)
        return TrainState(
            params=params,
            opt_state=self._optimizer(hp).init(params),
            controller=controller_state,
            runner=sharding.batch_constraint(self.mesh)(runner),
            episodes=rollout.EpisodeStats.empty(),
            key=key,
            update_step=jnp.zeros((), jnp.int32),
            ref_params=params if variant.uses_reference else None,
            bad_updates=jnp.zeros((), jnp.int32),
            obs_stats=self.init_obs_stats(),
        )

    def update(self, state: TrainState, hp: HParams) -> tuple[TrainState, dict[str, jax.Array]]:
        """One PPO iteration: collect a batch, optimise the loss for some epochs, update β."""
        static, variant = self.static, self.static.variant
        _, env, env_params = self._model_and_env
        constrain = sharding.batch_constraint(self.mesh)
        key, key_rollout, key_epochs = jax.random.split(state.key, 3)

        runner, episodes, traj, last_value = rollout.rollout(
            self.observed_policy(state.obs_stats, hp.obs_clip), state.params, state.runner,
            state.episodes, key_rollout, env, env_params, static.num_steps, constrain,
        )
        advantage, target = rollout.gae(traj, last_value, hp.gamma, hp.gae_lambda, hp.reward_scale)
        # The networks' inputs exactly as the behaviour policy saw them; the statistics then
        # absorb this rollout's raw observations, for the next one (`kltrust.envs.normalize`).
        obs, obs_stats = self.absorb(state.obs_stats, traj.obs, hp.obs_clip)
        reference = self.apply_fn(state.ref_params, obs)[0] if variant.uses_reference else None
        # [T, N] -> [T·N]: time-major flattening keeps each device's environments contiguous.
        flat = lambda x: x.reshape((static.batch_size,) + x.shape[2:])
        batch = jax.tree.map(flat, ppo.Batch(
            obs=obs, action=traj.action, log_prob=traj.log_prob, policy=traj.policy,
            advantage=advantage, target=target, reference=reference,
            value=traj.value if variant.clip_value else None,
        ))
        batch = constrain(batch)

        frac = 1.0 - state.update_step / static.num_updates if static.anneal_lr else 1.0
        opt_state = state.opt_state._replace(
            hyperparams={**state.opt_state.hyperparams, "learning_rate": hp.learning_rate * frac}
        )
        optimizer = self._optimizer(hp)
        coefs = ppo.LossCoefs(hp.clip_eps, state.controller.beta, hp.vf_coef, hp.ent_coef,
                              hp.vf_clip_eps)
        grad_fn = jax.value_and_grad(
            lambda p, mb: ppo.loss(p, mb, coefs, apply_fn=self.apply_fn, variant=variant),
            has_aux=True,
        )
        minibatch_size = static.batch_size // static.num_minibatches

        def minibatch_step(carry, minibatch):
            params, opt_state, stopped = carry
            (_, metrics), grads = grad_fn(params, minibatch)
            # Early stopping (as in Stable-Baselines3): once KL(π_old ‖ π_θ) measured before a step
            # exceeds 1.5·target_kl, this and every later minibatch of the iteration is skipped.
            if static.early_stop:
                stopped = stopped | (metrics["kl_old"] > 1.5 * hp.target_kl)
            updates, new_opt_state = optimizer.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            keep = lambda old, new: jax.tree.map(lambda o, n: jnp.where(stopped, o, n), old, new)
            carry = (keep(params, new_params), keep(opt_state, new_opt_state), stopped)
            return carry, (metrics, ~stopped)

        def epoch(carry, epoch_key):
            perm = shuffle.permutation(epoch_key, static.batch_size)
            shuffled = jax.tree.map(
                lambda x: x[perm].reshape((static.num_minibatches, minibatch_size) + x.shape[1:]),
                batch,
            )
            return jax.lax.scan(minibatch_step, carry, shuffled)

        (params, opt_state, _), (mb_metrics, applied) = jax.lax.scan(
            epoch, (state.params, opt_state, jnp.array(False)),
            jax.random.split(key_epochs, static.num_epochs),
        )
        applied = applied.astype(jnp.float32)
        n_applied = jnp.maximum(applied.sum(), 1.0)
        metrics = {k: jnp.sum(v * applied) / n_applied for k, v in mb_metrics.items()}

        # The constrained KLs, measured exactly on the whole batch after the update.
        new_policy, _ = self.apply_fn(params, batch.obs)
        metrics["kl_old"] = batch.policy.kl(new_policy).mean()
        # The extremes of π_θ/π_old over the batch: clipping stops the gradient at 1 ± ε but does not
        # bound the ratio (or the KL) the update ends at.
        ratio = jnp.exp(new_policy.log_prob(batch.action) - batch.log_prob)
        metrics["ratio_max"], metrics["ratio_min"] = ratio.max(), ratio.min()
        if variant.uses_reference:
            metrics["kl_ref"] = new_policy.kl(batch.reference).mean()
        # The coefficient actually applied in this update's loss (0 when nothing is penalised).
        metrics["beta"] = state.controller.beta if variant.kl_penalty != "none" else jnp.zeros(())
        controller_state = state.controller
        if variant.kl_penalty != "none":
            observed = metrics["kl_ref"] if variant.kl_anchor == "reference" else metrics["kl_old"]
            controller_state = controllers.get(variant.kl_penalty).update(
                controller_state, observed, jnp.asarray(static.batch_size, jnp.float32)
            )
        metrics["minibatches_applied"] = applied.sum()
        metrics["learning_rate"] = opt_state.hyperparams["learning_rate"]
        # A non-finite update (a NaN reward, an overflow) is skipped: the learning state and the
        # episode statistics stay as they were; the environments move on.
        (params, opt_state, controller_state, episodes, obs_stats), bad_updates, metrics = (
            guards.skip_nonfinite(
                (state.params, state.opt_state, state.controller, state.episodes, state.obs_stats),
                (params, opt_state, controller_state, episodes, obs_stats), metrics,
                state.bad_updates))
        metrics["episode_return"] = episodes.mean_return()  # last 100 episodes (NaN before any)
        metrics["episodes_completed"] = jnp.sum(traj.done)
        # The layout the run started with (FSDP or replicated) is kept across updates and chunks.
        params, opt_state = sharding.param_constraint(self.mesh)((params, opt_state))
        new_state = TrainState(
            params=params, opt_state=opt_state, controller=controller_state, runner=runner,
            episodes=episodes, key=key, update_step=state.update_step + 1, ref_params=state.ref_params,
            bad_updates=bad_updates, obs_stats=obs_stats,
        )
        return new_state, metrics


def make_trainer(static: Static, mesh: jax.sharding.Mesh | None = None) -> Trainer:
    """The `Trainer` of a (validated) ``static`` configuration on ``mesh`` (by default every device
    on the data axis); refuses a mesh that cannot split the environments evenly."""
    mesh = mesh or sharding.mesh_from_sizes({})
    common.check_fits_mesh(static.num_envs, mesh)
    return Trainer(static, mesh)


compile_run = common.compile_run
