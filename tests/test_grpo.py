"""GRPO/RLOO: advantages and the loss against NumPy, the in-loss KL's gradient facts, padding, best-of-n."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kl_reference import NUMPY_ESTIMATORS, numpy_estimate
from kltrust import kl
from kltrust.objectives import grpo


def _variant(**kwargs):
    """A Variant without the (tested separately) k1-in-the-loss warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return grpo.Variant(**kwargs)


def _np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


# ---------------------------------------------------------------- group advantages


def _np_advantages(rewards, group_size, baseline, scale_by_std, eps=1e-6):
    """Loops over groups and members, written from the papers, in float64."""
    rewards = np.asarray(rewards, np.float64)
    out = np.empty_like(rewards)
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        std = math.sqrt(sum((r - group.mean()) ** 2 for r in group) / group_size)  # population
        for i, r in enumerate(group):
            if baseline == "grpo":
                a = r - group.mean()
            else:
                others = [group[j] for j in range(group_size) if j != i]
                a = r - sum(others) / len(others)
            out[start + i] = a / (std + eps) if scale_by_std else a
    return out


@pytest.mark.parametrize("baseline", ["grpo", "rloo"])
@pytest.mark.parametrize("scale_by_std", [None, True, False])
@pytest.mark.parametrize("group_size", [2, 4])
def test_group_advantages_match_numpy(baseline, scale_by_std, group_size):
    rewards = np.random.default_rng(group_size).normal(size=3 * group_size) * 2.0 + 1.0
    got = grpo.group_advantages(
        jnp.asarray(rewards, jnp.float32), group_size, baseline=baseline, scale_by_std=scale_by_std
    )
    default_scale = baseline == "grpo" if scale_by_std is None else scale_by_std
    want = _np_advantages(rewards, group_size, baseline, default_scale)
    assert got.shape == (3 * group_size,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_group_advantages_edge_cases():
    # Equal rewards in a group give exactly 0 (no 0/0), integer rewards are promoted to float.
    adv = grpo.group_advantages(jnp.array([1, 1, 1, 0, 2, 4]), 3)
    assert jnp.issubdtype(adv.dtype, jnp.floating)
    np.testing.assert_array_equal(adv[:3], 0.0)
    scale = math.sqrt(8 / 3) + 1e-6  # population std of (0, 2, 4), plus eps
    np.testing.assert_allclose(adv[3:], [-2.0 / scale, 0.0, 2.0 / scale], rtol=1e-6)
    # GRPO advantages sum to 0 per group; RLOO equals G/(G−1) times the mean-centred reward.
    r = jnp.array([0.0, 1.0, 3.0, 2.0])
    rloo = grpo.group_advantages(r, 4, baseline="rloo")
    np.testing.assert_allclose(rloo, 4 / 3 * (r - r.mean()), rtol=1e-6)
    np.testing.assert_allclose(jnp.sum(grpo.group_advantages(r, 2)), 0.0, atol=1e-6)
    # Jit with group_size static.
    jitted = jax.jit(grpo.group_advantages, static_argnums=1, static_argnames="baseline")
    np.testing.assert_allclose(
        jitted(r, 2, baseline="rloo"), grpo.group_advantages(r, 2, baseline="rloo")
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rewards=jnp.zeros(4), group_size=1), "group_size"),
        (dict(rewards=jnp.zeros(4), group_size=0), "group_size"),
        (dict(rewards=jnp.zeros(5), group_size=2), "divisible"),
        (dict(rewards=jnp.zeros((2, 2)), group_size=2), "1-D"),
        (dict(rewards=jnp.zeros(4), group_size=2, baseline="ppo"), "baseline"),
    ],
)
def test_group_advantages_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grpo.group_advantages(**kwargs)


# ---------------------------------------------------------------- the loss, by hand

B, T = 6, 5
LENGTHS = np.array([5, 3, 1, 4, 2, 5])
MASK = (np.arange(T)[None, :] < LENGTHS[:, None]).astype(np.float32)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    old = -rng.uniform(0.1, 3.0, size=(B, T))
    new = old + rng.normal(scale=0.3, size=(B, T))  # ratios well outside [0.8, 1.2] for some tokens
    ref = old + rng.normal(scale=0.5, size=(B, T))
    rewards = rng.normal(size=B)
    adv = _np_advantages(rewards, 3, "grpo", True)
    return new, old, ref, adv


def _np_loss(new, old, ref, adv, mask, eps, beta, clip, estimator, kl_in_loss, token_average):
    """A float64 NumPy statement of the GRPO loss (DeepSeekMath eq. 3, DAPO's token mean)."""
    real = mask > 0
    ratio = np.exp(new - old)
    a = adv[:, None]
    surrogate = np.minimum(ratio * a, np.clip(ratio, 1 - eps, 1 + eps) * a) if clip else ratio * a
    k = numpy_estimate(estimator, new, ref, logp_old=old)  # tokens from π_old
    per_token = -surrogate + (beta * k if kl_in_loss else 0.0)
    per_token = np.where(real, per_token, 0.0)
    if token_average == "sequence":
        return np.mean(per_token.sum(1) / np.maximum(real.sum(1), 1))
    return per_token.sum() / real.sum()


def _f32(*arrays):
    return [jnp.asarray(a, jnp.float32) for a in arrays]


@pytest.mark.parametrize("estimator", kl.estimators())
@pytest.mark.parametrize("token_average", ["sequence", "token"])
@pytest.mark.parametrize("clip", [True, False])
def test_loss_matches_numpy(estimator, token_average, clip):
    new, old, ref, adv = _inputs()
    variant = _variant(kl_estimator=estimator, token_average=token_average, clip=clip)
    coefs = grpo.LossCoefs(clip_eps=0.2, beta=0.3)
    got, metrics = grpo.loss(*_f32(new, old, adv, MASK), coefs, variant=variant, ref_logp=_f32(ref)[0])
    want = _np_loss(new, old, ref, adv, MASK, 0.2, 0.3, clip, estimator, True, token_average)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    # The loss decomposes into the reported parts.
    parts = metrics["policy_loss"] + 0.3 * metrics["kl_penalty"]
    np.testing.assert_allclose(got, parts, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        metrics["policy_loss"],
        _np_loss(new, old, ref, adv, MASK, 0.2, 0.0, clip, estimator, False, token_average),
        rtol=2e-5, atol=1e-6,
    )


def test_metrics_match_numpy():
    new, old, ref, adv = _inputs(1)
    real = MASK > 0
    rng = np.random.default_rng(2)
    exact = rng.uniform(0.0, 0.5, size=(B, T))
    exact[~real] = 1e6  # padding must not leak into the exact-KL metrics either
    _, metrics = grpo.loss(
        *_f32(new, old, adv, MASK), grpo.LossCoefs(0.2, 0.1),
        variant=grpo.Variant(token_average="token"), ref_logp=_f32(ref)[0], exact_kl=_f32(exact)[0],
    )
    token_mean = lambda v: v[real].mean()
    d = new - ref
    ratio = np.exp(new - old)
    want = {
        "ratio_mean": token_mean(ratio),
        "clip_frac": token_mean(np.abs(ratio - 1) > 0.2),
        **{f"kl_estimator_{name}": token_mean(NUMPY_ESTIMATORS[name](d)) for name in kl.estimators(reward_term=True)},
        "kl_penalty": token_mean(np.exp(-d) - 1 + d),  # "token" aggregation: the k3 token mean
        "kl_exact_token": token_mean(exact),
        "kl_exact_sequence": np.where(real, exact, 0).sum(1).mean(),
    }
    assert 0.0 < want["clip_frac"] < 1.0
    assert set(want) | {"policy_loss"} == set(metrics)
    for name, value in want.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------- gradient facts (exact expectations)

K = 6
THETA = jnp.array([0.3, -1.0, 2.0, 0.0, 0.7, -0.4], jnp.float32)
LOGITS_REF = jnp.array([1.0, 0.5, -0.5, 0.2, -1.2, 0.1], jnp.float32)


def _expected_grad(variant, beta, advantages):
    """∇_θ E_{x~π_θ}[loss(x)] for a 1-token categorical policy: every token x is a [1, 1] batch
    (sampled token held fixed, π_old = π_θ), its gradient weighted by π_θ(x) and summed exactly."""
    logq = jax.nn.log_softmax(LOGITS_REF)

    def single(theta, x):
        logp = jax.nn.log_softmax(theta)
        value, _ = grpo.loss(
            logp[x].reshape(1, 1), jax.lax.stop_gradient(logp[x]).reshape(1, 1),
            advantages[x].reshape(1), jnp.ones((1, 1)), grpo.LossCoefs(0.2, beta),
            variant=variant, ref_logp=logq[x].reshape(1, 1),
        )
        return value

    grads = jax.vmap(jax.grad(single), in_axes=(None, 0))(THETA, jnp.arange(K))
    weights = np.exp(_np_log_softmax(THETA))
    return (weights[:, None] * np.asarray(grads, np.float64)).sum(0)


def test_in_loss_kl_gradient_facts():
    logp, logq = _np_log_softmax(THETA), _np_log_softmax(LOGITS_REF)
    p, q = np.exp(logp), np.exp(logq)
    grad_reverse = p * (logp - logq - (p * (logp - logq)).sum())  # ∇_θ KL(π_θ ‖ π_ref)
    grad_forward = p - q  # ∇_θ KL(π_ref ‖ π_θ)
    zero_adv = jnp.zeros(K)
    beta = 0.7
    for token_average in ("sequence", "token"):
        k3 = _expected_grad(_variant(kl_estimator="k3", token_average=token_average), beta, zero_adv)
        k2 = _expected_grad(_variant(kl_estimator="k2", token_average=token_average), beta, zero_adv)
        k1 = _expected_grad(_variant(kl_estimator="k1", token_average=token_average), beta, zero_adv)
        np.testing.assert_allclose(k3, beta * grad_forward, atol=1e-6)
        np.testing.assert_allclose(k2, beta * grad_reverse, atol=1e-6)
        np.testing.assert_allclose(k1, 0.0, atol=1e-6)
    assert np.abs(grad_forward - grad_reverse).max() > 0.05  # the two directions really differ


def test_policy_term_is_the_policy_gradient_on_policy():
    # At π_θ = π_old, E[∇(−ρA)] = −∇ E_{π_θ}[A] = −p ⊙ (A − E_p[A]), with or without clipping.
    advantages = jnp.array([1.0, -0.5, 0.3, 2.0, -1.0, 0.0], jnp.float32)
    p = np.exp(_np_log_softmax(THETA))
    a = np.asarray(advantages, np.float64)
    want = -p * (a - (p * a).sum())
    for clip in (True, False):
        got = _expected_grad(grpo.Variant(kl_in_loss=False, clip=clip), 0.0, advantages)
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_k1_in_the_loss_warns():
    with pytest.warns(UserWarning, match="zero expected gradient"):
        grpo.Variant(kl_estimator="k1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grpo.Variant(kl_estimator="k1", kl_in_loss=False)  # k1 goes to the reward: no warning
        grpo.Variant()


# ---------------------------------------------------------------- KL in the loss xor in the reward


def test_kl_out_of_the_loss_adds_nothing():
    new, old, ref, adv = _f32(*_inputs(3))
    mask = jnp.asarray(MASK)
    grad_fn = lambda variant, coefs, **kw: jax.value_and_grad(
        lambda n: grpo.loss(n, old, adv, mask, coefs, variant=variant, **kw), has_aux=True
    )(new)
    off_variant = grpo.Variant(kl_in_loss=False)
    (off, off_metrics), off_grad = grad_fn(off_variant, grpo.LossCoefs(0.2, 0.5), ref_logp=ref)
    (zero, zero_metrics), zero_grad = grad_fn(grpo.Variant(), grpo.LossCoefs(0.2, 0.0), ref_logp=ref)
    np.testing.assert_array_equal(off, zero)
    np.testing.assert_array_equal(off_grad, zero_grad)
    assert "kl_penalty" not in off_metrics and "kl_penalty" in zero_metrics
    assert {f"kl_estimator_{name}" for name in kl.estimators(reward_term=True)} <= set(off_metrics)
    # β is never read: not even a NaN β changes anything, and ref_logp may be absent.
    (nan_beta, _), nan_grad = grad_fn(grpo.Variant(kl_in_loss=False), grpo.LossCoefs(0.2, jnp.nan))
    np.testing.assert_array_equal(nan_beta, zero)
    np.testing.assert_array_equal(nan_grad, zero_grad)
    (_, bare_metrics), _ = grad_fn(grpo.Variant(kl_in_loss=False), grpo.LossCoefs(0.2, 0.5))
    assert set(bare_metrics) == {"policy_loss", "clip_frac", "ratio_mean"}


# ---------------------------------------------------------------- padding


@pytest.mark.parametrize(
    "variant", [grpo.Variant(), grpo.Variant(kl_estimator="k2", token_average="token", clip=False)]
)
def test_padding_changes_neither_loss_nor_gradient(variant):
    new, old, ref, adv = _f32(*_inputs(4))
    pad = ~(MASK > 0)
    rng = np.random.default_rng(5)

    def garbage(x):
        junk = rng.normal(scale=50.0, size=x.shape)
        junk[1, 4], junk[2, 2], junk[4, 3] = np.nan, np.inf, -np.inf
        return jnp.where(jnp.asarray(pad), jnp.asarray(junk, jnp.float32), x)

    def value_and_grad(n, o, r, mask):
        return jax.value_and_grad(
            lambda n_: grpo.loss(
                n_, o, adv, mask, grpo.LossCoefs(0.2, 0.4), variant=variant, ref_logp=r
            ),
            has_aux=True,
        )(n)

    (clean, clean_metrics), clean_grad = value_and_grad(new, old, ref, jnp.asarray(MASK))
    dirty_inputs = garbage(new), garbage(old), garbage(ref), jnp.asarray(MASK > 0)  # and a bool mask
    (dirty, dirty_metrics), dirty_grad = value_and_grad(*dirty_inputs)
    np.testing.assert_array_equal(dirty, clean)
    np.testing.assert_array_equal(dirty_grad, clean_grad)
    np.testing.assert_array_equal(np.asarray(dirty_grad)[pad], 0.0)
    assert np.all(np.asarray(clean_grad)[~pad] != 0.0)
    for name in clean_metrics:
        np.testing.assert_array_equal(dirty_metrics[name], clean_metrics[name], err_msg=name)


# ---------------------------------------------------------------- sweeps, validation


def test_vmap_and_jit_over_coefs():
    new, old, ref, adv = _f32(*_inputs(6))
    mask = jnp.asarray(MASK)
    variant = grpo.Variant()
    coefs = grpo.LossCoefs(clip_eps=jnp.array([0.1, 0.2, 0.3]), beta=jnp.array([0.0, 0.05, 0.5]))
    run = jax.jit(jax.vmap(lambda c: grpo.loss(new, old, adv, mask, c, variant=variant, ref_logp=ref)))
    values, metrics = run(coefs)
    assert values.shape == (3,) and metrics["clip_frac"].shape == (3,)
    for i in range(3):
        one, one_metrics = grpo.loss(
            new, old, adv, mask, grpo.LossCoefs(float(coefs.clip_eps[i]), float(coefs.beta[i])),
            variant=variant, ref_logp=ref,
        )
        np.testing.assert_allclose(values[i], one, rtol=1e-6)
        np.testing.assert_allclose(metrics["clip_frac"][i], one_metrics["clip_frac"], rtol=1e-6)
    assert metrics["clip_frac"][0] > metrics["clip_frac"][2]


def _call_loss(shape=(B, T), coefs=(0.2, 0.1), variant=None, **overrides):
    a = jnp.zeros(shape)
    args = dict(new_logp=a, old_logp=a, advantage=jnp.zeros(shape[:1]), mask=a, ref_logp=a)
    args.update(overrides)
    coefs = grpo.LossCoefs(*coefs)
    return grpo.loss(
        args["new_logp"], args["old_logp"], args["advantage"], args["mask"], coefs,
        variant=variant or grpo.Variant(), ref_logp=args["ref_logp"],
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: _call_loss(ref_logp=None), "ref_logp is required"),
        (lambda: _call_loss(old_logp=jnp.zeros((B, T - 1))), "old_logp"),
        (lambda: _call_loss(advantage=jnp.zeros((B, 1))), "advantage"),
        (lambda: _call_loss(shape=(T,)), r"\[B, T\]"),
        (lambda: _call_loss(coefs=(0.0, 0.1)), "clip_eps"),
        (lambda: _call_loss(coefs=(0.2, -0.1)), "beta"),
        (lambda: grpo.Variant(kl_estimator="exact"), "kl_estimator"),
        (lambda: grpo.Variant(token_average="sample"), "token_average"),
    ],
)
def test_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()
    # Out-of-range Python coefficients are fine where they are not used.
    _call_loss(coefs=(0.0, 0.1), variant=grpo.Variant(clip=False))
    _call_loss(coefs=(0.2, -1.0), variant=grpo.Variant(kl_in_loss=False))


# ---------------------------------------------------------------- best-of-n


def test_best_of_n_kl_bound_closed_form():
    assert grpo.best_of_n_kl is grpo.best_of_n_kl_bound  # the old name, kept for callers
    assert grpo.best_of_n_kl_bound(1) == 0.0
    np.testing.assert_allclose(grpo.best_of_n_kl_bound(2), math.log(2) - 0.5)
    np.testing.assert_allclose(grpo.best_of_n_kl_bound(16), math.log(16) - 15 / 16)
    np.testing.assert_allclose(
        grpo.best_of_n_kl_bound(jnp.array([1, 4, 64])),
        [0.0, math.log(4) - 0.75, math.log(64) - 63 / 64],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="n must be"):
        grpo.best_of_n_kl_bound(0)


def test_best_of_n_select_ties_to_lowest_index():
    rewards = jnp.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [-1.0, -5.0, 0.5]])
    np.testing.assert_array_equal(grpo.best_of_n_select(rewards), [1, 0, 2])
    with pytest.raises(ValueError, match="num_prompts"):
        grpo.best_of_n_select(jnp.zeros(3))


def _exact_best_of_n(p, rewards, n):
    """The best-of-n law for distinct rewards: P(y) = F(y)^n − F(y⁻)^n, F the reward CDF under p."""
    order = np.argsort(rewards)
    cdf = np.cumsum(p[order])
    law_sorted = cdf**n - np.concatenate([[0.0], cdf[:-1]]) ** n
    law = np.empty_like(p)
    law[order] = law_sorted
    return law


def _kl(law, p):
    keep = law > 0
    return float((law[keep] * np.log(law[keep] / p[keep])).sum())


@pytest.mark.parametrize("n", [1, 2, 4, 16, 64])
def test_analytic_best_of_n_kl_is_an_upper_bound_tight_for_large_support(n):
    rng = np.random.default_rng(n)
    bound = grpo.best_of_n_kl_bound(n)
    # Large support, no outcome heavier than ~1e-4: the exact KL approaches the analytic value.
    p = rng.gamma(2.0, size=20_000)
    p /= p.sum()
    rewards = rng.normal(size=p.size)
    exact_large = _kl(_exact_best_of_n(p, rewards, n), p)
    assert exact_large <= bound + 1e-12
    np.testing.assert_allclose(exact_large, bound, atol=1e-5)
    # Small support: strictly below the formula for n > 1 (it is only an upper bound).
    q = np.array([0.5, 0.3, 0.2])
    exact_small = _kl(_exact_best_of_n(q, np.array([0.0, 1.0, 2.0]), n), q)
    assert exact_small <= bound + 1e-12
    if n > 1:
        assert exact_small < bound - 1e-2


def test_best_of_n_monte_carlo_matches_exact_law():
    # Sample n from π_ref per prompt, keep the best with best_of_n_select: the empirical law matches
    # F^n − F⁻^n, and the Monte Carlo KL matches the exact one, below log n − (n−1)/n.
    n, prompts, size = 4, 100_000, 40
    rng = np.random.default_rng(7)
    p = rng.dirichlet(np.ones(size))
    rewards = rng.normal(size=size)
    logits = jnp.log(jnp.asarray(p, jnp.float32))
    samples = jax.random.categorical(jax.random.key(0), logits, shape=(prompts, n))
    best = grpo.best_of_n_select(jnp.asarray(rewards, jnp.float32)[samples])
    chosen = np.asarray(jnp.take_along_axis(samples, best[:, None], axis=1)[:, 0])
    law = _exact_best_of_n(p, rewards, n)
    freq = np.bincount(chosen, minlength=size) / prompts
    np.testing.assert_array_less(np.abs(freq - law), 5 * np.sqrt(law * (1 - law) / prompts) + 1e-12)
    log_ratio = np.log(law[chosen] / p[chosen])
    mc_kl, stderr = log_ratio.mean(), log_ratio.std() / math.sqrt(prompts)
    exact = _kl(law, p)
    assert abs(mc_kl - exact) < 4 * stderr
    assert exact <= grpo.best_of_n_kl_bound(n)


# ---------------------------------------------------------------- GSPO and DAPO's clip-higher


def _np_gspo(new, old, adv, mask, eps_low, eps_high):
    """GSPO's objective (Zheng et al. 2025, eq. 5–7) in float64: s_i = exp(mean over o_i's tokens
    of log π_θ − log π_old), loss = −(1/B) Σ_i min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i)."""
    real = mask > 0
    s = np.exp(np.where(real, new - old, 0.0).sum(1) / np.maximum(real.sum(1), 1))
    return -np.mean(np.minimum(s * adv, np.clip(s, 1 - eps_low, 1 + eps_high) * adv))


@pytest.mark.parametrize("eps_high", [None, 0.15])
def test_gspo_sequence_ratio_matches_numpy(eps_high):
    new, old, ref, adv = _inputs(3)
    variant = _variant(ratio_level="sequence", kl_in_loss=False)
    coefs = grpo.LossCoefs(clip_eps=0.1, beta=0.0, clip_eps_high=eps_high)
    got, metrics = grpo.loss(*_f32(new, old, adv, MASK), coefs, variant=variant)
    want = _np_gspo(new, old, adv, MASK, 0.1, 0.1 if eps_high is None else eps_high)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    # Some sequences are clipped and some are not, so both branches are exercised.
    real = MASK > 0
    s = np.exp(np.where(real, new - old, 0.0).sum(1) / real.sum(1))
    assert 0 < np.mean(np.abs(s - 1) > 0.1) < 1
    # The gradient spreads over every token of a sequence (through the mean log-ratio): against
    # central finite differences of the float64 statement.
    grad = np.asarray(jax.grad(lambda n: grpo.loss(n, *_f32(old, adv, MASK), coefs,
                                                   variant=variant)[0])(_f32(new)[0]))
    h = 1e-6
    for b, t in [(0, 0), (0, 4), (3, 2), (5, 1)]:
        bumped = [new.copy(), new.copy()]
        bumped[0][b, t] += h
        bumped[1][b, t] -= h
        fd = (_np_gspo(bumped[0], old, adv, MASK, 0.1, 0.1 if eps_high is None else eps_high)
              - _np_gspo(bumped[1], old, adv, MASK, 0.1,
                         0.1 if eps_high is None else eps_high)) / (2 * h)
        # float32 gradient of terms of order 1: 1e-5 absolute; FD error O(h²·f‴) is far below.
        np.testing.assert_allclose(grad[b, t], fd, atol=1e-5, err_msg=str((b, t)))


def test_clip_higher_matches_numpy_and_is_asymmetric():
    new, old, ref, adv = _inputs(4)
    variant = _variant(kl_in_loss=False, token_average="token")
    got, metrics = grpo.loss(*_f32(new, old, adv, MASK),
                             grpo.LossCoefs(clip_eps=0.2, beta=0.0, clip_eps_high=0.28),
                             variant=variant)
    real = MASK > 0
    ratio = np.exp(new - old)
    a = adv[:, None]
    per_token = -np.minimum(ratio * a, np.clip(ratio, 0.8, 1.28) * a)
    np.testing.assert_allclose(got, per_token[real].sum() / real.sum(), rtol=2e-5, atol=1e-6)
    outside = ((ratio < 0.8) | (ratio > 1.28))[real].mean()
    np.testing.assert_allclose(metrics["clip_frac"], outside, atol=1e-6)
    symmetric, _ = grpo.loss(*_f32(new, old, adv, MASK), grpo.LossCoefs(clip_eps=0.2, beta=0.0),
                             variant=variant)
    assert abs(float(got) - float(symmetric)) > 1e-4  # some ratio lies in (1.2, 1.28]


def test_dapo_filter_keeps_exactly_the_groups_with_different_rewards():
    # Groups of 3: all equal, one differs, all equal at another value, all differ, ties of floats
    # that differ in the last bit (different, so kept).
    tiny = np.nextafter(np.float32(0.5), np.float32(1.0))
    rewards = np.array([1, 1, 1, 0, 0, 1, -2, -2, -2, 0.1, 0.2, 0.3, 0.5, tiny, 0.5], np.float32)
    want = []
    for start in range(0, len(rewards), 3):
        group = [float(r) for r in rewards[start:start + 3]]
        want += [len(set(group)) > 1] * 3
    got = np.asarray(grpo.groups_with_signal(jnp.asarray(rewards), 3))
    np.testing.assert_array_equal(got, want)
    # A flat group's GRPO advantages are exactly 0, which is why dropping it changes a token-averaged
    # loss only through its normaliser: with the flat groups masked the loss equals the kept groups'
    # loss alone.
    adv = np.asarray(grpo.group_advantages(jnp.asarray(rewards), 3))
    np.testing.assert_array_equal(adv[~got], 0.0)
    rng = np.random.default_rng(7)
    new = rng.normal(-1.0, 0.3, (15, 4))
    old = new + rng.normal(0.0, 0.2, (15, 4))
    mask = np.ones((15, 4))
    variant = _variant(kl_in_loss=False, token_average="token")
    coefs = grpo.LossCoefs(clip_eps=0.2, beta=0.0, clip_eps_high=0.28)
    masked, _ = grpo.loss(*_f32(new, old, adv, mask * got[:, None]), coefs, variant=variant)
    kept, _ = grpo.loss(*_f32(new[got], old[got], adv[got], mask[got]), coefs, variant=variant)
    np.testing.assert_allclose(masked, kept, rtol=1e-6)  # same float32 sums in another order
    diluted, _ = grpo.loss(*_f32(new, old, adv, mask), coefs, variant=variant)
    np.testing.assert_allclose(diluted, kept * got.sum() / len(got), rtol=1e-5)
