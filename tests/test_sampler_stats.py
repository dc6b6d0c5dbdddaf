"""``rl.sampler_stats``: the rollout's policy statistics from the sampler's own logits (the KV-cache
decoding that drew each token) instead of a second, teacher-forced forward.

Tolerances. The sampler's logits and the teacher-forced ones are the same function of the same
tokens summed in another order (the cache attends over stored keys one position at a time); the
transformer tests bound that difference by 2e-5 per logit (`test_transformer`'s incremental-vs-full
check), and log-softmax, entropy and the exact KL are 1-Lipschitz-scale maps of logits of size ~1
here, so 2e-5 (absolute) for each, ×2 for the KL's two terms. The trainer comparison carries that
rounding through three Adam steps, as `test_chunked_trainer` does (same rtol 1e-4 / atol 1e-6 and
the same argument: measured differences are of order 1e-6 relative).
"""

from __future__ import annotations

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust import rollout
from kltrust.errors import ConfigError
from kltrust.models.transformer import TransformerConfig
from kltrust.train import pipeline
from kltrust.train import tokens as tok
from token_helpers import random_models, tiny_token_config

VOCAB, PROMPT, RESPONSE, BATCH = 11, 3, 7, 5
EOS, PAD = 2, 0


def _rollouts(critic: str):
    config = TransformerConfig(vocab_size=VOCAB, num_layers=2, width=16, num_heads=2,
                               max_len=PROMPT + RESPONSE, critic=critic)
    policy = tok.Policy(config)
    params, reference = policy.init(jax.random.PRNGKey(0)), policy.init(jax.random.PRNGKey(1))
    prompts = jax.random.randint(jax.random.PRNGKey(2), (BATCH, PROMPT), 3, VOCAB)

    def run(sampler_stats: bool, key):
        return rollout.token_rollout(
            policy.decode, policy.sequence, params, prompts, policy.empty_cache(BATCH), key,
            max_new_tokens=RESPONSE, eos_id=EOS, pad_id=PAD, temperature=0.7,
            ref_sequence_fn=policy.sequence, ref_params=reference, sampler_stats=sampler_stats)
    return run


def _dots(fn, *args) -> int:
    """dot_general equations in ``fn``'s jaxpr, inside scans and calls too."""
    def count(jaxpr) -> int:
        n = 0
        for eqn in jaxpr.eqns:
            n += eqn.primitive.name == "dot_general"
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                n += count(sub)
        return n
    return count(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.mark.parametrize("critic", ["none", "shared"])
def test_sampler_statistics_equal_the_teacher_forced_ones(critic):
    run = _rollouts(critic)
    key = jax.random.PRNGKey(5)
    forced, sampled = (jax.jit(functools.partial(run, flag))(key) for flag in (False, True))
    np.testing.assert_array_equal(sampled.response, forced.response)
    np.testing.assert_array_equal(sampled.mask, forced.mask)
    assert float(forced.mask.sum()) > BATCH  # more than one live token per row
    for name, atol in (("logits", 2e-5), ("log_prob", 2e-5), ("entropy", 2e-5), ("kl", 4e-5)):
        np.testing.assert_allclose(getattr(sampled, name), getattr(forced, name), atol=atol,
                                   err_msg=name)
    assert float(jnp.max(forced.kl)) > 1e-3  # two different networks: the KL compared is not 0
    if critic == "none":
        assert sampled.value is None and forced.value is None
        # The policy's teacher-forced forward is gone: one forward's matmuls fewer (the
        # reference's forward and the sampler's decoding remain).
        assert _dots(functools.partial(run, True), key) < _dots(functools.partial(run, False), key)
    else:  # the value head still gets its teacher-forced pass
        np.testing.assert_allclose(sampled.value, forced.value, atol=1e-6)


def test_sampler_stats_refuses_chunked_statistics():
    with pytest.raises(ValueError, match="sampler_stats needs stats_chunk = 0"):
        rollout.token_rollout(lambda *a: None, lambda *a: None, None, None, None, None,
                              max_new_tokens=1, eos_id=0, pad_id=0, stats_chunk=2,
                              sampler_stats=True)


def test_sampler_stats_with_chunked_statistics_is_one_clear_error():
    # (A non-bool value never gets here: ml_collections refuses to retype the field.)
    config = tiny_token_config("grpo")
    config.rl.sampler_stats, config.rl.stats_chunk = True, 3
    with pytest.raises(ConfigError, match="rl.sampler_stats") as error:
        pipeline.validate(config)
    assert "False with rl.stats_chunk = 3" in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["grpo"])  # the value-head case: the rollout test above
def test_the_trainer_with_sampler_stats_matches_teacher_forced(preset, tmp_path):
    runs = []
    for sampler_stats in (False, True):
        config = tiny_token_config(preset, num_updates=3, updates_per_eval=3, minibatches=1,
                                   epochs=2, sampler_stats=sampler_stats)
        config.rl.hparams.learning_rate = 3e-3
        pipeline.validate(config)
        spec = pipeline.spec_from_config(config)
        ref_params, rm_params = random_models(spec)
        runs.append(pipeline.run_policy(spec, tmp_path / str(sampler_stats), ref_params,
                                        rm_params, write=False))
    forced, sampled = runs
    assert set(sampled.train_metrics) == set(forced.train_metrics)
    for key in sorted(forced.train_metrics):
        np.testing.assert_allclose(sampled.train_metrics[key], forced.train_metrics[key],
                                   rtol=1e-4, atol=1e-6, err_msg=key)
