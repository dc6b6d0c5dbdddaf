"""The one weighted mean the objectives share (PPO's token masks, TRPO's and DPO's exact weights)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def weighted_mean(values: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """Σ w·v / Σ w over every element, or the plain mean when ``weight`` is None.

    ``weight`` has ``values``' shape and any non-negative scale: a 0/1 mask (padding counts for
    nothing) or probabilities of an enumerated batch (an exact expectation). An all-zero weight
    gives 0 rather than NaN.
    """
    if weight is None:
        return jnp.mean(values)
    return jnp.sum(weight * values) / jnp.maximum(jnp.sum(weight), 1e-8)
