"""``adaptive``: the PPO adaptive-KL rule (Schulman et al. 2017, "Proximal Policy Optimization
Algorithms", sec. 4),

    β_{t+1} = β_t / 2   if KL < KL_targ / 1.5,
              2 β_t     if KL > 1.5 · KL_targ,
              β_t       otherwise.

The inequalities are strict, as in the paper: a KL exactly on a band edge leaves β unchanged. The
rule is multiplicative (β = 0 never moves), so β must be > 0. It ignores ``n``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kltrust import components, controllers

# The half-width of the paper's band, as a factor on the target.
_BAND = 1.5


@components.hparams
class HParams:
    kl_target: jax.Array = components.knob(
        0.01, "the KL β is steered to (the paper's d_targ)", low=0, low_open=True)


def rule(state: controllers.ControllerState, observed_kl: jax.Array, n: jax.Array
         ) -> controllers.ControllerState:
    del n
    target = state.hparams.kl_target
    too_small = observed_kl < target / _BAND
    too_large = observed_kl > target * _BAND
    factor = jnp.where(too_small, 0.5, jnp.where(too_large, 2.0, 1.0)).astype(state.beta.dtype)
    return state.replace(beta=state.beta * factor)


CONTROLLER = controllers.register(
    controllers.Controller("adaptive", HParams, rule, beta_positive=True))
