"""The TRPO training program: rollout → GAE → one trust-region policy step → value fit, in one jit.

Same structure as `kltrust.train.ppo` (and the same rollout, model, GAE and KL core): a run splits
into `Static` and `HParams` (float32 arrays: δ, damping, backtracking factor, … vmap over sweeps),
which the config layer (`kltrust.train.control_config`) builds from a config; `Trainer.update` is
one TRPO iteration as a pure function; `Trainer.run_chunk` scans it.

The policy step (`kltrust.objectives.trpo.step`) works on the policy's parameters flattened into one
vector (actor and, for Gaussian policies, log-std); the critic is fitted afterwards with Adam over
``vf_epochs`` × ``vf_minibatches`` on the GAE targets, as in Spinning Up and sb3-contrib.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from kltrust import components, guards, rollout, sharding, shuffle
from kltrust.objectives import trpo
from kltrust.train import common

CRITIC = "critic"  # the ActorCritic submodule the value fit owns; everything else is the policy


@components.hparams
class HParams:
    """Every numeric hyperparameter of a TRPO run, as arrays (vmappable, never baked into the trace).

    Each knob declares its config default and allowed range once; the config layer
    (`kltrust.train.control_config`) derives ``defaults()``, the range checks and the parsing from
    these declarations. The field order is the pytree's leaf order: keep it.
    """

    delta: jax.Array = components.knob(0.01, "δ: the trust region's KL radius", low=0,
                                       low_open=True)
    kl_budget: jax.Array = components.knob(
        0.5, "the KL to the reference policy a step may not exceed (read if kl_anchor = "
        "'reference')", low=0, low_open=True)
    damping: jax.Array = components.knob(0.1, "added to the Fisher's diagonal in CG", low=0)
    backtrack_factor: jax.Array = components.knob(
        0.8, "the line search shrinks the step by this", low=0, high=1, low_open=True,
        high_open=True)
    cg_residual_tol: jax.Array = components.knob(
        1e-10, "CG stops once the squared residual is below this", low=0)
    vf_learning_rate: jax.Array = components.knob(1e-3, "the critic's Adam step size", low=0,
                                                  low_open=True)
    gamma: jax.Array = components.knob(0.99, "discount γ", low=0, high=1)
    gae_lambda: jax.Array = components.knob(0.97, "GAE λ", low=0, high=1)
    reward_scale: jax.Array = components.knob(1.0, "rewards are multiplied by this", low=0,
                                              low_open=True)
    obs_clip: jax.Array = components.knob(
        5.0, "normalised observations are clipped to ±obs_clip (read if normalize_observations; "
        "inf: no clipping)", low=0, low_open=True, allow_inf=True)

    def step_coefs(self) -> trpo.StepCoefs:
        """The trust-region step's coefficients (δ, the KL budget, damping, backtracking factor, CG
        tolerance) as the objective's `StepCoefs`.
        """
        return trpo.StepCoefs(self.delta, self.kl_budget, self.damping, self.backtrack_factor,
                              self.cg_residual_tol)


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything that changes shapes or code paths."""

    env_name: str
    num_envs: int
    num_steps: int
    num_updates: int
    updates_per_chunk: int
    hidden: tuple[int, ...]
    activation: str
    cg_iters: int
    max_backtracks: int
    fvp_subsample: int
    vf_epochs: int
    vf_minibatches: int
    variant: trpo.Variant
    normalize_observations: bool = False

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps


@flax.struct.dataclass
class TrainState:
    params: Any
    vf_opt_state: optax.OptState  # Adam state of the critic only
    runner: rollout.RunnerState
    episodes: rollout.EpisodeStats
    key: jax.Array
    update_step: jax.Array
    ref_params: Any  # frozen reference policy, None unless kl_anchor = "reference"
    bad_updates: jax.Array  # consecutive updates skipped as non-finite (`kltrust.guards`)
    # Running observation statistics (`kltrust.envs.normalize`), None unless normalised.
    obs_stats: Any = None


def unread_knobs(variant: trpo.Variant, normalize_observations: bool = False) -> tuple[str, ...]:
    """The knobs of `HParams` a run of ``variant`` never reads (their range is not checked, only
    that they are finite numbers)."""
    return ((() if variant.uses_reference else ("kl_budget",))
            + (() if normalize_observations else ("obs_clip",)))


def split_params(params: Any) -> tuple[Any, Any]:
    """(policy params, critic params) of an ActorCritic parameter tree."""
    inner = dict(params["params"])
    critic = inner.pop(CRITIC)
    return inner, critic


def merge_params(policy: Any, critic: Any) -> Any:
    """One parameter tree holding the policy's and the critic's parameters, as the model expects."""
    return {"params": {**policy, CRITIC: critic}}


@dataclasses.dataclass(frozen=True)
class Trainer(common.ControlTrainer):
    """Pure TRPO training functions for one static configuration."""

    static: Static

    @staticmethod
    def _vf_optimizer(hp: HParams) -> optax.GradientTransformation:
        return optax.inject_hyperparams(optax.adam)(learning_rate=hp.vf_learning_rate)

    def init(self, seed: jax.Array, hp: HParams, params: Any) -> TrainState:
        """A fresh run for integer ``seed`` from ``initial_params`` (vmappable over seeds, hparams)."""
        _, env, env_params = self._model_and_env
        key = jax.random.PRNGKey(seed)
        key, _, key_env = jax.random.split(key, 3)
        params = sharding.param_constraint(self.mesh)(params)
        runner = rollout.init_runner(key_env, env, env_params, self.static.num_envs)
        return TrainState(
            params=params,
            vf_opt_state=self._vf_optimizer(hp).init(split_params(params)[1]),
            runner=sharding.batch_constraint(self.mesh)(runner),
            episodes=rollout.EpisodeStats.empty(),
            key=key,
            update_step=jnp.zeros((), jnp.int32),
            bad_updates=jnp.zeros((), jnp.int32),
            ref_params=params if self.static.variant.uses_reference else None,
            obs_stats=self.init_obs_stats(),
        )

    def update(self, state: TrainState, hp: HParams) -> tuple[TrainState, dict[str, jax.Array]]:
        """One TRPO iteration: collect a batch, take the trust-region step, fit the critic."""
        static, variant = self.static, self.static.variant
        _, env, env_params = self._model_and_env
        constrain = sharding.batch_constraint(self.mesh)
        key, key_rollout, key_vf = jax.random.split(state.key, 3)

        runner, episodes, traj, last_value = rollout.rollout(
            self.observed_policy(state.obs_stats, hp.obs_clip), state.params, state.runner,
            state.episodes, key_rollout, env, env_params, static.num_steps, constrain,
        )
        advantage, target = rollout.gae(traj, last_value, hp.gamma, hp.gae_lambda, hp.reward_scale)
        # As in PPO: optimise on the inputs the behaviour policy saw, then update the statistics.
        obs, obs_stats = self.absorb(state.obs_stats, traj.obs, hp.obs_clip)
        reference = self.apply_fn(state.ref_params, obs)[0] if variant.uses_reference else None
        flat = lambda x: x.reshape((static.batch_size,) + x.shape[2:])
        batch = constrain(jax.tree.map(flat, trpo.Batch(
            obs=obs, action=traj.action, log_prob=traj.log_prob, policy=traj.policy,
            advantage=advantage, reference=reference,
        )))
        target = constrain(flat(target))

        policy_params, critic_params = split_params(state.params)
        flat_policy, unravel = ravel_pytree(policy_params)
        policy_fn = trpo.flat_policy_fn(self.apply_fn, unravel, critic_params, merge_params)
        new_flat_policy, metrics = trpo.step(
            policy_fn, flat_policy, batch, hp.step_coefs(), variant=variant,
            cg_iters=static.cg_iters, max_backtracks=static.max_backtracks,
            fvp_subsample=static.fvp_subsample,
            # batch.policy is π at flat_policy (the rollout's own outputs), so the Gauss–Newton
            # product is the KL's Hessian up to rounding, at about 0.7× the cost (CG's ten
            # products were half of an update on CartPole: benchmarks/trpo_profile.py).
            gauss_newton=True,
        )
        new_policy_params = unravel(new_flat_policy)

        critic_params, vf_opt_state, value_loss = self._fit_critic(
            new_policy_params, critic_params, state.vf_opt_state, batch.obs, target, key_vf, hp
        )
        metrics["value_loss"] = value_loss
        new_policy = policy_fn(new_flat_policy, batch.obs)
        metrics["entropy"] = new_policy.entropy().mean()
        ratio = jnp.exp(new_policy.log_prob(batch.action) - batch.log_prob)  # as PPO reports it
        metrics["ratio_max"], metrics["ratio_min"] = ratio.max(), ratio.min()
        # A non-finite update is skipped (the line search already rejects a NaN surrogate; the
        # critic's Adam would not). CG's diagnostics may be NaN by design (0/0 on a zero gradient).
        (new_params, vf_opt_state, episodes, obs_stats), bad_updates, metrics = guards.skip_nonfinite(
            (state.params, state.vf_opt_state, state.episodes, state.obs_stats),
            (merge_params(new_policy_params, critic_params), vf_opt_state, episodes, obs_stats),
            metrics,
            state.bad_updates, checked=("grad_norm", "value_loss", "entropy", "kl_old"))
        metrics["episode_return"] = episodes.mean_return()  # last 100 episodes
        metrics["episodes_completed"] = jnp.sum(traj.done)
        # The layout the run started with (FSDP or replicated) is kept across updates and chunks.
        new_params, vf_opt_state = sharding.param_constraint(self.mesh)((new_params, vf_opt_state))
        new_state = TrainState(
            params=new_params, vf_opt_state=vf_opt_state,
            runner=runner, episodes=episodes, key=key, update_step=state.update_step + 1,
            ref_params=state.ref_params, bad_updates=bad_updates, obs_stats=obs_stats,
        )
        return new_state, metrics

    def _fit_critic(self, policy_params, critic_params, opt_state, obs, target, key, hp):
        """Adam on ½(V(s) − R)² over epochs × minibatches; returns the mean minibatch loss."""
        static = self.static
        optimizer = self._vf_optimizer(hp)
        minibatch_size = static.batch_size // static.vf_minibatches

        def value_loss(critic, mb_obs, mb_target):
            value = self.apply_fn(merge_params(policy_params, critic), mb_obs)[1]
            return 0.5 * jnp.mean(jnp.square(value - mb_target))

        def minibatch_step(carry, minibatch):
            critic, opt_state = carry
            loss, grads = jax.value_and_grad(value_loss)(critic, *minibatch)
            updates, opt_state = optimizer.update(grads, opt_state, critic)
            return (optax.apply_updates(critic, updates), opt_state), loss

        def epoch(carry, epoch_key):
            perm = shuffle.permutation(epoch_key, static.batch_size)
            shuffled = jax.tree.map(
                lambda x: x[perm].reshape((static.vf_minibatches, minibatch_size) + x.shape[1:]),
                (obs, target),
            )
            return jax.lax.scan(minibatch_step, carry, shuffled)

        (critic_params, opt_state), losses = jax.lax.scan(
            epoch, (critic_params, opt_state), jax.random.split(key, static.vf_epochs)
        )
        return critic_params, opt_state, losses.mean()


def make_trainer(static: Static, mesh: jax.sharding.Mesh | None = None) -> Trainer:
    """The `Trainer` of a (validated) ``static`` configuration on ``mesh`` (by default every device
    on the data axis); refuses a mesh that cannot split the environments evenly."""
    mesh = mesh or sharding.mesh_from_sizes({})
    common.check_fits_mesh(static.num_envs, mesh)
    return Trainer(static, mesh)


compile_run = common.compile_run
