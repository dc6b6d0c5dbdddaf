"""The brax adapter (`kltrust.envs.brax_env`) against raw brax, and brax through the PPO program.

Independent references: the raw brax environment (``brax.envs.get_environment``, no wrappers),
stepped from the same states with the same actions; ``inverted_pendulum`` (the cheapest task) on
the default backend (mjx) with a 5-step episode limit. Compile time dominates, so every jitted
function is built once at module level and shared.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("brax", reason="brax is an optional extra: pip install 'kltrust[brax]'")

from configs import ppo as ppo_configs  # noqa: E402
from kltrust import checkpoint, envs, rollout  # noqa: E402
from kltrust.distributions import DiagGaussian  # noqa: E402
from kltrust.envs import brax_env  # noqa: E402
from kltrust.errors import ConfigError  # noqa: E402
from kltrust.train import common, control_config, loop  # noqa: E402

LIMIT = 5
STEPS = LIMIT + 2  # past the limit: the step after the reset is checked too
ENV, PARAMS = envs.make(f"brax:inverted_pendulum,episode_length={LIMIT}")
RAW = ENV.env
reset = jax.jit(ENV.reset)
raw_reset = jax.jit(RAW.reset)


@jax.jit
def adapter_run(state, actions, keys):
    """STEPS adapter steps from ``state``: every output of every step, stacked."""
    def one(state, inputs):
        action, key = inputs
        obs, state, reward, terminated, truncated, info = ENV.step(key, state, action, PARAMS)
        return state, (obs, state.time, reward, terminated, truncated,
                       info["final_observation"])
    return jax.lax.scan(one, state, (actions, keys))[1]


@jax.jit
def raw_run(brax_state, actions):
    """STEPS raw brax steps (no reset, no time limit): obs, reward, done per step."""
    def one(state, action):
        state = RAW.step(state, action)
        return state, (state.obs, state.reward, state.done)
    return jax.lax.scan(one, brax_state, actions)[1]


def _both(action, seed=0):
    """(adapter outputs, raw outputs, step keys) for a constant ``action`` from one reset."""
    key, *step_keys = jax.random.split(jax.random.PRNGKey(seed), STEPS + 1)
    _, state = reset(key, PARAMS)
    actions = jnp.full((STEPS, 1), action, jnp.float32)
    step_keys = jnp.stack(step_keys)
    return (jax.tree.map(np.asarray, adapter_run(state, actions, step_keys)),
            jax.tree.map(np.asarray, raw_run(state.brax_state, actions)), step_keys)


def test_spaces_and_resets_from_their_own_keys():
    assert ENV.action_space(PARAMS).shape == (1,)
    assert float(ENV.action_space(PARAMS).low) == -1 and float(ENV.action_space(PARAMS).high) == 1
    assert ENV.observation_space(PARAMS).shape == (4,) and PARAMS.max_steps_in_episode == LIMIT
    obs_a, state_a = reset(jax.random.PRNGKey(1), PARAMS)
    obs_b, _ = reset(jax.random.PRNGKey(2), PARAMS)
    assert obs_a.dtype == jnp.float32 and int(state_a.time) == 0
    assert not np.array_equal(obs_a, obs_b)
    # The adapter's reset is brax's reset from the same key.
    np.testing.assert_array_equal(obs_a, raw_reset(jax.random.PRNGKey(1)).obs)


def test_step_equals_raw_brax_before_any_reset():
    (obs, time, reward, terminated, truncated, final), (raw_obs, raw_reward, raw_done), _ = (
        _both(0.0))
    assert not raw_done[:LIMIT].any()  # zero force: the pole stays up for LIMIT steps
    np.testing.assert_array_equal(obs[:LIMIT - 1], raw_obs[:LIMIT - 1])
    np.testing.assert_array_equal(final[:LIMIT], raw_obs[:LIMIT])
    np.testing.assert_array_equal(reward[:LIMIT], raw_reward[:LIMIT])
    assert reward.dtype == np.float32 and obs.dtype == np.float32
    np.testing.assert_array_equal(time[:LIMIT - 1], np.arange(1, LIMIT))


def test_truncation_at_the_limit_reports_the_final_observation_then_resets():
    (obs, time, _, terminated, truncated, final), (raw_obs, _, raw_done), keys = _both(0.0)
    assert not raw_done[:LIMIT].any()
    np.testing.assert_array_equal(truncated, np.arange(STEPS) == LIMIT - 1)
    assert not terminated.any()
    # The pre-reset observation after LIMIT steps, as raw brax reaches it ...
    np.testing.assert_array_equal(final[LIMIT - 1], raw_obs[LIMIT - 1])
    # ... while the returned observation is a fresh reset from that step's key.
    np.testing.assert_array_equal(obs[LIMIT - 1], raw_reset(keys[LIMIT - 1]).obs)
    assert not np.array_equal(obs[LIMIT - 1], raw_obs[LIMIT - 1])
    assert time[LIMIT - 1] == 0 and time[LIMIT] == 1


def test_a_fall_is_terminal_with_the_terminal_observation():
    (obs, time, _, terminated, truncated, final), (raw_obs, _, raw_done), keys = _both(1.0)
    assert raw_done.any()
    fall = int(np.argmax(raw_done))  # the first step where brax says done
    assert fall < LIMIT - 1  # falls before the time limit: a termination, not a truncation
    # (After the reset the constant push topples the new episode too: only up to the fall.)
    np.testing.assert_array_equal(terminated[:fall + 1], np.arange(fall + 1) == fall)
    assert not truncated.any()
    np.testing.assert_array_equal(final[fall], raw_obs[fall])
    np.testing.assert_array_equal(obs[fall], raw_reset(keys[fall]).obs)
    assert time[fall] == 0


def test_state_checkpoints_and_restores_bit_identically(tmp_path):
    # brax's MJX state holds zero-size arrays (orbax refuses those): the adapter's state keeps
    # them as static layout, and the restored state steps exactly like the original.
    key, *step_keys = jax.random.split(jax.random.PRNGKey(4), STEPS + 1)
    _, state = reset(key, PARAMS)
    assert any(leaf.size == 0 for leaf in jax.tree.leaves(state.brax_state))
    store = checkpoint.Checkpoints(tmp_path, keep=1)
    store.save(0, state)
    store.close()
    step, restored = checkpoint.Checkpoints(tmp_path, keep=1).restore_latest(state)
    assert step == 0
    jax.tree.map(np.testing.assert_array_equal, restored, state)
    actions, step_keys = jnp.zeros((STEPS, 1)), jnp.stack(step_keys)
    jax.tree.map(np.testing.assert_array_equal, adapter_run(restored, actions, step_keys),
                 adapter_run(state, actions, step_keys))


def test_actions_are_clipped_to_the_box():
    (obs_big, *_), _, _ = _both(5.0)
    (obs_one, *_), _, _ = _both(1.0)
    np.testing.assert_array_equal(obs_big, obs_one)


def _policy(mean, obs):
    """A near-deterministic push ``mean`` and a value V(obs) = 1 + 10·obs[0] (cart position)."""
    n = obs.shape[0]
    dist = DiagGaussian(jnp.full((n, 1), mean), jnp.full((n, 1), -20.0))
    return dist, 1.0 + 10.0 * obs[:, 0]


@jax.jit
def _rollout(mean, key):
    runner = rollout.init_runner(key, ENV, PARAMS, 2)
    return rollout.rollout(_policy, mean, runner, rollout.EpisodeStats.empty(), key, ENV, PARAMS,
                           STEPS)


def test_rollout_bootstraps_truncations_from_the_final_observation_and_not_terminations():
    for mean, ends in ((0.0, "truncated"), (1.0, "terminated")):
        runner, stats, traj, _ = _rollout(jnp.float32(mean), jax.random.PRNGKey(3))
        traj = jax.tree.map(np.asarray, traj)
        assert traj.done.any(), mean
        if ends == "truncated":  # every episode reaches the limit: all done at step LIMIT
            np.testing.assert_array_equal(traj.done[:, 0], np.arange(STEPS) == LIMIT - 1)
            assert not traj.terminated.any()
        else:
            np.testing.assert_array_equal(traj.terminated, traj.done)
        # bootstrap_value is V of the pre-reset observation: not V of the next transition's obs.
        done_at = np.argwhere(traj.done)
        t, i = done_at[0]
        assert not np.isclose(traj.bootstrap_value[t, i], traj.value[t + 1, i])
        advantage, _ = rollout.gae(jax.tree.map(jnp.asarray, traj), jnp.zeros(2), 0.9, 0.0)
        expected_next = 0.0 if ends == "terminated" else traj.bootstrap_value[t, i]
        np.testing.assert_allclose(advantage[t, i], traj.reward[t, i] + 0.9 * expected_next
                                   - traj.value[t, i], rtol=1e-6)


IMPROVE_ENV = "brax:inverted_pendulum,episode_length=100"


@pytest.mark.slow  # compiling the PPO program around mjx: ~90 s on 2 loaded cores
def test_ppo_preset_improves_on_random_on_brax_inverted_pendulum():
    # The paper's preset (observations normalised, Table 3's losses), shrunk: 8 envs × 64 steps,
    # 16 updates; episodes cut at 100 steps so that the random baseline is cheap to measure.
    config = ppo_configs.get_config("inverted_pendulum_clip")
    config.env_name = IMPROVE_ENV
    config.num_envs, config.num_steps, config.num_epochs, config.num_minibatches = 8, 64, 4, 8
    config.total_timesteps, config.updates_per_chunk = 8 * 64 * 16, 16
    config.hparams.learning_rate = 1e-3
    result = loop.train(control_config.spec_from_config(config), progress=False)
    for name, values in result.metrics.items():
        assert np.all(np.isfinite(values[:, 1:])), name  # (no episode has ended before update 1)
    assert float(result.state.obs_stats.count[0]) == 8 * 64 * 16
    random = common.random_policy_score(IMPROVE_ENV, num_episodes=100)
    final = float(result.metrics["episode_return"][0, -1])  # mean of the last 100 episodes
    print(f"random {random:.2f}, PPO after 8192 steps {final:.2f}; "
          f"compile {result.compile_seconds:.1f} s, run {result.run_seconds:.1f} s")
    # Measured (seed 0, 2026-12-01): random 5.79, PPO 50.2 (of at most 100); 3× random leaves a
    # wide margin on both sides.
    assert final > 3 * random


def test_swimmer_steps_under_jax_0_10_through_the_shim():
    # brax 0.14.2's fluid model calls jp.clip(a_min=...), which jax 0.10 removed; the shim in
    # `brax_env.import_brax` maps it to min=, so the generalized-backend swimmer steps.
    env, params = envs.make("brax:swimmer,backend=generalized,episode_length=3")
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    step = jax.jit(lambda s, a, k: env.step(k, s, a, params))
    for t in range(4):
        obs, state, reward, terminated, truncated, info = step(
            state, jnp.full((env.env.action_size,), 0.5), jax.random.PRNGKey(t))
        assert np.all(np.isfinite(obs)) and np.isfinite(reward)
        assert bool(truncated) == (t == 2) and not bool(terminated)
    np.testing.assert_array_equal(brax_env._ClipCompat.clip(jnp.array([-2.0, 0.5, 3.0]), a_min=0.0,
                                                            a_max=1.0), [0.0, 0.5, 1.0])


def test_random_policy_score_through_the_registry():
    # Every step's reward is 1 and an episode lasts at most LIMIT steps (it may fall sooner).
    score = common.random_policy_score(f"brax:inverted_pendulum,episode_length={LIMIT}",
                                       num_episodes=4)
    assert 1 <= score <= LIMIT


@pytest.mark.parametrize("name, match", [
    ("brax:inverted_pendulm", r"config.env_name = 'brax:inverted_pendulm': must be .*"
                              r"did you mean 'inverted_pendulum'\?"),
    ("brax:inverted_pendulum,backend=warp", r"config.env_name = .*backend one of"),
    ("brax:inverted_pendulum,episode_length=0", r"episode_length an integer >= 1"),
    ("brax:swimmer", r"config.env_name = 'brax:swimmer': brax refuses it"),
    ("Hopper-v4", r"config.env_name = 'Hopper-v4': must be one of \(.*\) or 'brax:NAME"),
])
def test_a_bad_env_name_is_one_config_error(name, match):
    config = ppo_configs.get_config("pendulum_clip")
    config.env_name = name
    with pytest.raises(ConfigError, match=match):
        control_config.validate(config)


def test_without_brax_the_error_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "brax", None)  # `import brax` now fails
    with pytest.raises(ImportError, match=r"kltrust\[brax\]"):
        brax_env.import_brax()
    with pytest.raises(ConfigError, match=r"config.env_name = 'brax:hopper': .*kltrust\[brax\]"):
        envs.check_name("brax:hopper")


def test_kltrust_does_not_import_brax_for_gymnax():
    code = ("import sys; from kltrust.train import control_config, common; "
            "common.model_and_env('CartPole-v1', (8,), 'tanh'); "
            "assert 'brax' not in sys.modules, 'brax imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_table1_sweep_runs_each_task_as_three_programs():
    # configs/sweeps/ppo_table1_brax.py: eleven rows + TRPO per task as three vmapped programs
    # (clip family, KL family, TRPO); only the rows' arrays differ inside a program.
    from configs.sweeps import ppo_table1_brax

    from kltrust import sweep as sweeps

    config = ppo_table1_brax.get_config("table")
    config.tasks = ("inverted_pendulum",)
    runs = sweeps.expand(config)
    groups = sweeps.group(runs)
    assert len(runs) == 12 * 3 and [len(g) for g in groups] == [12, 21, 3]
    clip, kl, trpo = groups
    assert {r.label for r in clip} == {"no clipping or penalty", "clipping clip_eps=0.1",
                                       "clipping clip_eps=0.2", "clipping clip_eps=0.3"}
    none = [r for r in clip if r.label == "no clipping or penalty"][0]
    assert none.config.hparams.clip_eps == float("inf")
    fixed = [r for r in kl if r.label.startswith("fixed KL")]
    assert len(fixed) == 12 and all(r.config.hparams.controller.adaptive.factor == 1.0
                                    for r in fixed)
    assert all(r.config.normalize_observations and r.config.env_name == "brax:inverted_pendulum"
               and r.config.total_timesteps == 999_424 for r in runs)
    assert {r.config.algorithm for r in trpo} == {"trpo"}
    # The CPU arm's hopper is brax's positional backend; the full arm's is MuJoCo's (mjx).
    env_of = lambda size: {r.task: r.config.env_name for r in  # noqa: E731
                           sweeps.expand(ppo_table1_brax.get_config(size)) if "hopper" in r.task}
    assert set(env_of("cpu").values()) == {"brax:hopper,backend=positional"}
    assert set(env_of("full").values()) == {"brax:hopper"}
