"""DPO-family losses against a float64 NumPy statement of each paper's loss, finite differences and
closed-form fixed points (IPO's h* = (p − ½)/β, DPO's βh* = logit p, rDPO's noise correction)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust.objectives import dpo

# Six pairs with log-ratio differences of both signs; for β = 0.7 no βh is within 0.05 of the
# hinge's kinks at ±1, so finite differences are valid there.
POLICY_CHOSEN = np.array([-1.2, -0.3, -2.5, -0.9, -1.7, -0.05])
POLICY_REJECTED = np.array([-1.5, -0.2, -1.0, -2.2, -1.6, -3.0])
REF_CHOSEN = np.array([-1.0, -0.8, -2.0, -1.1, -1.5, -0.4])
REF_REJECTED = np.array([-1.1, -0.1, -1.4, -1.9, -1.2, -2.0])
WEIGHTS = np.array([0.1, 0.3, 0.05, 0.2, 0.25, 0.1])
BETA = 0.7


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _np_losses(chosen, rejected, beta, variant, eps):
    """Per-pair losses, float64, written from the papers (not from the module)."""
    h = (chosen - REF_CHOSEN) - (rejected - REF_REJECTED)
    z = beta * h
    if variant == "sigmoid":  # Rafailov et al. eq. 7; cDPO for eps > 0
        return -(1 - eps) * _log_sigmoid(z) - eps * _log_sigmoid(-z)
    if variant == "ipo":  # Azar et al. eq. 17, τ = β, label-smoothing mixture
        return (1 - eps) * (h - 1 / (2 * beta)) ** 2 + eps * (-h - 1 / (2 * beta)) ** 2
    if variant == "robust":  # Chowdhury et al. eq. 9
        return ((1 - eps) * -_log_sigmoid(z) - eps * -_log_sigmoid(-z)) / (1 - 2 * eps)
    return (1 - eps) * np.maximum(0.0, 1 - z) + eps * np.maximum(0.0, 1 + z)  # SLiC hinge


def _np_loss(chosen, rejected, beta, variant, eps, weights=None):
    losses = _np_losses(chosen, rejected, beta, variant, eps)
    return losses.mean() if weights is None else np.sum(weights * losses) / np.sum(weights)


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def test_example_exercises_both_signs_and_no_hinge_kink():
    h = (POLICY_CHOSEN - REF_CHOSEN) - (POLICY_REJECTED - REF_REJECTED)
    assert (h > 0).any() and (h < 0).any()
    assert np.min(np.abs(np.abs(BETA * h) - 1)) > 0.05


@pytest.mark.parametrize("variant", dpo.VARIANTS)
@pytest.mark.parametrize("eps", [0.0, 0.15])
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_and_gradient_match_numpy(variant, eps, weighted):
    weights = WEIGHTS if weighted else None

    def loss_fn(chosen, rejected, ref_chosen, ref_rejected):
        return dpo.loss(chosen, rejected, ref_chosen, ref_rejected, BETA, variant=variant,
                        label_smoothing=eps, weights=None if weights is None else _f32(weights))

    (value, _), grads = jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3), has_aux=True)(
        _f32(POLICY_CHOSEN), _f32(POLICY_REJECTED), _f32(REF_CHOSEN), _f32(REF_REJECTED))
    expected = _np_loss(POLICY_CHOSEN, POLICY_REJECTED, BETA, variant, eps, weights)
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)

    # Central finite differences of the float64 NumPy loss against JAX's gradient.
    step = 1e-6
    for arg, base in ((0, POLICY_CHOSEN), (1, POLICY_REJECTED)):
        fd = np.zeros_like(base)
        for i in range(len(base)):
            up, down = base.copy(), base.copy()
            up[i] += step
            down[i] -= step
            args_up = (up, POLICY_REJECTED) if arg == 0 else (POLICY_CHOSEN, up)
            args_down = (down, POLICY_REJECTED) if arg == 0 else (POLICY_CHOSEN, down)
            fd[i] = (_np_loss(*args_up, BETA, variant, eps, weights)
                     - _np_loss(*args_down, BETA, variant, eps, weights)) / (2 * step)
        np.testing.assert_allclose(grads[arg], fd, rtol=1e-4, atol=1e-6)
        assert np.abs(fd).max() > 1e-3  # the check is not vacuous
    # The reference is frozen: no gradient flows into its log-probabilities.
    np.testing.assert_array_equal(grads[2], 0.0)
    np.testing.assert_array_equal(grads[3], 0.0)


def test_metrics_match_numpy():
    _, metrics = dpo.loss(_f32(POLICY_CHOSEN), _f32(POLICY_REJECTED), _f32(REF_CHOSEN),
                          _f32(REF_REJECTED), BETA)
    chosen = POLICY_CHOSEN - REF_CHOSEN
    rejected = POLICY_REJECTED - REF_REJECTED
    expected = {
        "loss": _np_loss(POLICY_CHOSEN, POLICY_REJECTED, BETA, "sigmoid", 0.0),
        "rewards_chosen": BETA * chosen.mean(),
        "rewards_rejected": BETA * rejected.mean(),
        "reward_accuracy": np.mean(chosen > rejected),
        "reward_margin": BETA * (chosen - rejected).mean(),
        "logratio_chosen": chosen.mean(),
        "logratio_rejected": rejected.mean(),
        "logratio_mean": np.concatenate([chosen, rejected]).mean(),
        "logps_chosen": POLICY_CHOSEN.mean(),
        "logps_rejected": POLICY_REJECTED.mean(),
    }
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert 0 < float(metrics["reward_accuracy"]) < 1


def test_beta_and_label_smoothing_may_be_traced_and_vmapped():
    betas = np.array([0.1, 0.7, 2.0])
    eps = np.array([0.0, 0.1, 0.3])

    @jax.jit
    def losses(beta, smoothing):
        return dpo.loss(_f32(POLICY_CHOSEN), _f32(POLICY_REJECTED), _f32(REF_CHOSEN),
                        _f32(REF_REJECTED), beta, variant="ipo", label_smoothing=smoothing)[0]

    swept = jax.vmap(losses)(_f32(betas), _f32(eps))
    expected = [_np_loss(POLICY_CHOSEN, POLICY_REJECTED, b, "ipo", e) for b, e in zip(betas, eps)]
    np.testing.assert_allclose(swept, expected, rtol=1e-5)


def _two_orderings(h, p, beta, variant, eps=0.0):
    """The expected loss of one pair labelled y ≻ y' w.p. p: ordering (y, y') has log-ratio
    difference h and weight p, the reverse ordering −h and weight 1 − p."""
    zero = jnp.zeros(2)
    chosen = jnp.stack([h, 0.0 * h])
    rejected = jnp.stack([0.0 * h, h])
    return dpo.loss(chosen, rejected, zero, zero, beta, variant=variant, label_smoothing=eps,
                    weights=jnp.stack([p, 1.0 - p]))[0]


@pytest.mark.parametrize("p", [0.1, 0.5, 0.73, 0.98])
@pytest.mark.parametrize("beta", [0.3, 2.0])
def test_ipo_fixed_point_is_p_minus_half_over_beta(p, beta):
    # Derivation: p·(h − c)² + (1 − p)·(−h − c)² with c = 1/(2β) has derivative
    # 2(h − c·(2p − 1)), so h* = (2p − 1)/(2β) = (p − ½)/β; the curvature is 2.
    h_star = (p - 0.5) / beta
    loss = lambda h: _two_orderings(h, jnp.float32(p), beta, "ipo")
    np.testing.assert_allclose(jax.grad(loss)(jnp.float32(h_star)), 0.0, atol=1e-5)
    # The loss is quadratic, so one Newton step from anywhere lands on the minimiser.
    h0 = jnp.float32(1.3)
    newton = h0 - jax.grad(loss)(h0) / jax.grad(jax.grad(loss))(h0)
    np.testing.assert_allclose(newton, h_star, rtol=1e-5, atol=1e-6)
    # With label smoothing ε the labels are effectively p' = (1−ε)p + ε(1−p): h* = (1−2ε)(p−½)/β.
    eps = 0.2
    smoothed = lambda h: _two_orderings(h, jnp.float32(p), beta, "ipo", eps)
    np.testing.assert_allclose(jax.grad(smoothed)(jnp.float32((1 - 2 * eps) * h_star)), 0.0, atol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.73, 0.98])
def test_dpo_fixed_point_is_the_log_odds(p):
    # −p·log σ(βh) − (1−p)·log σ(−βh) has derivative β(σ(βh) − p): βh* = logit(p).
    beta = 0.5
    h_star = np.log(p / (1 - p)) / beta
    grad = jax.grad(lambda h: _two_orderings(h, jnp.float32(p), beta, "sigmoid"))
    np.testing.assert_allclose(grad(jnp.float32(h_star)), 0.0, atol=1e-6)
    assert abs(float(grad(jnp.float32(h_star + 0.5)))) > 1e-3


@pytest.mark.parametrize("p,eps", [(0.8, 0.2), (0.3, 0.1), (0.95, 0.4)])
def test_robust_dpo_on_noisy_labels_has_the_clean_optimum(p, eps):
    # Labels flipped w.p. ε give P(y ≻ y') = p̃ = (1−ε)p + ε(1−p). rDPO with that ε is unbiased for
    # the clean loss, so its optimum is the clean βh* = logit(p); plain DPO's is logit(p̃).
    beta = 1.0
    noisy = (1 - eps) * p + eps * (1 - p)
    robust = jax.grad(lambda h: _two_orderings(h, jnp.float32(noisy), beta, "robust", eps))
    plain = jax.grad(lambda h: _two_orderings(h, jnp.float32(noisy), beta, "sigmoid"))
    clean_h = np.log(p / (1 - p)) / beta
    np.testing.assert_allclose(robust(jnp.float32(clean_h)), 0.0, atol=1e-5)
    np.testing.assert_allclose(plain(jnp.float32(np.log(noisy / (1 - noisy)) / beta)), 0.0, atol=1e-6)
    assert abs(float(plain(jnp.float32(clean_h)))) > 1e-2


def test_bad_arguments_raise_clear_errors():
    args = [_f32(POLICY_CHOSEN), _f32(POLICY_REJECTED), _f32(REF_CHOSEN), _f32(REF_REJECTED)]
    with pytest.raises(ValueError, match=r"variant must be one of \('sigmoid', 'ipo', 'robust', 'hinge'\), got 'dpo'"):
        dpo.loss(*args, 0.1, variant="dpo")
    with pytest.raises(ValueError, match=r"beta must be > 0, got 0.0"):
        dpo.loss(*args, 0.0)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\], got 0.6"):
        dpo.loss(*args, 0.1, label_smoothing=0.6)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\) for variant 'robust'"):
        dpo.loss(*args, 0.1, variant="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match=r"identical shapes"):
        dpo.loss(args[0], args[1][:3], args[2], args[3], 0.1)
