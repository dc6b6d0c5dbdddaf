"""The proxy reward model: a transformer scorer fitted to pairwise preferences (Bradley–Terry).

    P(y_w ≻ y_l | x) = σ(r_φ(x, y_w) − r_φ(x, y_l)),   loss = −E log σ(r_φ(x, y_w) − r_φ(x, y_l)).

It sees only the finitely many (and possibly noisy) pairs of the preference data set, drawn near the
true language; the gold reward it imitates is never shown to the policy optimisers. Held-out
``accuracy_gold`` is agreement with the *noiseless* gold ordering (ties excluded); ``accuracy_labels``
is agreement with the data set's own (noisy) labels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kltrust.models.transformer import SequenceScorer, TransformerConfig
from kltrust.tasks.synthetic.language import prompt_domains
from kltrust.train import tokens as tok


@dataclasses.dataclass(frozen=True)
class Scorer:
    """The small decoder's scorer (``config``) as a `kltrust.models.interface.RewardModel`: what
    the token trainers call for the proxy reward.

    ``bug_token`` ≥ 0 plants a reward bug (``config.proxy_bug``): the proxy pays ``bug_bonus``
    more for every occurrence of that token in the response, a blind spot the gold reward does
    not share (it penalises the repeats a policy makes to collect it). −1: no bug. ``bug_domain``
    ≥ 0 confines it to the prompts of that domain (`language.prompt_domains` over
    ``num_domains``): a blind spot of one domain's proxy; −1: every prompt."""

    config: TransformerConfig
    bug_token: int = -1
    bug_bonus: float = 0.0
    bug_domain: int = -1
    num_domains: int = 1

    def score(self, params: Any, prompts: jax.Array, response: jax.Array,
              mask: jax.Array) -> jax.Array:
        """The scorer read at the last real token (`kltrust.train.tokens.score`) [B], plus the
        planted bonus, if any."""
        scores = tok.score(self.config, params, prompts, response, mask)
        if self.bug_token < 0:
            return scores
        hits = jnp.sum((response == self.bug_token) * mask, axis=-1).astype(scores.dtype)
        if self.bug_domain >= 0:
            hits = hits * (prompt_domains(prompts, self.num_domains) == self.bug_domain)
        return scores + self.bug_bonus * hits


def pair_scores(config: TransformerConfig, params: Any, pairs: dict) -> tuple[jax.Array, jax.Array]:
    """The reward model's scores of the chosen and the rejected responses, each [pairs]."""
    chosen = tok.score(config, params, pairs["prompt"], pairs["chosen"], pairs["chosen_mask"])
    rejected = tok.score(config, params, pairs["prompt"], pairs["rejected"],
                         pairs["rejected_mask"])
    return chosen, rejected


def bradley_terry_loss(config: TransformerConfig, params: Any, pairs: dict) -> jax.Array:
    """The Bradley–Terry loss −E[log σ(r(x, y_w) − r(x, y_l))]."""
    chosen, rejected = pair_scores(config, params, pairs)
    return -jnp.mean(jax.nn.log_sigmoid(chosen - rejected))


def accuracy(config: TransformerConfig, params: Any, pairs: dict) -> dict[str, float]:
    """Held-out metrics: agreement with the gold margin (pairs with a gold tie left out), with
    the labels, and the Bradley–Terry loss.
    """
    chosen, rejected = jax.device_get(jax.jit(pair_scores, static_argnums=0)(config, params, pairs))
    margin_gold = np.asarray(pairs["gold_chosen"]) - np.asarray(pairs["gold_rejected"])
    decided = margin_gold != 0
    agree = np.sign(chosen - rejected) == np.sign(margin_gold)
    return {"accuracy_gold": float(agree[decided].mean()),
            "accuracy_labels": float(np.mean(chosen > rejected)),
            "loss": float(np.mean(np.logaddexp(0.0, -(chosen - rejected))))}


def init_params(config: TransformerConfig, pairs: dict, seed: int) -> Any:
    """Fresh scorer parameters for sequences shaped like ``pairs``' prompt + response."""
    length = pairs["prompt"].shape[1] + pairs["chosen"].shape[1]
    return SequenceScorer(config).init(jax.random.PRNGKey(seed), jnp.zeros((1, length), jnp.int32),
                                       jnp.ones((1, length)))


PAIR_KEYS = ("prompt", "chosen", "chosen_mask", "rejected", "rejected_mask")


def train(config: TransformerConfig, pairs: dict, *, steps: int, batch_size: int,
          learning_rate: float, seed: int, eval_every: int = 0, eval_fn=None,
          weight_decay: float = 0.0,
          mesh: jax.sharding.Mesh | None = None) -> tuple[Any, list[dict]]:
    """AdamW on shuffled minibatches of pairs, laid out on ``mesh`` as `tokens.fit` says;
    ``eval_fn(params) -> dict`` every ``eval_every`` steps and at the end. Returns (params, rows of
    metrics)."""
    return tok.fit(lambda q, batch: bradley_terry_loss(config, q, batch),
                   init_params(config, pairs, seed), optax.adamw(learning_rate,
                                                                 weight_decay=weight_decay),
                   {k: pairs[k] for k in PAIR_KEYS}, steps=steps, batch_size=batch_size,
                   seed=seed, eval_every=eval_every, eval_fn=eval_fn, mesh=mesh)
