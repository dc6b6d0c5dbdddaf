"""Checks of a config group against a program's defaults and declared knobs: the configuration
layer's shared helpers (control PPO/TRPO in `kltrust.train.control_config`, token RLHF in
`kltrust.train.token_config`).

Every message names the key, its value and what is allowed (``config.KEY = VALUE: must be ...``, a
`ConfigError`), before anything is compiled; the format and error type live in `kltrust.errors`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from kltrust import components, sharding
from kltrust.errors import ConfigError, check, did_you_mean, unknown_key


def inf_knobs(registry: components.Registry, group: str) -> tuple[str, ...]:
    """``GROUP.COMPONENT.KNOB`` for every knob of ``registry``'s components that allows +inf: what
    `check_finite` must let through in a `components.group_defaults` group named ``group``."""
    return tuple(f"{group}.{name}.{knob}" for name, entry in registry.items()
                 for knob, spec in components.knobs(entry.hparams).items() if spec.allow_inf)


def variant_error(error: Exception) -> ConfigError:
    """A program's ``Variant`` refusing a field (``variant.NAME must be one of (...), got 'X'.``)
    as a `ConfigError` naming ``config.variant.NAME``, with a did-you-mean for a near miss."""
    message = f"config.{' '.join(str(error).split())}"
    match = re.search(r"must be one of (\(.*\)), got ('[^']*')\.$", message)
    if match:
        choices, value = ast.literal_eval(match[1]), ast.literal_eval(match[2])
        hint = did_you_mean(value, choices).strip()
        if hint:
            message = f"{message[:-1]}; {hint}"
    return ConfigError(message)


def check_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
               path: str = "") -> None:
    """Refuses keys that ``reference`` (a program's defaults) does not have and values of another
    type than the default's, naming the key: a typo in a config file must not be silently ignored.

    Integers are accepted where a float is expected; under ``hparams`` an array or sequence of
    numbers is accepted too (a sweep's values).
    """
    for key in config.keys():
        name = f"{path}{key}"
        if key not in reference:
            raise unknown_key(name, reference.keys())
        value, default = config[key], reference[key]
        if isinstance(default, ml_collections.ConfigDict):
            check(isinstance(value, ml_collections.ConfigDict), name, value,
                  "a group of fields (a ConfigDict)")
            check_keys(value, default, f"{name}.")
        elif default is not None and not _same_kind(value, default, in_hparams="hparams" in path):
            check(False, name, value, f"of type {type(default).__name__} (like its default "
                  f"{default!r})")


def _same_kind(value: Any, default: Any, in_hparams: bool) -> bool:
    number = lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(  # noqa: E731
        v, (bool, np.bool_))
    if isinstance(default, bool):
        return isinstance(value, (bool, np.bool_))
    if isinstance(default, int):
        return number(value) and float(value).is_integer() and not isinstance(value, float)
    if isinstance(default, float):
        if in_hparams and isinstance(value, (tuple, list, np.ndarray, jax.Array)):
            return all(number(v) for v in np.ravel(np.asarray(value)).tolist())
        return number(value)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))


def check_range(hparams: ml_collections.ConfigDict, name: str, low: float, high: float = np.inf,
                low_open: bool = False, high_open: bool = False, prefix: str = "hparams",
                allow_inf: bool = False) -> None:
    """Checks ``hparams[name]`` (a scalar or a sweep's array) lies in the interval, else raises
    a `ConfigError` naming ``config.{prefix}.{name}``.

    Every value must be a finite number: nan and ±inf are refused (an unbounded interval is open at
    inf), unless ``allow_inf``, which lets +inf through where ``high`` is inf (the interval then
    prints as ``[low, inf]``).
    """
    v = _numbers(hparams, name, prefix)
    top_open = high_open or (high == np.inf and not allow_inf)
    ok = (v > low if low_open else v >= low) & (v < high if top_open else v <= high)
    if not np.all(ok):  # nan fails every comparison
        bad = _first_bad(v, ok)
        lo = "(" if low_open else "["
        hi = ")" if top_open else "]"
        raise ConfigError(f"config.{prefix}.{name} = {bad!r}: must be in {lo}{low}, {high}{hi}.")


def _numbers(hparams: ml_collections.ConfigDict, name: str, prefix: str) -> np.ndarray:
    """``hparams[name]`` as float64 (a scalar or a sweep's array); a `ConfigError` if not numbers."""
    try:
        return np.asarray(hparams[name], np.float64)
    except (TypeError, ValueError):
        check(False, f"{prefix}.{name}", hparams[name], "a number")


def _first_bad(v: np.ndarray, ok: np.ndarray) -> float:
    """The first value failing ``ok`` (a sweep's array names its first bad entry)."""
    return float(v[~ok].flat[0] if v.ndim else v)


def check_finite(hparams: ml_collections.ConfigDict, prefix: str = "hparams",
                 allow_inf: tuple[str, ...] = ()) -> None:
    """Refuses nan and ±inf in every field of ``hparams`` (scalars or a sweep's arrays), also in
    those the config's variant does not read, and in every nested knob group (e.g.
    ``hparams.controller.pid``, whichever controller is chosen). ``allow_inf`` names fields, dotted
    below ``hparams``, where +inf is meant. Call after the range checks, whose messages say more."""
    for name in hparams.keys():
        if isinstance(hparams[name], (ml_collections.ConfigDict, Mapping)):
            inner = tuple(a.split(".", 1)[1] for a in allow_inf if a.startswith(f"{name}."))
            check_finite(hparams[name], f"{prefix}.{name}", inner)
            continue
        v = _numbers(hparams, name, prefix)
        ok = np.isfinite(v) | ((v == np.inf) if name in allow_inf else False)
        if not np.all(ok):
            bad = _first_bad(v, ok)
            allowed = "a finite number or inf" if name in allow_inf else "a finite number"
            raise ConfigError(f"config.{prefix}.{name} = {bad!r}: must be {allowed}.")


def mesh_batch_shards(config: ml_collections.ConfigDict) -> int:
    """How many pieces ``config.mesh`` cuts a batch into on this process's devices (data × fsdp);
    a bad mesh is a `ConfigError` naming ``config.mesh``."""
    shape = sharding.mesh_shape(config.mesh.to_dict() if "mesh" in config else {},
                                jax.device_count())
    return shape[sharding.DATA_AXIS] * shape[sharding.FSDP_AXIS]


def check_knobs(cls: type, hparams: ml_collections.ConfigDict, prefix: str = "hparams",
                unread: tuple[str, ...] = ()) -> None:
    """Range-checks ``hparams`` against the knobs ``cls`` declares (`kltrust.components.knob`),
    in declaration order, with `check_range`'s message (``config.hparams.NAME = V: must be in
    (0.0, inf).``, the words the control programs have always printed). Knobs in ``unread`` (the
    static configuration does not read them) are left to `check_finite`, as are `group` fields."""
    for name, spec in components.knobs(cls).items():
        if name not in unread:
            check_range(hparams, name, spec.low, spec.high, low_open=spec.low_open,
                        high_open=spec.high_open, prefix=prefix, allow_inf=spec.allow_inf)


def inf_fields(cls: type) -> tuple[str, ...]:
    """The knobs of ``cls`` that allow +inf, and those of its `group` fields' components
    (``GROUP.COMPONENT.KNOB``): what `check_finite` must let through in its config group."""
    own = tuple(name for name, spec in components.knobs(cls).items() if spec.allow_inf)
    return own + tuple(name for group, registry in components.groups(cls).items()
                       for name in inf_knobs(registry, group))
