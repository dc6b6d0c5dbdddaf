"""A tiny token-RLHF config and untrained (random) reference and proxy models, shared by the tests
that exercise the policy stage's machinery (sharding, guards, resume) rather than its learning."""

from __future__ import annotations

import jax
import numpy as np

from configs import rlhf as rlhf_configs
from kltrust.train import reward_model
from kltrust.train import tokens as tok


def tiny_token_config(preset: str = "ppo", *, num_seeds: int = 1, num_heads: int = 2, **rl):
    """``preset`` on a 10-word language with one-layer, 16-wide models; ``rl`` overrides
    ``config.rl`` (default: 8 prompts per update, 2 minibatches)."""
    config = rlhf_configs.get_config(preset)
    config.num_seeds = num_seeds
    config.task.update(num_words=10, successors=3, num_good=2, prompt_len=3, response_len=6)
    config.data.update(num_prompts=64, num_eval_prompts=16)
    for part in (config.model, config.reward_model):
        part.update(num_layers=1, width=16, num_heads=num_heads)
    config.rl.update(**{"batch_prompts": 8, "minibatches": 2, **rl})
    return config


def random_models(config):
    """(reference params, proxy reward-model params), freshly initialised from fixed seeds."""
    ref_params = tok.Policy(tok.policy_config(config)).init(jax.random.PRNGKey(1))
    pairs = {"prompt": np.zeros((1, config.task.prompt_len), np.int32),
             "chosen": np.zeros((1, config.task.response_len), np.int32)}
    return ref_params, reward_model.init_params(tok.reward_model_config(config), pairs, 2)
