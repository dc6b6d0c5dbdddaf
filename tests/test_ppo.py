"""PPO: the loss against a NumPy re-implementation, config validation, and the training program."""

import functools
import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import subprocs
from configs import ppo as ppo_configs
from kltrust import controllers, sharding
from kltrust import train as programs
from kltrust.distributions import Categorical
from kltrust.objectives import ppo
from kltrust.train import control_config, loop
from kltrust.train import ppo as ppo_train

# ---------------------------------------------------------------- the loss, by hand

OLD_LOGITS = np.array([[0.0, 0.0], [1.0, -1.0], [0.5, 0.2], [-0.3, 0.4]])
REF_LOGITS = np.array([[0.2, -0.2], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
ACTIONS = np.array([0, 1, 1, 0])
ADVANTAGES = np.array([1.0, -1.0, 0.5, -2.0])
TARGETS = np.array([0.5, -0.2, 1.0, 0.0])


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_loss(new_logits, value, clip, penalty, anchor, beta, eps=0.2, vf=0.5, ent=0.01):
    """A float64 NumPy statement of the PPO loss, written from the paper, not from the module."""
    lp_new, lp_old, lp_ref = map(_log_softmax, (new_logits, OLD_LOGITS, REF_LOGITS))
    idx = np.arange(len(ACTIONS))
    ratio = np.exp(lp_new[idx, ACTIONS] - lp_old[idx, ACTIONS])
    if clip:
        surrogate = np.minimum(ratio * ADVANTAGES, np.clip(ratio, 1 - eps, 1 + eps) * ADVANTAGES)
    else:
        surrogate = ratio * ADVANTAGES
    p_new = np.exp(lp_new)
    entropy = -(p_new * lp_new).sum(-1).mean()
    total = -surrogate.mean() + vf * 0.5 * np.mean((value - TARGETS) ** 2) - ent * entropy
    if penalty:
        if anchor == "old":
            kl = (np.exp(lp_old) * (lp_old - lp_new)).sum(-1).mean()
        else:
            kl = (p_new * (lp_new - lp_ref)).sum(-1).mean()
        total += beta * kl
    return total


def _batch():
    old = Categorical(jnp.asarray(OLD_LOGITS, jnp.float32))
    return ppo.Batch(
        obs=jnp.zeros((4, 1)), action=jnp.asarray(ACTIONS), log_prob=old.log_prob(jnp.asarray(ACTIONS)),
        policy=old, advantage=jnp.asarray(ADVANTAGES, jnp.float32),
        target=jnp.asarray(TARGETS, jnp.float32), reference=Categorical(jnp.asarray(REF_LOGITS, jnp.float32)),
    )


def _apply(params, obs):
    del obs
    return Categorical(params["logits"]), params["value"]


# New logits chosen so that ratios fall on both sides of the clip range with both advantage signs.
NEW_LOGITS = np.array([[0.6, -0.4], [1.2, -1.5], [0.45, 0.2], [-0.6, 0.9]])
VALUES = np.array([0.3, 0.1, 0.7, -0.4])


@pytest.mark.parametrize(
    "clip,penalty,anchor",
    [(True, "none", "old"), (False, "none", "old"), (False, "fixed", "old"),
     (True, "fixed", "reference"), (False, "adaptive", "reference")],
)
def test_loss_and_gradient_match_numpy(clip, penalty, anchor):
    variant = ppo.Variant(clip=clip, kl_penalty=penalty, kl_anchor=anchor, normalize_advantages=False)
    coefs = ppo.LossCoefs(jnp.float32(0.2), jnp.float32(0.7), jnp.float32(0.5), jnp.float32(0.01))
    params = {"logits": jnp.asarray(NEW_LOGITS, jnp.float32), "value": jnp.asarray(VALUES, jnp.float32)}
    loss_fn = lambda p: ppo.loss(p, _batch(), coefs, apply_fn=_apply, variant=variant)
    (value, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    expected = _np_loss(NEW_LOGITS, VALUES, clip, penalty != "none", anchor, beta=0.7)
    np.testing.assert_allclose(value, expected, rtol=1e-5)

    # Central finite differences of the NumPy loss (float64) against JAX's gradient.
    h = 1e-6
    fd = np.zeros_like(NEW_LOGITS)
    for i in np.ndindex(NEW_LOGITS.shape):
        up, down = NEW_LOGITS.copy(), NEW_LOGITS.copy()
        up[i] += h
        down[i] -= h
        fd[i] = (_np_loss(up, VALUES, clip, penalty != "none", anchor, 0.7)
                 - _np_loss(down, VALUES, clip, penalty != "none", anchor, 0.7)) / (2 * h)
    np.testing.assert_allclose(grads["logits"], fd, atol=1e-5)

    ratio = np.exp(_log_softmax(NEW_LOGITS)[np.arange(4), ACTIONS]
                   - _log_softmax(OLD_LOGITS)[np.arange(4), ACTIONS])
    np.testing.assert_allclose(metrics["clip_frac"], np.mean(np.abs(ratio - 1) > 0.2))
    assert 0 < float(metrics["clip_frac"]) < 1  # the example exercises both branches
    assert ("kl_penalty" in metrics) == (penalty != "none")
    assert ("kl_ref" in metrics) == (penalty != "none" and anchor == "reference")


def _penalty_metrics(anchor, estimator):
    """Loss metrics of a fixed-β (β = 1) penalty with a sample estimator, on the hand-made batch."""
    variant = ppo.Variant(clip=False, kl_penalty="fixed", kl_anchor=anchor, kl_estimator=estimator,
                          normalize_advantages=False)
    coefs = ppo.LossCoefs(jnp.float32(0.2), jnp.float32(1.0), jnp.float32(0.0), jnp.float32(0.0))
    params = {"logits": jnp.asarray(NEW_LOGITS, jnp.float32), "value": jnp.zeros(4)}
    return ppo.loss(params, _batch(), coefs, apply_fn=_apply, variant=variant)[1]


def test_sample_estimator_penalty_uses_kltrust_kl():
    metrics = _penalty_metrics("old", "k1")
    idx = np.arange(4)
    k1 = (_log_softmax(OLD_LOGITS)[idx, ACTIONS] - _log_softmax(NEW_LOGITS)[idx, ACTIONS]).mean()
    np.testing.assert_allclose(metrics["kl_penalty"], k1, rtol=1e-5)
    exact = (np.exp(_log_softmax(OLD_LOGITS)) * (_log_softmax(OLD_LOGITS) - _log_softmax(NEW_LOGITS))).sum(-1).mean()
    np.testing.assert_allclose(metrics["kl_old"], exact, rtol=1e-5)  # exact KL reported beside it


# ---------------------------------------------------------------- config validation


def _tiny(preset="cartpole_clip", **overrides):
    config = ppo_configs.get_config(preset)
    config.num_envs, config.num_steps, config.num_epochs, config.num_minibatches = 4, 32, 2, 2
    config.total_timesteps = 4 * 32 * 4
    config.updates_per_chunk = 2
    for key, value in overrides.items():
        target = config
        *path, leaf = key.split(".")
        for part in path:
            target = target[part]
        target[leaf] = value
    return config


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"hparams.beta": -1.0, "variant.kl_penalty": "fixed"}, r"config.hparams.beta = -1.0: must be in \[0.0, inf\)"),
        ({"hparams.clip_eps": 0.0}, r"config.hparams.clip_eps = 0.0: must be in \(0.0, inf\]"),
        ({"num_minibatches": 3}, r"config.num_minibatches = 3: must be a divisor of num_envs \* num_steps = 128"),
        ({"hparams.controller.adaptive.kl_target": 0.0, "variant.kl_penalty": "adaptive"},
         r"config.hparams.controller.adaptive.kl_target = 0.0: must be in \(0, inf\)"),
        ({"hparams.gamma": 1.5}, r"config.hparams.gamma = 1.5: must be in \[0.0, 1.0\]"),
        ({"variant.kl_estimator": "k5"}, r"config.variant.kl_estimator must be one of"),
        ({"env_name": "Nope-v0"}, r"config.env_name = 'Nope-v0': must be one of"),
        ({"hparams.controller.proportional.horizon": 0.0, "variant.kl_penalty": "proportional"},
         r"config.hparams.controller.proportional.horizon = 0.0: must be in \(0, inf\)"),
    ],
)
def test_bad_config_fails_fast_with_named_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        control_config.spec_from_config(_tiny(**overrides))


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match=r"Unknown PPO preset 'cartpole_foo'; known presets: cartpole_none"):
        ppo_configs.get_config("cartpole_foo")


def test_every_preset_validates():
    has_brax = importlib.util.find_spec("brax") is not None  # the MuJoCo tasks need the extra
    for preset in ppo_configs.PRESETS:
        config = ppo_configs.get_config(preset)
        if has_brax or not config.env_name.startswith("brax:"):
            control_config.validate(config)


# ---------------------------------------------------------------- the training program


@functools.lru_cache
def _train(preset="cartpole_clip", num_seeds=1, seed=0, **overrides):
    config = _tiny(preset, **dict(overrides))
    config.num_seeds, config.seed = num_seeds, seed
    return loop.train(control_config.spec_from_config(config), progress=False)


def test_same_seed_same_numbers():
    a, b = _train(), _train.__wrapped__()
    for name in a.metrics:
        np.testing.assert_array_equal(a.metrics[name], b.metrics[name], err_msg=name)
    jax.tree.map(np.testing.assert_array_equal, a.state.params, b.state.params)


def test_the_chunk_compiled_beside_the_init_equals_the_one_compiled_after_it():
    """`loop.init_and_compile` traces and compiles the chunk on a second thread from the state's
    shapes while the state is computed; the result must be the program compiled from the
    computed state: the same initial state and, run on it, the same outputs bit for bit."""
    spec = control_config.spec_from_config(_tiny())
    program = programs.program(spec.algorithm)
    init, run_chunk = program.compile_run(program.make_trainer(spec.static, sharding.make_mesh(1)))
    seeds = jnp.asarray(spec.seeds)
    hparams = spec.seed_hparams
    assert jax.device_count() == 1  # the overlapped path (the multi-device one is sequential)
    state, compiled = loop.init_and_compile(init, run_chunk, seeds, hparams)
    after = init(seeds, hparams)
    jax.tree.map(np.testing.assert_array_equal, state, after)
    sequential = run_chunk.lower(after, hparams).compile()
    for ours, reference in zip(jax.tree.leaves(compiled(state, hparams)),
                               jax.tree.leaves(sequential(after, hparams))):
        np.testing.assert_array_equal(ours, reference)


@pytest.mark.parametrize("preset, point, twin", [
    # The sweep configs/sweeps/ppo_table1_brax.py runs these rows as points of other programs.
    ("cartpole_none", dict(), ("cartpole_clip", {"hparams.clip_eps": float("inf")})),
    ("cartpole_kl_fixed", {"hparams.beta": 0.3},
     ("cartpole_kl_adaptive", {"hparams.beta": 0.3, "hparams.controller.adaptive.factor": 1.0})),
])
def test_table1_rows_as_points_of_another_program(preset, point, twin):
    # clip at ε = ∞ is the unclipped surrogate, and the adaptive rule with factor 1 is fixed β:
    # the same numbers. Tolerance: the two programs' losses differ only by terms that are exactly
    # equal or zero (min(x, x), x·1), but XLA may fuse them differently, so the updates may differ
    # in float32 rounding (~1e-7 relative), which 4 updates of Adam do not amplify past 1e-4.
    a = _train(preset, **point)
    b = _train(twin[0], **twin[1])
    for name in ("episode_return", "kl_old", "policy_loss", "value_loss", "entropy", "beta"):
        np.testing.assert_allclose(a.metrics[name], b.metrics[name], rtol=1e-4, atol=1e-7,
                                   err_msg=name)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6),
                 a.state.params, b.state.params)


def test_unclipped_gradients_take_every_update():
    # max_grad_norm = inf means no clipping; it once sat in the optimiser state as inf, where the
    # non-finite guard saw it and skipped every update. It must equal an enormous finite norm.
    unclipped = _train(**{"hparams.max_grad_norm": float("inf")})
    huge = _train(**{"hparams.max_grad_norm": 1e30})
    assert not unclipped.metrics["skipped_nonfinite"].any()
    jax.tree.map(np.testing.assert_array_equal, unclipped.state.params, huge.state.params)


def test_vmapped_seeds_equal_separate_runs():
    both = _train(num_seeds=2, seed=3)
    # Independence, exactly: seed 4 is the second run of the pair (3, 4) and the first of (4, 5),
    # in the same compiled program; runs never interact, so every update is the same bit for bit.
    shifted = _train(num_seeds=2, seed=4)
    for name in both.metrics:
        np.testing.assert_array_equal(shifted.metrics[name][0], both.metrics[name][1],
                                      err_msg=name)
    # Alone, a seed runs an unbatched program that may sum in another order. RL amplifies that
    # round-off chaotically over updates (a trajectory-level tolerance holds on one CPU and fails on
    # another), so only the first update, from the same initial state, is compared: its losses are
    # float32 sums over at most 4 × 32 = 128 samples, whose round-off is bounded by 128 ulps
    # (≈ 7.6e-6) relative in any order, hence rtol 1e-5.
    for i, seed in enumerate((3, 4)):
        alone = _train(num_seeds=1, seed=seed)
        for name in ("episode_return", "kl_old", "policy_loss", "value_loss"):
            np.testing.assert_allclose(both.metrics[name][i, :1], alone.metrics[name][0, :1],
                                       rtol=1e-5, atol=1e-7, err_msg=name)


def test_vmapped_hyperparameters_equal_separate_runs():
    config = _tiny("cartpole_kl_fixed")
    trainer = ppo_train.make_trainer(control_config.spec_from_config(config).static)
    init, run_chunk = ppo_train.compile_run(trainer)
    base = control_config.hparams(config)
    betas = jnp.array([0.1, 3.0])
    stacked = jax.tree.map(lambda x: jnp.stack([x, x]), base).replace(beta=betas)
    _, together = run_chunk(init(jnp.zeros(2, jnp.int32), stacked), stacked)
    for i in range(2):
        single = jax.tree.map(lambda x: x[None], base.replace(beta=betas[i]))
        _, alone = run_chunk(init(jnp.zeros(1, jnp.int32), single), single)
        np.testing.assert_allclose(together["kl_old"][i], alone["kl_old"][0], rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(together["beta"][i], betas[i])
    assert not np.allclose(together["kl_old"][0], together["kl_old"][1])  # β mattered


def test_ratio_extremes_are_one_without_a_step_and_escape_the_clip_range_with_large_steps():
    """ratio_max / ratio_min are π_new/π_old on the batch after the update: exactly 1 when the
    parameters cannot move (learning rate 0, past the config check), and outside 1 ± ε for a large
    learning rate even with clipping on (the clip stops gradients, not the ratio)."""
    config = _tiny("cartpole_clip")
    trainer = ppo_train.make_trainer(control_config.spec_from_config(config).static)
    init, run_chunk = ppo_train.compile_run(trainer)
    base = control_config.hparams(config)
    stacked = jax.tree.map(lambda x: jnp.stack([x, x]), base).replace(
        learning_rate=jnp.array([0.0, 0.05]))
    _, metrics = run_chunk(init(jnp.zeros(2, jnp.int32), stacked), stacked)
    np.testing.assert_allclose(metrics["ratio_max"][0], 1.0, atol=1e-5)
    np.testing.assert_allclose(metrics["ratio_min"][0], 1.0, atol=1e-5)
    np.testing.assert_allclose(metrics["kl_old"][0], 0.0, atol=1e-6)
    assert np.max(metrics["ratio_max"][1]) > 1.2 or np.min(metrics["ratio_min"][1]) < 0.8


@pytest.mark.parametrize("kind", controllers.kinds())
def test_every_registered_controller_sets_the_programs_beta(kind):
    """Any kind the registry holds runs in the program: the β each update applies is the
    controller's recursion (`controllers.get(kind)`, replayed here eagerly) fed the logged KL to
    the old policy and the batch size, starting from hparams.beta."""
    overrides = {"variant.kl_penalty": kind}
    config = _tiny("cartpole_clip", **overrides)
    result = _train("cartpole_clip", **overrides)
    controller = controllers.get(kind)
    hp = control_config.hparams(config)
    state = controller.init(hp.beta, hp.controller)
    batch = config.num_envs * config.num_steps
    betas, kls = result.metrics["beta"][0], result.metrics["kl_old"][0]
    assert np.all(np.isfinite(kls)) and len(betas) == 4
    for beta, kl_old in zip(betas, kls):
        # Eager and compiled float32 may round the last bit differently.
        np.testing.assert_allclose(beta, state.beta, rtol=1e-6)
        state = controller.update(state, kl_old, batch)


@pytest.mark.parametrize("preset", ["cartpole_kl_adaptive", "cartpole_kl_ref", "pendulum_clip_kl"])
def test_variants_run_and_report_their_kl(preset):
    result = _train(preset)
    for name, values in result.metrics.items():
        if name != "episode_return":
            assert np.all(np.isfinite(values)), name
    assert np.all(result.metrics["kl_old"] >= 0)
    if preset == "cartpole_kl_ref":
        assert np.all(result.metrics["kl_ref"] > 0)  # the policy left its reference
        assert result.state.ref_params is not None
    else:
        assert result.state.ref_params is None  # no reference kept where nothing uses it
    if "adaptive" in preset or preset.endswith("clip_kl"):
        beta = result.metrics["beta"][0]
        # The adaptive rule only ever halves or doubles β.
        ratios = beta[1:] / beta[:-1]
        assert set(np.round(ratios, 6)) <= {0.5, 1.0, 2.0}


def test_early_stopping_skips_minibatches():
    result = _train("cartpole_clip", early_stop=True, **{"hparams.target_kl": 1e-7})
    total = 2 * 2  # epochs × minibatches
    applied = result.metrics["minibatches_applied"][0]
    assert np.all(applied < total) and np.all(applied >= 0)
    free = _train("cartpole_clip")
    assert np.all(free.metrics["minibatches_applied"][0] == total)


@pytest.mark.slow
def test_short_cartpole_run_improves_return():
    config = ppo_configs.get_config("cartpole_clip")
    config.total_timesteps = 4 * 128 * 122  # 62k steps
    result = loop.train(control_config.spec_from_config(config), progress=False)
    returns = result.metrics["episode_return"][0]
    # A uniform random policy averages ~22 on CartPole; PPO should be far above that.
    assert returns[9] < 60 and returns[-1] > 150, (returns[9], returns[-1])


def test_cli_writes_outputs_and_refuses_foreign_workdir(tmp_path):
    root = pathlib.Path(__file__).resolve().parents[1]
    args = [sys.executable, "-m", "experiments.train", "--config=configs/ppo.py:cartpole_kl_adaptive",
            f"--workdir={tmp_path}", "--config.num_steps=32", "--config.total_timesteps=512",
            "--config.updates_per_chunk=2", "--config.num_minibatches=2"]
    result = subprocs.run(args, cwd=root, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [128, 256, 384, 512]
    for key in ("episode_return", "kl_old", "beta", "clip_frac", "policy_loss", "value_loss",
                "entropy", "kl_penalty"):
        assert key in records[0], key
    assert json.loads((tmp_path / "config.json").read_text())["variant"]["kl_penalty"] == "adaptive"
    assert (tmp_path / "learning_curve.png").stat().st_size > 0
    assert any((tmp_path / "tensorboard").iterdir())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4"]

    # The checkpoint holds the full final state: restore it and compare with the metrics' β.
    import orbax.checkpoint as ocp
    restored = ocp.CheckpointManager((tmp_path / "checkpoints").absolute()).restore(4)
    assert float(np.asarray(restored["update_step"]).reshape(-1)[0]) == 4
    assert "controller" in restored and "params" in restored and "opt_state" in restored

    # A different config in the same workdir is refused before anything is overwritten.
    before = (tmp_path / "metrics.jsonl").read_text()
    other = subprocs.run(args + ["--config.hparams.controller.adaptive.kl_target=0.02"], cwd=root,
                         timeout=300)
    assert other.returncode != 0 and "holds a run of a different config" in other.stderr
    assert (tmp_path / "metrics.jsonl").read_text() == before
    # The same config again resumes; the run is finished, so nothing is run or rewritten.
    again = subprocs.run(args, cwd=root, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed after update 4 of 4" in again.stdout
    assert (tmp_path / "metrics.jsonl").read_text() == before


def test_reference_anchor_with_k3_penalises_the_sampled_estimate():
    metrics = _penalty_metrics("reference", "k3")
    idx = np.arange(4)
    log_r = _log_softmax(REF_LOGITS)[idx, ACTIONS] - _log_softmax(NEW_LOGITS)[idx, ACTIONS]
    np.testing.assert_allclose(metrics["kl_penalty"], (np.expm1(log_r) - log_r).mean(), rtol=1e-5)
    lp_new, lp_ref = _log_softmax(NEW_LOGITS), _log_softmax(REF_LOGITS)
    exact = (np.exp(lp_new) * (lp_new - lp_ref)).sum(-1).mean()
    np.testing.assert_allclose(metrics["kl_ref"], exact, rtol=1e-5)  # exact value reported beside it
