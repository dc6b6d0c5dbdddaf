"""Observation normalisation (`kltrust.envs.normalize`) and PPO's optional value-loss clipping.

References: NumPy float64 means and variances of the pooled observations; the run's raw
observations are recovered by replaying its rollout from the state before each update with the
update's own key (the rollout is a pure function of them).
"""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from configs import ppo as ppo_configs
from configs import trpo as trpo_configs

from kltrust import rollout
from kltrust import train as programs
from kltrust.distributions import DiagGaussian
from kltrust.envs.normalize import RunningStats
from kltrust.objectives import ppo as ppo_objective
from kltrust.train import control_config, loop
from kltrust.train import ppo as ppo_program

# float32 merges: each merge's δ = m_b − μ cancels with absolute error ≈ ε·|μ| (ε = 1.2e-7),
# which moves the pooled variance by ≈ 2ε·|μ|·σ, i.e. 2ε·|μ|/σ relative; with |μ|/σ ≤ 5 and 12
# merges that is ≤ 1.5e-5, plus a few ulps per batch moment. 1e-4 covers it with room.
RTOL = 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_running_stats_equal_numpy_pooled_moments(seed):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.2, 3.0, size=5)
    offset = rng.uniform(-5, 5, size=5) * scale  # |μ|/σ ≤ 5, the bound the tolerance assumes
    sizes = rng.integers(1, 300, size=12)  # uneven batches, one of a single row included
    sizes[3] = 1
    batches = [(offset + scale * rng.standard_normal((n, 5))).astype(np.float32) for n in sizes]
    stats = RunningStats.init((5,))
    update = jax.jit(RunningStats.update)
    seen = []
    for batch in batches:
        stats = update(stats, batch)
        seen.append(batch.astype(np.float64))
        pooled = np.concatenate(seen)
        assert float(stats.count) == len(pooled)
        np.testing.assert_allclose(stats.mean, pooled.mean(0), rtol=RTOL, atol=RTOL * scale.max())
        np.testing.assert_allclose(stats.var, pooled.var(0), rtol=RTOL)


def test_update_pools_every_leading_axis_and_normalize_clips():
    obs = np.random.default_rng(3).normal(2.0, 4.0, size=(7, 3, 2)).astype(np.float32)  # [T, N, d]
    stats = RunningStats.init((2,)).update(obs)
    flat = obs.reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(stats.mean, flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats.var, flat.var(0), rtol=1e-5)
    z = np.asarray(stats.normalize(obs, 1.5))
    expected = np.clip((obs - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-8), -1.5, 1.5)
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(z).max() == np.float32(1.5)  # some entries were clipped
    # Before any observation the map is the identity (clipped): the first rollout sees raw inputs.
    raw = jnp.array([[0.5, -7.0]])
    np.testing.assert_array_equal(RunningStats.init((2,)).normalize(raw, 5.0), [[0.5, -5.0]])


# ---------------------------------------------------------------- in the PPO program


def _config(algorithm="ppo", **overrides):
    if algorithm == "ppo":
        config = ppo_configs.get_config("cartpole_clip")
        config.num_epochs, config.num_minibatches = 2, 2
    else:
        config = trpo_configs.get_config("cartpole_trpo")
        config.vf_epochs, config.vf_minibatches = 1, 2
    config.num_envs, config.num_steps = 4, 32
    config.total_timesteps, config.updates_per_chunk = 4 * 32 * 4, 2
    config.normalize_observations = True
    config.hparams.obs_clip = 3.0
    config.update(overrides)
    return config


@pytest.mark.parametrize("algorithm", ["ppo", "trpo"])
def test_statistics_are_those_of_every_observation_the_rollouts_saw(algorithm):
    spec = control_config.spec_from_config(_config(algorithm))
    trainer = programs.program(algorithm).make_trainer(spec.static)
    hp = spec.hparams
    _, env, env_params = trainer._model_and_env
    params = jax.tree.map(lambda x: x[0], trainer.initial_params(np.array([0])))
    state = jax.jit(trainer.init)(jnp.int32(0), hp, params)
    update = jax.jit(trainer.update)

    @jax.jit
    def replay(state):  # the rollout `update` ran, from the same state and key (both programs
        # split the state's key into (next key, rollout key, the rest)
        _, key_rollout, _ = jax.random.split(state.key, 3)
        return rollout.rollout(trainer.observed_policy(state.obs_stats, hp.obs_clip), state.params,
                               state.runner, state.episodes, key_rollout, env, env_params,
                               spec.static.num_steps)[2].obs

    seen = []
    for _ in range(3):
        seen.append(np.asarray(replay(state), np.float64).reshape(-1, 4))
        state, _ = update(state, hp)
        pooled = np.concatenate(seen)
        assert float(state.obs_stats.count) == len(pooled)
        np.testing.assert_allclose(state.obs_stats.mean, pooled.mean(0), rtol=RTOL, atol=1e-6)
        np.testing.assert_allclose(state.obs_stats.var, pooled.var(0), rtol=RTOL)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("norm_run")
    spec = control_config.spec_from_config(_config(num_seeds=2))
    return spec, workdir, loop.train(spec, workdir, progress=False)


def test_statistics_are_per_run_and_checkpointed(uninterrupted):
    spec, workdir, result = uninterrupted
    stats = result.state.obs_stats
    assert stats.mean.shape == (2, 4)  # one set per seed (vmapped)
    assert not np.array_equal(stats.mean[0], stats.mean[1])
    np.testing.assert_array_equal(stats.count, [4 * 32 * 4] * 2)
    # Resume from the middle checkpoint: the run ends bit-identical, statistics included.
    copy = workdir.parent / "norm_resumed"
    shutil.copytree(workdir, copy)
    shutil.rmtree(copy / "checkpoints" / "4")
    resumed = loop.train(spec, copy, progress=False)
    assert resumed.resumed_from == 2
    jax.tree.map(np.testing.assert_array_equal, resumed.state, result.state)
    assert (copy / "metrics.jsonl").read_text() == (workdir / "metrics.jsonl").read_text()


def test_off_by_default_and_then_absent_from_the_state():
    config = _config()
    config.normalize_observations = False
    spec = control_config.spec_from_config(config)
    assert not spec.static.normalize_observations
    trainer = ppo_program.make_trainer(spec.static)
    params = jax.tree.map(lambda x: x[0], trainer.initial_params(np.array([0])))
    assert jax.eval_shape(trainer.init, jnp.int32(0), spec.hparams, params).obs_stats is None


# ---------------------------------------------------------------- value-loss clipping


def _value_loss(v_new, v_old, target, eps):
    """NumPy float64: ½·mean max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²)."""
    clipped = v_old + np.clip(v_new - v_old, -eps, eps)
    return 0.5 * np.mean(np.maximum((v_new - target) ** 2, (clipped - target) ** 2))


def test_clipped_value_loss_and_its_gradient_against_numpy():
    rng = np.random.default_rng(0)
    n = 64
    v_old = rng.normal(size=n)
    target = v_old + rng.normal(scale=0.5, size=n)
    v_new = v_old + rng.normal(scale=0.4, size=n)  # some moves inside ±ε, some outside
    eps = 0.2
    dist = DiagGaussian(jnp.zeros((n, 1)), jnp.zeros((n, 1)))
    batch = ppo_objective.Batch(
        obs=jnp.zeros((n, 1)), action=jnp.zeros((n, 1)), log_prob=dist.log_prob(jnp.zeros((n, 1))),
        policy=dist, advantage=jnp.asarray(rng.normal(size=n), jnp.float32),
        target=jnp.asarray(target, jnp.float32), reference=None,
        value=jnp.asarray(v_old, jnp.float32))
    coefs = ppo_objective.LossCoefs(jnp.float32(0.2), jnp.float32(0.0), jnp.float32(1.0),
                                    jnp.float32(0.0), jnp.float32(eps))

    def loss(values, clip_value):
        apply_fn = lambda params, obs: (dist, params)
        variant = ppo_objective.Variant(clip_value=clip_value)
        return ppo_objective.loss(values, batch, coefs, apply_fn=apply_fn, variant=variant)[1][
            "value_loss"]

    values = jnp.asarray(v_new, jnp.float32)
    moved = np.abs(v_new - v_old) > eps
    assert 5 < moved.sum() < n - 5
    np.testing.assert_allclose(loss(values, True), _value_loss(v_new, v_old, target, eps),
                               rtol=1e-5)
    np.testing.assert_allclose(loss(values, False), 0.5 * np.mean((v_new - target) ** 2),
                               rtol=1e-5)
    # Gradient: (V − R)/n where the unclipped error is the larger, 0 where the clipped one wins
    # with V outside the band (its gradient through the clip is 0), (V − R)/n otherwise.
    clipped = v_old + np.clip(v_new - v_old, -eps, eps)
    outer = (clipped - target) ** 2 > (v_new - target) ** 2
    expected = np.where(outer & moved, 0.0, (v_new - target) / n)
    grad = jax.grad(loss)(values, True)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)
