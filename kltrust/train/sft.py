"""Supervised fine-tuning: the reference policy, trained by next-token cross-entropy.

On the synthetic language the corpus is (prompt, response) pairs sampled from the true language, and
the loss covers every predicted token after BOS (prompt words and the response up to its EOS). Since
the language is known, the held-out metric ``kl_true`` = E_{y~true}[log p_true(y|x) − log p_θ(y|x)]
is the exact sequence KL(true ‖ model) of the responses, estimated on held-out samples: 0 would be a
perfect reference.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kltrust.train import tokens as tok


def next_token_loss(policy: tok.Policy, params: Any, tokens: jax.Array,
                    loss_mask: jax.Array) -> jax.Array:
    """Mean cross-entropy of tokens[:, 1:] given their prefixes, over positions where
    ``loss_mask`` [B, T−1] is 1."""
    logits, _ = policy.sequence(params, tokens[:, :-1])
    logp = jax.nn.log_softmax(logits)
    target_logp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return -jnp.sum(target_logp * loss_mask) / jnp.maximum(jnp.sum(loss_mask), 1.0)


def corpus_arrays(prompt: np.ndarray, response: np.ndarray, mask: np.ndarray):
    """(tokens [N, P+L], loss mask [N, P+L−1]) for a synthetic corpus."""
    tokens = np.concatenate([prompt, response], axis=1).astype(np.int32)
    loss_mask = np.concatenate([np.ones((prompt.shape[0], prompt.shape[1] - 1), np.float32),
                                mask.astype(np.float32)], axis=1)
    return tokens, loss_mask


def train(policy: tok.Policy, train_tokens: np.ndarray, train_mask: np.ndarray, *, steps: int,
          batch_size: int, learning_rate: float, seed: int, eval_every: int = 0,
          eval_fn=None, max_grad_norm: float = 1.0,
          mesh: jax.sharding.Mesh | None = None) -> tuple[Any, list[dict]]:
    """Adam on shuffled minibatches (a fresh permutation per epoch, from ``seed``), laid out on
    ``mesh`` as `tokens.fit` says.

    ``eval_fn(params) -> dict`` is called every ``eval_every`` steps and at the end. Returns
    (params, rows of metrics).
    """
    optimizer = optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(learning_rate))
    return tok.fit(
        lambda p, batch: next_token_loss(policy, p, batch["tokens"], batch["loss_mask"]),
        policy.init(jax.random.PRNGKey(seed)), optimizer,
        {"tokens": train_tokens, "loss_mask": train_mask}, steps=steps, batch_size=batch_size,
        seed=seed, eval_every=eval_every, eval_fn=eval_fn, mesh=mesh)
