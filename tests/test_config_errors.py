"""Every bad config is refused before anything is compiled or written, with one message naming the
key, the value and what is allowed (control PPO and TRPO through `loop.train`, token RLHF through
`pipeline.run`)."""

from __future__ import annotations

import pytest

from configs import ppo as ppo_configs
from configs import rlhf as rlhf_configs
from configs import trpo as trpo_configs
from kltrust.train import loop, pipeline

CONTROL_ERRORS = [
    # unknown keys (a typo must not be silently ignored) and wrong types
    ("ppo", "hparams.learnign_rate", 1e-3,
     r"config.hparams.learnign_rate: unknown key; did you mean 'learning_rate'\?"),
    ("ppo", "num_envz", 8, r"config.num_envz: unknown key; did you mean 'num_envs'\?"),
    ("ppo", "num_envs", 4.5, r"config.num_envs = 4.5: must be of type int \(like its default 4\)"),
    ("ppo", "anneal_lr", "yes", r"config.anneal_lr = 'yes': must be of type bool"),
    # out-of-range values
    ("ppo_fixed", "hparams.beta", -0.1, r"config.hparams.beta = -0.1: must be in \[0.0, inf\)"),
    ("ppo", "hparams.clip_eps", 0.0, r"config.hparams.clip_eps = 0.0: must be in \(0.0, inf\)"),
    ("ppo_adaptive", "hparams.kl_target", 0.0,
     r"config.hparams.kl_target = 0.0: must be in \(0.0, inf\)"),
    ("ppo_proportional", "hparams.kl_horizon", -1.0,
     r"config.hparams.kl_horizon = -1.0: must be in \(0.0, inf\)"),
    ("ppo", "num_steps", 0, r"config.num_steps = 0: must be an integer >= 1"),
    ("ppo", "num_minibatches", 3, r"config.num_minibatches = 3: must be a divisor of "
                                  r"num_envs \* num_steps = 512"),
    ("ppo", "mesh.data", 2, r"config.mesh = .*: needs 2 devices, only 1 are available"),
    ("trpo", "hparams.delta", 0.0, r"config.hparams.delta = 0.0: must be in \(0.0, inf\)"),
    ("trpo", "hparams.dleta", 0.01, r"config.hparams.dleta: unknown key; did you mean 'delta'\?"),
]


def _control(family):
    presets = {"ppo": "cartpole_clip", "ppo_fixed": "cartpole_kl_fixed",
               "ppo_adaptive": "cartpole_kl_adaptive",
               "ppo_proportional": "cartpole_kl_proportional", "trpo": "cartpole_trpo"}
    module = trpo_configs if family == "trpo" else ppo_configs
    return module.get_config(presets[family])


def _set(config, path, value):
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node[part]
    with node.unlocked() if hasattr(node, "unlocked") else _nothing():
        if leaf in node:
            # Assigning another type to an existing field is refused by ml_collections itself;
            # a config file that builds its own ConfigDict can still hold one, so bypass it.
            node._fields[leaf] = value
        else:
            node[leaf] = value


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("family,path,value,message", CONTROL_ERRORS)
def test_control_config_errors(family, path, value, message, tmp_path):
    config = _control(family)
    _set(config, path, value)
    with pytest.raises(ValueError, match=message):
        loop.train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


TOKEN_ERRORS = [
    ("ppo", "rl.hparams.betta", 0.1, r"config.rl.hparams.betta: unknown key; did you mean 'beta'\?"),
    ("ppo", "rl.batch_prompts", 8.0, r"config.rl.batch_prompts = 8.0: must be of type int"),
    ("ppo", "rl.hparams.beta", -1.0, r"config.rl.hparams.beta = -1.0: must be in \[0.0, inf\)"),
    ("ppo", "rl.hparams.clip_eps", 0.0, r"config.rl.hparams.clip_eps = 0.0: must be in \(0.0"),
    ("ppo_adaptive", "rl.hparams.kl_target", 0.0, r"config.rl.hparams.kl_target = 0.0"),
    ("ppo_adaptive", "rl.hparams.kl_horizon", 0.0, r"config.rl.hparams.kl_horizon = 0.0"),
    ("trpo", "rl.hparams.delta", -0.01, r"config.rl.hparams.delta = -0.01: must be in \(0.0"),
    ("ppo", "rl.minibatches", 5, r"config.rl.minibatches = 5: must be a divisor of the batch "
                                 r"\(64 sequences or pairs\)"),
    ("ppo", "sft.batch_size", 0, r"config.sft.batch_size = 0: must be >= 1"),
    ("ppo", "mesh.fsdp", 4, r"config.mesh.data = -1: the other axes' product 4 must divide "
                            r"the number of devices \(1\)"),
]


@pytest.mark.parametrize("preset,path,value,message", TOKEN_ERRORS)
def test_token_config_errors(preset, path, value, message, tmp_path):
    config = rlhf_configs.get_config(preset)
    _set(config, path, value)
    with pytest.raises(ValueError, match=message):
        pipeline.run(config, tmp_path / "root")
    assert not (tmp_path / "root").exists()
