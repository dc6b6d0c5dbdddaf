"""KL-coefficient controllers: the rules that move the penalty weight β towards a target KL.

A KL-penalised objective is ``reward − β · KL(π ‖ π_ref)``. Each controller here is a pair of pure
functions in the style of optax:

    controller = controllers.get("adaptive")          # or controllers.adaptive()
    state = controller.init(0.1, kl_target=0.01)      # ControllerState
    state = controller.update(state, observed_kl, n)  # once per policy update
    beta = state.beta

``observed_kl`` is the KL measured over the last batch (a scalar) and ``n`` the number of samples or
environment steps in that batch; only ``proportional`` uses ``n``. Every hyperparameter is stored in
the state as a float32 array and the controller *kind* is static Python, so a whole sweep over
hyperparameters is one ``jax.vmap`` over a batched state, states pass through ``jax.lax.scan`` and
checkpoint with orbax like any other pytree, and ``update`` is safe under ``jit``, ``vmap`` and
``grad`` (no Python branching on values). All kinds share one state type; fields a kind does not use
hold 0.

The rules, with e the control error:

``fixed``
    β_{t+1} = β_t.

``adaptive`` (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", sec. 4):
    β_{t+1} = β_t / 2 if KL < KL_targ / 1.5,  2 β_t if KL > 1.5 · KL_targ,  β_t otherwise.
    The inequalities are strict, as in the paper: a KL exactly on a band edge leaves β unchanged.

``proportional`` (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
sec. 2.2 and their released code):
    e_t = clip(KL / KL_targ − 1, −0.2, 0.2),   β_{t+1} = β_t · (1 + K · e_t · n / H),
    with gain K (default 0.1, the paper's K_β) and horizon H. The paper writes the step as
    β(1 + K_β e_t); the released code (and TRL's ``AdaptiveKLController``) uses 1 + e_t · n / H with no
    separate gain, i.e. ``gain=1``. Both are special cases of the rule here. The factor is floored at
    0 so that β can never change sign; it only reaches 0 if K · n / H ≥ 5, far outside the intended
    regime K · n / H ≪ 1.

``pid`` (Stooke, Achiam & Abbeel 2020, "Responsive Safety in Reinforcement Learning by PID
Lagrangian Methods", Algorithm 2, without the optional smoothing of the P and D terms):
    e_t = KL − KL_targ
    I_{t+1} = max(0, I_t + K_I · e_t)
    D_t = max(0, e_t − e_{t−1})
    β_{t+1} = max(0, K_P · e_t + I_{t+1} + K_D · D_t)
    The paper accumulates I ← max(0, I + e) and multiplies by K_I afterwards; scaling by K_I inside the
    projection is the same controller for K_I > 0 (max commutes with a positive scale) and lets the
    integral start at β_0, so β starts at the value given to ``init``. The previous error starts at 0,
    so the first step sees D = max(0, KL − KL_targ).

Multiplicative rules (``adaptive``, ``proportional``) have β = 0 as a fixed point they can never
leave, so their ``init`` requires β > 0; ``fixed`` and ``pid`` accept β ≥ 0.

Validation. ``init`` checks every hyperparameter whose value is concrete and raises ``ValueError``
naming the argument, its value and the allowed range (a controller that accepts ``kl_target=0``
divides by zero or never settles). Under ``jit`` or ``vmap`` the values are tracers and the checks
are skipped; validate the concrete batch before tracing. Hyperparameters may be arrays: all fields
are broadcast to one shape, so ``init`` with a vector of targets gives a state ready for ``vmap``.

A NaN ``observed_kl`` makes β NaN under ``proportional`` and ``pid``; under ``adaptive`` it leaves β
unchanged (both comparisons with NaN are false). Check the KL for finiteness upstream.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

ArrayLike = Any  # a Python float, NumPy array or jax.Array

KINDS: tuple[str, ...] = ("fixed", "adaptive", "proportional", "pid")

# The band of the PPO adaptive rule and the error clip of Ziegler et al.
_ADAPTIVE_BAND = 1.5
_PROPORTIONAL_CLIP = 0.2

__all__ = [
    "KINDS",
    "Controller",
    "ControllerState",
    "adaptive",
    "fixed",
    "get",
    "pid",
    "proportional",
]


@flax.struct.dataclass
class ControllerState:
    """The state of any KL controller; every field is a float32 array of one common shape.

    Attributes:
      beta: the current KL coefficient β.
      kl_target: the target KL (0 and unused for ``fixed`` unless given).
      horizon: the proportional controller's horizon H, in samples or environment steps.
      gain: the proportional gain K.
      kp, ki, kd: the PID gains.
      integral: the PID integral term (already scaled by K_I).
      prev_error: the PID error at the previous update.
    """

    beta: jax.Array
    kl_target: jax.Array
    horizon: jax.Array
    gain: jax.Array
    kp: jax.Array
    ki: jax.Array
    kd: jax.Array
    integral: jax.Array
    prev_error: jax.Array


class Controller(NamedTuple):
    """A KL controller as a pair of pure functions.

    Attributes:
      init: ``init(beta, **hyperparameters) -> ControllerState``; the keywords each kind accepts are
        listed in its constructor's docstring.
      update: ``update(state, observed_kl, n) -> ControllerState``.
    """

    init: Callable[..., ControllerState]
    update: Callable[[ControllerState, jax.Array, jax.Array], ControllerState]


# ---------------------------------------------------------------- validation and construction


def _is_concrete(x: ArrayLike) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check(kind: str, name: str, value: ArrayLike, *, positive: bool) -> None:
    """Raises ValueError unless every element of a concrete ``value`` is finite and > 0 (or ≥ 0)."""
    if not _is_concrete(value):
        return  # under jit/vmap the value is unknown; the caller validates the concrete batch
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    in_range = finite & (arr > 0 if positive else arr >= 0)
    if not np.all(in_range):
        # Name the first offending element, printed in its own dtype (0.1 rather than 0.100000001).
        where = tuple(int(i) for i in np.argwhere(~in_range)[0])
        shown = str(arr[where]) + (f" at index {where}" if where else "")
        requirement = "finite" if not finite[where] else ("> 0" if positive else ">= 0")
        raise ValueError(f"kltrust.controllers.{kind}: {name} must be {requirement}, got {shown}.")


def _make_state(**fields: ArrayLike) -> ControllerState:
    """Builds a state with the given fields, zeros elsewhere, all float32 and one broadcast shape."""
    names = ControllerState.__dataclass_fields__.keys()
    values = [jnp.asarray(fields.get(name, 0.0), jnp.float32) for name in names]
    return ControllerState(**dict(zip(names, jnp.broadcast_arrays(*values))))


def _as_state_dtype(state: ControllerState, x: ArrayLike) -> jax.Array:
    # Keeps the state's dtype fixed (a float64 KL under x64 would otherwise promote β and break a
    # lax.scan carry).
    return jnp.asarray(x, state.beta.dtype)


# ---------------------------------------------------------------- the controllers


def fixed() -> Controller:
    """A constant β.

    ``init(beta, kl_target=0.0)``: beta ≥ 0; ``kl_target`` ≥ 0 is stored only so that logging code
    can treat every kind alike. ``update`` returns the state unchanged.
    """

    def init(beta: ArrayLike, *, kl_target: ArrayLike = 0.0) -> ControllerState:
        _check("fixed", "beta", beta, positive=False)
        _check("fixed", "kl_target", kl_target, positive=False)
        return _make_state(beta=beta, kl_target=kl_target)

    def update(state: ControllerState, observed_kl: jax.Array, n: jax.Array) -> ControllerState:
        del observed_kl, n
        return state

    return Controller(init, update)


def adaptive() -> Controller:
    """The PPO adaptive-KL rule: halve β below KL_targ/1.5, double it above 1.5·KL_targ.

    ``init(beta, *, kl_target)``: beta > 0, kl_target > 0. ``update`` ignores ``n``.
    """

    def init(beta: ArrayLike, *, kl_target: ArrayLike) -> ControllerState:
        _check("adaptive", "beta", beta, positive=True)
        _check("adaptive", "kl_target", kl_target, positive=True)
        return _make_state(beta=beta, kl_target=kl_target)

    def update(state: ControllerState, observed_kl: jax.Array, n: jax.Array) -> ControllerState:
        del n
        kl = _as_state_dtype(state, observed_kl)
        too_small = kl < state.kl_target / _ADAPTIVE_BAND
        too_large = kl > state.kl_target * _ADAPTIVE_BAND
        factor = jnp.where(too_small, 0.5, jnp.where(too_large, 2.0, 1.0)).astype(state.beta.dtype)
        return state.replace(beta=state.beta * factor)

    return Controller(init, update)


def proportional() -> Controller:
    """Ziegler et al.'s proportional controller: β ← β·(1 + K·clip(KL/KL_targ − 1, ±0.2)·n/H).

    ``init(beta, *, kl_target, horizon, gain=0.1)``: beta > 0, kl_target > 0, horizon > 0,
    gain ≥ 0. ``update(state, observed_kl, n)`` with ``n`` the samples (or environment steps) behind
    ``observed_kl``; n/H sets the step size, so H is the number of samples over which a sustained
    20% error changes β by a factor of about e^(0.2·K).
    """

    def init(
        beta: ArrayLike,
        *,
        kl_target: ArrayLike,
        horizon: ArrayLike,
        gain: ArrayLike = 0.1,
    ) -> ControllerState:
        _check("proportional", "beta", beta, positive=True)
        _check("proportional", "kl_target", kl_target, positive=True)
        _check("proportional", "horizon", horizon, positive=True)
        _check("proportional", "gain", gain, positive=False)
        return _make_state(beta=beta, kl_target=kl_target, horizon=horizon, gain=gain)

    def update(state: ControllerState, observed_kl: jax.Array, n: jax.Array) -> ControllerState:
        kl = _as_state_dtype(state, observed_kl)
        error = jnp.clip(kl / state.kl_target - 1.0, -_PROPORTIONAL_CLIP, _PROPORTIONAL_CLIP)
        step = state.gain * _as_state_dtype(state, n) / state.horizon
        return state.replace(beta=state.beta * jnp.maximum(1.0 + error * step, 0.0))

    return Controller(init, update)


def pid() -> Controller:
    """Stooke et al.'s PID Lagrangian on the KL: β = max(0, K_P·e + I + K_D·max(0, Δe)).

    ``init(beta, *, kl_target, kp=0.0, ki=0.0, kd=0.0)``: beta ≥ 0, kl_target > 0, gains ≥ 0. The
    integral starts at ``beta`` so the controller starts from the given β; with every gain 0 β stays
    constant. ``update`` ignores ``n`` (the error is not scaled by the batch size).
    """

    def init(
        beta: ArrayLike,
        *,
        kl_target: ArrayLike,
        kp: ArrayLike = 0.0,
        ki: ArrayLike = 0.0,
        kd: ArrayLike = 0.0,
    ) -> ControllerState:
        _check("pid", "beta", beta, positive=False)
        _check("pid", "kl_target", kl_target, positive=True)
        for name, gain in (("kp", kp), ("ki", ki), ("kd", kd)):
            _check("pid", name, gain, positive=False)
        return _make_state(
            beta=beta, kl_target=kl_target, kp=kp, ki=ki, kd=kd, integral=beta, prev_error=0.0
        )

    def update(state: ControllerState, observed_kl: jax.Array, n: jax.Array) -> ControllerState:
        del n
        error = _as_state_dtype(state, observed_kl) - state.kl_target
        integral = jnp.maximum(state.integral + state.ki * error, 0.0)
        derivative = jnp.maximum(error - state.prev_error, 0.0)
        beta = jnp.maximum(state.kp * error + integral + state.kd * derivative, 0.0)
        return state.replace(beta=beta, integral=integral, prev_error=error)

    return Controller(init, update)


_CONSTRUCTORS: dict[str, Callable[[], Controller]] = {
    "fixed": fixed,
    "adaptive": adaptive,
    "proportional": proportional,
    "pid": pid,
}


def get(kind: str) -> Controller:
    """The controller named ``kind``, one of ``KINDS``.

    Raises:
      ValueError: unknown ``kind``.
    """
    if kind not in _CONSTRUCTORS:
        raise ValueError(f"kltrust.controllers.get: kind must be one of {KINDS}, got {kind!r}.")
    return _CONSTRUCTORS[kind]()
