"""The transformer's KV cache and the token rollout, against full recomputation and NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust import rollout
from kltrust.models.transformer import KVCache, SequenceScorer, TokenActorCritic, TransformerConfig
from kltrust.train import tokens as tok

VOCAB, PROMPT, RESPONSE, BATCH = 11, 3, 7, 5
EOS, PAD = 2, 0
CONFIG = TransformerConfig(vocab_size=VOCAB, num_layers=2, width=16, num_heads=2,
                           max_len=PROMPT + RESPONSE, critic="shared")


@pytest.fixture(scope="module")
def policy_and_params():
    policy = tok.Policy(CONFIG)
    params = policy.init(jax.random.PRNGKey(0))
    # A second, different network as the reference, so the KL is not trivially 0.
    reference = policy.init(jax.random.PRNGKey(1))
    return policy, params, reference


@pytest.fixture(scope="module")
def prompts():
    return jax.random.randint(jax.random.PRNGKey(2), (BATCH, PROMPT), 3, VOCAB)


@pytest.fixture(scope="module")
def sampled(policy_and_params, prompts):
    policy, params, reference = policy_and_params
    fn = jax.jit(lambda key, temperature: rollout.token_rollout(
        policy.decode, policy.sequence, params, prompts, policy.empty_cache(BATCH), key,
        max_new_tokens=RESPONSE, eos_id=EOS, pad_id=PAD, temperature=temperature,
        ref_sequence_fn=policy.sequence, ref_params=reference))
    return fn


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="model.width = 10: must be divisible by model.num_heads"):
        TransformerConfig(vocab_size=5, width=10, num_heads=4)
    with pytest.raises(ValueError, match="model.critic = 'both'"):
        TransformerConfig(vocab_size=5, critic="both")
    with pytest.raises(ValueError, match="model.num_layers = 0"):
        TransformerConfig(vocab_size=5, num_layers=0)


@pytest.mark.parametrize("split", [1, 4, 9])
def test_incremental_decoding_equals_full_forward(policy_and_params, split):
    policy, params, _ = policy_and_params
    tokens = jax.random.randint(jax.random.PRNGKey(3), (BATCH, CONFIG.max_len), 0, VOCAB)
    full, _ = policy.sequence(params, tokens)
    logits, cache = policy.decode(params, tokens[:, :split], policy.empty_cache(BATCH))
    pieces = [logits]
    for t in range(split, CONFIG.max_len):
        logits, cache = policy.decode(params, tokens[:, t:t + 1], cache)
        pieces.append(logits)
    assert int(cache.length) == CONFIG.max_len
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=2e-5)


def test_separate_critic_does_not_touch_policy_logits():
    tokens = jax.random.randint(jax.random.PRNGKey(4), (2, 6), 0, VOCAB)
    config = TransformerConfig(vocab_size=VOCAB, width=16, num_heads=2, max_len=6,
                               critic="separate")
    model = TokenActorCritic(config)
    params = model.init(jax.random.PRNGKey(0), tokens)
    assert {"trunk", "critic_trunk", "lm_head", "value_head"} <= set(params["params"])

    def logits_sum(p):
        return model.apply(p, tokens)[0].sum()

    grads = jax.grad(logits_sum)(params)
    assert all(float(jnp.abs(g).max()) == 0.0
               for g in jax.tree.leaves(grads["params"]["critic_trunk"]))
    none = TokenActorCritic(TransformerConfig(vocab_size=VOCAB, width=16, num_heads=2, max_len=6,
                                              critic="none"))
    assert none.apply(none.init(jax.random.PRNGKey(0), tokens), tokens)[1] is None


def test_sampled_log_probs_equal_teacher_forced_ones(sampled):
    ro = sampled(jax.random.PRNGKey(5), 1.0)
    np.testing.assert_allclose(ro.sampled_log_prob, ro.log_prob, atol=2e-5)
    # ...and they are the log-probs a training forward computes from scratch.
    assert ro.value.shape == (BATCH, RESPONSE)


def test_rollout_log_probs_match_numpy_forward(policy_and_params, prompts, sampled):
    policy, params, reference = policy_and_params
    ro = sampled(jax.random.PRNGKey(6), 1.0)
    tokens = np.concatenate([np.asarray(prompts), np.asarray(ro.response)], axis=1)
    logits, _ = policy.sequence(params, jnp.asarray(tokens))
    ref_logits, _ = policy.sequence(reference, jnp.asarray(tokens))
    logits = np.asarray(logits, np.float64)[:, PROMPT - 1:-1]
    ref_logits = np.asarray(ref_logits, np.float64)[:, PROMPT - 1:-1]

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    logp, logq = log_softmax(logits), log_softmax(ref_logits)
    mask = np.asarray(ro.mask)
    response = np.asarray(ro.response)
    expected_logp = np.take_along_axis(logp, response[..., None], -1)[..., 0] * mask
    expected_ref = np.take_along_axis(logq, response[..., None], -1)[..., 0] * mask
    expected_kl = (np.exp(logp) * (logp - logq)).sum(-1) * mask
    np.testing.assert_allclose(ro.log_prob, expected_logp, atol=2e-5)
    np.testing.assert_allclose(ro.ref_log_prob, expected_ref, atol=2e-5)
    np.testing.assert_allclose(ro.kl, expected_kl, atol=2e-6, rtol=1e-4)
    entropy = -(np.exp(logp) * logp).sum(-1) * mask
    np.testing.assert_allclose(ro.entropy, entropy, atol=2e-5)


def test_eos_ends_the_response_and_pads_after(sampled):
    # Many draws at a high temperature, so several rows emit EOS early.
    ro = sampled(jax.random.PRNGKey(7), 5.0)
    response, mask = np.asarray(ro.response), np.asarray(ro.mask)
    for row, m in zip(response, mask):
        eos = np.flatnonzero(row == EOS)
        end = eos[0] + 1 if eos.size else RESPONSE
        np.testing.assert_array_equal(m, np.arange(RESPONSE) < end)
        assert np.all(row[end:] == PAD)
    assert np.all(np.asarray(ro.log_prob)[mask == 0] == 0)
    assert np.all(np.asarray(ro.kl)[mask == 0] == 0)


def test_eos_is_reached_in_at_least_one_row_over_seeds(sampled):
    found = any(bool(np.any(np.asarray(sampled(jax.random.PRNGKey(k), 5.0).response) == EOS))
                for k in range(10))
    assert found


def test_temperature_scales_the_sampling_distribution(policy_and_params, prompts, sampled):
    policy, params, _ = policy_and_params
    ro = sampled(jax.random.PRNGKey(8), 2.0)
    tokens = jnp.concatenate([prompts, ro.response], axis=1)
    logits, _ = policy.sequence(params, tokens)
    logp = jax.nn.log_softmax(logits[:, PROMPT - 1:-1] / 2.0)
    expected = jnp.take_along_axis(logp, ro.response[..., None], -1)[..., 0] * ro.mask
    np.testing.assert_allclose(ro.sampled_log_prob, expected, atol=2e-5)


def test_sampling_frequencies_follow_the_model(policy_and_params):
    """First response token: empirical frequencies over 4000 draws vs softmax(logits) (5σ)."""
    policy, params, _ = policy_and_params
    prompt = jnp.array([[3, 4, 5]])
    n = 4000
    fn = jax.jit(lambda key: rollout.sample_tokens(
        policy.decode, params, jnp.repeat(prompt, n, 0), policy.empty_cache(n), key,
        max_new_tokens=1, eos_id=EOS, pad_id=PAD)[0][:, 0])
    counts = np.bincount(np.asarray(fn(jax.random.PRNGKey(9))), minlength=VOCAB)
    probs = np.asarray(jax.nn.softmax(policy.sequence(params, prompt)[0][0, -1]))
    sigma = np.sqrt(n * probs * (1 - probs)) + 1e-9
    assert np.all(np.abs(counts - n * probs) < 5 * sigma + 1)


def test_reference_is_not_run_when_not_asked(policy_and_params, prompts):
    policy, params, _ = policy_and_params
    ro = rollout.token_rollout(policy.decode, policy.sequence, params, prompts,
                               policy.empty_cache(BATCH), jax.random.PRNGKey(0),
                               max_new_tokens=RESPONSE, eos_id=EOS, pad_id=PAD)
    assert ro.ref_log_prob is None and ro.kl is None and ro.ref_logits is None


def test_token_gae_matches_numpy():
    rng = np.random.default_rng(0)
    reward = rng.normal(size=(4, 6)).astype(np.float32)
    value = rng.normal(size=(4, 6)).astype(np.float32)
    lengths = np.array([6, 3, 1, 4])
    mask = (np.arange(6)[None] < lengths[:, None]).astype(np.float32)
    gamma, lam = 0.9, 0.8
    adv, target = rollout.token_gae(jnp.asarray(reward), jnp.asarray(value), jnp.asarray(mask),
                                    gamma, lam)
    expected = np.zeros_like(reward)
    for b in range(4):
        running = 0.0
        for t in reversed(range(lengths[b])):
            next_value = value[b, t + 1] if t + 1 < lengths[b] else 0.0
            delta = reward[b, t] + gamma * next_value - value[b, t]
            running = delta + gamma * lam * running
            expected[b, t] = running
    np.testing.assert_allclose(adv, expected, atol=1e-5)
    np.testing.assert_allclose(target, (expected + value) * mask, atol=1e-5)


def test_scorer_reads_the_last_real_token():
    config = TransformerConfig(vocab_size=VOCAB, width=16, num_heads=2, max_len=6)
    scorer = SequenceScorer(config)
    tokens = jnp.array([[1, 3, 4, 5, 0, 0]])
    mask = jnp.array([[1, 1, 1, 1, 0, 0]])
    params = scorer.init(jax.random.PRNGKey(0), tokens, mask)
    # Changing padding after the last real token leaves the score unchanged (causal attention).
    changed = tokens.at[0, 4:].set(7)
    np.testing.assert_allclose(scorer.apply(params, tokens, mask),
                               scorer.apply(params, changed, mask), atol=1e-6)
    # ...while changing a real token changes it.
    assert abs(float(scorer.apply(params, tokens.at[0, 2].set(9), mask)[0]
                     - scorer.apply(params, tokens, mask)[0])) > 1e-6


def test_kv_cache_shapes():
    cache = KVCache.empty(CONFIG, 3)
    assert cache.key.shape == (2, 3, CONFIG.max_len, 2, 8) and int(cache.length) == 0
