"""``proportional``: Ziegler et al.'s controller (2019, "Fine-Tuning Language Models from Human
Preferences", sec. 2.2 and their released code),

    e_t = clip(KL / KL_targ − 1, −0.2, 0.2),   β_{t+1} = β_t · max(0, 1 + K · e_t · n / H),

with gain K (default 0.1, the paper's K_β), horizon H and ``n`` the samples (or environment steps)
behind the KL. n/H sets the step size: H is the number of samples over which a sustained 20% error
changes β by a factor of about e^(0.2·K). The paper writes the step as β(1 + K_β e_t); the released
code (and TRL's ``AdaptiveKLController``) uses 1 + e_t · n / H with no separate gain, i.e. K = 1.
Both are special cases of the rule here.

The factor is floored at 0 so that β can never change sign; it only reaches 0 if K · n / H ≥ 5, far
outside the intended regime K · n / H ≪ 1. The rule is multiplicative (β = 0 never moves), so β must
be > 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kltrust import components, controllers

# The error clip of Ziegler et al.
_CLIP = 0.2


@components.hparams
class HParams:
    kl_target: jax.Array = components.knob(
        0.01, "the KL β is steered to", low=0, low_open=True)
    horizon: jax.Array = components.knob(
        10_000.0, "H: samples over which a 20% error moves log β by about 0.2·K", low=0,
        low_open=True)
    gain: jax.Array = components.knob(
        0.1, "K: the paper's K_β (their released code: 1)", low=0)


def rule(state: controllers.ControllerState, observed_kl: jax.Array, n: jax.Array
         ) -> controllers.ControllerState:
    """One step: β ← β · max(0, 1 + K · clip(KL/KL_targ − 1, ±0.2) · n / H)."""
    hp = state.hparams
    error = jnp.clip(observed_kl / hp.kl_target - 1.0, -_CLIP, _CLIP)
    step = hp.gain * n / hp.horizon
    return state.replace(beta=state.beta * jnp.maximum(1.0 + error * step, 0.0))


CONTROLLER = controllers.register(
    controllers.Controller("proportional", HParams, rule, beta_positive=True))
