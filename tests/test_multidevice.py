"""The PPO update on 1 vs 8 devices: same numbers, and the environment batch really is sharded.

Needs 8 devices: `make test` runs this file in its own process with
XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from configs import ppo as ppo_configs
from kltrust import sharding
from kltrust.train import ppo as ppo_train

pytestmark = [
    pytest.mark.multidevice,
    pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (forced host) devices"),
]


def _run(num_devices, preset):
    config = ppo_configs.get_config(preset)
    config.num_envs, config.num_steps, config.num_epochs, config.num_minibatches = 8, 16, 2, 2
    config.total_timesteps, config.updates_per_chunk = 8 * 16 * 3, 3
    trainer = ppo_train.make_trainer(config, sharding.make_mesh(num_devices))
    init, run_chunk = ppo_train.compile_run(trainer)
    hparams = jax.tree.map(lambda x: x[None], ppo_train.HParams.from_config(config.hparams))
    state = init(jnp.zeros(1, jnp.int32), hparams)
    return run_chunk(state, hparams)


@pytest.mark.parametrize("preset", ["cartpole_clip_kl", "pendulum_kl_ref"])
def test_one_and_eight_devices_agree(preset):
    state1, metrics1 = _run(1, preset)
    state8, metrics8 = _run(8, preset)
    for name in metrics1:
        np.testing.assert_allclose(metrics8[name], metrics1[name], rtol=2e-4, atol=1e-6, err_msg=name)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6),
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
    with pytest.raises(ValueError, match=r"config.num_envs = 4: must be divisible by the number of devices in the mesh \(8\)"):
        ppo_train.make_trainer(config, sharding.make_mesh(8))
