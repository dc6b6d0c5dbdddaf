"""``adaptive``: the PPO adaptive-KL rule (Schulman et al. 2017, "Proximal Policy Optimization
Algorithms", sec. 4),

    β_{t+1} = β_t / f   if KL < KL_targ / 1.5,
              f · β_t   if KL > 1.5 · KL_targ,
              β_t       otherwise,

with the paper's f = 2 (``factor``). f = 1 leaves β where it started: the paper's fixed-β rows,
as points of the same compiled program as its adaptive rows (a sweep vmaps both; the
``fixed`` controller gives the same β bit for bit). The inequalities are strict, as in the paper:
a KL exactly on a band edge leaves β unchanged. The rule is multiplicative (β = 0 never moves),
so β must be > 0. It ignores ``n``.
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
    factor: jax.Array = components.knob(
        2.0, "β is multiplied or divided by this outside the band (1: β stays fixed)", low=1)


def rule(state: controllers.ControllerState, observed_kl: jax.Array, n: jax.Array
         ) -> controllers.ControllerState:
    """One step of the adaptive rule above: β divided or multiplied by ``factor`` outside the band
    (KL_targ/1.5, 1.5·KL_targ) around the target, unchanged inside it.
    """
    del n
    target = state.hparams.kl_target
    too_small = observed_kl < target / _BAND
    too_large = observed_kl > target * _BAND
    step = state.hparams.factor.astype(state.beta.dtype)
    beta = jnp.where(too_small, state.beta / step,
                     jnp.where(too_large, state.beta * step, state.beta))
    return state.replace(beta=beta)


CONTROLLER = controllers.register(
    controllers.Controller("adaptive", HParams, rule, beta_positive=True))
