"""Components: pieces that own their knobs and register themselves.

A *component* (a β controller, a preference loss, a token method, a KL estimator, ...) lives in one
module and declares there everything about itself:

    @components.hparams
    class HParams:                       # its numeric knobs: float32 arrays in the compiled program
        kl_target: jax.Array = components.knob(0.01, "the KL the controller steers to", low=0,
                                               low_open=True)

    REGISTRY.register("adaptive", Adaptive(hparams=HParams, ...))   # or as a decorator

Everything a program needs about the knobs is derived from that one declaration (`config_defaults`,
`validate`, `from_config`, `create`), so a knob is written once: its default, its allowed range
and one line of documentation. A `Registry` finds the components of a package by importing its
modules on first use, so adding a component is adding a file.

A program's config keeps the knobs of a registry's components in one group with a sub-group per
registered component (`group_defaults`), e.g.

    config.variant.kl_penalty = "proportional"                 # the choice: static
    config.hparams.controller.proportional.kl_target = 2.0     # its knobs: arrays, sweepable

Every component's group is present (derived from the registry), so ``--config.hparams.controller.
pid.kp=1`` works whatever the preset chose; only the chosen component's knobs are range-checked
and travel into the compiled program.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kltrust.errors import ConfigError, check, check_choice, unknown_key

T = TypeVar("T")

__all__ = ["Knob", "Registry", "chosen_hparams", "config_defaults", "create", "from_config", "group",
           "group_defaults", "groups", "hparams", "knob", "knobs", "validate", "validate_groups"]


@dataclasses.dataclass(frozen=True)
class Knob:
    """One numeric hyperparameter: its default, its allowed interval and a line of documentation.

    The interval is [low, high] with either end open; values must be finite unless ``allow_inf``
    (then +inf passes where ``high`` is inf, e.g. "no gradient clipping").
    """

    default: float
    doc: str
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    allow_inf: bool = False

    def allowed(self) -> str:
        """The interval as text, e.g. ``(0, inf)`` or ``[0, 0.5]``."""
        top_open = self.high_open or (self.high == math.inf and not self.allow_inf)
        lo = "(" if self.low_open or self.low == -math.inf else "["
        return f"{lo}{_short(self.low)}, {_short(self.high)}{')' if top_open else ']'}"

    def ok(self, values: np.ndarray) -> np.ndarray:
        """Elementwise: inside the interval (nan never is)."""
        top_open = self.high_open or (self.high == math.inf and not self.allow_inf)
        above = values > self.low if self.low_open else values >= self.low
        below = values < self.high if top_open else values <= self.high
        return above & below & ~np.isnan(values)


def _short(x: float) -> str:
    return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}"


def knob(default: float, doc: str, *, low: float = -math.inf, high: float = math.inf,
         low_open: bool = False, high_open: bool = False, allow_inf: bool = False) -> Any:
    """A field of a `hparams` class: ``name: jax.Array = knob(default, doc, low=..., ...)``."""
    spec = Knob(float(default), doc, float(low), float(high), low_open, high_open, allow_inf)
    if not spec.ok(np.asarray(spec.default)):
        raise ValueError(f"knob default {default!r} is outside its own range {spec.allowed()}.")
    return dataclasses.field(default=spec.default, metadata={"knob": spec})


def group(registry: Registry, doc: str) -> Any:
    """A field of a `hparams` class holding the knobs of one component of ``registry`` (which one
    is a static choice of the program, e.g. ``variant.kl_penalty``); its config is a
    `group_defaults` group. ``name: Any = components.group(controllers.REGISTRY, doc)``."""
    return dataclasses.field(default=None, metadata={"group": registry, "doc": doc})


def hparams(cls: type[T]) -> type[T]:
    """Makes ``cls`` a `flax.struct.dataclass` of knobs (a pytree: every field is a leaf, or the
    knobs of a chosen component for a `group` field)."""
    cls = flax.struct.dataclass(cls)
    for field in dataclasses.fields(cls):
        if "knob" not in field.metadata and "group" not in field.metadata:
            raise TypeError(f"{cls.__qualname__}.{field.name} is not declared with components.knob.")
    return cls


def knobs(cls: type) -> dict[str, Knob]:
    """The knobs of a `hparams` class, in declaration order (`group` fields are not knobs)."""
    return {f.name: f.metadata["knob"] for f in dataclasses.fields(cls) if "knob" in f.metadata}


def groups(cls: type) -> dict[str, Registry]:
    """The `group` fields of a `hparams` class: name -> the registry whose knobs they hold."""
    return {f.name: f.metadata["group"] for f in dataclasses.fields(cls) if "group" in f.metadata}


def config_defaults(cls: type) -> ml_collections.ConfigDict:
    """The knobs' defaults as a config group (what a preset starts from); a `group` field gives
    one sub-group per registered component (`group_defaults`)."""
    fields: dict[str, Any] = {name: k.default for name, k in knobs(cls).items()}
    fields.update({name: group_defaults(registry) for name, registry in groups(cls).items()})
    return ml_collections.ConfigDict(fields)


def _numbers(value: Any, key: str) -> np.ndarray:
    try:
        arr = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        arr = None
    check(arr is not None and not isinstance(value, (bool, str)) and np.size(arr) > 0, key, value,
          "a number (or a non-empty array of numbers, a sweep's values)")
    return arr


def check_value(spec: Knob, value: Any, key: str) -> None:
    """Raises ``config.KEY = V: must be in [low, high].`` naming the first value out of range."""
    arr = _numbers(value, key)
    ok = spec.ok(arr)
    if not np.all(ok):
        bad = float(arr[~ok].flat[0]) if arr.ndim else float(arr)
        raise ConfigError(f"config.{key} = {bad!r}: must be in {spec.allowed()}.")


def validate(cls: type, node: Any, prefix: str, chosen: Mapping[str, str | None] | None = None
             ) -> None:
    """Checks a config group against ``cls``'s knobs: no unknown or missing key, every value a
    number (or array of numbers) inside its knob's interval. ``prefix`` names the group. A `group`
    field is checked by `validate_groups` with the component ``chosen[field]``."""
    declared, nested = knobs(cls), groups(cls)
    check(isinstance(node, (ml_collections.ConfigDict, Mapping)), prefix, node,
          "a group of fields (a ConfigDict)")
    for key in node.keys():
        if key not in declared and key not in nested:
            raise unknown_key(f"{prefix}.{key}", [*declared, *nested])
    for key, spec in declared.items():
        if key not in node:
            raise ConfigError(f"config.{prefix}.{key}: missing; the keys here are {sorted(declared)}.")
        check_value(spec, node[key], f"{prefix}.{key}")
    for key, registry in nested.items():
        if key in node:  # a missing group means every component's defaults (`chosen_hparams`)
            validate_groups(registry, node[key], f"{prefix}.{key}", (chosen or {}).get(key))


def from_config(cls: type[T], node: Any, chosen: Mapping[str, str] | None = None) -> T:
    """An instance of ``cls`` from a (validated) config group, every knob a float32 array; a
    `group` field holds the knobs of the component ``chosen[field]`` (`chosen_hparams`)."""
    fields: dict[str, Any] = {name: jnp.asarray(node[name], jnp.float32) for name in knobs(cls)}
    for name, registry in groups(cls).items():
        fields[name] = chosen_hparams(registry, node.get(name), (chosen or {})[name])
    return cls(**fields)


def create(cls: type[T], where: str = "", **values: Any) -> T:
    """An instance of ``cls`` from keyword values (defaults for the rest), float32 arrays broadcast
    to one shape. Concrete values are checked against the knobs' ranges (a `ConfigError` naming
    ``where.NAME``); traced values (under jit or vmap) are not."""
    declared = knobs(cls)
    for key in values:
        if key not in declared:
            raise unknown_key(f"{where}.{key}" if where else key, declared)
    merged = {name: values.get(name, spec.default) for name, spec in declared.items()}
    for name, value in merged.items():
        if not isinstance(value, jax.core.Tracer):
            check_value(declared[name], value, f"{where}.{name}" if where else name)
    arrays = jnp.broadcast_arrays(*(jnp.asarray(v, jnp.float32) for v in merged.values()))
    return cls(**dict(zip(merged, arrays)))


def describe(cls: type) -> str:
    """One line per knob: ``name = default in [low, high]: doc`` (for docs and ``--help`` text)."""
    return "\n".join(f"{name} = {k.default:g} in {k.allowed()}: {k.doc}"
                     for name, k in knobs(cls).items())


class Registry(Generic[T]):
    """Named components of one kind. ``package``: a package whose modules are imported on first
    lookup, so a component registers itself by being a file there (or a module, imported then).

    ``registry.register(name, entry)`` adds one; ``@registry.register(name)`` registers the
    decorated object. ``get(name, key)`` raises a `ConfigError` naming config ``key`` with a
    did-you-mean for an unknown name.
    """

    def __init__(self, kind: str, package: str | None = None):
        self.kind, self._package = kind, package
        self._entries: dict[str, T] = {}
        self._discovered = package is None

    def register(self, name: str, entry: T | None = None) -> Any:
        """Adds ``entry`` under ``name``, or (without ``entry``) returns a decorator that does.
        
        Registering the same object twice is harmless; a second object under one name raises.
        """
        if entry is None:
            return lambda obj: self.register(name, obj)
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice.")
        self._entries[name] = entry
        return entry

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self._package)
        # A plain module registers its components by being imported; a package, by its modules.
        for module in pkgutil.iter_modules(getattr(package, "__path__", ())):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self._package}.{module.name}")

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order (discovering the package's modules first)."""
        self._discover()
        return tuple(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        """``(name, entry)`` pairs in registration order (a snapshot: registering meanwhile is safe)."""
        self._discover()
        return iter(list(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def get(self, name: str, key: str = "") -> T:
        """The entry registered as ``name``; an unknown name raises a `ConfigError` naming config
        ``key`` (with a did-you-mean when ``key`` is given).
        """
        if name not in self.names():
            if key:
                check_choice(name, self.names(), key)
            raise ConfigError(f"unknown {self.kind} {name!r}; the {self.kind}s are {self.names()}.")
        return self._entries[name]


# ---------------------------------------------------------------- knob groups of a registry


def group_defaults(registry: Registry) -> ml_collections.ConfigDict:
    """One knob group per registered component, ``{name: {knob: default}}``: where a program's
    config keeps the knobs of a registry's components (e.g. ``hparams.controller``), so that
    ``--config.hparams.controller.pid.kp=1`` works whatever the preset chose."""
    return ml_collections.ConfigDict({name: config_defaults(entry.hparams)
                                      for name, entry in registry.items()})


def validate_groups(registry: Registry, node: Any, prefix: str, chosen: str | None) -> None:
    """Checks a `group_defaults` group: every key a registered component and every knob name
    known (a typo never waits for the preset that reads it); the values of ``chosen`` (the
    component the program runs, None for none) in range. The values of the others are not read."""
    check(isinstance(node, (ml_collections.ConfigDict, Mapping)), prefix, node,
          "a group of fields (a ConfigDict)")
    for name in node.keys():
        entry = registry.get(name) if name in registry else None
        if entry is None:
            raise unknown_key(f"{prefix}.{name}", registry.names())
        if name == chosen:
            validate(entry.hparams, node[name], f"{prefix}.{name}")
        else:
            for key in node[name].keys():
                if key not in knobs(entry.hparams):
                    raise unknown_key(f"{prefix}.{name}.{key}", knobs(entry.hparams))


def chosen_hparams(registry: Registry, node: Any, chosen: str) -> Any:
    """The knobs of component ``chosen`` from a (validated) `group_defaults` group; its defaults
    where the group has none for it."""
    entry = registry.get(chosen)
    if node is None or chosen not in node:
        return create(entry.hparams)
    return from_config(entry.hparams, node[chosen])
