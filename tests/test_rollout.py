"""Rollout, auto-reset, episode bookkeeping and GAE against plain NumPy references."""

import functools

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust import rollout
from kltrust.distributions import Categorical, DiagGaussian


def _np_gae(reward, value, bootstrap, terminated, done, last_value, gamma, lam):
    T, _ = reward.shape
    advantages = np.zeros_like(reward, dtype=np.float64)
    running = np.zeros_like(last_value, dtype=np.float64)
    for t in reversed(range(T)):
        following = last_value if t == T - 1 else value[t + 1]
        next_value = np.where(done[t], np.where(terminated[t], 0.0, bootstrap[t]), following)
        delta = reward[t] + gamma * next_value - value[t]
        running = delta + gamma * lam * (1.0 - done[t]) * running
        advantages[t] = running
    return advantages


def _transitions(reward, value, bootstrap, terminated, done):
    zeros = jnp.zeros_like(jnp.asarray(reward))
    return rollout.Transition(
        obs=zeros, action=zeros, reward=jnp.asarray(reward), terminated=jnp.asarray(terminated),
        done=jnp.asarray(done), value=jnp.asarray(value), bootstrap_value=jnp.asarray(bootstrap),
        log_prob=zeros, policy=Categorical(zeros[..., None]),
    )


def test_gae_matches_numpy_with_terminations_and_truncations():
    rng = np.random.default_rng(0)
    T, N = 9, 5
    reward, value, bootstrap = rng.normal(size=(3, T, N)).astype(np.float32)
    done = rng.random((T, N)) < 0.3
    terminated = done & (rng.random((T, N)) < 0.5)  # the other dones are truncations
    last_value = rng.normal(size=N).astype(np.float32)
    advantages, targets = rollout.gae(
        _transitions(reward, value, bootstrap, terminated, done), jnp.asarray(last_value),
        jnp.float32(0.97), jnp.float32(0.9),
    )
    expected = _np_gae(reward, value, bootstrap, terminated, done, last_value, 0.97, 0.9)
    np.testing.assert_allclose(advantages, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(targets, expected + value, rtol=1e-5, atol=1e-5)


def test_gae_closed_forms():
    rng = np.random.default_rng(1)
    T, N, gamma = 6, 2, 0.9
    reward, value = rng.normal(size=(2, T, N)).astype(np.float32)
    last_value = rng.normal(size=N).astype(np.float32)
    no_done = np.zeros((T, N), bool)
    data = _transitions(reward, value, value, no_done, no_done)
    # λ = 1, no episode end: A_t + V_t = Σ_k γ^k r_{t+k} + γ^{T−t} V_T (the Monte Carlo return).
    _, targets = rollout.gae(data, jnp.asarray(last_value), gamma, 1.0)
    mc = np.array([
        sum(gamma**k * reward[t + k] for k in range(T - t)) + gamma ** (T - t) * last_value
        for t in range(T)
    ])
    np.testing.assert_allclose(targets, mc, rtol=1e-5)
    # λ = 0: A_t is the one-step TD error; with reward scale c the rewards are scaled first.
    advantages, _ = rollout.gae(data, jnp.asarray(last_value), gamma, 0.0, reward_scale=0.5)
    following = np.concatenate([value[1:], last_value[None]])
    np.testing.assert_allclose(advantages, 0.5 * reward + gamma * following - value, rtol=1e-5,
                               atol=1e-6)


def test_episode_stats_ring_buffer_against_list():
    stats = rollout.EpisodeStats.empty()
    record = jax.jit(lambda s, d, r: s.record(d, r))
    history = []
    rng = np.random.default_rng(2)
    for step in range(40):
        n = 150 if step == 20 else 7  # one step ends more episodes than the buffer holds
        done = rng.random(n) < 0.6
        returns = rng.normal(size=n).astype(np.float32)
        history.extend(returns[done].tolist())
        stats = record(stats, jnp.asarray(done), jnp.asarray(returns))
        assert int(stats.recorded) == len(history)
        np.testing.assert_allclose(stats.mean_return(), np.mean(history[-100:]), rtol=1e-5)
    assert np.isnan(float(rollout.EpisodeStats.empty().mean_return()))


def _fixed_policy(discrete):
    """A parameter-free policy with a value function we can predict: V(obs) = sum(obs)."""

    def policy_fn(params, obs):
        del params
        value = obs.sum(-1)
        if discrete:
            return Categorical(jnp.zeros(obs.shape[:-1] + (2,))), value
        return DiagGaussian(jnp.zeros(obs.shape[:-1] + (1,)), jnp.zeros(obs.shape[:-1] + (1,))), value

    return policy_fn


@functools.lru_cache
def _run(env_name, num_envs, num_steps, seed=0):
    env, env_params = gymnax.make(env_name)
    discrete = env_name == "CartPole-v1"
    key = jax.random.PRNGKey(seed)
    runner = rollout.init_runner(key, env, env_params, num_envs)
    fn = jax.jit(
        lambda r, s, k: rollout.rollout(_fixed_policy(discrete), None, r, s, k, env, env_params,
                                        num_steps)
    )
    return fn(runner, rollout.EpisodeStats.empty(), jax.random.PRNGKey(seed + 1))


def test_cartpole_auto_reset_and_episode_returns():
    runner, stats, traj, _ = _run("CartPole-v1", 4, 300)
    obs, done = np.asarray(traj.obs), np.asarray(traj.done)
    assert done.sum() > 10  # a random policy ends CartPole episodes after ~20 steps
    # After every episode end the next observation is a fresh reset state (all |x| ≤ 0.05).
    t, n = np.nonzero(done[:-1])
    assert np.all(np.abs(obs[t + 1, n]) <= 0.05)
    # CartPole pays 1 per step: each completed episode's return is its length. Recount in NumPy.
    lengths = []
    for env in range(4):
        length = 0
        for step in range(300):
            length += 1
            if done[step, env]:
                lengths.append((step, env, length))
                length = 0
    ordered = [length for _, _, length in sorted(lengths)]  # time-major, env order within a step
    np.testing.assert_allclose(stats.mean_return(), np.mean(ordered[-100:]), rtol=1e-6)
    assert int(stats.recorded) == len(ordered)
    np.testing.assert_array_equal(np.asarray(traj.terminated), done)  # random play never truncates


def test_pendulum_truncation_bootstraps_from_final_observation():
    _, stats, traj, _ = _run("Pendulum-v1", 2, 401)
    done, terminated = np.asarray(traj.done), np.asarray(traj.terminated)
    assert not terminated.any()  # Pendulum only ever truncates
    steps, envs = np.nonzero(done)
    np.testing.assert_array_equal(steps, [199, 199, 399, 399])
    assert int(stats.recorded) == 4
    # bootstrap_value = V(final observation) = its sum: not the reset observation's.
    obs = np.asarray(traj.obs)
    bootstrap = np.asarray(traj.bootstrap_value)
    for t, n in zip(steps, envs):
        assert bootstrap[t, n] != pytest.approx(obs[t + 1, n].sum(), abs=1e-4)
    # Elsewhere the final observation is simply the next one.
    np.testing.assert_allclose(bootstrap[:199], obs[1:200].sum(-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(traj.log_prob, DiagGaussian(
        jnp.zeros((401, 2, 1)), jnp.zeros((401, 2, 1))).log_prob(traj.action), rtol=1e-6)
