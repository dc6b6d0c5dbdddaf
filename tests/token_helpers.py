"""A tiny token-RLHF config and untrained (random) reference and proxy models, shared by the tests
that exercise the policy stage's machinery (sharding, guards, resume) rather than its learning."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from configs import rlhf as rlhf_configs
from kltrust.train import reward_model, token_config
from kltrust.train import tokens as tok
from kltrust.train.token_spec import TokenSpec


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


def random_models(run: TokenSpec | ml_collections.ConfigDict):
    """(reference params, proxy reward-model params) of a run (its `TokenSpec`, or a config, read
    here), freshly initialised from fixed seeds."""
    spec = run if isinstance(run, TokenSpec) else token_config.spec_from_config(run)
    ref_params = tok.Policy(spec.policy).init(jax.random.PRNGKey(1))
    pairs = {"prompt": np.zeros((1, spec.language.prompt_len), np.int32),
             "chosen": np.zeros((1, spec.language.response_len), np.int32)}
    return ref_params, reward_model.init_params(spec.reward_model, pairs, 2)
