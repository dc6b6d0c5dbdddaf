"""``fixed``: a constant β,

    β_{t+1} = β_t.

The baseline the other rules are measured against, and what a program runs when nothing is
controlled. It has no knobs (β itself is the program's ``beta``), no memory, and accepts β ≥ 0.
"""

from __future__ import annotations

import jax

from kltrust import components, controllers


@components.hparams
class HParams:
    """No knobs: β is the program's."""


def rule(state: controllers.ControllerState, observed_kl: jax.Array, n: jax.Array
         ) -> controllers.ControllerState:
    """β never moves: the state is returned as it came."""
    del observed_kl, n
    return state


CONTROLLER = controllers.register(controllers.Controller("fixed", HParams, rule))
