"""`kltrust.models.trunk_reward`: a frozen trunk + linear Bradley–Terry head, on the tiny llama.

What holds:

* `TrunkReward.features` with pooling "mean" is the mask-weighted mean of the trunk's final hidden
  states over the response positions of prompt ⊕ response, and with "last" the hidden state at
  position P + Σmask − 1, both equal to a float64 NumPy restatement from `model.features`, with
  masks that end in padding;
* `score` = φ·w + b; `jax.grad` of the summed score gives the trunk exactly zero gradient (it is
  stop_gradient'ed: the frozen reference) and the head the summed pooled features (∂/∂w) and the
  batch size (∂/∂b);
* an unknown pooling ("max") is rejected by name;
* `fit_head` on synthetic features whose coordinates differ in scale by six orders of magnitude,
  labelled by a known logistic model w*, orders held-out pairs about as well as w* itself; its b
  puts the mean score of the training responses at 0; a larger l2 gives a smaller ‖w·sd‖;
* `head_accuracy` on a hand-made example with a gold tie (excluded from accuracy_gold).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust.models import pretrained
from kltrust.models.trunk_reward import TrunkReward, fit_head, head_accuracy

U = 2.0 ** -24  # float32 unit round-off
MODEL = pretrained.tiny("llama")
B, P, L = 4, 4, 6  # batch, prompt length, response length (P + L ≤ max_len 24)
# Response masks end in zeros (padding) on three rows; row 0 is all real.
MASK = np.array([[1, 1, 1, 1, 1, 1],
                 [1, 1, 1, 0, 0, 0],
                 [1, 0, 0, 0, 0, 0],
                 [1, 1, 1, 1, 1, 0]], np.int32)
# The reward programs recompute the trunk inside another compiled program than the reference's
# `model.features`, so the hidden states may differ in float32 rounding: within
# F32_RTOL·(1 + max|h|), the forward-pass bound derived in tests/test_pretrained.py (≲ 15 chained
# float32 reductions of length ≤ 48, each ≤ 48u relative). (Measured 2026-11-30: 0 for "last" and
# 1.7e-7 for "mean" at max|h| ≈ 3.1, i.e. the same hidden states and the pooling's rounding only.)
F32_RTOL = 5e-5


@pytest.fixture(scope="module")
def setup():
    """params, inputs, and the reference hidden states over the response positions [B, L, W]
    (float64 copies of `model.features` in float32)."""
    params = jax.jit(MODEL.init)(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    prompts = rng.integers(3, MODEL.vocab_size, (B, P)).astype(np.int32)
    response = rng.integers(3, MODEL.vocab_size, (B, L)).astype(np.int32)
    tokens = jnp.asarray(np.concatenate([prompts, response], axis=1))
    hidden = np.asarray(jax.jit(MODEL.features)(params, tokens)[1], np.float64)
    assert hidden.shape == (B, P + L, MODEL.width)
    return params, jnp.asarray(prompts), jnp.asarray(response), jnp.asarray(MASK), hidden[:, P:]


def _reference_features(hidden: np.ndarray, pooling: str) -> np.ndarray:
    mask = MASK.astype(np.float64)
    if pooling == "mean":
        return np.einsum("bt,btw->bw", mask, hidden) / mask.sum(-1)[:, None]
    return hidden[np.arange(B), MASK.sum(-1) - 1]  # response index Σm − 1 = position P + Σm − 1


def _feature_tol(hidden: np.ndarray) -> float:
    """|φ − φ_ref| bound: the trunk's recomputation (F32_RTOL, above) plus the float32 mean of
    ≤ L terms (a sum of ≤ L terms of size ≤ max|h| has error ≤ L·u·max|h|; the division adds
    one more u)."""
    h = float(np.abs(hidden).max())
    return F32_RTOL * (1 + h) + (L + 1) * U * h


@pytest.fixture(scope="module", params=["mean", "last"])
def pooled(request, setup):
    """(pooling, the reward, its features from one compiled program, the reference)."""
    params, prompts, response, mask, hidden = setup
    reward = TrunkReward(MODEL, request.param)
    phi = np.asarray(jax.jit(reward.features)(params, prompts, response, mask), np.float64)
    return request.param, reward, phi, _reference_features(hidden, request.param)


def test_features_equal_pooled_hidden_states(setup, pooled):
    """Catches: pooling over the prompt, an unmasked mean or a mean divided by L (rows 1–3 pad),
    "last" off by one or read at the row's end (rows 1–3) — each far outside the tolerance, which
    the assertions on the wrong alternatives below show."""
    hidden = setup[4]
    pooling, _, phi, ref = pooled
    tol = _feature_tol(hidden)
    assert phi.shape == (B, MODEL.width)
    np.testing.assert_allclose(phi, ref, rtol=0, atol=tol)
    mask = MASK.astype(np.float64)
    if pooling == "mean":
        wrong = [hidden.mean(1), np.einsum("bt,btw->bw", mask, hidden) / L]
    else:
        wrong = [hidden[np.arange(B), MASK.sum(-1) - 2], hidden[:, -1]]
    for w in wrong:  # the check discriminates: each wrong pooling misses on a padded row
        assert np.abs(w[1:] - ref[1:]).max() > 100 * tol


def test_score_is_linear_head_and_trunk_gets_no_gradient(setup, pooled):
    """score = φ·w + b against float64; the gradient of Σ score is exactly zero on every trunk
    leaf (catches a missing stop_gradient: the trunk would get O(1) gradients), Σ_b φ_b on w and B
    on b (catches a head that does not read φ linearly)."""
    params, prompts, response, mask, hidden = setup
    _, reward, _, ref = pooled
    rng = np.random.default_rng(1)
    w = rng.normal(size=MODEL.width).astype(np.float32)
    b = np.float32(0.75)
    full = {"trunk": params, "head": {"w": jnp.asarray(w), "b": jnp.asarray(b)}}
    score = np.asarray(jax.jit(reward.score)(full, prompts, response, mask), np.float64)
    expected = ref @ w.astype(np.float64) + float(b)
    # φ's error times Σ|w|, plus the float32 dot product of W terms and + b (≤ (W+1)u Σ|φ_i w_i|).
    tol_phi = _feature_tol(hidden)
    tol = tol_phi * np.abs(w).sum() + (MODEL.width + 1) * U * (np.abs(ref) @ np.abs(w) + abs(b))
    assert score.shape == (B,)
    assert np.all(np.abs(score - expected) <= tol), (score - expected, tol)

    grads = jax.jit(jax.grad(lambda p: reward.score(p, prompts, response, mask).sum()))(full)
    for leaf in jax.tree.leaves(grads["trunk"]):
        assert not np.any(np.asarray(leaf)), "the frozen trunk got a nonzero gradient"
    assert jax.tree.structure(grads["trunk"]) == jax.tree.structure(params)
    # ∂/∂w Σ_b (φ_b·w + b) = Σ_b φ_b: B float32 features each within tol_phi, summed (B·u more).
    np.testing.assert_allclose(np.asarray(grads["head"]["w"], np.float64), ref.sum(0), rtol=0,
                               atol=B * tol_phi + B * U * np.abs(ref).sum(0).max())
    assert float(grads["head"]["b"]) == B  # a sum of B ones: exact


def test_unknown_pooling_is_rejected():
    with pytest.raises(ValueError, match="'max'"):
        TrunkReward(MODEL, "max")


# ------------------------------------------------------------------ fit_head on synthetic features

D = 5
SCALES = np.array([1e-3, 1e-1, 1.0, 1e1, 1e3])  # coordinate scales: six orders of magnitude
MEANS = 3.0 * SCALES * np.array([1, -1, 1, -1, 1])  # nonzero: b has something to centre
W_STD = np.array([1.5, -1.0, 0.5, 2.0, -1.0])  # w* in standardised units; raw w* = W_STD / SCALES
N_TRAIN, N_TEST = 2000, 4000
STEPS, LR = 500, 0.05


def _pairs(rng: np.random.Generator, n: int):
    """n labelled pairs from the true model: φ_a, φ_b ~ N(MEANS, diag SCALES²), a chosen with
    probability σ((φ_a − φ_b)·w*). Returns (chosen, rejected, (chosen − rejected)·w*), float32."""
    a = (MEANS + SCALES * rng.normal(size=(n, D))).astype(np.float32)
    b = (MEANS + SCALES * rng.normal(size=(n, D))).astype(np.float32)
    margin = (a.astype(np.float64) - b) @ (W_STD / SCALES)
    a_wins = rng.random(n) < 1 / (1 + np.exp(-margin))
    chosen = np.where(a_wins[:, None], a, b)
    rejected = np.where(a_wins[:, None], b, a)
    return chosen, rejected, np.where(a_wins, margin, -margin)


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(2)
    train = _pairs(rng, N_TRAIN)
    test = _pairs(rng, N_TEST)
    heads = {l2: fit_head(train[0], train[1], l2=l2, steps=STEPS, learning_rate=LR)[0]
             for l2 in (1e-4, 1e-1)}
    return train, test, heads


def test_fit_head_orders_held_out_pairs_like_the_true_model(synthetic):
    """Held-out accuracy on the labels of the fitted head (l2 1e-4) against w*'s own, on the same
    N_TEST pairs. The deficit has two sources: the comparison's sampling (at most the binomial
    standard error of one accuracy, sqrt(p(1−p)/N_TEST) ≈ 0.0063 at p ≈ 0.8, allowed 3×) and the
    fit's estimation error from N_TRAIN pairs in D dims (excess 0/1 risk O(D/N_TRAIN) = 0.0025).
    Catches: a head returned in standardised units, or folded back by × sd instead of ÷ sd (the
    1e3-scale coordinate would dominate: accuracy drops to about that coordinate's alone), or a
    fit that does not converge."""
    _, (chosen, rejected, true_margin), heads = synthetic
    head = heads[1e-4]
    fitted = (chosen.astype(np.float64) - rejected) @ head["w"].astype(np.float64)
    acc_fit, acc_true = np.mean(fitted > 0), np.mean(true_margin > 0)
    se = math.sqrt(acc_true * (1 - acc_true) / N_TEST)
    assert 0.7 < acc_true < 0.95  # a problem that is neither trivial nor noise
    assert acc_fit >= acc_true - 3 * se - D / N_TRAIN, (acc_fit, acc_true, se)
    # the wrong fold-back is caught by this bound (it is far below)
    sd = np.concatenate([chosen, rejected]).std(0)
    w_wrong = head["w"].astype(np.float64) * sd * sd  # = w̃·sd where w̃ = w·sd
    acc_wrong = np.mean((chosen.astype(np.float64) - rejected) @ w_wrong > 0)
    assert acc_wrong < acc_true - 10 * se, acc_wrong


def test_fit_head_centres_training_scores(synthetic):
    """mean over [chosen; rejected] of φ·w + b is 0 up to the float32 rounding of w and b
    (each w_i and b within u relative of the float64 values that cancel exactly): |mean| ≤
    2u(Σ_i |μ_i w_i| + |b|). Catches b = 0 or b from standardised w (MEANS ≠ 0, so the raw mean
    score Σ μ_i w_i is O(1))."""
    (chosen, rejected, _), _, heads = synthetic
    both = np.concatenate([chosen, rejected]).astype(np.float64)
    for head in heads.values():
        w, b = head["w"].astype(np.float64), float(head["b"])
        mu = both.mean(0)
        mean_score = np.mean(both @ w + b)
        tol = 2 * U * (np.abs(mu * w).sum() + abs(b))
        assert abs(mean_score) <= tol, (mean_score, tol)
        assert abs(mu @ w) > 1e4 * tol  # without b the mean would be far from 0


def test_larger_l2_gives_smaller_standardised_weights(synthetic):
    """‖w·sd‖ (the penalised norm, sd as fit_head computes it) shrinks as l2 grows from 1e-4 to
    0.1: the minimiser's norm of a strictly convex loss + l2‖w̃‖² is nonincreasing in l2, and over
    three decades of l2 it falls well below (< 0.8×). Catches a penalty on raw w, or none."""
    (chosen, rejected, _), _, heads = synthetic
    sd = np.concatenate([chosen, rejected]).astype(np.float64).std(0) + 1e-6
    small, large = (np.linalg.norm(heads[l2]["w"].astype(np.float64) * sd) for l2 in (1e-4, 1e-1))
    assert large < 0.8 * small, (small, large)


def test_head_accuracy_hand_made():
    """Four pairs, w = (1, −0.5) (b = 7 must not matter: it cancels in a pair): margins 2, −1,
    0.5, −3; gold margins 1, 1, 0 (tie), −2. accuracy_labels = 2/4; accuracy_gold over the 3
    decided pairs = 2/3 (with the tie counted it would be 2/4); loss = mean log(1 + e^−m)."""
    head = {"w": np.array([1.0, -0.5], np.float32), "b": np.float32(7.0)}
    chosen = np.array([[2, 0], [0, 2], [0.5, 0], [0, 0]], np.float32)
    rejected = np.array([[0, 0], [0, 0], [0, 0], [3, 0]], np.float32)
    gold = np.array([1.0, 1.0, 0.0, -2.0])
    got = head_accuracy(head, chosen, rejected, gold)
    margins = (2.0, -1.0, 0.5, -3.0)
    # direct NumPy recomputation of the same quantities
    m = (chosen.astype(np.float64) - rejected) @ head["w"].astype(np.float64)
    np.testing.assert_array_equal(m, margins)
    assert got["accuracy_labels"] == 0.5
    assert got["accuracy_gold"] == pytest.approx(2 / 3, abs=1e-15)
    expected_loss = sum(math.log1p(math.exp(-x)) for x in margins) / 4
    assert got["loss"] == pytest.approx(expected_loss, rel=1e-12)  # float64 throughout
