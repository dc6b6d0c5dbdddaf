"""f-DPO (kltrust/objectives/fdpo.py): scores against f′ in float64 NumPy, its limits, and its
population optimum on the exact bandit against the closed-form f-regularised optimum."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kltrust import components
from kltrust.objectives import fdpo, preference
from kltrust.tasks import bandit as bandit_lib

U = np.linspace(-3.0, 3.0, 13)


def _np_f_prime(name, t, alpha=0.5):
    """f′(t) of each divergence, from f as written in the module docstring (float64)."""
    return {
        "sigmoid": np.log(t) + 1.0,  # reverse KL, f = t log t
        "fdpo_forward_kl": -1.0 / t,  # f = −log t
        "fdpo_js": np.log(t) + 1.0 - np.log((t + 1.0) / 2.0) - 1.0,  # f = t log t − (t+1) log((t+1)/2)
        "fdpo_alpha": (1.0 - t ** (-alpha)) / alpha,  # f = (t^{1−α} − (1−α)t − α)/(α(α−1))
    }[name]


def _loss(name, u_w, u_l, beta, hp=None):
    """preference.loss on log-ratios u (π_ref's log-probabilities 0), one pair per entry."""
    zeros = jnp.zeros_like(u_w)
    return preference.loss(u_w, u_l, zeros, zeros, beta, name, hp)


@pytest.mark.parametrize("name", ["sigmoid", "fdpo_forward_kl", "fdpo_js", "fdpo_alpha"])
def test_loss_is_dpo_with_the_f_prime_margin(name):
    beta = 0.7
    u_w, u_l = np.meshgrid(U, U[::-1])
    u_w, u_l = u_w.ravel(), u_l.ravel()
    margin = _np_f_prime(name, np.exp(u_w)) - _np_f_prime(name, np.exp(u_l))
    want = np.mean(np.logaddexp(0.0, -beta * margin))  # −log σ(βh), float64
    got, metrics = _loss(name, jnp.asarray(u_w, jnp.float32), jnp.asarray(u_l, jnp.float32), beta)
    # ψ reaches e^3 ≈ 20 (forward KL); float32 exp and the margin: a few ulps of 20 on β·h, and the
    # loss's slope in β·h is ≤ 1: 1e-5 relative.
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["reward_margin"], beta * margin.mean(), rtol=1e-5, atol=1e-6)


def test_alpha_divergence_limits():
    """α → 1: the forward KL's loss (ψ differs by the constant 1, which the margin cancels);
    α → 0: DPO's (ψ = (1 − e^{−αu})/α = u − αu²/2 + O(α²))."""
    u_w = jnp.asarray(U, jnp.float32)
    u_l = jnp.asarray(U[::-1], jnp.float32)
    near_one = fdpo.AlphaHParams(alpha=jnp.float32(1.0 - 1e-6))
    np.testing.assert_allclose(_loss("fdpo_alpha", u_w, u_l, 0.5, near_one)[0],
                               _loss("fdpo_forward_kl", u_w, u_l, 0.5)[0], rtol=1e-5)
    near_zero = fdpo.AlphaHParams(alpha=jnp.float32(1e-4))
    # The O(α·u²) = 1e-4·9 change of ψ moves the loss by at most β·2·9e-4/2 ≈ 5e-4.
    np.testing.assert_allclose(_loss("fdpo_alpha", u_w, u_l, 0.5, near_zero)[0],
                               _loss("sigmoid", u_w, u_l, 0.5)[0], atol=5e-4)


def _f_optimum(name, logp_ref, reward, beta, alpha=0.5):
    """π = π_ref·t with f′(t) = r/β + c, c by bisection so that Σπ = 1 (float64, per context)."""
    inv = {
        "fdpo_forward_kl": lambda s: -1.0 / s,  # f′(t) = −1/t, s < 0
        "fdpo_js": lambda s: 1.0 / (2.0 * np.exp(-s) - 1.0),  # f′(t) = log(2t/(1+t)) < log 2
        "fdpo_alpha": lambda s: (1.0 - alpha * s) ** (-1.0 / alpha),  # s < 1/α
    }[name]
    upper = {"fdpo_forward_kl": 0.0, "fdpo_js": math.log(2.0), "fdpo_alpha": 1.0 / alpha}[name]
    out = []
    for lp, r in zip(np.asarray(logp_ref, np.float64), np.asarray(reward, np.float64)):
        lo, hi = -1e3, upper - r.max() / beta - 1e-15  # Σπ rises with c, to ∞ at the top
        for _ in range(200):
            c = 0.5 * (lo + hi)
            total = np.sum(np.exp(lp) * inv(r / beta + c))
            lo, hi = (c, hi) if total < 1.0 else (lo, c)
        out.append(np.exp(lp) * inv(r / beta + 0.5 * (lo + hi)))
    return np.array(out)


@pytest.mark.parametrize("name", ["fdpo_forward_kl", "fdpo_js", "fdpo_alpha"])
def test_population_optimum_on_exact_preferences_is_the_f_regularised_optimum(name):
    """Minimising the exact population loss (every pair weighted by its Bradley–Terry probability)
    over tabular logits reaches π_ref·(f′)⁻¹(r/β + c): the fixed point of E[r] − β·D_f(π‖π_ref)."""
    bandit = bandit_lib.make(0)
    beta = 1.0
    pairs = bandit_lib.exact_preferences(bandit)
    hp = components.create(preference.LOSSES.get(name).hparams)
    logp_ref = jax.nn.log_softmax(bandit.ref_logits, axis=-1)

    def objective(logits):
        logp = jax.nn.log_softmax(logits, axis=-1)
        c, w, l = pairs.context, pairs.chosen, pairs.rejected
        return preference.loss(logp[c, w], logp[c, l], logp_ref[c, w], logp_ref[c, l], beta, name,
                               hp, weights=pairs.weight)[0]

    solver = optax.lbfgs()

    @jax.jit
    def solve(logits):
        def step(carry, _):
            params, state = carry
            value, grad = optax.value_and_grad_from_state(objective)(params, state=state)
            updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                           value_fn=objective)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (logits, solver.init(logits)), None, length=300)
        return params

    final = np.asarray(jax.nn.softmax(solve(bandit.ref_logits), axis=-1), np.float64)
    want = _f_optimum(name, logp_ref, bandit.rewards, beta)
    np.testing.assert_allclose(want.sum(-1), 1.0, atol=1e-9)
    # L-BFGS to float32 stationarity: the gradient's round-off (~1e-7 on a loss of order 1) over a
    # curvature of order π(1 − π)·β² ≥ 1e-2 here leaves the probabilities within ~1e-4.
    np.testing.assert_allclose(final, want, atol=2e-4)
    # ... and it is not DPO's optimum π*_β (the divergences differ).
    assert np.abs(final - np.asarray(bandit_lib.optimal_policy(bandit, beta))).max() > 1e-2
