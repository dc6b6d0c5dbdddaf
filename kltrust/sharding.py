"""Meshes and shardings. With one device every constraint here is a no-op.

Training programs place the environment (or sequence) batch over the mesh's ``data`` axis and
replicate parameters and optimiser state; XLA inserts the collectives (gradient all-reduce).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D ``data`` mesh over the first ``num_devices`` devices (all of them by default)."""
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}.")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Splits axis ``batch_axis`` over ``data``; axes before it (e.g. a vmapped run axis) are whole."""
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))


def batch_constraint(mesh: Mesh) -> Callable[[Any], Any]:
    """Inside jit: keeps the leading (batch) axis of every non-scalar leaf split over ``data``.

    Under `jax.vmap` the vmapped axis is left unconstrained by JAX's batching rule, so the same
    function serves single runs and vmapped sweeps.
    """

    def constrain(tree: Any) -> Any:
        return jax.tree.map(
            lambda x: jax.lax.with_sharding_constraint(
                x, batch_sharding(mesh) if x.ndim else replicated(mesh)
            ),
            tree,
        )

    return constrain
