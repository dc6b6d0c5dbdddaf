"""Every training program on 1 vs 8 devices: same numbers, and the arrays really are sharded.

Control PPO and TRPO (environments over ``data``), token PPO, DPO and TRPO (sequences over
``data``; weights over ``fsdp``), and a sweep's run axis over ``runs``.

Needs 8 devices: `make test` runs this file in its own process with
XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from configs import ppo as ppo_configs
from configs import trpo as trpo_configs
from kltrust import sharding
from kltrust import train as programs
from kltrust.train import control_config, loop, pipeline
from kltrust.train import ppo as ppo_train
from token_helpers import random_models, tiny_token_config

pytestmark = [
    pytest.mark.multidevice,
    pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (forced host) devices"),
]


def _config(family, preset):
    if family == "ppo":
        config = ppo_configs.get_config(preset)
        config.num_epochs, config.num_minibatches = 2, 2
    else:
        config = trpo_configs.get_config(preset)
        config.vf_epochs, config.vf_minibatches = 2, 2
    config.num_envs, config.num_steps = 8, 16
    config.total_timesteps, config.updates_per_chunk = 8 * 16 * 3, 3
    return config


def _run(num_devices, family, preset):
    config = _config(family, preset)
    mesh = sharding.make_mesh(num_devices)
    spec = control_config.spec_from_config(config, batch_shards=sharding.batch_shards(mesh))
    program = programs.program(spec.algorithm)
    trainer = program.make_trainer(spec.static, mesh)
    init, run_chunk = program.compile_run(trainer)
    hparams = jax.tree.map(lambda x: x[None], control_config.hparams(config))
    state = init(jnp.zeros(1, jnp.int32), hparams)
    return run_chunk(state, hparams)


@pytest.mark.parametrize(
    "family,preset",
    [("ppo", "cartpole_clip_kl"), ("ppo", "pendulum_kl_ref"), ("trpo", "cartpole_trpo"),
     ("trpo", "pendulum_trpo_ref")],
)
def test_one_and_eight_devices_agree(family, preset):
    state1, metrics1 = _run(1, family, preset)
    state8, metrics8 = _run(8, family, preset)
    # TRPO's step is CG's solution, accurate only to CG's (round-off level) residual, which shifts
    # with the reduction order; that leaves ~1e-3 relative differences where PPO agrees to 2e-4, and
    # the critic's Adam (lr 1e-3, steps of up to lr whatever the gradient's size) turns them into
    # absolute differences up to ~6e-5 in near-zero weights.
    rtol, atol = (2e-4, 1e-6) if family == "ppo" else (2e-3, 1e-4)
    for name in metrics1:
        if name.startswith("cg_"):
            # Where CG has converged its residual is round-off, which no two reduction orders share:
            # both must be small, not equal.
            assert np.all(metrics1["cg_relative_residual"] < 1e-2)
            assert np.all(metrics8["cg_relative_residual"] < 1e-2)
            continue
        np.testing.assert_allclose(metrics8[name], metrics1[name], rtol=rtol, atol=atol, err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol),
                 state8.params, state1.params)

    # The environments are split over the 8 devices (axis 1, after the run axis) ...
    obs_sharding = state8.runner.obs.sharding
    assert len(obs_sharding.device_set) == 8
    assert obs_sharding.shard_shape(state8.runner.obs.shape)[1] == 1
    assert obs_sharding.spec == PartitionSpec(None, sharding.DATA_AXIS)
    # ... and the parameters are replicated on every device.
    kernel = jax.tree.leaves(state8.params)[0]
    assert kernel.sharding.is_fully_replicated and len(kernel.sharding.device_set) == 8


def test_num_envs_must_divide_over_devices():
    config = ppo_configs.get_config("cartpole_clip")
    config.num_envs = 4
    with pytest.raises(ValueError, match=r"config.num_envs = 4: must be divisible by the mesh's batch shards, data × fsdp = 8"):
        # A spec validated for one batch shard, on a mesh of eight: the trainer refuses it.
        spec = control_config.spec_from_config(config, batch_shards=1)
        ppo_train.make_trainer(spec.static, sharding.make_mesh(8))


# ---------------------------------------------------------------- token RLHF on 8 devices


# Token TRPO's CG runs to convergence here (relative residual ~1e-4): an unconverged Krylov iterate
# (10 iterations leave 0.1–0.3 on this Fisher) amplifies reduction-order round-off into ~1% changes
# of the step, a property of truncated CG rather than of the sharding.
CG_ITERS = 40


def _token_config(preset, mesh):
    # Width 16 and 8 heads: every weight matrix has an axis divisible by 8 (FSDP splits it).
    config = tiny_token_config(preset, num_seeds=2, num_heads=8, num_updates=2,
                               updates_per_eval=2, minibatches=1)
    config.data.update(num_pairs=64, num_eval_pairs=16)
    if config.rl.method == "trpo":
        config.rl.update(batch_prompts=2, group_size=4, cg_iters=CG_ITERS)
    config.mesh.update(mesh)
    return config


@pytest.fixture(scope="module")
def token_stages(tmp_path_factory):
    """Untrained (random) reference and proxy: the 1-vs-8 comparison needs no trained models."""
    config = _token_config("ppo", {})
    pipeline.validate(config)
    return (tmp_path_factory.mktemp("tokens"), *random_models(config))


_TOKEN_RUNS = {}


def _token_run(token_stages, preset, mesh):
    """Memoised: the one-device reference of a preset is shared by its comparisons."""
    key = (preset, tuple(sorted(mesh.items())))
    if key not in _TOKEN_RUNS:
        root, ref_params, rm_params = token_stages
        config = _token_config(preset, mesh)
        pipeline.validate(config)
        _TOKEN_RUNS[key] = pipeline.run_policy(pipeline.spec_from_config(config),
                                               root, ref_params, rm_params, write=False)
    return _TOKEN_RUNS[key]


ONE_DEVICE = dict(runs=1, data=1, fsdp=1)


@pytest.mark.parametrize("preset,mesh", [
    ("ppo", dict(data=8)),  # token PPO: sequences split over 8 devices
    ("ppo", dict(data=1, fsdp=8)),  # FSDP: weights and Adam state split over 8 devices
    ("ppo", dict(runs=2, data=2, fsdp=2)),  # all three axes at once
    ("dpo", dict(data=8)),  # offline DPO: preference pairs split over 8 devices
    ("trpo", dict(data=8)),  # token TRPO: CG and line search on split sequences
])
def test_token_methods_agree_on_one_and_eight_devices(token_stages, preset, mesh):
    one = _token_run(token_stages, preset, ONE_DEVICE)
    many = _token_run(token_stages, preset, dict(ONE_DEVICE, **mesh))
    # Sampling is the same token for token (threefry random bits do not depend on the layout);
    # what differs is reduction order in the loss and its gradient.
    rtol, atol = 2e-4, 2e-5
    for name, values in one.train_metrics.items():
        if "cg_" in name:
            continue
        other = many.train_metrics[name]
        if name == "reward_accuracy":
            # The fraction of pairs with β·h > 0, an indicator per pair. In the first update
            # π = π_ref, so every h is 0 in exact arithmetic and its sign is round-off, which
            # another reduction order may flip (seen: 1 pair of 8 under load). The margins
            # themselves (reward_margin) are compared in every update; the indicator from the
            # second update on, where the margins have moved away from 0.
            values, other = values[:, 1:], other[:, 1:]
        np.testing.assert_allclose(other, values, rtol=rtol, atol=atol, err_msg=name)
    for a, b in zip(one.evals, many.evals):
        assert a["samples"] == b["samples"]
        for key in ("gold", "proxy", "kl"):
            np.testing.assert_allclose(b[key], a[key], rtol=rtol, atol=atol, err_msg=key)
    # Adam moves every weight by up to ~lr per step whatever its gradient's size, so a weight whose
    # gradient is round-off (≈ 0) can move either way by a different reduction order: parameters
    # agree to lr × Adam steps (1e-4 × 4) in absolute terms. The metrics above (loss, grad norm,
    # KL, rewards) are what pin the sharded gradient down.
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(one.params),
                            jax.tree.leaves(many.params)):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=max(atol, 4e-4),
                                   err_msg=jax.tree_util.keystr(path))

    leaves = jax.tree.leaves(many.params)
    assert all(len(leaf.sharding.device_set) == 8 for leaf in leaves)
    fsdp = mesh.get("fsdp", 1)
    split = [leaf for leaf in leaves if not leaf.sharding.is_fully_replicated]
    if fsdp > 1 or mesh.get("runs", 1) > 1:
        # Every weight matrix is split (runs and/or fsdp); only vectors may stay whole over fsdp.
        matrices = [leaf for leaf in leaves if leaf.ndim >= 3]  # [run, ...] of a ≥ 2-D weight
        assert matrices and all(not m.sharding.is_fully_replicated for m in matrices)
    else:
        assert not split  # data parallel: parameters replicated


def test_fsdp_splits_each_weight_along_its_largest_divisible_axis():
    mesh = sharding.make_mesh(8, fsdp=8)
    assert sharding.fsdp_spec((16, 64), 8) == PartitionSpec(None, sharding.FSDP_AXIS)
    assert sharding.fsdp_spec((64,), 8) == PartitionSpec()  # vectors stay whole
    assert sharding.fsdp_spec((3, 5), 8) == PartitionSpec()  # nothing divisible
    placed = sharding.place(np.ones((16, 64), np.float32),
                            sharding.param_shardings(mesh, np.ones((16, 64))))
    assert placed.sharding.shard_shape(placed.shape) == (16, 8)


def test_sweep_run_axis_is_spread_over_devices():
    """Three seeds on a runs=4 × data=2 mesh: padded to 4 runs, the copy dropped, same numbers."""
    config = _config("ppo", "cartpole_clip_kl")
    config.num_seeds = 3
    spec = control_config.spec_from_config(config)
    alone = loop.train(spec, mesh=sharding.make_mesh(1), progress=False)
    spread = loop.train(spec, mesh=sharding.make_mesh(8, runs=4), progress=False)
    assert spread.metrics["kl_old"].shape == alone.metrics["kl_old"].shape == (3, 3)
    for name, values in alone.metrics.items():
        np.testing.assert_allclose(spread.metrics[name], values, rtol=2e-4, atol=1e-6, err_msg=name)
    kernel = jax.tree.leaves(spread.state.params)[0]
    assert kernel.shape[0] == 3


@pytest.mark.parametrize("family,preset", [("ppo", "cartpole_clip"), ("trpo", "cartpole_trpo")])
def test_seeds_over_two_devices_run_several_chunks(family, preset):
    """runs=2 on 2 devices (data = 1), two chunks: the second chunk takes the first one's output.
    (It used to refuse it: init left the per-run optimiser counters replicated, the chunk returned
    them split over ``runs``, and the chunk compiled for the former rejected the latter.)"""
    config = _config(family, preset)
    config.num_seeds = 2
    config.total_timesteps = 8 * 16 * 6  # two chunks of 3 updates
    spec = control_config.spec_from_config(config)
    alone = loop.train(spec, mesh=sharding.make_mesh(1), progress=False)
    spread = loop.train(spec, mesh=sharding.make_mesh(2, runs=2), progress=False)
    assert spread.metrics["kl_old"].shape == alone.metrics["kl_old"].shape == (2, 6)
    # The tolerances of test_one_and_eight_devices_agree, for the same reasons: a different mesh is
    # a different XLA program whose float32 reductions round differently, and TRPO's step is only
    # as accurate as CG's round-off-level residual (which must be small on both, not equal).
    rtol, atol = (2e-4, 1e-6) if family == "ppo" else (2e-3, 1e-4)
    for name, values in alone.metrics.items():
        if name.startswith("cg_"):
            assert np.all(spread.metrics["cg_relative_residual"] < 1e-2)
            continue
        np.testing.assert_allclose(spread.metrics[name], values, rtol=rtol, atol=atol, err_msg=name)
    # init places every leaf's run axis on ``runs`` (sharding.split_runs), where the chunk returns
    # it, so the chunk compiled for init's state takes its own output: compiled once, not twice.
    mesh = sharding.make_mesh(2, runs=2)
    program = programs.program(spec.algorithm)
    init, run_chunk = program.compile_run(program.make_trainer(spec.static, mesh))
    hparams = jax.tree.map(lambda x: np.broadcast_to(x, (2,) + np.shape(x)), spec.hparams)
    state = init(jnp.arange(2, dtype=jnp.int32), hparams)
    compiled = run_chunk.lower(state, hparams).compile()
    assert loop._same_placement(compiled.input_shardings[0][0], compiled.output_shardings[0], state)


def test_token_batches_must_split_over_the_mesh():
    config = _token_config("ppo", dict(data=8))
    config.rl.update(batch_prompts=4)
    with pytest.raises(ValueError, match=r"config.rl.batch_prompts = 4: must be such that a "
                                         r"minibatch \(4 sequences or pairs\) splits evenly over "
                                         r"the mesh's data × fsdp = 8"):
        pipeline.validate(config)
    config = _token_config("ppo", dict(data=2, fsdp=4))
    config.sft.batch_size = 12
    with pytest.raises(ValueError, match=r"config.sft.batch_size = 12: must be a multiple of 8"):
        pipeline.validate(config)
