"""Meshes, shardings and the multi-host runtime. On one device every constraint here is a no-op.

Every training program runs on one ``Mesh`` with three named axes (`AXES`):

    runs  the vmapped run axis of a sweep (seeds × hyperparameters): runs on different devices
          never communicate, so this is the axis that scales a sweep out for free
    data  the environment / sequence batch (data parallelism: XLA all-reduces the gradients)
    fsdp  parameters and optimiser state split over devices (ZeRO-3 / FSDP); the batch is split
          over it too, so an fsdp device holds a slice of the weights *and* of the batch

Sizes come from a preset's ``mesh`` block (`mesh_config`), read into a spec and made a mesh by
`mesh_from_sizes`; one size may be -1, "every device left". Programs
apply the layouts with `jax.lax.with_sharding_constraint` inside jit (`batch_constraint`,
`param_constraint`); vmapping with ``spmd_axis_name=RUN_AXIS`` (`vmap_runs`) prefixes every such
constraint with the run axis. XLA inserts the collectives. Nothing here is device-specific: the
same program runs on 1 CPU, 8 forced CPU devices, a GPU box or a TPU pod slice.

Multi-host: `to_host` gathers arrays that span processes. Starting the runtime, who writes, and
the decisions several processes must share live in `kltrust.processes`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from kltrust.errors import ConfigError

RUN_AXIS = "runs"
DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
AXES = (RUN_AXIS, DATA_AXIS, FSDP_AXIS)
# The batch is split over data *and* fsdp: fsdp devices each see their own slice of the batch.
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


# ---------------------------------------------------------------- meshes


def mesh_config(runs: int = 1, data: int = -1, fsdp: int = 1) -> ml_collections.ConfigDict:
    """The ``config.mesh`` block of a preset: the size of each axis, one of them may be -1."""
    return ml_collections.ConfigDict(dict(runs=runs, data=data, fsdp=fsdp))


def mesh_shape(sizes: dict[str, int], num_devices: int, key: str = "mesh") -> dict[str, int]:
    """Resolves the -1 in ``sizes`` and checks the product against ``num_devices``.

    Raises `ConfigError` naming ``config.{key}.AXIS`` and the allowed values. The mesh may use fewer
    devices than there are (the first ones), except across processes, where it must use them all.
    """
    unknown = sorted(set(sizes) - set(AXES))
    if unknown:
        raise ConfigError(f"config.{key}.{unknown[0]}: unknown mesh axis; the axes are {AXES}.")
    shape = {axis: sizes.get(axis, 1) for axis in AXES}
    free = [a for a in AXES if shape[a] == -1]
    for axis in AXES:
        value = shape[axis]
        if not (isinstance(value, (int, np.integer)) and (value >= 1 or value == -1)):
            raise ConfigError(f"config.{key}.{axis} = {value!r}: must be an integer >= 1, or -1 for "
                             "every device left.")
    if len(free) > 1:
        raise ConfigError(f"config.{key}.{free[1]} = -1: at most one mesh axis may be -1 "
                         f"(config.{key}.{free[0]} is -1 too).")
    fixed = int(np.prod([v for v in shape.values() if v != -1]))
    if free:
        if num_devices % fixed:
            raise ConfigError(
                f"config.{key}.{free[0]} = -1: the other axes' product {fixed} must divide the "
                f"number of devices ({num_devices}).")
        shape[free[0]] = num_devices // fixed
    total = int(np.prod(list(shape.values())))
    if total > num_devices:
        raise ConfigError(
            f"config.{key} = {shape}: needs {total} devices, only {num_devices} are available; "
            f"choose sizes whose product is at most {num_devices}.")
    if jax.process_count() > 1 and total != num_devices:
        raise ConfigError(
            f"config.{key} = {shape}: uses {total} of {num_devices} devices; across "
            f"{jax.process_count()} processes the mesh must use every device.")
    return shape


def make_mesh(num_devices: int | None = None, *, runs: int = 1, fsdp: int = 1) -> Mesh:
    """A (runs, data, fsdp) mesh over the first ``num_devices`` devices (all by default); the data
    axis takes whatever ``runs`` and ``fsdp`` leave."""
    total = jax.device_count() if num_devices is None else num_devices
    if not 1 <= total <= jax.device_count():
        raise ValueError(f"num_devices must be in [1, {jax.device_count()}], got {num_devices}.")
    if total % (runs * fsdp):
        raise ValueError(f"runs × fsdp = {runs * fsdp} must divide num_devices = {total}.")
    return _mesh({RUN_AXIS: runs, DATA_AXIS: total // (runs * fsdp), FSDP_AXIS: fsdp})


def mesh_from_sizes(sizes: Mapping[str, int], key: str = "mesh") -> Mesh:
    """The mesh of axis ``sizes`` (a preset's ``mesh`` block as a dict; one size may be -1; an
    axis left out has size 1, or every device left for ``data``) on this process's devices."""
    return _mesh(mesh_shape(dict(sizes), jax.device_count(), key))


def _mesh(shape: dict[str, int]) -> Mesh:
    total = int(np.prod(list(shape.values())))
    devices = jax.devices()[:total]
    # Auto axes: layouts are constraints that XLA propagates (not sharding-in-types).
    return jax.make_mesh(tuple(shape[a] for a in AXES), AXES, axis_types=(AxisType.Auto,) * 3,
                         devices=devices)


def batch_shards(mesh: Mesh) -> int:
    """How many pieces a batch is cut into: the data axis times the fsdp axis."""
    return mesh.shape[DATA_AXIS] * mesh.shape[FSDP_AXIS]


# ---------------------------------------------------------------- shardings


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that keeps a full copy of an array on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Splits axis ``batch_axis`` over data × fsdp; axes before it (e.g. a run axis) stay whole."""
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), BATCH_AXES))


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> PartitionSpec:
    """Where FSDP splits one parameter: its largest axis divisible by ``fsdp_size``.

    Vectors (biases, layer-norm scales) and arrays with no divisible axis stay replicated: they
    are small, and splitting them would cost a collective for nothing.
    """
    if fsdp_size == 1 or len(shape) < 2:
        return PartitionSpec()
    divisible = [i for i, d in enumerate(shape) if d % fsdp_size == 0]
    if not divisible:
        return PartitionSpec()
    axis = max(divisible, key=lambda i: shape[i])
    return PartitionSpec(*[FSDP_AXIS if i == axis else None for i in range(len(shape))])


def param_shardings(mesh: Mesh, tree: Any) -> Any:
    """A `NamedSharding` per leaf of a parameter (or optimiser-state) tree: FSDP where the mesh
    has an fsdp axis > 1, replicated otherwise."""
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), mesh.shape[FSDP_AXIS])),
                        tree)


def stacked_param_shardings(mesh: Mesh, tree: Any) -> Any:
    """`param_shardings` for a tree whose leaves carry a leading run axis: that axis on ``runs``,
    the rest as FSDP lays out one run's leaf. Pins a vmapped train state's layout (jit's
    ``out_shardings``) so that every compiled chunk receives what it was compiled for."""
    fsdp = mesh.shape[FSDP_AXIS]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, PartitionSpec(RUN_AXIS, *fsdp_spec(np.shape(x)[1:], fsdp))),
        tree)


def batch_constraint(mesh: Mesh) -> Callable[[Any], Any]:
    """Inside jit: keeps the leading (batch) axis of every non-scalar leaf split over data × fsdp.

    Under `vmap_runs` the vmapped axis is put on ``runs``, so the same function serves single runs
    and sweeps.
    """

    def constrain(tree: Any) -> Any:
        return jax.tree.map(
            lambda x: jax.lax.with_sharding_constraint(
                x, batch_sharding(mesh) if x.ndim else replicated(mesh)),
            tree)

    return constrain


def param_constraint(mesh: Mesh) -> Callable[[Any], Any]:
    """Inside jit: lays out a parameter or optimiser-state tree as `param_shardings` says."""

    def constrain(tree: Any) -> Any:
        return jax.tree.map(
            lambda x: jax.lax.with_sharding_constraint(
                x, NamedSharding(mesh, fsdp_spec(x.shape, mesh.shape[FSDP_AXIS]))),
            tree)

    return constrain


def split_runs(tree: Any, mesh: Mesh) -> Any:
    """Inside jit: every leaf's leading (run) axis on ``runs``, its other axes left to XLA."""
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(
            mesh, PartitionSpec(RUN_AXIS, *[PartitionSpec.UNCONSTRAINED] * (x.ndim - 1)))),
        tree)


def vmap_runs(fn: Callable, in_axes: Any = 0) -> Callable:
    """`jax.vmap` over a run axis that every sharding constraint inside puts on ``runs``."""
    return jax.vmap(fn, in_axes=in_axes, spmd_axis_name=RUN_AXIS)


def padded_run_index(num_runs: int, mesh: Mesh) -> np.ndarray:
    """Indices that pad ``num_runs`` runs to a multiple of the run axis by repeating the last run
    (the copies are computed and dropped; a sweep's group can then have any size)."""
    multiple = mesh.shape[RUN_AXIS]
    padded = -(-num_runs // multiple) * multiple
    return np.minimum(np.arange(padded), num_runs - 1)


# ---------------------------------------------------------------- placing and gathering


def place(tree: Any, shardings: Any) -> Any:
    """Puts host values (identical on every process) onto devices with ``shardings`` (one sharding
    or a matching tree of them)."""
    return jax.device_put(tree, shardings)


def place_local_batch(local: Any, mesh: Mesh) -> Any:
    """Builds the global batch from each process's own rows (its contiguous share, `local_rows`),
    split over data × fsdp. With one process this is a `place`."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        local)


def local_rows(index: np.ndarray) -> np.ndarray:
    """This process's contiguous share of a global batch's row indices."""
    count = jax.process_count()
    if len(index) % count:
        raise ValueError(f"a batch of {len(index)} rows cannot be split over {count} processes.")
    return np.asarray(index).reshape(count, -1)[jax.process_index()]


def to_host(tree: Any) -> Any:
    """NumPy copies of every leaf on every process, gathering leaves that span processes.

    Waits for ``tree`` first: a gather is a program of its own, and one launched while the program
    computing ``tree`` still runs can reach the processes' collectives in different orders (seen:
    process 1 in the gather's all-gather, process 0 still in the training chunk's all-reduce, both
    waiting for ever).
    """
    tree = jax.block_until_ready(tree)

    def one(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)
