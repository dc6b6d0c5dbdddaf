"""Tests of the KL controllers against hand-computed values and plain-Python reimplementations.

The reference loops run in float64 Python; the controllers run in float32, hence rtol 1e-5 over
a few dozen multiplicative steps. The tests of the interface (vmap, jit, dtypes, checkpoints,
validation) iterate `controllers.REGISTRY`, so they cover a kind added as a new file.
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kltrust import components, controllers
from kltrust.errors import ConfigError

KINDS = controllers.kinds()

# One jitted update per kind, shared by every test so each shape compiles once.
UPDATE = {kind: jax.jit(controllers.get(kind).update) for kind in KINDS}


def _run(kind, state, kls, ns):
    """Applies UPDATE[kind] once per (kl, n); returns every intermediate state's fields as NumPy."""
    trace = []
    for kl, n in zip(kls, ns):
        state = UPDATE[kind](state, kl, n)
        trace.append(jax.tree.map(np.asarray, state))
    return trace


def _index(state, i):
    return jax.tree.map(lambda x: x[i], state)


def _knob_values(spec: components.Knob, count: int) -> np.ndarray:
    """``count`` distinct values inside the knob's interval, derived from its default."""
    if spec.default > 0:
        values = spec.default * np.array([1.0, 2.0, 0.5, 1.5, 3.0, 0.25])[:count]
    else:
        values = spec.default + np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])[:count]
    assert np.all(spec.ok(values)), (spec, values)
    return values


def _outside(spec: components.Knob) -> float:
    """A value just outside the knob's interval."""
    return spec.low - 1.0 if math.isfinite(spec.low) else spec.high + 1.0


# ---------------------------------------------------------------- fixed


def test_fixed_never_changes():
    state = controllers.get("fixed").init(0.3)
    for kl in (0.0, 1e-6, 0.5, 100.0):
        new = UPDATE["fixed"](state, kl, 1000.0)
        assert float(new.beta) == np.float32(0.3)
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state)):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- adaptive (PPO)


def test_adaptive_halves_doubles_and_holds():
    # Target 0.75 makes both band edges exact in float32: 0.75/1.5 = 0.5, 0.75·1.5 = 1.125.
    state = controllers.get("adaptive").init(0.2, kl_target=0.75)
    cases = {
        0.1: 0.1,  # far below: halve
        0.49: 0.1,
        0.5: 0.2,  # exactly target/1.5: strict inequality, unchanged
        0.75: 0.2,
        1.125: 0.2,  # exactly 1.5·target: unchanged
        1.13: 0.4,
        10.0: 0.4,  # far above: double
    }
    for kl, expected in cases.items():
        assert float(UPDATE["adaptive"](state, kl, 1.0).beta) == np.float32(expected), kl
    # One float32 ulp beyond each edge is outside the band.
    below = np.nextafter(np.float32(0.5), np.float32(0.0))
    above = np.nextafter(np.float32(1.125), np.float32(2.0))
    assert float(UPDATE["adaptive"](state, below, 1.0).beta) == np.float32(0.1)
    assert float(UPDATE["adaptive"](state, above, 1.0).beta) == np.float32(0.4)


def test_adaptive_ignores_n_and_compounds():
    state = controllers.get("adaptive").init(1.0, kl_target=0.01)
    trace = _run("adaptive", state, [1.0, 1.0, 1e-4, 0.01, 0.02], [1.0, 1e6, 0.0, 5.0, 7.0])
    np.testing.assert_array_equal([t.beta for t in trace], [2.0, 4.0, 2.0, 2.0, 4.0])


def test_adaptive_factor_scales_the_step_and_one_is_the_fixed_rule():
    kls, ns = [1.0, 1.0, 1e-4, 0.01, 0.02, 1e-6], [1.0] * 6
    tripled = _run("adaptive", controllers.get("adaptive").init(1.0, kl_target=0.01, factor=3.0),
                   kls, ns)
    np.testing.assert_allclose([t.beta for t in tripled], [3.0, 9.0, 3.0, 3.0, 9.0, 3.0],
                               rtol=1e-7)  # x/3·3 is x to within one float32 rounding
    # factor = 1: the paper's fixed-β rows as points of the adaptive program, bit for bit.
    betas = np.array([0.3, 1.0, 3.0, 10.0], np.float32)
    held = _run("adaptive", controllers.get("adaptive").init(
        jnp.asarray(betas), kl_target=jnp.full(4, 0.01), factor=jnp.ones(4)), kls, ns)
    fixed = _run("fixed", controllers.get("fixed").init(jnp.asarray(betas)), kls, ns)
    for a, b in zip(held, fixed):
        np.testing.assert_array_equal(a.beta, b.beta)
    np.testing.assert_array_equal(held[-1].beta, betas)


# ---------------------------------------------------------------- proportional (Ziegler et al.)


def _proportional_reference(beta, kl_target, horizon, gain, kls, ns):
    betas = []
    for kl, n in zip(kls, ns):
        error = min(max(kl / kl_target - 1.0, -0.2), 0.2)
        beta = beta * (1.0 + gain * error * n / horizon)
        betas.append(beta)
    return betas


@pytest.mark.parametrize("gain", [0.1, 1.0])
def test_proportional_matches_python_formula(gain):
    kl_target, horizon = 6.0, 10_000.0
    # Errors: +0.05, +1.5 (clipped to +0.2), −0.1, −0.9 (clipped to −0.2), exactly ±0.2, 0.
    kls = [6.3, 15.0, 5.4, 0.6, 7.2, 4.8, 6.0]
    ns = [256.0, 512.0, 256.0, 1024.0, 256.0, 128.0, 256.0]
    state = controllers.get("proportional").init(0.2, kl_target=kl_target, horizon=horizon, gain=gain)
    got = [t.beta for t in _run("proportional", state, kls, ns)]
    expected = _proportional_reference(0.2, kl_target, horizon, gain, kls, ns)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # The clip by hand: KL 15 (error 1.5) moves β exactly as KL 7.2 (error 0.2) does.
    one_step = lambda kl: float(UPDATE["proportional"](state, kl, 512.0).beta)  # noqa: E731
    assert one_step(15.0) == one_step(7.2) == pytest.approx(0.2 * (1 + gain * 0.2 * 512 / 1e4))
    assert one_step(0.0) == one_step(4.8) == pytest.approx(0.2 * (1 - gain * 0.2 * 512 / 1e4))


def test_proportional_default_gain_is_ziegler_k_beta():
    state = controllers.get("proportional").init(1.0, kl_target=1.0, horizon=100.0)
    assert float(state.hparams.gain) == np.float32(0.1)
    # error +0.2, n/H = 1: β ← 1 · (1 + 0.1 · 0.2).
    assert float(UPDATE["proportional"](state, 2.0, 100.0).beta) == pytest.approx(1.02, rel=1e-6)


def test_proportional_gradient_inside_and_outside_the_clip():
    state = controllers.get("proportional").init(0.5, kl_target=2.0, horizon=1000.0, gain=0.1)
    grad = jax.jit(jax.grad(lambda kl: UPDATE["proportional"](state, kl, 100.0).beta))
    # Inside the clip: dβ'/dKL = β · K · (n/H) / KL_targ.
    assert float(grad(2.1)) == pytest.approx(0.5 * 0.1 * 0.1 / 2.0, rel=1e-5)
    assert float(grad(5.0)) == 0.0  # clipped


# ---------------------------------------------------------------- PID Lagrangian (Stooke et al.)


def _pid_reference(beta, kl_target, kp, ki, kd, kls):
    integral, prev_error, out = beta, 0.0, []
    for kl in kls:
        error = kl - kl_target
        integral = max(0.0, integral + ki * error)
        derivative = max(0.0, error - prev_error)
        beta = max(0.0, kp * error + integral + kd * derivative)
        prev_error = error
        out.append((beta, integral, prev_error))
    return out


def test_pid_matches_python_loop_and_stays_nonnegative():
    kl_target, kp, ki, kd = 0.05, 2.0, 0.5, 1.0
    # Above target, overshoot, then long far below target, which would drive an unprojected
    # integral (and β) negative, then back above.
    kls = [0.08, 0.2, 0.06, 0.04, 0.0, 0.0, 0.0, 0.0, 0.01, 0.3, 0.05, 0.05]
    state = controllers.get("pid").init(0.02, kl_target=kl_target, kp=kp, ki=ki, kd=kd)
    assert float(state.beta) == float(state.memory["integral"]) == np.float32(0.02)
    assert float(state.memory["prev_error"]) == 0.0
    trace = _run("pid", state, kls, [1.0] * len(kls))
    expected = np.array(_pid_reference(0.02, kl_target, kp, ki, kd, kls))
    got = np.array([(t.beta, t.memory["integral"], t.memory["prev_error"]) for t in trace])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert np.all(got[:, 0] >= 0.0) and np.all(got[:, 1] >= 0.0)
    # The projections were active: β and the integral both hit exactly 0 in the low stretch.
    assert np.any(got[:, 0] == 0.0) and np.any(got[:, 1] == 0.0)


def test_pid_with_zero_gains_holds_beta():
    state = controllers.get("pid").init(0.7, kl_target=0.1, kp=0.0, ki=0.0, kd=0.0)
    trace = _run("pid", state, [0.0, 5.0, 0.1], [1.0] * 3)
    np.testing.assert_allclose([t.beta for t in trace], [0.7] * 3, rtol=1e-7)


# ---------------------------------------------------------------- every registered kind


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_one_module_declaring_its_knobs(kind):
    controller = controllers.get(kind)
    assert controller.kind == kind
    assert controller.rule.__module__ == f"kltrust.controllers.{kind}"  # one file per kind
    for name, spec in components.knobs(controller.hparams).items():
        assert spec.doc and spec.ok(np.asarray(spec.default)), name


@pytest.mark.parametrize("kind", KINDS)
def test_vmap_over_states_equals_per_element_updates(kind):
    controller = controllers.get(kind)
    knobs = {name: _knob_values(spec, 4)
             for name, spec in components.knobs(controller.hparams).items()}
    states = controller.init(jnp.array([0.1, 0.2, 0.3, 0.4]), **knobs)
    assert {leaf.shape for leaf in jax.tree.leaves(states)} == {(4,)}  # broadcast to one shape
    kls = jnp.array([0.001, 0.06, 0.5, 1.0])
    ns = jnp.array([16.0, 32.0, 64.0, 128.0])
    batched = jax.jit(jax.vmap(controller.update))(states, kls, ns)
    for i in range(4):
        single = UPDATE[kind](controller.init(0.1 * (i + 1), **{k: v[i] for k, v in knobs.items()}),
                              kls[i], ns[i])
        for a, b in zip(jax.tree.leaves(_index(batched, i)), jax.tree.leaves(single)):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    # A shared KL for the whole batch of hyperparameters.
    shared = jax.vmap(controller.update, in_axes=(0, None, None))(states, 0.05, 32.0)
    assert shared.beta.shape == (4,)


@pytest.mark.parametrize("kind", KINDS)
def test_init_from_hparams_equals_init_from_keywords(kind):
    controller = controllers.get(kind)
    knobs = {name: _knob_values(spec, 2)[1]
             for name, spec in components.knobs(controller.hparams).items()}
    hp = components.create(controller.hparams, **knobs)
    by_keywords, by_hparams = controller.init(0.3, **knobs), controller.init(0.3, hp)
    assert jax.tree.structure(by_keywords) == jax.tree.structure(by_hparams)
    for a, b in zip(jax.tree.leaves(by_keywords), jax.tree.leaves(by_hparams)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_init_under_jit_and_vmap_skips_checks_and_keeps_float32(kind):
    controller = controllers.get(kind)
    state = jax.vmap(controller.init)(jnp.array([0.1, 0.2]))
    assert state.beta.shape == (2,)
    for name, spec in components.knobs(controller.hparams).items():
        # A value outside the interval is refused eagerly; traced values are not inspected.
        with pytest.raises(ConfigError, match=f"kltrust.controllers.{kind}: {name} = "):
            controller.init(0.1, **{name: _outside(spec)})
        jax.jit(lambda t, name=name: controller.init(0.1, **{name: t}).beta)(_outside(spec))
    # A float64 KL and an integer n (under x64) leave every leaf float32: a scan carry stays valid.
    with jax.enable_x64(True):
        new = controller.update(controller.init(0.1), np.float64(0.3), 7)
        scanned, _ = jax.lax.scan(lambda s, kl: (controller.update(s, kl, 7), None),
                                  controller.init(0.1), jnp.array([0.3, 0.001], jnp.float64))
    for state in (new, scanned):
        assert {leaf.dtype for leaf in jax.tree.leaves(state)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("kind", KINDS)
def test_beta_range_follows_the_rule(kind):
    controller = controllers.get(kind)
    if controller.beta_positive:  # multiplicative: β = 0 could never move again
        with pytest.raises(ConfigError, match=rf"^kltrust.controllers.{kind}: beta = 0.0: must "
                                              r"be in \(0, inf\)\.$"):
            controller.init(0.0)
    else:
        controller.init(0.0)
        with pytest.raises(ConfigError, match=rf"^kltrust.controllers.{kind}: beta = -0.1: must "
                                              r"be in \[0, inf\)\.$"):
            controller.init(-0.1)


@pytest.mark.parametrize("kind", KINDS)
def test_a_batched_state_checkpoints_with_orbax(kind, tmp_path):
    controller = controllers.get(kind)
    knobs = {name: _knob_values(spec, 3)
             for name, spec in components.knobs(controller.hparams).items()}
    state = controller.update(controller.init(jnp.array([0.1, 0.2, 0.3]), **knobs), 0.02, 64.0)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", state)
    checkpointer.wait_until_finished()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = checkpointer.restore(tmp_path / "state", abstract)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- closed loop on a toy plant


@functools.partial(jax.jit, static_argnames=("kind", "steps"))
def _closed_loop(kind, state, c, n, steps):
    """Iterates the controller on the plant KL = c/β (a larger penalty gives a smaller KL)."""

    def step(state, _):
        kl = c / state.beta
        return controllers.get(kind).update(state, kl, n), kl

    return jax.lax.scan(step, state, None, length=steps)


def test_closed_loop_adaptive_settles_inside_band():
    target = 0.01
    c = jnp.array([10.0, 1e-3, 3e-4, 0.01])  # KL starts 1000× above, 10× below, ... the target
    state = controllers.get("adaptive").init(jnp.ones(4), kl_target=target)
    final, kls = _closed_loop("adaptive", state, c, 1.0, 300)
    settled = np.asarray(kls[-100:])
    assert np.all(settled >= target / 1.5) and np.all(settled <= target * 1.5), settled[-1]
    np.testing.assert_array_equal(kls[-1], kls[-100])  # inside the band, β stops moving


def test_closed_loop_proportional_converges_to_target():
    target = 0.01
    c = jnp.array([0.1, 1e-3, 0.0123, 0.008])  # KL starts 10× above, 10× below, near the target
    # Ziegler's released setting: gain 1 and n/H ≈ 0.1 (a 20% error moves β by ≈ 2% per update).
    state = controllers.get("proportional").init(
        jnp.ones(4), kl_target=target, horizon=10_000.0, gain=1.0
    )
    final, kls = _closed_loop("proportional", state, c, 1024.0, 400)
    np.testing.assert_allclose(kls[-1], target, rtol=0.05)
    np.testing.assert_allclose(c / final.beta, target, rtol=0.05)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda: controllers.get("adaptive").init(0.1, kl_target=0.0),
            "kltrust.controllers.adaptive: kl_target = 0.0: must be in (0, inf).",
        ),
        (
            lambda: controllers.get("pid").init(0.1, kl_target=0.0),
            "kltrust.controllers.pid: kl_target = 0.0: must be in (0, inf).",
        ),
        (
            lambda: controllers.get("proportional").init(0.1, kl_target=-1.0, horizon=1.0),
            "kltrust.controllers.proportional: kl_target = -1.0: must be in (0, inf).",
        ),
        (
            lambda: controllers.get("fixed").init(-0.5),
            "kltrust.controllers.fixed: beta = -0.5: must be in [0, inf).",
        ),
        (
            lambda: controllers.get("pid").init(-0.1, kl_target=0.1),
            "kltrust.controllers.pid: beta = -0.1: must be in [0, inf).",
        ),
        (
            lambda: controllers.get("adaptive").init(0.0, kl_target=0.1),
            "kltrust.controllers.adaptive: beta = 0.0: must be in (0, inf).",
        ),
        (
            lambda: controllers.get("proportional").init(0.1, kl_target=0.1, horizon=0.0),
            "kltrust.controllers.proportional: horizon = 0.0: must be in (0, inf).",
        ),
        (
            lambda: controllers.get("proportional").init(0.1, kl_target=0.1, horizon=1.0, gain=-0.1),
            "kltrust.controllers.proportional: gain = -0.1: must be in [0, inf).",
        ),
        (
            lambda: controllers.get("pid").init(0.1, kl_target=0.1, kd=-2.0),
            "kltrust.controllers.pid: kd = -2.0: must be in [0, inf).",
        ),
        (
            lambda: controllers.get("adaptive").init(0.1, kl_target=float("nan")),
            "kltrust.controllers.adaptive: kl_target = nan: must be in (0, inf).",
        ),
        (
            lambda: controllers.get("adaptive").init(0.1, kl_target=jnp.array([0.1, 0.0])),
            "kltrust.controllers.adaptive: kl_target = 0.0 at index (1,): must be in (0, inf).",
        ),
        (
            lambda: controllers.get("pid").init(jnp.array([[0.1, 0.2], [-0.3, -0.4]]), kl_target=0.1),
            "kltrust.controllers.pid: beta = -0.3 at index (1, 0): must be in [0, inf).",
        ),
        (
            lambda: controllers.get("proportional").init(0.1, kl_target=0.1, horizon=0),
            "kltrust.controllers.proportional: horizon = 0.0: must be in (0, inf).",
        ),
        (
            lambda: controllers.get("fixed").init(np.inf),
            "kltrust.controllers.fixed: beta = inf: must be in [0, inf).",
        ),
    ],
)
def test_init_validation_messages(call, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        call()


def test_init_refuses_unknown_knobs_and_mixed_forms():
    with pytest.raises(TypeError, match=r"kltrust.controllers.adaptive: unknown knob 'horizon'; "
                                        r"its knobs are \('kl_target', 'factor'\)"):
        controllers.get("adaptive").init(0.1, horizon=1.0)
    hp = components.create(controllers.get("adaptive").hparams)
    with pytest.raises(TypeError, match="not both"):
        controllers.get("adaptive").init(0.1, hp, kl_target=0.1)


def test_unknown_kind_lists_the_registered_ones():
    message = f"unknown controller 'lagrangian'; the controllers are {KINDS}."
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        controllers.get("lagrangian")
    with pytest.raises(ConfigError, match=r"config.variant.kl_penalty = 'pdi': must be one of "
                                          r".*; did you mean 'pid'\?"):
        controllers.get("pdi", "variant.kl_penalty")
