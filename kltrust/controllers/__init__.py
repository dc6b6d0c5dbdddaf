"""KL-coefficient controllers: the rules that move the penalty weight β towards a target KL.

A KL-penalised objective is ``reward − β · KL(π ‖ π_ref)``. Each controller is a pair of pure
functions in the style of optax:

    controller = controllers.get("adaptive")
    state = controller.init(0.1, kl_target=0.01)      # or controller.init(0.1, hparams)
    state = controller.update(state, observed_kl, n)  # once per policy update
    beta = state.beta

``observed_kl`` is the KL measured over the last batch (a scalar) and ``n`` the number of samples or
environment steps in that batch (only rules that scale their step by the batch use it).

Components. Each kind is one module of this package (``fixed``, ``adaptive``, ``proportional``,
``pid``, ``dual_ascent``, ...), whose docstring states its rule and whose ``HParams`` declares its
knobs once (`kltrust.components.knob`: default, allowed range, one line of documentation). The
module registers a `Controller` in `REGISTRY`, which imports the package's modules on first use, so
adding a controller is adding a file: the programs derive their choices (`kinds`), config defaults
(`kltrust.components.group_defaults`), validation and parsing from the registry.

State. `ControllerState` holds β, the kind's knobs (its ``HParams``, float32 arrays) and the rule's
``memory`` (a dict of arrays, e.g. the PID integral; empty for memoryless rules). The kind is
static Python, every number an array, so a sweep over knobs is one ``jax.vmap`` over a batched
state, states pass through ``jax.lax.scan`` and checkpoint with orbax like any other pytree, and
``update`` is safe under ``jit``, ``vmap`` and ``grad`` (no Python branching on values).
``update`` keeps every leaf's dtype: the KL and ``n`` are cast to β's dtype before the rule sees
them (a float64 KL under x64 would otherwise promote β and break a ``lax.scan`` carry).

Multiplicative rules have β = 0 as a fixed point they can never leave, so they declare
``beta_positive`` and their ``init`` requires β > 0; the others accept β ≥ 0.

Validation. ``init`` checks β and every knob whose value is concrete and raises a ``ValueError`` (a
`kltrust.errors.ConfigError`) naming the argument, its value and the allowed range (a controller
that accepts ``kl_target=0`` divides by zero or never settles). Under ``jit`` or ``vmap`` the values
are tracers and the checks are skipped; validate the concrete batch before tracing (the programs
validate their configs with `kltrust.components.validate_groups`). Knobs may be arrays: β, the knobs
and the memory are broadcast to one shape, so ``init`` with a vector of targets gives a state ready
for ``vmap``.

A NaN ``observed_kl`` makes β NaN under rules that add or multiply by the error; under ``adaptive``
it leaves β unchanged (both comparisons with NaN are false). Check the KL for finiteness upstream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from kltrust import components
from kltrust.errors import ConfigError

ArrayLike = Any  # a Python float, NumPy array or jax.Array

__all__ = ["REGISTRY", "Controller", "ControllerState", "get", "kinds", "register"]


@flax.struct.dataclass
class ControllerState:
    """The state of any KL controller; every leaf is an array of one common shape and dtype.

    Attributes:
      beta: the current KL coefficient β.
      hparams: the kind's knobs, an instance of its module's ``HParams``.
      memory: what the rule carries from one update to the next, by name (e.g. the PID integral and
        previous error); empty for memoryless rules.
    """

    beta: jax.Array
    hparams: Any
    memory: dict[str, jax.Array]


Rule = Callable[[ControllerState, jax.Array, jax.Array], ControllerState]


def _no_memory(beta: jax.Array, hparams: Any) -> dict[str, jax.Array]:
    del beta, hparams
    return {}


@dataclasses.dataclass(frozen=True)
class Controller:
    """One kind of KL controller: its knobs, its rule and the pure ``init``/``update`` pair.

    Attributes:
      kind: the name it is registered (and chosen in configs) under.
      hparams: its ``@components.hparams`` class of knobs.
      rule: ``rule(state, kl, n) -> state``, one update; ``kl`` and ``n`` arrive in β's dtype.
      beta_positive: whether β must be > 0 (multiplicative rules); else β ≥ 0.
      start: ``start(beta, hparams) -> memory``, the rule's memory before the first update.
    """

    kind: str
    hparams: type
    rule: Rule
    beta_positive: bool = False
    start: Callable[[jax.Array, Any], dict[str, jax.Array]] = _no_memory

    def init(self, beta: ArrayLike, hparams: Any = None, /, **knobs: ArrayLike) -> ControllerState:
        """The state before the first update: β = ``beta`` and the knobs either as an ``HParams``
        instance (``hparams``) or as keywords (defaults for the rest). Concrete values are checked.
        """
        if hparams is not None and knobs:
            raise TypeError(f"kltrust.controllers.{self.kind}: give the knobs as an HParams or as "
                            "keywords, not both.")
        declared = components.knobs(self.hparams)
        if hparams is None:
            for name in knobs:
                if name not in declared:
                    raise TypeError(f"kltrust.controllers.{self.kind}: unknown knob {name!r}; its "
                                    f"knobs are {tuple(declared)}.")
            values = {name: knobs.get(name, spec.default) for name, spec in declared.items()}
        else:
            values = {name: getattr(hparams, name) for name in declared}
        low_open = self.beta_positive
        self._check("beta", beta, components.Knob(1.0, "β", low=0.0, low_open=low_open))
        for name, value in values.items():
            self._check(name, value, declared[name])
        # β, the knobs and the memory share one broadcast shape (a batch of hyperparameters is a
        # batch of states, ready for vmap), all float32.
        arrays = jnp.broadcast_arrays(*(jnp.asarray(v, jnp.float32)
                                        for v in (beta, *values.values())))
        beta, hp = arrays[0], self.hparams(**dict(zip(values, arrays[1:])))
        memory = {name: jnp.broadcast_to(jnp.asarray(value, jnp.float32), beta.shape)
                  for name, value in self.start(beta, hp).items()}
        return ControllerState(beta=beta, hparams=hp, memory=memory)

    def update(self, state: ControllerState, observed_kl: ArrayLike, n: ArrayLike
               ) -> ControllerState:
        """One step of the rule after a policy update that measured ``observed_kl`` on ``n``
        samples. Every leaf keeps its dtype (a lax.scan carry stays valid)."""
        dtype = state.beta.dtype
        new = self.rule(state, jnp.asarray(observed_kl, dtype), jnp.asarray(n, dtype))
        return jax.tree.map(lambda old, x: jnp.asarray(x, old.dtype), state, new)

    def _check(self, name: str, value: ArrayLike, spec: components.Knob) -> None:
        """Raises ``kltrust.controllers.KIND: NAME = V: must be in [low, high).`` for the first
        element of a concrete ``value`` outside the knob's interval (nan and ±inf included)."""
        if isinstance(value, jax.core.Tracer):
            return  # under jit/vmap the value is unknown; the caller validates the concrete batch
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
        ok = spec.ok(arr)
        if np.all(ok):
            return
        # Name the first offending element, printed in its own dtype (0.1 rather than 0.100000001).
        where = tuple(int(i) for i in np.argwhere(~ok)[0])
        shown = str(arr[where]) + (f" at index {where}" if where else "")
        raise ConfigError(f"kltrust.controllers.{self.kind}: {name} = {shown}: must be in "
                          f"{spec.allowed()}.")


REGISTRY: components.Registry[Controller] = components.Registry("controller", "kltrust.controllers")


def register(controller: Controller) -> Controller:
    """Adds ``controller`` to `REGISTRY` under its kind (one line at the end of its module)."""
    return REGISTRY.register(controller.kind, controller)


def kinds() -> tuple[str, ...]:
    """The registered kinds, in file-name order (the registry imports the package's modules)."""
    return REGISTRY.names()


def get(kind: str, key: str = "") -> Controller:
    """The controller registered as ``kind``. An unknown kind is a `ConfigError` (a ``ValueError``)
    listing the kinds, naming config ``key`` with a did-you-mean when given."""
    return REGISTRY.get(kind, key)
