"""The dual-ascent controller against a float64 NumPy restatement of its recursion,
β_{t+1} = max(β_min, β_t + η·(KL_t − KL_targ)).

Inputs are float32 values, so the reference (float64 on the same values) differs from the
controller only by the controller's own rounding: per step fl(fl(η·fl(KL − KL_targ)) + β) has three
roundings of relative size ≤ U = 2⁻²⁴ each, i.e. an error ≤ U·(|β_t + η·e_t| + 2·η·|e_t|) to first
order, and the projection max(β_min, ·) is 1-Lipschitz, so errors add up over steps. The bound used
is that sum over the steps so far, doubled for the neglected second-order terms.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust import components, controllers
from kltrust.errors import ConfigError

U = 2.0**-24  # float32 unit round-off
DUAL = controllers.get("dual_ascent")


def _reference(beta, kl_target, step_size, beta_min, kls):
    """The recursion in float64: (β after each update, its error bound for a float32 run)."""
    beta, bound = float(beta), 0.0
    betas, bounds = [], []
    for kl in np.asarray(kls, np.float64):
        error = kl - kl_target
        ascent = beta + step_size * error
        bound += U * (abs(ascent) + 2.0 * step_size * abs(error))
        beta = max(beta_min, ascent)
        betas.append(beta)
        bounds.append(2.0 * bound)
    return np.array(betas), np.array(bounds)


@jax.jit
def _trace(state, kls):
    """β after each update, one jitted lax.scan."""

    def step(state, kl):
        state = DUAL.update(state, kl, 1.0)
        return state, state.beta

    return jax.lax.scan(step, state, kls)[1]


def test_matches_the_float64_recursion_over_a_kl_sequence():
    rng = np.random.default_rng(0)
    # KLs on both sides of the target, some far above, a stretch far below (the floor binds).
    kls = np.concatenate([rng.uniform(0.0, 0.05, 40), [0.5, 0.9], np.zeros(90),
                          rng.uniform(0.0, 0.05, 40)]).astype(np.float32)
    knobs = dict(kl_target=np.float32(0.02), step_size=np.float32(3.0), beta_min=np.float32(0.05))
    beta0 = np.float32(0.3)
    got = np.asarray(_trace(DUAL.init(beta0, **knobs), kls))
    expected, bound = _reference(beta0, *(float(v) for v in knobs.values()), kls)
    assert np.all(np.abs(got - expected) <= bound), np.max(np.abs(got - expected) / bound)
    # The sequence exercised both regimes: the floor bound and β well above it.
    assert np.any(expected == knobs["beta_min"]) and expected.max() > 2.0


def test_the_floor_holds_and_is_reached_exactly():
    state = DUAL.init(0.4, kl_target=0.1, step_size=2.0, beta_min=0.25)
    got = np.asarray(_trace(state, jnp.zeros(20)))
    # Each step removes η·KL_targ = 0.2 until the floor: 0.4 → max(0.25, 0.2) = 0.25, then stays.
    assert np.all(got >= np.float32(0.25)) and np.all(got == np.float32(0.25))
    # β_0 below the floor is lifted onto it by the first update when the KL is at the target.
    lifted = DUAL.update(DUAL.init(0.0, kl_target=0.1, beta_min=0.25), 0.1, 1.0)
    assert float(lifted.beta) == np.float32(0.25)


@pytest.mark.parametrize("beta", [0.0, 0.3, 7.5])
def test_kl_at_the_target_is_a_fixed_point(beta):
    # e = KL − KL_targ = 0 exactly, so β + η·0 = β and max(β_min, β) = β for β ≥ β_min.
    state = DUAL.init(beta, kl_target=0.01, step_size=5.0, beta_min=0.0)
    got = np.asarray(_trace(state, jnp.full(10, 0.01, jnp.float32)))
    np.testing.assert_array_equal(got, np.float32(beta))


def test_closed_loop_drives_the_kl_to_the_target():
    """On the plant KL = c/β (a larger penalty gives a smaller KL) the recursion is
    β ← β + η·(c/β − KL_targ), with fixed point β* = c/KL_targ and slope 1 − η·KL_targ²/c there:
    η = 10, c = KL_targ = 0.01 contracts by 0.9 per step, so 300 steps leave ≈ 0.9³⁰⁰ ≈ 2e-14 of the
    start's error, far below float32 resolution near β* = 1."""
    c, target = 0.01, 0.01

    def step(state, _):
        kl = c / state.beta
        return DUAL.update(state, kl, 1.0), kl

    for beta0 in (0.5, 3.0):
        state = DUAL.init(beta0, kl_target=target, step_size=10.0)
        final, kls = jax.lax.scan(step, state, None, length=300)
        np.testing.assert_allclose(final.beta, c / target, rtol=1e-5)
        np.testing.assert_allclose(kls[-1], target, rtol=1e-5)


def test_vmap_over_knobs_equals_a_loop():
    knobs = dict(kl_target=np.array([0.01, 0.02, 0.05, 0.1], np.float32),
                 step_size=np.array([0.5, 1.0, 4.0, 0.0], np.float32),
                 beta_min=np.array([0.0, 0.1, 0.02, 0.3], np.float32))
    beta0 = np.array([0.2, 0.5, 1.0, 0.4], np.float32)
    kls = np.random.default_rng(1).uniform(0.0, 0.2, 25).astype(np.float32)
    batched = jax.jit(jax.vmap(_trace, in_axes=(0, None)))(DUAL.init(beta0, **knobs), kls)
    for i in range(4):
        alone = _trace(DUAL.init(beta0[i], **{k: v[i] for k, v in knobs.items()}), kls)
        # Elementwise float32 arithmetic: batched and alone round identically.
        np.testing.assert_array_equal(batched[i], alone)
        expected, bound = _reference(beta0[i], *(float(v[i]) for v in knobs.values()), kls)
        assert np.all(np.abs(np.asarray(alone) - expected) <= bound)
    np.testing.assert_array_equal(batched[3], np.float32(0.4))  # η = 0: β never moves


def test_is_pid_with_only_the_integral_term():
    """K_P = K_D = 0, K_I = η and β_min = 0 make the PID Lagrangian this recursion: its integral
    I ← max(0, I + K_I·e) starts at β_0 and β = max(0, 0·e + I + 0·D) = I."""
    kls = np.random.default_rng(2).uniform(0.0, 0.08, 30).astype(np.float32)
    pid = controllers.get("pid")
    dual = _trace(DUAL.init(0.2, kl_target=0.03, step_size=2.0, beta_min=0.0), kls)

    @jax.jit
    def pid_trace(state, kls):
        return jax.lax.scan(lambda s, kl: (pid.update(s, kl, 1.0),) * 2, state, kls)[1].beta

    integral_only = pid_trace(pid.init(0.2, kl_target=0.03, kp=0.0, ki=2.0, kd=0.0), kls)
    np.testing.assert_array_equal(dual, integral_only)


def test_knobs_declare_their_ranges_and_init_checks_them():
    assert set(components.knobs(DUAL.hparams)) == {"kl_target", "step_size", "beta_min"}
    assert "dual_ascent" in controllers.kinds() and not DUAL.beta_positive
    for knobs, message in [
        (dict(kl_target=0.0), "kl_target = 0.0: must be in (0, inf)."),
        (dict(step_size=-1.0), "step_size = -1.0: must be in [0, inf)."),
        (dict(beta_min=-0.5), "beta_min = -0.5: must be in [0, inf)."),
    ]:
        with pytest.raises(ConfigError) as info:
            DUAL.init(0.1, **knobs)
        assert str(info.value) == f"kltrust.controllers.dual_ascent: {message}"
    with pytest.raises(ConfigError, match=r"beta = -0.1: must be in \[0, inf\)"):
        DUAL.init(-0.1)
