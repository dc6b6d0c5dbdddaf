"""A proxy reward on a pretrained language model's own trunk: frozen trunk + a linear head.

For a prompt x and response y (mask m over y's positions), with h_t the trunk's final hidden state
at position t of the sequence x ⊕ y (`LanguageModel.features`, what the LM head reads):

    pooling "mean":  φ(x, y) = Σ_t m_t h_{P+t} / Σ_t m_t      (the response's hidden states)
    pooling "last":  φ(x, y) = h_{P + Σ_t m_t − 1}             (its last real token)
    r(x, y) = φ(x, y) · w + b

Fitted by Bradley–Terry on preference pairs: P(y_w ≻ y_l) = σ(r(x, y_w) − r(x, y_l)) =
σ((φ_w − φ_l) · w), a logistic regression on feature differences, so the trunk is run once per
pair (`pair_features`) and the head is fitted on the stored features in milliseconds
(`fit_head`): training a head over a frozen 135M-parameter trunk costs one forward pass per
sequence, not one per step. b cancels in every pair; it is set so that the mean score of the
training responses is 0, which makes the proxy's scale comparable to the gold's (a β that holds
one holds the other) and keeps PPO's advantages centred.

The features are standardised before the fit (the hidden states' coordinates differ in scale by
orders of magnitude, so one L2 penalty would otherwise weigh them unequally); the scaling is
folded back into w and b, so `TrunkReward.score` reads raw hidden states. ``mean`` is the default:
VADER (the gold this proxy imitates) sums word valences over the response, which a mean of per-token
states can express and one token's state summarises only through the model's own attention.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kltrust.models.interface import LanguageModel

POOLINGS = ("mean", "last")


@dataclasses.dataclass(frozen=True)
class TrunkReward:
    """r(x, y) = φ(x, y)·w + b over ``model``'s trunk (module docstring), as a
    `kltrust.models.interface.RewardModel` over params {"trunk": the model's params (the
    reference's own arrays: no copy), "head": {"w": [W], "b": []}}."""

    model: LanguageModel  # any model with ``features(params, tokens) -> (logits, hidden)``
    pooling: str = "mean"

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"TrunkReward: pooling = {self.pooling!r}: must be one of {POOLINGS}.")

    def features(self, trunk_params: Any, prompts: jax.Array, response: jax.Array,
                 mask: jax.Array) -> jax.Array:
        """φ(x, y) [B, W] (float32)."""
        tokens = jnp.concatenate([prompts, response], axis=1)
        hidden = self.model.features(trunk_params, tokens)[1][:, prompts.shape[1]:]
        hidden = hidden.astype(jnp.float32)
        mask = mask.astype(jnp.float32)
        if self.pooling == "mean":
            # max(·, 1): an all-padding response (cannot happen after sampling: EOS is real) gives
            # φ = 0 rather than 0/0.
            return jnp.einsum("bt,btw->bw", mask, hidden) / jnp.maximum(mask.sum(-1), 1.0)[:, None]
        last = jnp.maximum(mask.sum(-1).astype(jnp.int32) - 1, 0)
        return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]

    def score(self, params: Any, prompts: jax.Array, response: jax.Array,
              mask: jax.Array) -> jax.Array:
        """r(x, y) [B]. The trunk gets no gradient (it is the frozen reference)."""
        trunk = jax.lax.stop_gradient(params["trunk"])
        phi = self.features(trunk, prompts, response, mask)
        return phi @ params["head"]["w"] + params["head"]["b"]


def pair_features(reward: TrunkReward, trunk_params: Any, pairs: dict[str, np.ndarray],
                  batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(φ of every chosen response, φ of every rejected one), host float32 [N, W] each, computed
    ``batch_size`` pairs at a time by one compiled program (the last batch padded by repetition)."""
    fn = jax.jit(reward.features)
    n = len(pairs["prompt"])
    out: dict[str, list[np.ndarray]] = {"chosen": [], "rejected": []}
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size) % n  # fixed shape: one compilation
        for side in out:
            phi = fn(trunk_params, jnp.asarray(pairs["prompt"][idx]), jnp.asarray(pairs[side][idx]),
                     jnp.asarray(pairs[f"{side}_mask"][idx]))
            out[side].append(np.asarray(phi)[: min(batch_size, n - start)])
    return np.concatenate(out["chosen"]), np.concatenate(out["rejected"])


def fit_head(chosen: np.ndarray, rejected: np.ndarray, *, l2: float, steps: int,
             learning_rate: float) -> tuple[dict[str, np.ndarray], list[float]]:
    """The head {"w", "b"} minimising −mean log σ((φ_w − φ_l)·w) + l2·|w̃|² on standardised
    features (w̃ = w·sd), by full-batch Adam; b centres the training responses' scores at 0
    (module docstring). Returns (head, the loss every 50 steps)."""
    both = np.concatenate([chosen, rejected]).astype(np.float64)
    mean, sd = both.mean(0), both.std(0) + 1e-6  # +1e-6: a constant coordinate gets weight 0
    diff = jnp.asarray((chosen - rejected) / sd, jnp.float32)

    def loss(w):
        return -jnp.mean(jax.nn.log_sigmoid(diff @ w)) + l2 * jnp.sum(w * w)

    opt = optax.adam(learning_rate)

    @jax.jit
    def step(w, state):
        value, grad = jax.value_and_grad(loss)(w)
        updates, state = opt.update(grad, state)
        return optax.apply_updates(w, updates), state, value

    w = jnp.zeros(diff.shape[1], jnp.float32)
    state, losses = opt.init(w), []
    for i in range(steps):
        w, state, value = step(w, state)
        if i % 50 == 0 or i == steps - 1:
            losses.append(float(value))
    w_raw = np.asarray(w, np.float64) / sd
    b = -float(mean @ w_raw)
    return {"w": w_raw.astype(np.float32), "b": np.float32(b)}, losses


def head_accuracy(head: dict[str, np.ndarray], chosen: np.ndarray, rejected: np.ndarray,
                  gold_margin: np.ndarray) -> dict[str, float]:
    """Agreement of the head's ordering with the pairs' labels (``accuracy_labels``: chosen scored
    higher) and with the noiseless gold ordering (``accuracy_gold``, ties in gold excluded), and
    the Bradley–Terry loss on these pairs."""
    margin = (chosen.astype(np.float64) - rejected) @ head["w"].astype(np.float64)
    decided = gold_margin != 0
    return {"accuracy_labels": float(np.mean(margin > 0)),
            "accuracy_gold": float(np.mean(np.sign(margin[decided]) == np.sign(gold_margin[decided]))),
            "loss": float(np.mean(np.logaddexp(0.0, -margin)))}


def select_l2(chosen: np.ndarray, rejected: np.ndarray, grid: tuple[float, ...], *, folds: int,
              steps: int, learning_rate: float, seed: int) -> tuple[float, list[dict]]:
    """The l2 of ``grid`` with the best mean held-out label accuracy over ``folds``-fold cross-
    validation on these (training) pairs, the larger l2 on a tie; and the table of every
    candidate's mean accuracy and Bradley–Terry loss. The test pairs never enter the choice."""
    parts = np.array_split(np.random.default_rng(seed).permutation(len(chosen)), folds)
    table = []
    for l2 in grid:
        scores = []
        for k in range(folds):
            train = np.concatenate([parts[j] for j in range(folds) if j != k])
            head, _ = fit_head(chosen[train], rejected[train], l2=l2, steps=steps,
                               learning_rate=learning_rate)
            held = head_accuracy(head, chosen[parts[k]], rejected[parts[k]],
                                 np.ones(len(parts[k])))  # gold margin unused for labels
            scores.append((held["accuracy_labels"], held["loss"]))
        table.append({"l2": float(l2), "cv_accuracy": float(np.mean([a for a, _ in scores])),
                      "cv_loss": float(np.mean([b for _, b in scores]))})
    best = max(table, key=lambda row: (row["cv_accuracy"], row["l2"]))
    return best["l2"], table

