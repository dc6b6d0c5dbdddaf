"""The shared on-policy rollout over vectorised gymnax environments, and GAE.

Every on-policy objective (PPO, TRPO, …) collects data through `rollout` and computes advantages
with `gae`, so that methods differ only in their update.

Time limits. gymnax 1.x reports ``terminated`` (a true terminal state: the future is worth 0) apart
from ``truncated`` (the time limit: the future is worth V(s_final)), auto-resets, and hands back the
pre-reset observation in ``info["final_observation"]``. The rollout evaluates the critic there, and
`gae` bootstraps truncated episodes from it instead of treating a time limit as a terminal state,
which would bias value targets on Pendulum, where every episode ends by truncation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from kltrust.distributions import Distribution

PolicyFn = Callable[[Any, jax.Array], tuple[Distribution, jax.Array]]
"""(params, obs [N, ...]) -> (action distribution [N], value [N])."""


@flax.struct.dataclass
class RunnerState:
    """Per-environment state carried between rollouts; every leaf's leading axis is the environment."""

    env_state: Any
    obs: jax.Array
    episode_return: jax.Array  # return so far of each running episode
    episode_length: jax.Array


RECENT_EPISODES = 100


@flax.struct.dataclass
class EpisodeStats:
    """Returns of the last `RECENT_EPISODES` completed episodes (the PPO paper's score) as a ring buffer."""

    returns: jax.Array  # [RECENT_EPISODES]
    next_slot: jax.Array
    recorded: jax.Array  # total completed episodes so far

    @classmethod
    def empty(cls) -> EpisodeStats:
        return cls(jnp.zeros((RECENT_EPISODES,), jnp.float32), jnp.zeros((), jnp.int32),
                   jnp.zeros((), jnp.int32))

    def record(self, done: jax.Array, episode_return: jax.Array) -> EpisodeStats:
        """Appends the returns of the environments where ``done`` (in environment order)."""
        count = jnp.sum(done, dtype=jnp.int32)
        rank = jnp.cumsum(done, dtype=jnp.int32) - 1
        # If more episodes end at once than the buffer holds, only the last ones are kept, so the
        # scatter below never writes one slot twice.
        keep = done & (rank >= count - RECENT_EPISODES)
        slot = jnp.where(keep, (self.next_slot + rank) % RECENT_EPISODES, RECENT_EPISODES)
        return EpisodeStats(
            returns=self.returns.at[slot].set(episode_return, mode="drop"),
            next_slot=(self.next_slot + count) % RECENT_EPISODES,
            recorded=self.recorded + count,
        )

    def mean_return(self) -> jax.Array:
        """Mean of the last min(recorded, 100) returns; NaN before any episode has ended."""
        filled = jnp.minimum(self.recorded, RECENT_EPISODES)
        valid = jnp.arange(RECENT_EPISODES) < filled
        total = jnp.sum(jnp.where(valid, self.returns, 0.0))
        return jnp.where(filled > 0, total / jnp.maximum(filled, 1), jnp.nan)


@flax.struct.dataclass
class Transition:
    """One rollout step for every environment; `rollout` stacks these to [T, N, ...]."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    done: jax.Array  # terminated or truncated: the episode ended after this step
    value: jax.Array
    bootstrap_value: jax.Array  # V(final observation), used when the episode was truncated
    log_prob: jax.Array
    policy: Distribution  # the behaviour ("old") policy's distribution at obs


def init_runner(key: jax.Array, env: Any, env_params: Any, num_envs: int) -> RunnerState:
    """Resets ``num_envs`` environments."""
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(key, num_envs), env_params
    )
    zeros = jnp.zeros((num_envs,), jnp.float32)
    return RunnerState(env_state, obs, zeros, zeros.astype(jnp.int32))


def rollout(
    policy_fn: PolicyFn,
    params: Any,
    runner: RunnerState,
    stats: EpisodeStats,
    key: jax.Array,
    env: Any,
    env_params: Any,
    num_steps: int,
    constrain: Callable[[Any], Any] = lambda tree: tree,
) -> tuple[RunnerState, EpisodeStats, Transition, jax.Array]:
    """Runs ``num_steps`` steps of every environment under ``policy_fn(params, ·)`` with `lax.scan`.

    Args:
      constrain: applied to each step's per-environment arrays; the training program passes a
        sharding constraint that keeps the environment axis split over the mesh's data axis.

    Returns:
      (runner state, episode statistics, transitions [num_steps, num_envs, ...],
       V(obs after the last step) [num_envs]).
    """

    def step(carry: tuple[RunnerState, EpisodeStats], step_key: jax.Array):
        runner, stats = carry
        key_action, key_env = jax.random.split(step_key)
        dist, value = policy_fn(params, runner.obs)
        action = dist.sample(key_action)
        num_envs = runner.obs.shape[0]
        obs, env_state, reward, terminated, truncated, info = jax.vmap(
            env.step, in_axes=(0, 0, 0, None)
        )(jax.random.split(key_env, num_envs), runner.env_state, action, env_params)
        _, bootstrap_value = policy_fn(params, info["final_observation"])
        reward = reward.astype(jnp.float32)
        done = jnp.logical_or(terminated, truncated)
        episode_return = runner.episode_return + reward
        episode_length = runner.episode_length + 1
        transition = Transition(
            obs=runner.obs,
            action=action,
            reward=reward,
            terminated=terminated,
            done=done,
            value=value,
            bootstrap_value=bootstrap_value,
            log_prob=dist.log_prob(action),
            policy=dist,
        )
        runner = runner.replace(
            env_state=env_state,
            obs=obs,
            episode_return=jnp.where(done, 0.0, episode_return),
            episode_length=jnp.where(done, 0, episode_length),
        )
        stats = stats.record(done, episode_return)
        return (constrain(runner), stats), constrain(transition)

    (runner, stats), transitions = jax.lax.scan(
        step, (runner, stats), jax.random.split(key, num_steps)
    )
    _, last_value = policy_fn(params, runner.obs)
    return runner, stats, transitions, last_value


def gae(
    transitions: Transition, last_value: jax.Array, gamma: jax.Array, gae_lambda: jax.Array,
    reward_scale: jax.Array | float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation (Schulman et al. 2016) over a [T, N] rollout.

    The value after step t is 0 if the episode terminated, V(final observation) if it was truncated,
    and V(s_{t+1}) otherwise:
        δ_t = c·r_t + γ·V_next_t − V(s_t),   A_t = δ_t + γλ·(1 − done_t)·A_{t+1},
    with c = ``reward_scale``. Returns (advantages, value targets A + V), both [T, N].
    """
    following_values = jnp.concatenate([transitions.value[1:], last_value[None]], axis=0)
    next_values = jnp.where(
        transitions.done,
        jnp.where(transitions.terminated, 0.0, transitions.bootstrap_value),
        following_values,
    )
    deltas = reward_scale * transitions.reward + gamma * next_values - transitions.value
    continues = 1.0 - transitions.done.astype(jnp.float32)

    def backward(advantage_next, inputs):
        delta, cont = inputs
        advantage = delta + gamma * gae_lambda * cont * advantage_next
        return advantage, advantage

    _, advantages = jax.lax.scan(
        backward, jnp.zeros_like(last_value), (deltas, continues), reverse=True
    )
    return advantages, advantages + transitions.value
