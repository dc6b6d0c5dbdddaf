"""``pid``: Stooke, Achiam & Abbeel's PID Lagrangian on the KL (2020, "Responsive Safety in
Reinforcement Learning by PID Lagrangian Methods", Algorithm 2, without the optional smoothing of
the P and D terms),

    e_t     = KL − KL_targ
    I_{t+1} = max(0, I_t + K_I · e_t)
    D_t     = max(0, e_t − e_{t−1})
    β_{t+1} = max(0, K_P · e_t + I_{t+1} + K_D · D_t)

The paper accumulates I ← max(0, I + e) and multiplies by K_I afterwards; scaling by K_I inside the
projection is the same controller for K_I > 0 (max commutes with a positive scale) and lets the
integral start at β_0, so β starts at the value given to ``init`` (with every gain 0 it stays
there). The previous error starts at 0, so the first step sees D = max(0, KL − KL_targ). The memory
is ``integral`` (I, already scaled by K_I) and ``prev_error``. β ≥ 0; ``n`` is ignored (the error is
not scaled by the batch size).

The default gains K_P = 10, K_I = 1 suit errors of order 0.01, the default target's scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kltrust import components, controllers


@components.hparams
class HParams:
    kl_target: jax.Array = components.knob(0.01, "the KL β is steered to", low=0, low_open=True)
    kp: jax.Array = components.knob(10.0, "K_P, the proportional gain", low=0)
    ki: jax.Array = components.knob(1.0, "K_I, the integral gain", low=0)
    kd: jax.Array = components.knob(0.0, "K_D, the gain on rises of the error", low=0)


def start(beta: jax.Array, hparams: HParams) -> dict[str, jax.Array]:
    """The PID memory before the first update: the integral term starts at β (so the first
    update continues from the initial β) and the previous error at 0.
    """
    del hparams
    return {"integral": beta, "prev_error": jnp.zeros_like(beta)}


def rule(state: controllers.ControllerState, observed_kl: jax.Array, n: jax.Array
         ) -> controllers.ControllerState:
    """One PID step, e = KL − target:
    I ← max(0, I + K_I·e), β = max(0, K_P·e + I + K_D·max(0, e − e_prev)).
    """
    del n
    hp, memory = state.hparams, state.memory
    error = observed_kl - hp.kl_target
    integral = jnp.maximum(memory["integral"] + hp.ki * error, 0.0)
    derivative = jnp.maximum(error - memory["prev_error"], 0.0)
    beta = jnp.maximum(hp.kp * error + integral + hp.kd * derivative, 0.0)
    return state.replace(beta=beta, memory={"integral": integral, "prev_error": error})


CONTROLLER = controllers.register(controllers.Controller("pid", HParams, rule, start=start))
