"""The token trainers' optimiser `kltrust.train.tokens.adam` with and without a frozen mask.

What holds, on a small {"base", "lora"} params dict labelled by `LoRAModel.param_labels` and a
gradient that is nonzero on every leaf (the base included: the mask, not the gradient, freezes it):

* every base leaf is bit-identical to its start after several steps, ±0.0 entries included (the
  frozen update is −0.0, and w + (−0.0) keeps the sign of a zero w; +0.0 would turn −0.0 into
  +0.0);
* every lora leaf equals a float64 NumPy restatement of clip-by-global-norm followed by Adam
  (b1 0.9, b2 0.999, eps 1e-8, bias-corrected), where the clipping norm is taken over ALL gradient
  leaves, base included (optax's clip_by_global_norm runs before multi_transform splits the tree);
* the optimiser state holds no array shaped like a base leaf (no base-sized Adam moments);
* `set_learning_rate` on the state changes the step size (the trainer's KL guard relies on it);
* `adam(max_grad_norm)` without labels is plain clip + Adam on every leaf, base included.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kltrust.models.lora import LoRAModel
from kltrust.train import tokens

U = 2.0 ** -24  # float32 unit round-off
B1, B2, EPS = 0.9, 0.999, 1e-8  # optax.adam's defaults, which tokens.adam uses
MAX_NORM = 1.0
LR0 = 1e-3  # tokens.adam's initial learning rate (inject_hyperparams(make)(learning_rate=1e-3))
LR1 = 0.02  # set by set_learning_rate half-way through
STEPS = 6
SWITCH = 3  # steps [0, SWITCH) at LR0, the rest at LR1
# Gradient scale per step: most steps far above MAX_NORM (clipping active), step 2 far below it
# (the select's unclipped branch); which branch each step takes is asserted in the restatement.
GRAD_SCALES = (3.0, 1.0, 0.01, 2.0, 0.02, 5.0)


def _params() -> dict:
    """Shapes chosen so that no lora leaf is shaped like a base leaf (the state check below
    identifies base-sized state by shape). base/w holds a +0.0 and a −0.0."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    w[0, 0], w[1, 2] = 0.0, -0.0
    return {"base": {"w": w, "b": rng.normal(size=(5,)).astype(np.float32)},
            "lora": {"a": rng.normal(size=(3, 2)).astype(np.float32),
                     "b": rng.normal(size=(2, 4)).astype(np.float32)}}


def _grads() -> list[dict]:
    """STEPS gradients, every entry nonzero (|g| ≥ 0.1 before scaling). The base part is 3× the
    lora part, so the global norm is dominated by the base: a clip that measured the lora leaves
    only would scale the lora gradient differently and fail the restatement."""
    rng = np.random.default_rng(1)
    out = []
    for scale in GRAD_SCALES:
        def draw(shape, s):
            x = rng.normal(size=shape)
            return (s * scale * np.sign(x) * (0.1 + np.abs(x))).astype(np.float32)
        out.append({"base": {"w": draw((3, 4), 3.0), "b": draw((5,), 3.0)},
                    "lora": {"a": draw((3, 2), 1.0), "b": draw((2, 4), 1.0)}})
    return out


def _restate(params: dict, grads: list[dict], trained: set[str],
             check_branches: bool = True) -> tuple[dict, dict]:
    """Clip-by-global-norm (over every leaf of the gradient) + Adam in float64 on the leaves under
    the top-level keys in ``trained``; the others stay. Returns (params after all steps, a per-entry
    error budget for each trained leaf: Σ_t (lr_t |û_t| ρ_t + u |p_t|), derived below)."""
    p = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in params.items()}
    m = {k: {n: np.zeros_like(v) for n, v in d.items()} for k, d in p.items() if k in trained}
    v = {k: {n: np.zeros_like(x) for n, x in d.items()} for k, d in p.items() if k in trained}
    budget = {k: {n: np.zeros_like(x) for n, x in d.items()}
              for k, d in p.items() if k in trained}
    n_entries = sum(x.size for d in p.values() for x in d.values())
    # float32 b1, b2 (optax computes 1 − decay**count with decay rounded to float32): the bias
    # corrections' relative error δ_i(t) = |(1 − fl(b)^t) − (1 − b^t)| / (1 − b^t), worst for
    # b2 at t = 1: (fl(0.999) − 0.999)/0.001 ≈ 1.3e-5, far above u, hence stated separately.
    fb1, fb2 = float(np.float32(B1)), float(np.float32(B2))
    for t, g in enumerate(grads, start=1):
        lr = LR0 if t <= SWITCH else LR1
        g = {k: {n: np.asarray(x, np.float64) for n, x in d.items()} for k, d in g.items()}
        norm = np.sqrt(sum(np.sum(x * x) for d in g.values() for x in d.values()))
        clipped = norm >= MAX_NORM
        if check_branches:  # both branches of the clip are exercised
            assert clipped == (GRAD_SCALES[t - 1] >= 1.0), (t, norm)
        factor = MAX_NORM / norm if clipped else 1.0
        d1 = abs((1 - fb1 ** t) - (1 - B1 ** t)) / (1 - B1 ** t)
        d2 = abs((1 - fb2 ** t) - (1 - B2 ** t)) / (1 - B2 ** t)
        # Relative error of one float32 update: δ1 + δ2/2 (√ halves it) plus round-off: the
        # norm's sum of n_entries squares (≤ n_entries u), and ≤ 10 roundings per step in the
        # clip and the moment recurrences, accumulated over the t steps the moments carry.
        rho = d1 + d2 / 2 + (n_entries + 10 * t) * U
        for k in trained:
            for n in p[k]:
                gk = g[k][n] * factor
                m[k][n] = B1 * m[k][n] + (1 - B1) * gk
                v[k][n] = B2 * v[k][n] + (1 - B2) * gk * gk
                u_hat = (m[k][n] / (1 - B1 ** t)) / (np.sqrt(v[k][n] / (1 - B2 ** t)) + EPS)
                p[k][n] = p[k][n] - lr * u_hat
                # the update's error, plus the float32 rounding of p + u (≤ u |p + u|); errors in
                # p do not feed back (Adam's update does not read p), so they add up over steps.
                budget[k][n] += lr * np.abs(u_hat) * rho + U * np.abs(p[k][n])
    return p, budget


@functools.lru_cache(maxsize=None)
def _step_fn(masked: bool):
    tx = tokens.adam(MAX_NORM, LoRAModel.param_labels if masked else None)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    return tx, step


def _run(masked: bool):
    """STEPS optimiser steps from `_params` with `_grads`, the learning rate switched to LR1 by
    `set_learning_rate` after SWITCH steps. Returns (final params, final state, every updates)."""
    tx, step = _step_fn(masked)
    params = jax.tree.map(jnp.asarray, _params())
    state = tx.init(params)
    all_updates = []
    for t, g in enumerate(_grads()):
        if t == SWITCH:
            state = tokens.set_learning_rate(state, jnp.float32(LR1))
        params, state, updates = step(params, state, jax.tree.map(jnp.asarray, g))
        all_updates.append(updates)
    return params, state, all_updates


@pytest.fixture(scope="module")
def masked_run():
    return _run(masked=True)


@pytest.fixture(scope="module")
def plain_run():
    return _run(masked=False)


def _bits(x) -> np.ndarray:
    return np.asarray(x, np.float32).view(np.uint32)


def test_frozen_base_is_bit_identical(masked_run):
    """Catches: a frozen leaf that moves at all (mask ignored), and a frozen update of +0.0
    instead of −0.0 (−0.0 + +0.0 = +0.0 flips the sign bit of base/w[1, 2])."""
    params, _, all_updates = masked_run
    start = _params()
    assert np.signbit(start["base"]["w"][1, 2]) and not np.signbit(start["base"]["w"][0, 0])
    for name in start["base"]:
        np.testing.assert_array_equal(_bits(params["base"][name]), _bits(start["base"][name]))
    for updates in all_updates:  # every frozen update is −0.0 exactly (sign bit set)
        for name in start["base"]:
            u = np.asarray(updates["base"][name])
            assert np.all(u == 0.0) and np.all(np.signbit(u)), name


def test_lora_matches_clip_then_adam_over_all_leaves(masked_run):
    """The lora leaves equal the float64 restatement in which the clipping norm covers every
    gradient leaf, base included. Catches: a clip over the lora leaves only (the base part carries
    most of the norm, so the clip factor would differ by ~3×), missing bias correction (a first
    step (1−b1)/√(1−b2) ≈ 3.2× the right one), a wrong b1/b2/eps, and a learning rate that
    `set_learning_rate` failed to change (steps SWITCH.. would be 20× too small)."""
    params, _, _ = masked_run
    ref, budget = _restate(_params(), _grads(), trained={"lora"})
    for name in ref["lora"]:
        got = np.asarray(params["lora"][name], np.float64)
        err = np.abs(got - ref["lora"][name])
        assert np.all(err <= budget["lora"][name]), (name, err.max(), budget["lora"][name].max())
    # The same restatement with the norm over the lora leaves alone is far outside the budget:
    # this test can tell the two apart.
    only_lora = [{"lora": g["lora"]} for g in _grads()]
    p_lora = {"lora": _params()["lora"]}
    ref_wrong, _ = _restate(p_lora, only_lora, trained={"lora"}, check_branches=False)
    gap = max(np.abs(ref_wrong["lora"][n] - ref["lora"][n]).max() for n in ref["lora"])
    assert gap > 100 * max(b.max() for b in budget["lora"].values())



def test_optimiser_state_has_no_base_sized_arrays(masked_run, plain_run):
    """No array in the masked state has a base leaf's shape (Adam's moments exist for the lora
    leaves only); the unmasked state does have them (so the check can fail), and the masked state
    does hold both moments of every lora leaf."""
    base_shapes = {x.shape for x in _params()["base"].values()}
    lora_shapes = [x.shape for x in _params()["lora"].values()]
    assert not base_shapes & set(lora_shapes)
    masked_shapes = [np.shape(x) for x in jax.tree.leaves(masked_run[1])]
    plain_shapes = [np.shape(x) for x in jax.tree.leaves(plain_run[1])]
    assert not base_shapes & set(masked_shapes), masked_shapes
    assert base_shapes <= set(plain_shapes), plain_shapes
    for shape in lora_shapes:  # mu and nu
        assert masked_shapes.count(shape) == 2, (shape, masked_shapes)


def test_set_learning_rate_scales_the_step(masked_run):
    """From one state and one gradient, the lora update at learning rate a and at b differ by
    exactly the factor b/a up to float32 rounding of −lr·û (2 roundings each side: relative 4u),
    and base stays −0.0 at both. Catches: a `set_learning_rate` that writes a key the optimiser
    does not read (both updates would be equal)."""
    _, state, _ = masked_run
    _, step = _step_fn(True)
    params = jax.tree.map(jnp.asarray, _params())
    g = jax.tree.map(jnp.asarray, _grads()[0])
    _, _, ua = step(params, tokens.set_learning_rate(state, jnp.float32(1e-3)), g)
    _, _, ub = step(params, tokens.set_learning_rate(state, jnp.float32(5e-2)), g)
    ratio = float(np.float32(5e-2)) / float(np.float32(1e-3))
    for name in ua["lora"]:
        a = np.asarray(ua["lora"][name], np.float64)
        b = np.asarray(ub["lora"][name], np.float64)
        np.testing.assert_allclose(b, ratio * a, rtol=4 * U, atol=0)
        assert np.all(np.abs(a) > 0)
    for name in ua["base"]:
        assert np.all(np.signbit(np.asarray(ub["base"][name])))


def test_without_labels_every_leaf_is_clip_then_adam(plain_run):
    """`adam(max_grad_norm)` with no labels trains the base like any leaf: every leaf (base
    included) equals the float64 clip + Adam restatement. Catches: a default that freezes
    something, or a mask applied without labels."""
    params, _, _ = plain_run
    ref, budget = _restate(_params(), _grads(), trained={"base", "lora"})
    for part in ref:
        for name in ref[part]:
            got = np.asarray(params[part][name], np.float64)
            err = np.abs(got - ref[part][name])
            assert np.all(err <= budget[part][name]), (part, name, err.max())
