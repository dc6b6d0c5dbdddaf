"""The TRPO training program: rollout → GAE → one trust-region policy step → value fit, in one jit.

Same structure as `kltrust.train.ppo` (and the same rollout, model, GAE and KL core): a config splits
into `Static` and `HParams` (float32 arrays: δ, damping, backtracking factor, … vmap over sweeps);
`Trainer.update` is one TRPO iteration as a pure function; `Trainer.run_chunk` scans it.

The policy step (`kltrust.objectives.trpo.step`) works on the policy's parameters flattened into one
vector (actor and, for Gaussian policies, log-std); the critic is fitted afterwards with Adam over
``vf_epochs`` × ``vf_minibatches`` on the GAE targets, as in Spinning Up and sb3-contrib.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.flatten_util import ravel_pytree

from kltrust import guards, rollout, sharding
from kltrust.objectives import trpo
from kltrust.train import common

CRITIC = "critic"  # the ActorCritic submodule the value fit owns; everything else is the policy


@flax.struct.dataclass
class HParams:
    """Every numeric hyperparameter of a TRPO run, as arrays (vmappable, never baked into the trace)."""

    delta: jax.Array
    kl_budget: jax.Array
    damping: jax.Array
    backtrack_factor: jax.Array
    cg_residual_tol: jax.Array
    vf_learning_rate: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    reward_scale: jax.Array

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> HParams:
        """From a (validated) config's ``hparams`` (TRPO has no β controller)."""
        return common.hparams_from_config(cls, config.hparams)

    def step_coefs(self) -> trpo.StepCoefs:
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

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Static:
        return cls(
            env_name=config.env_name,
            num_envs=config.num_envs,
            num_steps=config.num_steps,
            num_updates=common.num_updates(config),
            updates_per_chunk=config.updates_per_chunk,
            hidden=tuple(config.model.hidden),
            activation=config.model.activation,
            cg_iters=config.cg_iters,
            max_backtracks=config.max_backtracks,
            fvp_subsample=config.fvp_subsample,
            vf_epochs=config.vf_epochs,
            vf_minibatches=config.vf_minibatches,
            variant=trpo.Variant(**config.variant.to_dict()),
        )

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


def defaults() -> ml_collections.ConfigDict:
    """Every field a trpo config has, with its default. The presets (configs/trpo.py) start from
    these, and `validate` refuses a key that is not here or a value of another type.
    """
    return common.control_defaults(
        "trpo",
        num_steps=512,
        total_timesteps=499_712,
        updates_per_chunk=61,
        cg_iters=10,
        max_backtracks=10,
        fvp_subsample=1,  # Fisher-vector products on every k-th state of the batch
        vf_epochs=5,
        vf_minibatches=8,
        variant=dict(line_search=True, kl_anchor="old", normalize_advantages=True),
        hparams=dict(
            delta=0.01, kl_budget=0.5, damping=0.1, backtrack_factor=0.8, cg_residual_tol=1e-10,
            vf_learning_rate=1e-3, gamma=0.99, gae_lambda=0.97, reward_scale=1.0,
        ),
    )


def validate(config: ml_collections.ConfigDict, batch_shards: int | None = None) -> None:
    """Rejects a bad config with one message naming the key, its value and the allowed range.

    Runs on the host before anything is compiled; hyperparameters may be scalars or arrays (a sweep).
    """
    common.check_keys(config, defaults())
    common.validate_run_shape(config, batch_shards)
    for key in ("cg_iters", "vf_epochs", "vf_minibatches", "fvp_subsample"):
        common.check(isinstance(config[key], int) and config[key] >= 1, key, config[key],
                     "an integer >= 1")
    common.check(isinstance(config.max_backtracks, int) and config.max_backtracks >= 1,
                 "max_backtracks", config.max_backtracks, "an integer >= 1")
    batch = config.num_envs * config.num_steps
    common.check(batch % config.vf_minibatches == 0, "vf_minibatches", config.vf_minibatches,
                 f"a divisor of num_envs * num_steps = {batch}")
    common.check(config.fvp_subsample <= batch, "fvp_subsample", config.fvp_subsample,
                 f"<= num_envs * num_steps = {batch}")
    try:
        variant = trpo.Variant(**config.variant.to_dict())
    except (TypeError, ValueError) as error:
        raise common.variant_error(error) from None

    check_range = functools.partial(common.check_range, config.hparams)
    check_range("delta", 0.0, low_open=True)
    check_range("damping", 0.0)
    check_range("backtrack_factor", 0.0, 1.0, low_open=True, high_open=True)
    check_range("cg_residual_tol", 0.0)
    check_range("vf_learning_rate", 0.0, low_open=True)
    check_range("gamma", 0.0, 1.0)
    check_range("gae_lambda", 0.0, 1.0)
    check_range("reward_scale", 0.0, low_open=True)
    if variant.uses_reference:
        check_range("kl_budget", 0.0, low_open=True)
    common.check_finite(config.hparams)  # the unread ones too


def split_params(params: Any) -> tuple[Any, Any]:
    """(policy params, critic params) of an ActorCritic parameter tree."""
    inner = dict(params["params"])
    critic = inner.pop(CRITIC)
    return inner, critic


def merge_params(policy: Any, critic: Any) -> Any:
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
        )

    def update(self, state: TrainState, hp: HParams) -> tuple[TrainState, dict[str, jax.Array]]:
        """One TRPO iteration: collect a batch, take the trust-region step, fit the critic."""
        static, variant = self.static, self.static.variant
        _, env, env_params = self._model_and_env
        constrain = sharding.batch_constraint(self.mesh)
        key, key_rollout, key_vf = jax.random.split(state.key, 3)

        runner, episodes, traj, last_value = rollout.rollout(
            self.apply_fn, state.params, state.runner, state.episodes, key_rollout, env, env_params,
            static.num_steps, constrain,
        )
        advantage, target = rollout.gae(traj, last_value, hp.gamma, hp.gae_lambda, hp.reward_scale)
        reference = self.apply_fn(state.ref_params, traj.obs)[0] if variant.uses_reference else None
        flat = lambda x: x.reshape((static.batch_size,) + x.shape[2:])
        batch = constrain(jax.tree.map(flat, trpo.Batch(
            obs=traj.obs, action=traj.action, log_prob=traj.log_prob, policy=traj.policy,
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
        (new_params, vf_opt_state, episodes), bad_updates, metrics = guards.skip_nonfinite(
            (state.params, state.vf_opt_state, state.episodes),
            (merge_params(new_policy_params, critic_params), vf_opt_state, episodes), metrics,
            state.bad_updates, checked=("grad_norm", "value_loss", "entropy", "kl_old"))
        metrics["episode_return"] = episodes.mean_return()  # last 100 episodes
        metrics["episodes_completed"] = jnp.sum(traj.done)
        # The layout the run started with (FSDP or replicated) is kept across updates and chunks.
        new_params, vf_opt_state = sharding.param_constraint(self.mesh)((new_params, vf_opt_state))
        new_state = TrainState(
            params=new_params, vf_opt_state=vf_opt_state,
            runner=runner, episodes=episodes, key=key, update_step=state.update_step + 1,
            ref_params=state.ref_params, bad_updates=bad_updates,
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
            perm = jax.random.permutation(epoch_key, static.batch_size)
            shuffled = jax.tree.map(
                lambda x: x[perm].reshape((static.vf_minibatches, minibatch_size) + x.shape[1:]),
                (obs, target),
            )
            return jax.lax.scan(minibatch_step, carry, shuffled)

        (critic_params, opt_state), losses = jax.lax.scan(
            epoch, (critic_params, opt_state), jax.random.split(key, static.vf_epochs)
        )
        return critic_params, opt_state, losses.mean()


def make_trainer(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Trainer:
    """Validates ``config`` (before any compilation) and builds its `Trainer`."""
    mesh = mesh or sharding.mesh_from_config(config)
    validate(config, batch_shards=sharding.batch_shards(mesh))
    return Trainer(Static.from_config(config), mesh)


compile_run = common.compile_run
