"""``dual_ascent``: projected dual (sub)gradient ascent on the constraint KL ≤ KL_targ, with a floor,

    β_{t+1} = max(β_min, β_t + η · (KL_t − KL_targ)).

Why. Maximising the reward R(π) subject to KL(π) ≤ KL_targ has the Lagrangian

    L(π, β) = R(π) − β · (KL(π) − KL_targ),   β ≥ 0,

and the dual problem min_{β ≥ 0} g(β) with g(β) = max_π L(π, β). The dual function g is convex in β
(a maximum of functions affine in β), and at a policy π_t that maximises L(·, β_t) (approximately:
the policy update just taken with penalty β_t) a subgradient is ∂g/∂β = −(KL(π_t) − KL_targ). One
projected subgradient step of size η on g over the feasible set [β_min, ∞) is the rule above: β
rises while the constraint is violated (KL > KL_targ), falls while it is slack, and the projection
keeps it ≥ β_min ≥ 0. A fixed point with β > β_min has KL = KL_targ exactly (complementary
slackness: the multiplier is above its floor only while the constraint is active); with KL below
the target for good, β settles on β_min. β_min > 0 keeps a residual penalty when the constraint is
slack; β_min = 0 is the plain projection onto β ≥ 0.

This is the integral term of ``pid`` alone: with K_P = K_D = 0, K_I = η and β_min = 0 the two run the
same recursion (pid's integral starts at β_0). The step is additive, so β = 0 is not absorbing and
β_0 ≥ 0 suffices (β_0 below β_min is lifted to β_min by the first update). η is in units of β per
nat of KL error: the default 1 suits errors of order 0.01 around the default target 0.01. ``n`` is
ignored (the error is not scaled by the batch size).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kltrust import components, controllers


@components.hparams
class HParams:
    kl_target: jax.Array = components.knob(
        0.01, "the KL bound of the constraint KL <= kl_target", low=0, low_open=True)
    step_size: jax.Array = components.knob(
        1.0, "η: the dual step, β's change per nat of KL above the target", low=0)
    beta_min: jax.Array = components.knob(
        0.0, "the floor β is projected onto after every step", low=0)


def rule(state: controllers.ControllerState, observed_kl: jax.Array, n: jax.Array
         ) -> controllers.ControllerState:
    """One projected dual step: β ← max(β_min, β + η·(KL − KL_targ)); ``n`` is unused."""
    del n
    hp = state.hparams
    ascent = state.beta + hp.step_size * (observed_kl - hp.kl_target)
    return state.replace(beta=jnp.maximum(hp.beta_min, ascent))


CONTROLLER = controllers.register(controllers.Controller("dual_ascent", HParams, rule))
