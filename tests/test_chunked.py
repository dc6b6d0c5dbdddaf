"""Chunked per-token statistics against the whole-batch computation `kltrust.rollout` does."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust import kl, rollout
from kltrust.distributions import Categorical
from kltrust.models import chunked
from kltrust.models.transformer import TransformerConfig, TransformerLM

VOCAB, PROMPT, RESPONSE, BATCH = 13, 3, 5, 6
MODEL = TransformerLM(TransformerConfig(vocab_size=VOCAB, num_layers=1, width=16, num_heads=2,
                                        max_len=PROMPT + RESPONSE, critic="shared"))
TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def batch():
    params = jax.jit(MODEL.init)(jax.random.PRNGKey(0))  # jitted: eager init is slow on 2 cores
    reference = jax.jit(MODEL.init)(jax.random.PRNGKey(1))  # a different network: the KL is not 0
    tokens = jax.random.randint(jax.random.PRNGKey(2), (BATCH, PROMPT + RESPONSE), 0, VOCAB)
    # Ragged responses (lengths 5, 4, ..., 0): padding must give 0 and no gradient.
    mask = (jnp.arange(RESPONSE)[None] < (RESPONSE - jnp.arange(BATCH))[:, None]).astype(jnp.float32)
    return params, reference, tokens, mask


def _whole(params, reference, tokens, mask):
    """What `rollout.token_rollout` computes from its full [B, L, V] logits."""
    prompts, response = tokens[:, :PROMPT], tokens[:, PROMPT:]
    logits, value = rollout.response_logits(MODEL.sequence, params, prompts, response)
    ref_logits, _ = rollout.response_logits(MODEL.sequence, reference, prompts, response)
    logits, ref_logits = logits / TEMPERATURE, ref_logits / TEMPERATURE
    return chunked.TokenStats(
        log_prob=rollout.token_log_probs(logits, response, mask),
        entropy=Categorical(logits).entropy() * mask,
        value=value * mask,
        ref_log_prob=rollout.token_log_probs(ref_logits, response, mask),
        kl=kl.categorical(logits, ref_logits) * mask)


def _chunked(params, reference, tokens, mask, chunk):
    return chunked.token_stats(MODEL.sequence, params, tokens, mask, start=PROMPT, chunk=chunk,
                               ref_sequence_fn=MODEL.sequence, ref_params=reference,
                               temperature=TEMPERATURE)


@pytest.mark.parametrize("chunk", [1, 2, 3, BATCH])
def test_chunked_stats_equal_the_whole_batch(batch, chunk):
    params, reference, tokens, mask = batch
    expected = jax.jit(_whole)(params, reference, tokens, mask)
    got = jax.jit(_chunked, static_argnums=4)(params, reference, tokens, mask, chunk)
    # Tolerance. chunk = B is the whole-batch program (the same ops in the same order): bitwise.
    # Otherwise each row gets the same maths in a differently fused program (the map's body, batch
    # `chunk`), and XLA may block and reassociate the float32 sums differently: a reordered sum of
    # n terms moves by ≤ (n−1)·u·Σ|terms| (u = 2⁻²⁴); the widest sums here are the width-16
    # contractions and the 13-way log-sum-exp, whose Σ|terms| is of the size of the result, so
    # 16u·|result| per op. log-softmax and KL are 1-Lipschitz in the max-norm of the logits up to
    # a factor 2, and a couple of such ops stack: 64u·max(|value|, 1) (= 32 float32 eps). Measured:
    # ≤ 1 ulp (4.8e-7 on log-probs of size ~3).
    for name in ("log_prob", "entropy", "value", "ref_log_prob", "kl"):
        want, have = np.asarray(getattr(expected, name)), np.asarray(getattr(got, name))
        assert have.shape == (BATCH, RESPONSE), name
        tol = 0.0 if chunk == BATCH else 64 * 2.0**-24 * max(np.abs(want).max(), 1.0)
        np.testing.assert_allclose(have, want, rtol=0, atol=tol, err_msg=name)
        assert np.all(have[np.asarray(mask) == 0] == 0), name
    assert np.all(np.asarray(got.kl)[np.asarray(mask) > 0] > 0)  # different networks: KL > 0


@pytest.mark.parametrize("chunk", [2, BATCH])
def test_gradient_through_chunked_log_probs_equals_whole_batch(batch, chunk):
    params, reference, tokens, mask = batch
    advantage = jax.random.normal(jax.random.PRNGKey(3), mask.shape)

    def loss(stats_fn):
        # A PPO-like surrogate: log-probs, the exact KL and the values all carry gradient.
        def f(p):
            s = stats_fn(p)
            return (-jnp.sum(advantage * s.log_prob) + 0.1 * jnp.sum(s.kl)
                    + jnp.sum(jnp.square(s.value - advantage) * mask) - 0.01 * jnp.sum(s.entropy))
        return jax.jit(jax.grad(f))(params)

    want = loss(lambda p: _whole(p, reference, tokens, mask))
    have = loss(lambda p: _chunked(p, reference, tokens, mask, chunk))
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(want))
    assert scale > 0
    # Tolerance: the chunked gradient sums the per-chunk parameter gradients in a different order
    # (B/chunk partial sums accumulated by the map's transpose), each a sum over chunk·L tokens:
    # reordering a float32 sum of n terms moves it by ≤ (n−1)·2⁻²⁴·Σ|terms|; with n = B·L = 30 and
    # Σ|terms| ≲ a few times the largest gradient entry, 1e-5 of the scale covers it.
    for w, h in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(have)):
        np.testing.assert_allclose(np.asarray(h), np.asarray(w), rtol=0, atol=1e-5 * scale)


def test_reference_gets_no_gradient_and_is_optional(batch):
    params, reference, tokens, mask = batch
    grad = jax.jit(jax.grad(lambda r: jnp.sum(_chunked(params, r, tokens, mask, 2).kl)))(reference)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree_util.tree_leaves(grad))
    alone = chunked.token_stats(MODEL.sequence, params, tokens, mask, start=PROMPT, chunk=3)
    assert alone.ref_log_prob is None and alone.kl is None
    np.testing.assert_array_equal(
        np.asarray(alone.log_prob),
        np.asarray(chunked.token_stats(MODEL.sequence, params, tokens, mask, start=PROMPT,
                                       chunk=3, ref_sequence_fn=MODEL.sequence,
                                       ref_params=reference).log_prob))


def test_invalid_arguments_raise(batch):
    params, _, tokens, mask = batch
    with pytest.raises(ValueError, match="chunk = 4 must be a positive divisor of the batch size 6"):
        chunked.token_stats(MODEL.sequence, params, tokens, mask, start=PROMPT, chunk=4)
    with pytest.raises(ValueError, match="chunk = 0"):
        chunked.token_stats(MODEL.sequence, params, tokens, mask, start=PROMPT, chunk=0)
    with pytest.raises(ValueError, match="start = 0"):
        chunked.token_stats(MODEL.sequence, params, tokens, tokens, start=0, chunk=2)
    with pytest.raises(ValueError, match=r"mask \(6, 4\) must be"):
        chunked.token_stats(MODEL.sequence, params, tokens, mask[:, 1:], start=PROMPT, chunk=2)
